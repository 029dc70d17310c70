"""Cloud catalogs by configuration alone: the deploy/jobs Glue job against moto's Glue and S3 on loopback,
and the REST job against a loopback stand-in for the first endpoints a REST catalog client calls."""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import dagster as dg
import pytest
from pyiceberg.catalog import Catalog
from pyiceberg.catalog.rest import RestCatalog

from social_enrich import demo
from social_enrich.config import JobConfig, JobConfigError, load_job_config
from social_enrich.definitions import build_definitions
from social_enrich.lakehouse.catalog import CatalogUnavailableError, catalog_properties, open_catalog
from social_enrich_tests.gold_tables import latest_touch_days
from social_enrich_tests.conftest import SAMPLE_START
from social_enrich_tests.dagster_helpers import materialization_metadata, materialize_day
from social_enrich_tests.moto_aws import REGION, aws_env, moto_url  # noqa: F401

DEPLOY_JOBS = Path(__file__).resolve().parents[1] / "deploy" / "jobs"
GLUE_JOB = DEPLOY_JOBS / "glue" / "sentiment.yaml"
REST_JOB = DEPLOY_JOBS / "rest" / "sentiment.yaml"
BUCKET = "social-enrich-lake"
FAKE_SECRET = "fake-secret-Zq7XwVt3pL"


@pytest.fixture(autouse=True)
def empty_moto(moto_url: str) -> None:  # noqa: F811
    # The module shares one moto server: every test starts from empty Glue and S3.
    request = urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST")
    urllib.request.urlopen(request, timeout=10).close()


@pytest.fixture
def s3(moto_url: str):  # noqa: F811
    return boto3.client("s3", endpoint_url=moto_url)


@pytest.fixture
def glue(moto_url: str):  # noqa: F811
    return boto3.client("glue", endpoint_url=moto_url)


@pytest.fixture
def glue_env(moto_url: str, s3, monkeypatch: pytest.MonkeyPatch) -> str:  # noqa: F811
    """The Glue job's variables pointing at moto; returns the warehouse (in a bucket that exists)."""
    s3.create_bucket(Bucket=BUCKET)
    warehouse = f"s3://{BUCKET}/warehouse"
    monkeypatch.setenv("SOCIAL_ENRICH_WAREHOUSE", warehouse)
    monkeypatch.setenv("AWS_REGION", REGION)  # without a region pyarrow would ask AWS where the bucket is
    monkeypatch.setenv("SOCIAL_ENRICH_GLUE_ENDPOINT", moto_url)
    monkeypatch.setenv("SOCIAL_ENRICH_S3_ENDPOINT", moto_url)
    # From here only the job's own properties lead to moto: boto3 and pyarrow would otherwise go to AWS.
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    return warehouse


def glue_job_folder(tmp_path: Path, extra: dict[str, str]) -> Path:
    """A jobs folder holding the deploy Glue job with some catalog properties added."""
    anchor = "    type: glue\n"
    text = GLUE_JOB.read_text()
    assert anchor in text
    folder = tmp_path / "jobs"
    folder.mkdir()
    lines = "".join(f"    {key}: {value}\n" for key, value in extra.items())
    (folder / GLUE_JOB.name).write_text(text.replace(anchor, anchor + lines))
    return folder


def closed_port() -> int:
    """A loopback port with nothing listening (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def touched_posts(catalog: Catalog, job: JobConfig, day: dt.date) -> list[int]:
    """The posts that live on ``day``: their latest datetime in any source table falls on it."""
    tables = tuple(ref.identifier for ref in job.connector.source.tables)
    ref = job.connector.source.tables[0]
    return sorted(k for k, d in latest_touch_days(catalog, tables, ref.index_field, ref.datetime_field).items() if d == day)


def bucket_objects(s3) -> set[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
    return {f"s3://{BUCKET}/{item['Key']}" for page in pages for item in page.get("Contents", [])}


def test_on_aws_the_glue_job_sets_no_endpoint_and_no_credential(monkeypatch):
    monkeypatch.setenv("AWS_REGION", REGION)
    with pytest.raises(JobConfigError, match="SOCIAL_ENRICH_WAREHOUSE is not set"):
        load_job_config(GLUE_JOB)  # where new tables go has no default
    monkeypatch.setenv("SOCIAL_ENRICH_WAREHOUSE", f"s3://{BUCKET}/warehouse")

    # The unset optional variables leave nothing behind: boto3 and pyarrow use AWS's endpoints and the role.
    assert catalog_properties(load_job_config(GLUE_JOB).connector) == {
        "type": "glue",
        "client.region": REGION,
        "warehouse": f"s3://{BUCKET}/warehouse",
    }


def test_a_partition_runs_end_to_end_on_glue_and_s3(glue_env, s3, glue, instance, state_home, monkeypatch):
    job = load_job_config(GLUE_JOB)
    catalog = open_catalog(job.connector)
    day = demo.seed_gold_tables(catalog, posts=200, days=2, start=SAMPLE_START).days[0]
    expected = touched_posts(catalog, job, day)
    assert expected

    # The production path: the deploy folder's sentiment job replaces the built-in one.
    monkeypatch.setenv("SOCIAL_ENRICH_JOBS_DIR", str(GLUE_JOB.parent))
    defs = build_definitions()
    asset = defs.resolve_asset_graph().get(dg.AssetKey("social_media_sentiment"))
    assert asset.metadata["job_config"] == str(GLUE_JOB)
    meta = materialization_metadata(materialize_day(instance, day.isoformat(), defs=defs))

    target = job.connector.target
    table = catalog.load_table(target.identifier)
    rows = table.scan().to_arrow()
    assert sorted(rows[target.index_field].to_pylist()) == expected  # one row per post touched that day
    assert set(rows["partition_date"].to_pylist()) == {day}
    assert meta["dagster/row_count"] == rows.num_rows

    # Glue holds the table as an Iceberg table whose metadata lives in the S3 warehouse.
    params = glue.get_table(DatabaseName=target.database, Name=target.table)["Table"]["Parameters"]
    assert params["table_type"] == "ICEBERG"
    assert params["metadata_location"] == table.metadata_location
    assert table.metadata_location.startswith(f"{glue_env}/{target.database}.db/{target.table}/metadata/")
    files = set(table.inspect.files()["file_path"].to_pylist())
    assert files and files <= bucket_objects(s3)
    assert not (state_home / "catalog.db").exists()  # the embedded SQLite catalog was never used

    # Re-materializing the unchanged day: same posts once each, and nothing committed (no new files or snapshot).
    snapshot = table.current_snapshot().snapshot_id
    materialize_day(instance, day.isoformat(), defs=defs)
    table = catalog.load_table(target.identifier)
    assert sorted(table.scan().to_arrow()[target.index_field].to_pylist()) == expected
    assert table.current_snapshot().snapshot_id == snapshot
    assert set(table.inspect.files()["file_path"].to_pylist()) == files <= bucket_objects(s3)
    params = glue.get_table(DatabaseName=target.database, Name=target.table)["Table"]["Parameters"]
    assert params["metadata_location"] == table.metadata_location


def test_a_missing_warehouse_bucket_fails_the_run_naming_the_bucket_and_no_secret(glue_env, instance, monkeypatch, tmp_path):
    catalog = open_catalog(load_job_config(GLUE_JOB).connector)
    day = demo.seed_gold_tables(catalog, posts=50, days=1, start=SAMPLE_START).days[0]
    # The gold tables are readable, but the target table would be created in a bucket that does not exist.
    monkeypatch.setenv("SOCIAL_ENRICH_WAREHOUSE", "s3://no-such-bucket/warehouse")
    jobs = glue_job_folder(tmp_path, {"s3.access-key-id": "testing", "s3.secret-access-key": FAKE_SECRET})
    monkeypatch.setenv("SOCIAL_ENRICH_JOBS_DIR", str(jobs))

    result = materialize_day(instance, day.isoformat(), defs=build_definitions(), raise_on_error=False)

    assert not result.success
    error = result.failure_data_for_node("social_media_sentiment").error
    assert "no-such-bucket" in error.to_string() and "does not exist" in error.to_string()
    run_log = "\n".join(str(record) for record in instance.all_logs(result.run_id))
    assert "no-such-bucket" in run_log and FAKE_SECRET not in run_log


def test_an_unreachable_glue_endpoint_gives_a_clear_error_naming_the_catalog_and_no_secret(glue_env, monkeypatch, tmp_path):
    port = closed_port()
    monkeypatch.setenv("SOCIAL_ENRICH_GLUE_ENDPOINT", f"http://127.0.0.1:{port}")
    # One attempt: botocore's default 10, with backoff, would take about 25 s to give up.
    monkeypatch.setenv("SOCIAL_ENRICH_GLUE_MAX_RETRIES", "1")
    jobs = glue_job_folder(tmp_path, {"glue.access-key-id": "testing", "glue.secret-access-key": FAKE_SECRET})
    job = load_job_config(jobs / GLUE_JOB.name)

    with pytest.raises(CatalogUnavailableError) as raised:
        open_catalog(job.connector)

    message = str(raised.value)
    assert f"glue catalog at {glue_env}" in message
    assert f"Could not connect to the endpoint URL: \"http://127.0.0.1:{port}/\"" in message
    assert FAKE_SECRET not in message


# --- REST -------------------------------------------------------------------------------------------

class RestCatalogStandIn:
    """Loopback HTTP server answering what a REST catalog client asks first: an OAuth2 token,
    GET /v1/config and GET /v1/namespaces. ``refuse`` makes the token endpoint answer 401 (echoing the
    client secret it got, as a careless server might) or /v1/config answer 500."""

    TOKEN = "issued-token-8c1f"

    def __init__(self, refuse: str | None = None) -> None:
        self.refuse = refuse
        self.requests: list[dict[str, Any]] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                stand_in._record(self, b"")
                path = urlsplit(self.path).path
                if path == "/v1/config":
                    if stand_in.refuse == "config":
                        self._answer(500, {"error": {"message": "catalog is down", "type": "ServerError", "code": 500}})
                    else:
                        self._answer(200, {"defaults": {}, "overrides": {}})
                elif path == "/v1/namespaces":
                    self._answer(200, {"namespaces": [["gold"], ["enriched"]]})
                else:
                    self._answer(404, {"error": {"message": "no such route", "type": "NotFound", "code": 404}})

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                form = stand_in._record(self, body)["form"]
                if stand_in.refuse == "token":
                    self._answer(401, {"error": "invalid_client", "error_description": f"bad secret {form['client_secret']}"})
                else:
                    self._answer(200, {"access_token": stand_in.TOKEN, "token_type": "bearer", "expires_in": 3600})

            def _answer(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:  # keep pytest's output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def _record(self, handler: BaseHTTPRequestHandler, body: bytes) -> dict[str, Any]:
        parts = urlsplit(handler.path)
        request = {
            "method": handler.command,
            "path": parts.path,
            "query": {k: v[0] for k, v in parse_qs(parts.query).items()},
            "authorization": handler.headers.get("Authorization"),
            "form": {k: v[0] for k, v in parse_qs(body.decode()).items()},
        }
        self.requests.append(request)
        return request

    def __enter__(self) -> RestCatalogStandIn:
        # A short poll interval: shutdown() waits for it.
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def rest_env(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], dict[str, str]]:
    """Point the REST job at a catalog: call the returned function with the catalog's base URI."""

    def point_at(uri: str) -> dict[str, str]:
        env = {
            "SOCIAL_ENRICH_REST_URI": uri,
            "SOCIAL_ENRICH_WAREHOUSE": "analytics",
            "SOCIAL_ENRICH_REST_CREDENTIAL": f"social-enrich:{FAKE_SECRET}",
            "SOCIAL_ENRICH_REST_OAUTH2_SERVER_URI": f"{uri}/oauth/tokens",
        }
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return env

    return point_at


def test_the_rest_job_reaches_a_rest_catalog_from_the_environment_alone(rest_env):
    with RestCatalogStandIn() as server:
        env = rest_env(server.url)
        job = load_job_config(REST_JOB)
        # Exactly what load_catalog gets: the variables that are set; the empty optional ones are dropped.
        assert catalog_properties(job.connector) == {
            "type": "rest",
            "uri": env["SOCIAL_ENRICH_REST_URI"],
            "credential": env["SOCIAL_ENRICH_REST_CREDENTIAL"],
            "oauth2-server-uri": env["SOCIAL_ENRICH_REST_OAUTH2_SERVER_URI"],
            "warehouse": env["SOCIAL_ENRICH_WAREHOUSE"],
        }

        catalog = open_catalog(job.connector)

        assert isinstance(catalog, RestCatalog)
        assert catalog.list_namespaces() == [("gold",), ("enriched",)]
    token_request = server.requests[0]
    client_id, client_secret = env["SOCIAL_ENRICH_REST_CREDENTIAL"].split(":")
    assert token_request["path"] == "/oauth/tokens"
    assert token_request["form"]["grant_type"] == "client_credentials"
    assert (token_request["form"]["client_id"], token_request["form"]["client_secret"]) == (client_id, client_secret)
    (config_request,) = [r for r in server.requests if r["path"] == "/v1/config"]
    assert config_request["query"] == {"warehouse": env["SOCIAL_ENRICH_WAREHOUSE"]}
    assert config_request["authorization"] == f"Bearer {server.TOKEN}"
    assert all(r["authorization"] == f"Bearer {server.TOKEN}" for r in server.requests if r["path"] == "/v1/namespaces")


@pytest.mark.parametrize("refuse", ["token", "config", "nothing listening"])
def test_a_rest_catalog_that_refuses_gives_a_clear_error_naming_it_and_no_credential(rest_env, refuse):
    with RestCatalogStandIn(refuse=refuse) as server:
        uri = f"http://127.0.0.1:{closed_port()}" if refuse == "nothing listening" else server.url
        env = rest_env(uri)
        job = load_job_config(REST_JOB)

        with pytest.raises(CatalogUnavailableError) as raised:
            open_catalog(job.connector)

    message = str(raised.value)
    assert f"rest catalog at {uri}" in message
    assert {"token": "invalid_client", "config": "catalog is down", "nothing listening": "Connection refused"}[refuse] in message
    assert FAKE_SECRET not in message and env["SOCIAL_ENRICH_REST_CREDENTIAL"] not in message
