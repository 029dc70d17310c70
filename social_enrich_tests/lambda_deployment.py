"""A Lambda deployment on loopback: the sentiment job with its warehouse in moto's S3, the model key in
moto's Secrets Manager, and the Azure OpenAI emulator as the model. Import the fixtures into a test
module together with those of moto_aws."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pyarrow as pa
import pytest
from pyiceberg.catalog import Catalog

from social_enrich import demo
from social_enrich.config import JobConfig, load_job_config
from social_enrich.devtools.azure_openai_emulator import AzureOpenAIEmulator, EmulatorSettings
from social_enrich.lakehouse.catalog import environment_catalog
from social_enrich.lakehouse.partition_scan import read_days
from social_enrich_tests.conftest import SAMPLE_START
from social_enrich_tests.dagster_helpers import edited_sentiment_yaml
from social_enrich_tests.emulated_azure import API_KEY, DEPLOYMENT, read_target

DAY = SAMPLE_START


@dataclass
class Deployment:
    job: JobConfig
    catalog: Catalog
    bucket: str
    secret_name: str
    emulator: AzureOpenAIEmulator

    def posts_on(self, day=DAY) -> set[int]:
        """The posts the gold tables touched on ``day``: what a run of that day must write."""
        return set(read_days(self.catalog, self.job, day, day).posts["post_key"].to_pylist())

    def target(self) -> pa.Table:
        return read_target(self.catalog)

    def warehouse_objects(self) -> list[str]:
        listed = boto3.client("s3").list_objects_v2(Bucket=self.bucket, Prefix="warehouse/enriched/")
        return [o["Key"] for o in listed.get("Contents", [])]


def catalog_env(folder: Path, moto_url: str, bucket: str) -> dict[str, str]:
    """The environment's catalog: on SQLite, with its warehouse in the S3 bucket."""
    catalog = {"type": "sql", "uri": f"sqlite:///{folder.parent}/catalog.db", "s3.endpoint": moto_url, "s3.region": "us-east-1",
               "init_catalog_tables": "true"}
    return {"SOCIAL_ENRICH_CATALOG": json.dumps(catalog), "SOCIAL_ENRICH_WAREHOUSE": f"s3://{bucket}/warehouse"}


def job_yaml(folder: Path, chunk_posts: int = 1000) -> Path:
    """The sentiment job run in Lambda, retrying fast."""
    return edited_sentiment_yaml(folder, {
        "  posts_per_request: 20": "  posts_per_request: 5\n  retry: {max_attempts: 2, backoff_seconds: 0.05}",
        "automation:\n": f"execution:\n  mode: lambda\n  lambda: {{function_name: social-enrich, chunk_posts: {chunk_posts}}}\nautomation:\n",
    })


@pytest.fixture
def emulator() -> Iterator[AzureOpenAIEmulator]:
    with AzureOpenAIEmulator(EmulatorSettings(api_key=API_KEY, deployments=(DEPLOYMENT,))) as emu:
        yield emu


@pytest.fixture
def deployment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moto_url: str, emulator: AzureOpenAIEmulator) -> Deployment:
    """Seeded gold tables (300 posts over 3 days), and the environment the function has on AWS."""
    bucket = f"warehouse-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    secret_name = f"prod/openai-{uuid.uuid4().hex[:8]}"
    secret = json.dumps({"OPENAI_API_KEY": API_KEY, "OPENAI_API_BASE": emulator.endpoint})
    boto3.client("secretsmanager").create_secret(Name=secret_name, SecretString=secret)
    path = job_yaml(tmp_path / "jobs")
    for name, value in catalog_env(path.parent, moto_url, bucket).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SOCIAL_ENRICH_JOBS_DIR", str(path.parent))  # replaces the built-in sentiment job
    monkeypatch.setenv("OPENAI_SECRET_NAME", secret_name)
    monkeypatch.setenv("AZURE_OPENAI_DEPLOYMENT", DEPLOYMENT)
    monkeypatch.setenv("SOCIAL_ENRICH_ENV", "production")
    job = load_job_config(path)
    catalog = environment_catalog()
    demo.seed_gold_tables(catalog, posts=300, days=3, start=SAMPLE_START)
    return Deployment(job, catalog, bucket, secret_name, emulator)


class ScriptedContext:
    """Lambda's context object, whose remaining time follows a script (then stays at its last value)."""

    def __init__(self, *remaining_seconds: float) -> None:
        self.aws_request_id = str(uuid.uuid4())
        self.function_name = "social-enrich"
        self.memory_limit_in_mb = 1024
        self.invoked_function_arn = f"arn:aws:lambda:us-east-1:123456789012:function:{self.function_name}"
        self._script = list(remaining_seconds or (900,))

    def get_remaining_time_in_millis(self) -> int:
        seconds = self._script.pop(0) if len(self._script) > 1 else self._script[0]
        return int(seconds * 1000)


def api_event(job: str, query: dict[str, str] | None = None, method: str = "POST", version: str = "1.0") -> dict[str, Any]:
    """An API Gateway proxy event for ``{method} /{job}``, as a REST API (1.0) or an HTTP API (2.0) sends it."""
    request_id = str(uuid.uuid4())
    if version == "2.0":
        raw_query = "&".join(f"{k}={v}" for k, v in (query or {}).items())
        return {
            "version": "2.0", "routeKey": "POST /{job}", "rawPath": f"/{job}", "rawQueryString": raw_query,
            "headers": {"content-type": "application/json"}, "queryStringParameters": query,
            "pathParameters": {"job": job}, "isBase64Encoded": False,
            "requestContext": {"accountId": "123456789012", "apiId": "api", "domainName": "api.example.com",
                               "http": {"method": method, "path": f"/{job}", "protocol": "HTTP/1.1",
                                        "sourceIp": "127.0.0.1", "userAgent": "test"},
                               "requestId": request_id, "routeKey": "POST /{job}", "stage": "$default"},
        }
    return {
        "resource": "/{job}", "path": f"/{job}", "httpMethod": method, "headers": {"Content-Type": "application/json"},
        "multiValueHeaders": {"Content-Type": ["application/json"]}, "queryStringParameters": query,
        "multiValueQueryStringParameters": {k: [v] for k, v in query.items()} if query else None,
        "pathParameters": {"job": job}, "stageVariables": None, "body": None, "isBase64Encoded": False,
        "requestContext": {"resourcePath": "/{job}", "httpMethod": method, "path": f"/prod/{job}", "stage": "prod",
                           "requestId": request_id, "accountId": "123456789012", "apiId": "api",
                           "identity": {"sourceIp": "127.0.0.1"}},
    }
