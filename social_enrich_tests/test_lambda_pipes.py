"""The enrichment asset with execution.mode lambda: Dagster invokes the handler through Pipes (PipesLambdaClient).

Lambda itself cannot run here (moto's needs Docker), so the function runs in a child process
(social_enrich.devtools.local_lambda, like `sam local invoke`) or, for a warm container, in this one.
Everything else is real: the Pipes parameters Dagster sends, moto's S3 and Secrets Manager, the emulator.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import io
import json
from typing import Any

import boto3
import dagster as dg
import pytest

from social_enrich.definitions import build_definitions
from social_enrich.enrichment import PER_DAY
from social_enrich.lambda_handler import handler
from social_enrich.resources import AwsLambdaResource
from social_enrich_tests.dagster_helpers import materialization_metadata, materialize_day, materialize_days
from social_enrich_tests.lambda_deployment import DAY, Deployment, ScriptedContext, deployment, emulator  # noqa: F401
from social_enrich_tests.moto_aws import aws_env, moto_url  # noqa: F401 (fixtures)


def pipes_logs(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    return [e.message for e in instance.all_logs(run_id) if e.message]


def test_a_partition_runs_in_lambda_and_reports_back_through_the_log_tail(deployment: Deployment, instance, monkeypatch):
    monkeypatch.setenv("SOCIAL_ENRICH_LAMBDA_LOCAL", "1")

    result = materialize_day(instance, DAY.isoformat())

    metadata = materialization_metadata(result)
    posts = deployment.posts_on(DAY)
    assert metadata["posts_touched"] == len(posts) == metadata["dagster/partition_row_count"]
    assert metadata["llm/requests"] == deployment.emulator.stats["requests"] > 0  # the child process used the secret
    assert set(deployment.target()["post_key"].to_pylist()) == posts
    logs = pipes_logs(instance, result.run_id)
    assert any("invoking Lambda social-enrich through Dagster Pipes" in m for m in logs)
    assert any(f"job sentiment, {DAY}..{DAY}" in m for m in logs)  # a log line sent by the function


def test_a_range_run_in_lambda_gives_each_day_its_own_materialization(deployment: Deployment, instance, monkeypatch):
    monkeypatch.setenv("SOCIAL_ENRICH_LAMBDA_LOCAL", "1")
    days = [DAY, DAY + dt.timedelta(days=1), DAY + dt.timedelta(days=2)]
    with pytest.raises(dg.Failure, match="4 KB log tail .* set execution.aws_lambda.messages_bucket"):
        materialize_days(instance, days[0], days[-1])  # each day's figures would not fit, so nothing is run
    assert deployment.emulator.stats["requests"] == 0
    monkeypatch.setenv("SOCIAL_ENRICH_PIPES_BUCKET", deployment.bucket)

    result = materialize_days(instance, days[0], days[-1])

    events: dict[str, dict] = {}
    for e in result.asset_materializations_for_node("social_media_sentiment"):
        events[e.partition] = {k: v.value for k, v in e.metadata.items()}  # each day's latest: its own figures
    assert sorted(events) == [d.isoformat() for d in days]
    rows = deployment.target().to_pylist()
    for day in days:
        meta = events[day.isoformat()]
        on_day = [r for r in rows if r["partition_date"] == day]
        assert meta["posts_touched"] == meta["dagster/partition_row_count"] == len(on_day) == len(deployment.posts_on(day))
        assert meta["posts_scored"] == sum(r["status"] == "ok" for r in on_day)
        assert meta["table_row_count"] == len(rows) and meta["run_days"] == f"{days[0]}..{days[-1]}"
        assert PER_DAY not in meta
    assert len({events[d.isoformat()]["posts_touched"] for d in days}) > 1  # different days, different figures
    shares = sum(events[d.isoformat()]["llm/requests"] for d in days)  # each day's share, rounded
    assert abs(shares - deployment.emulator.stats["requests"]) <= len(days)


def test_pipes_messages_can_go_through_s3(deployment: Deployment, instance, monkeypatch):
    monkeypatch.setenv("SOCIAL_ENRICH_LAMBDA_LOCAL", "1")
    monkeypatch.setenv("SOCIAL_ENRICH_PIPES_BUCKET", deployment.bucket)

    result = materialize_day(instance, DAY.isoformat())

    assert materialization_metadata(result)["posts_touched"] == len(deployment.posts_on(DAY))
    chunks = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=deployment.bucket)["Contents"]
              if not o["Key"].startswith("warehouse/")]
    assert chunks and all(key.endswith(".json") for key in chunks)
    sent = "".join(boto3.client("s3").get_object(Bucket=deployment.bucket, Key=k)["Body"].read().decode() for k in chunks)
    assert '"report_asset_materialization"' in sent and '"closed"' in sent


def test_a_function_error_fails_the_run_with_the_functions_message(deployment: Deployment, instance, monkeypatch):
    monkeypatch.setenv("SOCIAL_ENRICH_LAMBDA_LOCAL", "1")
    monkeypatch.setenv("OPENAI_SECRET_NAME", "prod/no-such-secret")

    result = materialize_day(instance, DAY.isoformat(), raise_on_error=False)

    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "'prod/no-such-secret'" in str(failure.event_specific_data.error)  # the function's own words
    assert deployment.emulator.stats["requests"] == 0


class InProcessLambdaClient:
    """boto3's Lambda ``invoke`` served by the handler in this process: one warm container for every call."""

    def __init__(self) -> None:
        self.invocations: list[dict[str, Any]] = []

    def invoke(self, FunctionName: str, Payload: str, InvocationType: str, LogType: str = "None") -> dict[str, Any]:
        event = json.loads(Payload)
        self.invocations.append(event)
        log = io.StringIO()
        with contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
            answer = handler(event, ScriptedContext())
        return {"StatusCode": 200, "Payload": io.BytesIO(json.dumps(answer).encode()),
                "LogResult": base64.b64encode(log.getvalue().encode()[-4096:]).decode()}


class WarmLambda(AwsLambdaResource):
    def client(self) -> Any:
        return WARM


WARM = InProcessLambdaClient()


def test_a_warm_function_serves_one_partition_after_another(deployment: Deployment, instance):
    defs = build_definitions()
    asset = defs.get_assets_def("social_media_sentiment")
    resources = {**defs.resources, "aws_lambda": WarmLambda()}
    days = [DAY, DAY.replace(day=DAY.day + 1)]

    for day in days:
        result = dg.materialize([asset], partition_key=day.isoformat(), resources=resources, instance=instance)
        assert materialization_metadata(result)["days"] == day.isoformat()

    assert [e["job"] for e in WARM.invocations[-2:]] == ["sentiment", "sentiment"]
    assert all("DAGSTER_PIPES_CONTEXT" in e and e["drop"] is False for e in WARM.invocations[-2:])
    assert set(deployment.target()["post_key"].to_pylist()) == deployment.posts_on(days[0]) | deployment.posts_on(days[1])


@pytest.mark.parametrize("value", ["", "0"])
def test_without_local_the_resource_gives_boto3s_client_that_waits_out_the_function(value: str, monkeypatch):
    monkeypatch.setenv("SOCIAL_ENRICH_LAMBDA_LOCAL", value)
    client = AwsLambdaResource().client()
    assert type(client).__name__ == "Lambda"
    # A 900 s invocation must not be cut at boto3's 60 s read timeout and invoked a second time.
    assert client.meta.config.read_timeout == 960 and client.meta.config.retries["total_max_attempts"] == 1
