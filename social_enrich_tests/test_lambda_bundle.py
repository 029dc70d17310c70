"""The Lambda bundle: built as deploy/lambda/build_bundle.py builds it, it fits Lambda and runs on its own."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from social_enrich import demo
from social_enrich.config import discover_job_configs
from social_enrich.lakehouse.catalog import environment_catalog
from social_enrich_tests.conftest import SAMPLE_START
from social_enrich_tests.lambda_deployment import api_event
from social_enrich_tests.moto_aws import REGION, aws_env, moto_url  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "deploy" / "lambda"))
from build_bundle import LAMBDA_UNZIPPED_LIMIT, build, folder_bytes  # noqa: E402

# Lambda's context object, written out here: the bundle carries no social_enrich.devtools.
CALL_HANDLER = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from social_enrich.lambda_handler import handler
class Context:
    function_name, aws_request_id, deadline = "bundle-test", "bundle-test-request", time.monotonic() + 300
    def get_remaining_time_in_millis(self):
        return max(0, int((self.deadline - time.monotonic()) * 1000))
answer = handler(json.loads(sys.argv[2]), Context())
print(json.dumps({"answer": answer, "dagster": sorted(m for m in sys.modules if m.split(".")[0] == "dagster")}))
"""


def requirement_names(lines: list[str]) -> dict[str, str]:
    """name -> specifier (extras dropped), for requirement lines."""
    found = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if line:
            name, spec = re.match(r"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?(.*)", line).groups()
            found[name.lower()] = spec.strip()
    return found


def test_the_lambda_requirements_follow_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = requirement_names(project)
    needed = requirement_names((ROOT / "deploy" / "lambda" / "requirements.txt").read_text().splitlines())
    assert "dagster" not in needed and "dagster-aws" not in needed  # hundreds of MB the function never imports
    assert needed.pop("dagster-pipes") == pinned["dagster"]  # the Pipes protocol of the same release
    assert {name: pinned[name] for name in needed} == needed


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if platform.machine() != "x86_64" or not sys.platform.startswith("linux"):
        pytest.skip("the bundle holds Lambda's linux x86_64 wheels, which only load on such a machine")
    folder = tmp_path_factory.mktemp("bundle") / "lambda"
    build(folder)
    yield folder


def test_the_bundle_fits_lambda_and_holds_no_dagster(bundle: Path):
    assert folder_bytes(bundle) < LAMBDA_UNZIPPED_LIMIT
    assert (bundle / "social_enrich" / "lambda_handler.py").is_file()
    assert (bundle / "social_enrich" / "defs" / "sentiment" / "defs.yaml").is_file()  # the built-in job; the catalog is the environment's
    assert (bundle / "dagster_pipes").is_dir() and not (bundle / "dagster").exists()


def test_the_bundle_carries_no_development_tools(bundle: Path):
    """The Azure OpenAI emulator (a test double) and the local Lambda runner stay out of the function."""
    files = [p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()]
    assert "social_enrich/lambda_handler.py" in files
    assert [f for f in files if f.startswith("social_enrich/devtools/")] == []
    assert not [f for f in files if "azure_openai_emulator" in f]


def test_the_bundle_alone_serves_a_request_on_glue_and_s3(bundle: Path, state_home: Path, moto_url: str, monkeypatch):  # noqa: F811
    """A fresh interpreter that sees only the standard library and the bundle (-I -S), as on Lambda,
    with the built-in job on a Glue catalog (the environment's) against moto's Glue and S3."""
    boto3.client("s3").create_bucket(Bucket="bundle-lake")
    glue = {"type": "glue", "client.region": REGION, "glue.endpoint": moto_url, "s3.endpoint": moto_url}
    env = {"SOCIAL_ENRICH_HOME": str(state_home), "HOME": str(state_home), "SOCIAL_ENRICH_CATALOG": json.dumps(glue),
           "SOCIAL_ENRICH_WAREHOUSE": "s3://bundle-lake/warehouse", "AWS_REGION": REGION}
    env |= {name: os.environ[name] for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_CONFIG_FILE",
                                                "AWS_SHARED_CREDENTIALS_FILE", "AWS_EC2_METADATA_DISABLED")}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    (job,) = discover_job_configs()
    seeded = demo.seed_gold_tables(environment_catalog(), posts=200, days=2, start=SAMPLE_START)
    event = api_event("sentiment", {"date": SAMPLE_START.isoformat()})

    done = subprocess.run([sys.executable, "-I", "-S", "-c", CALL_HANDLER, str(bundle), json.dumps(event)],
                          capture_output=True, text=True, timeout=120, env=env)

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    body = json.loads(result["answer"]["body"])
    assert result["answer"]["statusCode"] == 200, body
    assert 0 < body["posts_touched"] <= seeded.posts and body["model"].startswith("vader-")
    assert body["dagster/partition_row_count"] == body["posts_touched"]
    assert boto3.client("glue").get_table(DatabaseName="enriched", Name="social_media_sentiment")["Table"]["Parameters"]["table_type"] == "ICEBERG"
    assert result["dagster"] == []
