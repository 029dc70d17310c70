"""Cloud catalogs by the environment alone ($SOCIAL_ENRICH_CATALOG), with the built-in job unchanged: Glue
against moto's Glue and S3 on loopback, and REST against a loopback stand-in for the first endpoints a
REST catalog client calls."""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import dagster as dg
import pytest
from pyiceberg.catalog import Catalog
from pyiceberg.catalog.rest import RestCatalog

from social_enrich import demo
from social_enrich.config import JobConfig, load_job_config
from social_enrich.definitions import build_definitions
from social_enrich.environment import BUILTIN_JOBS_DIR, catalog_choice
from social_enrich.lakehouse.catalog import CatalogUnavailableError, environment_catalog
from social_enrich_tests.gold_tables import latest_touch_days
from social_enrich_tests.conftest import SAMPLE_START
from social_enrich_tests.dagster_helpers import materialization_metadata, materialize_day
from social_enrich_tests.moto_aws import REGION, aws_env, moto_url  # noqa: F401

JOB = BUILTIN_JOBS_DIR / "sentiment" / "defs.yaml"
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


def use_catalog(monkeypatch: pytest.MonkeyPatch, **properties: Any) -> None:
    monkeypatch.setenv("SOCIAL_ENRICH_CATALOG", json.dumps(properties))


@pytest.fixture
def glue_env(moto_url: str, s3, monkeypatch: pytest.MonkeyPatch) -> Callable[..., str]:  # noqa: F811
    """Point the environment's catalog at moto's Glue (call with extra properties); returns the
    warehouse (in a bucket that exists)."""
    s3.create_bucket(Bucket=BUCKET)
    warehouse = f"s3://{BUCKET}/warehouse"
    monkeypatch.setenv("SOCIAL_ENRICH_WAREHOUSE", warehouse)
    # From here only the catalog's own properties lead to moto: boto3 and pyarrow would otherwise go to AWS.
    monkeypatch.delenv("AWS_ENDPOINT_URL")

    def point_at(**extra: Any) -> str:
        # A region, or pyarrow would ask AWS where the bucket is.
        use_catalog(monkeypatch, **{"type": "glue", "client.region": REGION, "glue.endpoint": moto_url, "s3.endpoint": moto_url, **extra})
        return warehouse

    return point_at


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


def test_a_partition_runs_end_to_end_on_glue_and_s3(glue_env, s3, glue, instance, state_home, monkeypatch):
    warehouse = glue_env()
    job = load_job_config(JOB)
    catalog = environment_catalog()
    day = demo.seed_gold_tables(catalog, posts=200, days=2, start=SAMPLE_START).days[0]
    expected = touched_posts(catalog, job, day)
    assert expected

    # The built-in job, unchanged: the environment's catalog resource is Glue.
    defs = build_definitions()
    assert defs.resources["catalog"].properties["type"] == "glue"
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
    assert table.metadata_location.startswith(f"{warehouse}/{target.database}.db/{target.table}/metadata/")
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
    glue_env()
    day = demo.seed_gold_tables(environment_catalog(), posts=50, days=1, start=SAMPLE_START).days[0]
    # The gold tables are readable, but the target table would be created in a bucket that does not exist.
    monkeypatch.setenv("SOCIAL_ENRICH_WAREHOUSE", "s3://no-such-bucket/warehouse")
    monkeypatch.setenv("S3_SECRET", FAKE_SECRET)
    glue_env(**{"s3.access-key-id": "testing", "s3.secret-access-key": {"env": "S3_SECRET"}})

    result = materialize_day(instance, day.isoformat(), defs=build_definitions(), raise_on_error=False)

    assert not result.success
    error = result.failure_data_for_node("social_media_sentiment").error
    assert "no-such-bucket" in error.to_string() and "does not exist" in error.to_string()
    run_log = "\n".join(str(record) for record in instance.all_logs(result.run_id))
    assert "no-such-bucket" in run_log and FAKE_SECRET not in run_log


def test_an_unreachable_glue_endpoint_gives_a_clear_error_naming_the_catalog_and_no_secret(glue_env, monkeypatch, tmp_path):
    port = closed_port()
    # One attempt: botocore's default 10, with backoff, would take about 25 s to give up.
    warehouse = glue_env(**{"glue.endpoint": f"http://127.0.0.1:{port}", "glue.max-retries": "1",
                            "glue.access-key-id": "testing", "glue.secret-access-key": FAKE_SECRET})

    with pytest.raises(CatalogUnavailableError) as raised:
        environment_catalog()

    message = str(raised.value)
    assert f"glue catalog at {warehouse}" in message
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
    """Point the environment's catalog at a REST catalog: call the returned function with its base URI.
    The client secret is read from its own variable, never written in $SOCIAL_ENRICH_CATALOG."""

    def point_at(uri: str) -> dict[str, str]:
        env = {"REST_CREDENTIAL": f"social-enrich:{FAKE_SECRET}", "SOCIAL_ENRICH_WAREHOUSE": "analytics"}
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        use_catalog(monkeypatch, type="rest", uri=uri, credential={"env": "REST_CREDENTIAL"}, **{"oauth2-server-uri": f"{uri}/oauth/tokens"})
        return env

    return point_at


def test_a_rest_catalog_is_reached_from_the_environment_alone(rest_env):
    with RestCatalogStandIn() as server:
        env = rest_env(server.url)
        assert catalog_choice() == {
            "type": "rest", "uri": server.url, "credential": {"env": "REST_CREDENTIAL"},
            "oauth2-server-uri": f"{server.url}/oauth/tokens", "warehouse": "analytics",
        }
        # In Dagster the secret is an EnvVar of the catalog resource: read at run time, shown nowhere.
        resource = build_definitions().resources["catalog"]
        assert resource.properties["credential"] == dg.EnvVar("REST_CREDENTIAL") and FAKE_SECRET not in repr(resource)

        catalog = environment_catalog()

        assert isinstance(catalog, RestCatalog)
        assert catalog.list_namespaces() == [("gold",), ("enriched",)]
    token_request = server.requests[0]
    client_id, client_secret = env["REST_CREDENTIAL"].split(":")
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

        with pytest.raises(CatalogUnavailableError) as raised:
            environment_catalog()

    message = str(raised.value)
    assert f"rest catalog at {uri}" in message
    assert {"token": "invalid_client", "config": "catalog is down", "nothing listening": "Connection refused"}[refuse] in message
    assert FAKE_SECRET not in message and env["REST_CREDENTIAL"] not in message
