"""The Lambda handler called as API Gateway calls it, against moto (Secrets Manager, S3) and the emulator on loopback."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from social_enrich.lambda_handler import handler
from social_enrich_tests.emulated_azure import API_KEY
from social_enrich_tests.lambda_deployment import DAY, Deployment, ScriptedContext, api_event, deployment, emulator, job_yaml  # noqa: F401
from social_enrich_tests.moto_aws import aws_env, moto_url  # noqa: F401 (fixtures)


def call(event: dict, context: ScriptedContext | None = None) -> tuple[int, dict]:
    answer = handler(event, context or ScriptedContext())
    # A REST API answer carries multiValueHeaders, an HTTP API one headers.
    headers = answer.get("headers") or {k: v[0] for k, v in answer["multiValueHeaders"].items()}
    assert headers["Content-Type"] == "application/json"
    return answer["statusCode"], json.loads(answer["body"])


def test_post_enriches_the_day_with_the_key_from_secrets_manager_into_s3(deployment: Deployment):
    status, body = call(api_event("sentiment", {"date": DAY.isoformat(), "drop": "false"}))

    assert status == 200, body
    posts = deployment.posts_on(DAY)
    target = deployment.target()
    assert set(target["post_key"].to_pylist()) == posts  # every post of the day, once
    assert body["complete"] is True and body["posts_left"] == 0
    assert body["posts_touched"] == len(posts) == body["dagster/partition_row_count"]
    assert body["posts_scored"] + body["posts_failed"] + body["posts_filtered"] == len(posts)
    assert body["llm/requests"] == deployment.emulator.stats["requests"] > 0  # the secret's key and endpoint worked
    assert any(key.endswith(".parquet") for key in deployment.warehouse_objects())
    assert API_KEY not in json.dumps(body)


def test_an_http_api_call_answers_the_same_day_from_the_cache(deployment: Deployment):
    assert call(api_event("sentiment", {"date": DAY.isoformat()}))[0] == 200
    requests = deployment.emulator.stats["requests"]

    status, body = call(api_event("sentiment", {"date": DAY.isoformat()}, version="2.0"))

    assert status == 200, body
    assert deployment.emulator.stats["requests"] == requests and body["llm/requests"] == 0
    assert body["posts_from_cache"] + body["posts_unchanged"] == body["posts_touched"]


def test_a_range_of_days_is_one_call(deployment: Deployment):
    last = DAY.replace(day=DAY.day + 1)
    status, body = call(api_event("sentiment", {"from": DAY.isoformat(), "to": last.isoformat()}))

    assert status == 200, body
    assert body["days"] == f"{DAY}..{last}"
    assert set(deployment.target()["post_key"].to_pylist()) == deployment.posts_on(DAY) | deployment.posts_on(last)


@pytest.mark.parametrize(
    "query, expected",
    [
        ({"date": DAY.isoformat(), "drop": "maybe"}, "query parameter drop must be true or false"),
        ({"date": "2026-13-01"}, "query parameter date must be a date YYYY-MM-DD"),
        ({"date": "2099-01-01"}, "days must be complete partitions of job sentiment"),
        ({"date": "2020-01-01"}, "days must be complete partitions of job sentiment"),
        ({"from": DAY.isoformat()}, "from and to go together"),
        ({"from": "2026-11-03", "to": "2026-11-01"}, "from 2026-11-03 is after to 2026-11-01"),
        ({"from": "2026-11-01", "to": "2026-12-31"}, "at most 31 days per call"),
    ],
)
def test_a_bad_request_is_400_and_names_the_parameter(deployment: Deployment, query: dict, expected: str):
    status, body = call(api_event("sentiment", query))
    assert (status, body["error"]) == (400, "BadRequestError")
    assert expected in body["message"]
    assert deployment.emulator.stats["requests"] == 0


def test_a_broken_job_config_is_400_and_names_the_field(deployment: Deployment, tmp_path: Path, monkeypatch):
    path = job_yaml(tmp_path / "broken")
    path.write_text(path.read_text().replace("  workers: 20", "  workers: many"))
    monkeypatch.setenv("SOCIAL_ENRICH_JOBS_DIR", str(path.parent))

    status, body = call(api_event("sentiment", {"date": DAY.isoformat()}))

    assert (status, body["error"]) == (400, "JobConfigError")
    assert str(path) in body["message"] and "inference.workers" in body["message"]


def test_an_unknown_job_is_404_and_lists_the_jobs(deployment: Deployment):
    status, body = call(api_event("nosuchjob", {"date": DAY.isoformat()}))
    assert (status, body["error"]) == (404, "UnknownJobError")
    assert "no job named 'nosuchjob'; configured jobs: ['sentiment']" in body["message"]


def test_another_method_is_not_a_route(deployment: Deployment):
    status, _ = call(api_event("sentiment", {"date": DAY.isoformat()}, method="GET"))
    assert status == 404
    assert deployment.emulator.stats["requests"] == 0


def test_a_failing_model_is_502_with_counts_and_the_failed_rows_are_written(deployment: Deployment):
    deployment.emulator.settings.fail_all_with = 500

    status, body = call(api_event("sentiment", {"date": DAY.isoformat()}))

    assert (status, body["error"]) == (502, "PartitionFailedError")
    posts = deployment.posts_on(DAY)
    assert body["counts"]["posts"] == body["counts"]["failed"] == len(posts)
    target = deployment.target()
    assert set(target["status"].to_pylist()) == {"failed"} and target.num_rows == len(posts)  # retried next time


def test_a_missing_secret_is_500_naming_it_and_never_the_key(deployment: Deployment, monkeypatch):
    monkeypatch.setenv("OPENAI_SECRET_NAME", "prod/no-such-secret")

    status, body = call(api_event("sentiment", {"date": DAY.isoformat()}))

    assert (status, body["error"]) == (500, "CredentialsError")
    assert "'prod/no-such-secret'" in body["message"] and "was not found" in body["message"]
    assert API_KEY not in json.dumps(body)


def test_the_deadline_stops_between_chunks_writes_what_is_done_and_a_second_call_finishes(
    deployment: Deployment, tmp_path, monkeypatch, state_home: Path
):
    path = job_yaml(tmp_path / "small_chunks", chunk_posts=20)
    monkeypatch.setenv("SOCIAL_ENRICH_JOBS_DIR", str(path.parent))
    posts = deployment.posts_on(DAY)

    # The clock is read before each chunk after the first: 900 s left before the second, then 20 s,
    # under the 30 s kept back for writing, before the third.
    status, body = call(api_event("sentiment", {"date": DAY.isoformat()}), ScriptedContext(900, 20))

    assert status == 503, body
    assert body["complete"] is False and body["posts_left"] == len(posts) - 40
    assert "20s left before the Lambda timeout" in body["error"] and "run the same days again" in body["error"]
    first_rows = deployment.target().to_pylist()
    assert len(first_rows) == 40  # the two chunks scored are written
    requests = deployment.emulator.stats["requests"]
    for path in state_home.glob("response_cache.sqlite3*"):
        path.unlink()  # the next call lands on a cold execution environment: /tmp is empty

    status, body = call(api_event("sentiment", {"date": DAY.isoformat()}))

    assert status == 200 and body["complete"] is True
    # The answers written by the stopped call come back from the target table, not from the model.
    assert body["posts_from_cache"] + body["posts_unchanged"] == 40
    assert deployment.emulator.stats["requests"] - requests == body["llm/requests"]
    assert set(deployment.target()["post_key"].to_pylist()) == posts


def test_a_stopped_rerun_keeps_the_rows_it_did_not_reach(deployment: Deployment, tmp_path, monkeypatch):
    assert call(api_event("sentiment", {"date": DAY.isoformat()}))[0] == 200
    before = deployment.target()
    path = job_yaml(tmp_path / "small_chunks", chunk_posts=20)
    monkeypatch.setenv("SOCIAL_ENRICH_JOBS_DIR", str(path.parent))

    status, body = call(api_event("sentiment", {"date": DAY.isoformat()}), ScriptedContext(1))

    assert status == 503 and body["posts_left"] == before.num_rows - 20  # stopped before the second chunk
    after = deployment.target()
    assert sorted(after["post_key"].to_pylist()) == sorted(before["post_key"].to_pylist())  # nothing lost


def test_sigterm_finishes_the_chunk_then_answers_cleanly(deployment: Deployment, tmp_path, monkeypatch):
    """The function in a process of its own, as on Lambda: SIGTERM while it scores, then it writes and answers."""
    path = job_yaml(tmp_path / "small_chunks", chunk_posts=20)
    monkeypatch.setenv("SOCIAL_ENRICH_JOBS_DIR", str(path.parent))
    deployment.emulator.settings.latency_seconds = 0.2  # a few seconds in all, so the signal lands mid-run
    event, result = tmp_path / "event.json", tmp_path / "result.json"
    event.write_text(json.dumps(api_event("sentiment", {"date": DAY.isoformat()})))
    process = subprocess.Popen(
        [sys.executable, "-m", "social_enrich.devtools.local_lambda", "--timeout-seconds", "120", str(event), str(result)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while deployment.emulator.stats["requests"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        logs = process.communicate(timeout=60)[0].decode()
    finally:
        process.kill()

    assert process.returncode == 0, logs
    answer = json.loads(result.read_text())
    body = json.loads(answer["body"])
    assert answer["statusCode"] == 503 and body["error"].startswith(f"stopped on {DAY} (SIGTERM received)")
    assert "SIGTERM received: finishing the current chunk" in logs
    assert 0 < body["posts_left"] < len(deployment.posts_on(DAY))
    assert deployment.target().num_rows == body["posts_touched"] - body["posts_left"]
