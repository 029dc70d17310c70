"""The emulator's Files and Batches APIs (Azure Global Batch), through the unmodified openai SDK."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import openai
import pytest
from openai.types import Batch

from social_enrich.devtools.azure_openai_emulator import FAULT_MARKER, AzureOpenAIEmulator, EmulatorSettings, batches
from social_enrich.devtools.azure_openai_emulator.cli import main
from social_enrich_tests.emulator_sdk import (
    API_VERSION, DEPLOYMENT, NEGATIVE, NEUTRAL, POSITIVE, BatchSentiment, sdk_client,
)  # fmt: skip

API_KEY = "batches-test-key"
OTHER_DEPLOYMENT = "gpt-4o"
FAST = 0.2  # batch_completion_seconds of most tests: completed 0.22 s after creation
FINAL = ("completed", "failed", "expired", "cancelled")
TEXTS = (POSITIVE, NEGATIVE, NEUTRAL)
POLL_SECONDS, POLL_LIMIT_SECONDS = 0.05, 5.0
SENTIMENT_SCHEMA = openai.pydantic_function_tool(BatchSentiment)["function"]["parameters"]


@contextmanager
def running_emulator(**settings: Any) -> Iterator[AzureOpenAIEmulator]:
    settings = {"api_key": API_KEY, "deployments": (DEPLOYMENT, OTHER_DEPLOYMENT), "batch_completion_seconds": FAST,
                "seed": 11, **settings}  # fmt: skip
    with AzureOpenAIEmulator(EmulatorSettings(**settings)) as emu:
        yield emu


@pytest.fixture
def emulator() -> Iterator[AzureOpenAIEmulator]:
    with running_emulator() as emu:
        yield emu


# ------------------------------------------------------------------------------------------
# Helpers: input lines, upload and submit, polling, reading outputs
# ------------------------------------------------------------------------------------------


def chat_body(text: str, model: str = DEPLOYMENT, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def request_line(custom_id: str, text: str, model: str = DEPLOYMENT, url: str = "/chat/completions") -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": chat_body(text, model)}


def request_lines(count: int) -> list[dict[str, Any]]:
    return [request_line(f"req-{i}", TEXTS[i % len(TEXTS)]) for i in range(count)]


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def upload(client: openai.OpenAI, data: bytes, purpose: str = "batch") -> str:
    return client.files.create(file=("in.jsonl", data), purpose=purpose).id


def submit(client: openai.OpenAI, lines: list[dict[str, Any]] | bytes, **create: Any) -> Batch:
    data = lines if isinstance(lines, bytes) else jsonl(lines)
    create = {"endpoint": "/chat/completions", "completion_window": "24h", **create}
    if "input_file_id" not in create:
        create["input_file_id"] = upload(client, data)
    return client.batches.create(**create)


def wait_for(client: openai.OpenAI, batch_id: str, statuses: tuple[str, ...] = FINAL) -> Batch:
    """Poll every 0.05 s until the batch reaches one of ``statuses``; at most 5 s."""
    deadline = time.monotonic() + POLL_LIMIT_SECONDS
    for _ in range(int(POLL_LIMIT_SECONDS / POLL_SECONDS) + 1):
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses or time.monotonic() > deadline:
            break
        time.sleep(POLL_SECONDS)
    assert batch.status in statuses, f"batch {batch_id} still {batch.status}"
    return batch


def run(client: openai.OpenAI, lines: list[dict[str, Any]] | bytes, **create: Any) -> Batch:
    return wait_for(client, submit(client, lines, **create).id)


def file_lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).content.decode().splitlines()]


def outputs_and_errors(client: openai.OpenAI, batch: Batch) -> tuple[list[dict], list[dict]]:
    return file_lines(client, batch.output_file_id), file_lines(client, batch.error_file_id)


def custom_ids(lines: list[dict[str, Any]]) -> list[str]:
    return [line["custom_id"] for line in lines]


def ids_at(indices: Any) -> set[str]:
    return {f"req-{i}" for i in indices}


def counts(batch: Batch) -> tuple[int, int, int]:
    assert batch.request_counts is not None
    return batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed


def without_identity(completion: dict[str, Any]) -> dict[str, Any]:
    """A chat completion without what differs between two answers to one body."""
    return {key: value for key, value in completion.items() if key not in ("id", "created")}


def assert_unanswered(lines: list[dict[str, Any]], code: str) -> None:
    for line in lines:
        assert line["response"] is None and line["error"]["code"] == code and line["error"]["message"]


def assert_answered_with(lines: list[dict[str, Any]], status: int) -> None:
    for line in lines:
        assert line["error"] is None and line["id"].startswith("batch_req_") and line["response"]["request_id"]
        assert line["response"]["status_code"] == status


# ------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------


def test_files_upload_retrieve_content_list_and_delete(client: openai.AzureOpenAI):
    data = b'{"a": 1}\r\n{"b": "\xc3\xa9"}\n\x00\xff trailing'  # byte-exact, whatever the bytes
    uploaded = client.files.create(file=("in.jsonl", data), purpose="batch")
    assert uploaded.id.startswith("file-") and uploaded.object == "file" and uploaded.status == "processed"
    assert (uploaded.bytes, uploaded.filename, uploaded.purpose) == (len(data), "in.jsonl", "batch")
    assert client.files.retrieve(uploaded.id) == uploaded
    assert client.files.content(uploaded.id).content == data

    others = [upload(client, b"{}\n", purpose) for purpose in ("batch", "fine-tune", "batch")]
    assert [f.id for f in client.files.list()] == [*reversed(others), uploaded.id]  # newest first
    assert [f.id for f in client.files.list(order="asc", purpose="batch")] == [uploaded.id, others[0], others[2]]
    first_page = client.files.list(limit=2)
    assert first_page.has_more and [f.id for f in first_page.data] == [others[2], others[1]]
    assert [f.id for f in client.files.list(limit=2)] == [*reversed(others), uploaded.id]  # auto-paging

    deleted = client.files.delete(uploaded.id)
    assert (deleted.id, deleted.deleted) == (uploaded.id, True)
    for call in (client.files.retrieve, client.files.content, client.files.delete):
        with pytest.raises(openai.NotFoundError) as excinfo:
            call(uploaded.id)
        assert excinfo.value.body == {"code": "NotFound", "message": f"File with id '{uploaded.id}' was not found."}


def test_files_refuse_bad_uploads_and_bad_keys(emulator: AzureOpenAIEmulator, client: openai.AzureOpenAI):
    with pytest.raises(openai.BadRequestError, match="purpose"):
        client.files.create(file=("in.jsonl", b"{}"), purpose="nonsense")  # type: ignore[arg-type]
    with sdk_client(emulator, "wrong-key") as intruder:
        with pytest.raises(openai.AuthenticationError):
            intruder.files.create(file=("in.jsonl", b"{}"), purpose="batch")
        with pytest.raises(openai.AuthenticationError):
            intruder.batches.list()
    # Like the deployments route, the non-v1 routes want api-version.
    with openai.OpenAI(base_url=emulator.endpoint + "/openai/", api_key=API_KEY, max_retries=0) as unversioned:
        with pytest.raises(openai.NotFoundError):
            unversioned.files.list()
    assert emulator.stats["requests"] == 0  # Files and Batches calls are not chat requests


def test_v1_routes_serve_the_same_files_and_batches(emulator: AzureOpenAIEmulator, client: openai.AzureOpenAI):
    with openai.OpenAI(base_url=emulator.endpoint + "/openai/v1/", api_key=API_KEY, max_retries=0) as v1:
        batch = run(v1, request_lines(2), endpoint="/v1/chat/completions")
        assert batch.status == "completed" and batch.endpoint == "/v1/chat/completions"
        assert client.batches.retrieve(batch.id).status == "completed"
        assert len(file_lines(v1, batch.output_file_id)) == 2


# ------------------------------------------------------------------------------------------
# The happy path
# ------------------------------------------------------------------------------------------


def test_every_line_is_answered_as_the_chat_route_answers_it_in_shuffled_order(client: openai.AzureOpenAI):
    lines = request_lines(20)
    schema_format = {"type": "json_schema", "json_schema": {"name": "sentiment", "schema": SENTIMENT_SCHEMA}}
    lines[1]["body"]["response_format"] = schema_format
    lines[2]["url"] = "/v1/chat/completions"  # accepted too
    created = submit(client, lines, metadata={"job": "nightly"})
    assert created.id.startswith("batch_") and created.object == "batch" and created.status == "validating"
    assert created.metadata == {"job": "nightly"} and created.expires_at == created.created_at + 24 * 3600

    batch = wait_for(client, created.id)
    assert batch.status == "completed" and counts(batch) == (20, 20, 0) and batch.error_file_id is None
    assert None not in (batch.in_progress_at, batch.finalizing_at, batch.completed_at) and batch.failed_at is None
    assert batch.model == DEPLOYMENT and client.files.retrieve(batch.output_file_id).purpose == "batch_output"
    outputs = file_lines(client, batch.output_file_id)
    assert_answered_with(outputs, 200)
    assert custom_ids(outputs) != custom_ids(lines) and sorted(custom_ids(outputs)) == sorted(custom_ids(lines))
    answers = {line["custom_id"]: line["response"]["body"] for line in outputs}
    for line in lines:
        realtime = client.chat.completions.with_raw_response.create(**line["body"]).http_response.json()
        assert without_identity(answers[line["custom_id"]]) == without_identity(realtime)


def test_batch_lines_skip_rate_limits_random_faults_and_holding_markers():
    # One realtime request per 10 s and every realtime request faulted: the batch does not care.
    with running_emulator(requests_per_minute=6, share_http_500=1.0, slow_seconds=30, timeout_hold_seconds=30) as emu:
        with sdk_client(emu, API_KEY) as client:
            marked = {"slow": 200, "timeout": 500, "drop": 500, "http_503": 503, "content_filter": 400}
            lines = request_lines(4) + [request_line(f"mark-{f}", f"{FAULT_MARKER}{f} {POSITIVE}") for f in marked]
            started = time.monotonic()
            batch = run(client, lines)
            assert time.monotonic() - started < 3  # neither slow nor timeout held anything
            outputs, errors = outputs_and_errors(client, batch)
        statuses = {line["custom_id"]: line["response"]["status_code"] for line in outputs + errors}
        assert statuses == {**dict.fromkeys(ids_at(range(4)), 200), **{f"mark-{f}": s for f, s in marked.items()}}
        assert counts(batch) == (9, 5, 4) and emu.stats["throttled"] == 0 and emu.stats["requests"] == 0


# ------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------


def _with(index: int, **changes: Any) -> bytes:
    """Three good lines, line ``index`` (0-based) changed; a change to None drops the key."""
    lines = request_lines(3)
    lines[index] = {k: v for k, v in {**lines[index], **changes}.items() if v is not None}
    return jsonl(lines)


@pytest.mark.parametrize(
    ("data", "code", "line", "param"),
    [
        (jsonl(request_lines(1)) + b"{not json\n", "invalid_json_line", 2, None),
        (_with(0, custom_id=None), "invalid_request", 1, "custom_id"),
        (_with(1, method=None), "invalid_request", 2, "method"),
        (_with(2, url=None), "invalid_request", 3, "url"),
        (_with(1, body=None), "invalid_request", 2, "body"),
        (_with(1, method="GET"), "invalid_request", 2, "method"),
        (_with(2, custom_id="req-0"), "duplicate_custom_id", 3, "custom_id"),
        (_with(1, url="/embeddings"), "url_mismatch", 2, "url"),
        (_with(2, body=chat_body(POSITIVE, "gpt-unknown")), "model_not_found", 3, "body.model"),
        (_with(1, body=chat_body(POSITIVE, OTHER_DEPLOYMENT)), "model_mismatch", 2, "body.model"),
        (_with(0, body={"messages": []}), "invalid_request", 1, "body.model"),
        (b"\n \n", "empty_batch", None, "input_file_id"),
    ],
    ids=[
        "not-json", "no-custom-id", "no-method", "no-url", "no-body", "not-post", "duplicate-custom-id",
        "other-url", "unknown-deployment", "two-deployments", "no-model", "empty",
    ],
)  # fmt: skip
def test_bad_input_lines_fail_the_batch_naming_the_line(
    client: openai.AzureOpenAI, data: bytes, code: str, line: int | None, param: str
):
    assert_failed_with(run(client, data), code, line, param)


def assert_failed_with(batch: Batch, code: str, line: int | None, param: str | None) -> None:
    assert batch.status == "failed" and batch.failed_at is not None and batch.in_progress_at is None
    assert counts(batch) == (0, 0, 0) and batch.output_file_id is None and batch.error_file_id is None
    assert batch.errors is not None and batch.errors.object == "list"
    error = batch.errors.data[0]
    assert (error.code, error.line, error.param) == (code, line, param) and error.message
    if line is not None:
        assert f"Line {line}:" in error.message


def test_every_bad_line_is_reported(client: openai.AzureOpenAI):
    data = b"{oops\n" + _with(1, custom_id="req-0", url="/completions")
    batch = run(client, data)
    assert [(e.code, e.line) for e in batch.errors.data] == [("invalid_json_line", 1), ("url_mismatch", 3)]


@pytest.mark.parametrize(
    ("limit", "value", "code"), [("MAX_LINES", 3, "too_many_tasks"), ("MAX_BYTES", 100, "invalid_request")]
)
def test_files_over_the_limits_fail_the_batch(
    client: openai.AzureOpenAI, monkeypatch: pytest.MonkeyPatch, limit: str, value: int, code: str
):
    # 100,000 lines and 200 MB, scaled down so the test stays quick.
    monkeypatch.setattr(batches, limit, value)
    assert_failed_with(run(client, request_lines(4)), code, None, "input_file_id")


def test_bad_completion_window_and_unknown_input_file_fail_the_batch(client: openai.AzureOpenAI):
    for create, param in [
        ({"completion_window": "48h"}, "completion_window"),
        ({"input_file_id": "file-missing"}, "input_file_id"),
        ({"input_file_id": run(client, request_lines(1)).output_file_id}, "input_file_id"),  # not purpose batch
    ]:
        assert_failed_with(run(client, request_lines(1), **create), "invalid_request", None, param)


@pytest.mark.parametrize(
    "create",
    [
        {"endpoint": "/v1/embeddings"},
        {"metadata": {"key": 1}},
        {"input_file_id": ""},
    ],
)
def test_malformed_create_requests_get_400(client: openai.AzureOpenAI, create: dict[str, Any]):
    with pytest.raises(openai.BadRequestError):
        submit(client, request_lines(1), **create)
    assert list(client.batches.list()) == []


# ------------------------------------------------------------------------------------------
# Failure modes: scripted
# ------------------------------------------------------------------------------------------


def test_an_expired_batch_answers_part_and_reports_the_rest_as_batch_expired(
    emulator: AzureOpenAIEmulator, client: openai.AzureOpenAI
):
    emulator.script_batches("expired")
    batch = run(client, request_lines(8))
    outputs, errors = outputs_and_errors(client, batch)
    assert batch.status == "expired" and batch.expired_at is not None and batch.completed_at is None
    assert counts(batch) == (8, 4, 4)  # batch_expired_completed_share 0.5
    assert_answered_with(outputs, 200)
    assert_unanswered(errors, "batch_expired")
    assert set(custom_ids(outputs)) | set(custom_ids(errors)) == ids_at(range(8))
    assert not set(custom_ids(outputs)) & set(custom_ids(errors))


def test_error_lines_answer_every_odd_line_with_a_500(emulator: AzureOpenAIEmulator, client: openai.AzureOpenAI):
    emulator.script_batches("error_lines")
    batch = run(client, request_lines(6))
    outputs, errors = outputs_and_errors(client, batch)
    assert batch.status == "completed" and counts(batch) == (6, 3, 3)
    assert set(custom_ids(outputs)) == ids_at((0, 2, 4)) and set(custom_ids(errors)) == ids_at((1, 3, 5))
    assert_answered_with(errors, 500)
    assert {line["response"]["body"]["error"]["code"] for line in errors} == {"InternalServerError"}


def test_a_stuck_batch_runs_until_cancelled_and_keeps_part_of_its_answers(
    emulator: AzureOpenAIEmulator, client: openai.AzureOpenAI
):
    emulator.script_batches("stuck")
    batch = submit(client, request_lines(6))
    time.sleep(3 * FAST)  # well past the 1.1 * FAST a batch normally takes
    assert wait_for(client, batch.id, ("in_progress",)).completed_at is None

    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    cancelled = client.batches.retrieve(batch.id)
    assert cancelled.status == "cancelled" and cancelled.cancelled_at is not None and counts(cancelled) == (6, 3, 3)
    outputs, errors = outputs_and_errors(client, cancelled)
    assert_answered_with(outputs, 200)
    assert_unanswered(errors, "batch_cancelled")
    assert client.batches.cancel(batch.id).status == "cancelled"  # again: nothing changes


def test_a_batch_cancelled_while_validating_answers_nothing():
    with running_emulator(batch_completion_seconds=20) as emu, sdk_client(emu, API_KEY) as client:
        batch = submit(client, request_lines(4))  # validating for 2 s
        assert client.batches.cancel(batch.id).status == "cancelling"
        cancelled = client.batches.retrieve(batch.id)
        assert cancelled.status == "cancelled" and cancelled.in_progress_at is None and counts(cancelled) == (4, 0, 4)
        assert cancelled.output_file_id is None
        assert_unanswered(file_lines(client, cancelled.error_file_id), "batch_cancelled")


def test_a_finished_batch_cannot_be_cancelled(client: openai.AzureOpenAI):
    batch = run(client, request_lines(1))
    with pytest.raises(openai.BadRequestError, match="completed"):
        client.batches.cancel(batch.id)
    with pytest.raises(openai.NotFoundError):
        client.batches.cancel("batch_unknown")


def test_scripted_outcomes_apply_in_order_then_the_shares():
    with running_emulator(batch_share_error_lines=1.0) as emu, sdk_client(emu, API_KEY) as client:
        emu.script_batches("expired", "completed", "failed")
        emu.script_batches("stuck", "error_lines")  # calls add to the script
        created = [submit(client, request_lines(4)) for _ in range(6)]
        finished = [wait_for(client, b.id, ("in_progress",) if i == 3 else FINAL) for i, b in enumerate(created)]
        statuses = ["expired", "completed", "failed", "in_progress", "completed", "completed"]
        assert [b.status for b in finished] == statuses
        # Scripted batches ignore the shares; the sixth, unscripted, gets batch_share_error_lines 1.0.
        assert [counts(b) for b in finished] == [(4, 2, 2), (4, 4, 0), (0, 0, 0), (4, 0, 0), (4, 2, 2), (4, 0, 4)]
        assert finished[2].errors.data[0].code == "invalid_request" and finished[5].output_file_id is None
        with pytest.raises(ValueError, match="unknown batch outcome"):
            emu.script_batches("completed", "exploded")


# ------------------------------------------------------------------------------------------
# Failure modes: random, by share, seeded
# ------------------------------------------------------------------------------------------


def _seeded_outcomes(seed: int) -> list[tuple[str, frozenset[str]]]:
    """Status and failed custom_ids of 12 batches of 5 lines under every random batch fault."""
    shares = {"batch_share_failed": 0.3, "batch_share_expired": 0.3, "batch_share_error_lines": 0.3}
    with running_emulator(seed=seed, **shares) as emu, sdk_client(emu, API_KEY) as client:
        created = [submit(client, request_lines(5)) for _ in range(12)]
        finished = [wait_for(client, batch.id) for batch in created]
        return [(b.status, frozenset(custom_ids(file_lines(client, b.error_file_id)))) for b in finished]


def test_random_batch_faults_follow_their_shares_and_replay_with_the_seed():
    outcomes = _seeded_outcomes(seed=5)
    assert outcomes == _seeded_outcomes(seed=5)
    statuses = [status for status, _ in outcomes]
    assert {"completed", "failed", "expired"} == set(statuses)
    failed_lines = [len(failed) for status, failed in outcomes if status == "completed"]
    assert 0 < sum(failed_lines) < 5 * len(failed_lines)  # some lines, not all
    assert outcomes != _seeded_outcomes(seed=6)


# ------------------------------------------------------------------------------------------
# Listing, stats, command line
# ------------------------------------------------------------------------------------------


def test_batches_list_newest_first_with_limit_and_after(client: openai.AzureOpenAI):
    created = [submit(client, request_lines(1)).id for _ in range(3)]
    page = client.batches.list(limit=2)
    assert [b.id for b in page.data] == created[:0:-1] and page.has_more
    assert [b.id for b in client.batches.list(limit=2, after=created[1])] == [created[0]]
    assert [b.id for b in client.batches.list(limit=2)] == created[::-1]  # auto-paging follows after=


def test_a_batch_is_found_again_by_its_metadata_in_retrieve_and_the_list(client: openai.AzureOpenAI):
    # What a client that crashed before recording its batch id relies on (batch_enrichment.send_unsent).
    tagged = submit(client, request_lines(1), metadata={"social_enrich_intent": "intent-1", "social_enrich_job": "sentiment"}).id
    others = [submit(client, request_lines(1), metadata={"social_enrich_intent": f"intent-{n}"}).id for n in (2, 3)]
    untagged = submit(client, request_lines(1)).id
    listed = {b.id: b.metadata for b in client.batches.list(limit=1)}  # one per page: the paging finds it too
    assert list(listed) == [untagged, *others[::-1], tagged] and listed[untagged] is None
    assert [i for i, m in listed.items() if (m or {}).get("social_enrich_intent") == "intent-1"] == [tagged]
    assert client.batches.retrieve(tagged).metadata == {"social_enrich_intent": "intent-1", "social_enrich_job": "sentiment"}


def test_stats_count_files_batches_and_lines(emulator: AzureOpenAIEmulator, client: openai.AzureOpenAI):
    assert emulator.stats["batches_created"] == 0
    emulator.script_batches("error_lines", "expired", "failed")
    finished = [run(client, request_lines(4)) for _ in range(3)]
    outputs = [line for batch in finished for line in file_lines(client, batch.output_file_id)]
    usage = [line["response"]["body"]["usage"] for line in outputs]

    stats = emulator.stats
    assert stats["files_uploaded"] == 3 and stats["batches_created"] == 3
    assert stats["batches_by_status"] == {"completed": 1, "expired": 1, "failed": 1}
    assert (stats["batch_lines_answered"], stats["batch_error_lines"], stats["batch_lines_unanswered"]) == (4, 2, 2)
    assert stats["batch_prompt_tokens"] == sum(u["prompt_tokens"] for u in usage) > 0
    assert stats["batch_completion_tokens"] == sum(u["completion_tokens"] for u in usage) > 0
    assert stats["batch_posts_answered"] == 4 and stats["requests"] == 0 and stats["posts_answered"] == 0
    with urllib.request.urlopen(emulator.endpoint + "/stats", timeout=5) as response:
        served = json.load(response)
    assert set(served) == set(stats) and served["batches_by_status"] == stats["batches_by_status"]

    emulator.reset_stats()
    zeroed = emulator.stats
    assert zeroed["batches_by_status"] == {} and zeroed["files_uploaded"] == zeroed["batches_created"] == 0
    assert zeroed["batch_lines_answered"] == zeroed["batch_error_lines"] == zeroed["batch_lines_unanswered"] == 0
    assert client.batches.retrieve(finished[0].id).status == "completed"  # batches are state, not stats


def test_a_batch_counts_as_finished_when_stats_are_read(emulator: AzureOpenAIEmulator, client: openai.AzureOpenAI):
    submit(client, request_lines(2))
    time.sleep(2 * FAST)  # no read of the batch in between: the stats bring it up to date
    assert emulator.stats["batches_by_status"] == {"completed": 1}


def test_batch_command_line_flags_reach_the_running_emulator():
    command = [
        sys.executable, "-m", "social_enrich.devtools.azure_openai_emulator", "--port", "0", "--api-key", API_KEY,
        "--seed", "2", "--batch-completion-seconds", str(FAST), "--batch-share-failed", "0.5",
        "--batch-share-expired", "0.5", "--batch-expired-completed-share", "0.25", "--batch-share-error-lines", "1",
    ]  # fmt: skip
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as proc:
        try:
            endpoint = proc.stdout.readline().strip()
            assert endpoint.startswith("http://127.0.0.1:")
            with openai.AzureOpenAI(
                azure_endpoint=endpoint, api_key=API_KEY, api_version=API_VERSION, max_retries=0
            ) as client:
                finished = [run(client, request_lines(4)) for _ in range(6)]
                expired = [b for b in finished if b.status == "expired"]
                assert {b.status for b in finished} == {"failed", "expired"}
                for batch in expired:  # a quarter answered, and that one with a 500
                    assert counts(batch) == (4, 0, 4) and batch.output_file_id is None
                    errors = file_lines(client, batch.error_file_id)
                    assert_answered_with([e for e in errors if e["response"]], 500)
                    assert_unanswered([e for e in errors if not e["response"]], "batch_expired")
                    assert sum(1 for e in errors if e["response"]) == 1
            with urllib.request.urlopen(endpoint + "/stats", timeout=5) as response:
                stats = json.load(response)
            assert stats["batches_by_status"] == {"expired": len(expired), "failed": 6 - len(expired)}
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0


def test_every_batch_setting_has_a_flag(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit):
        main(["--help"])
    usage = capsys.readouterr().out
    for flag in ("--batch-completion-seconds", "--batch-share-error-lines", "--batch-share-expired",
                 "--batch-share-failed", "--batch-expired-completed-share"):  # fmt: skip
        assert flag in usage


@pytest.mark.parametrize(
    ("argv", "flags"),
    [
        (["--batch-completion-seconds", "-1"], "--batch-completion-seconds"),
        (["--batch-share-error-lines", "1.5"], "--batch-share-error-lines"),
        (["--batch-expired-completed-share", "-0.1"], "--batch-expired-completed-share"),
        (["--batch-share-failed", ".6", "--batch-share-expired", ".9"], "--batch-share-expired, --batch-share-failed"),
    ],
)
def test_bad_batch_flag_values_exit_naming_the_flag(argv: list[str], flags: str, capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as excinfo:
        main(argv)
    assert excinfo.value.code == 2
    assert f"argument {flags}" in capsys.readouterr().err
