"""deploy/dagster.yaml, workspace.yaml, deploy/workspace.yaml and dagster_cloud.yaml: valid, and consistent.

The instance file is validated by Dagster's own instance loader and each configurable class's own
schema, with the environment variables it names set to stand-in values; no Postgres exists here, so
nothing connects. The workspace files are loaded by the `dagster` CLI for real.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from dagster._config import process_config, resolve_to_config_type
from dagster._core.code_pointer import ModuleCodePointer
from dagster._core.instance.config import PoolGranularity, dagster_instance_config
from dagster._core.instance.ref import InstanceRef
from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
from dagster._grpc.types import ExecuteRunArgs
from dagster._serdes.config_class import ConfigurableClassData
from dagster_aws.ecs.container_context import EcsContainerContext
from dockerfile_parse import DockerfileParser

from social_enrich.config import load_job_config
from social_enrich.definitions import build_definitions
from social_enrich.environment import BUILTIN_JOBS_DIR

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
LOCATION, MODULE = "social_enrich", "social_enrich.definitions"
DAGSTER = str(Path(sys.executable).parent / "dagster")

# Stand-ins for every variable deploy/dagster.yaml reads; a test fails if the file names one more.
INSTANCE_ENV = {
    "DAGSTER_PG_HOST": "db.example.internal",
    "DAGSTER_PG_DB": "dagster",
    "DAGSTER_PG_USERNAME": "dagster",
    "DAGSTER_PG_PASSWORD": "not-a-real-password",
    "DAGSTER_ECS_TASK_DEFINITION": "social-enrich-run",
    "DAGSTER_COMPUTE_LOG_BUCKET": "social-enrich-dagster-logs",
}


def env_vars_named(node: Any) -> set[str]:
    """Every `{env: NAME}` in a YAML document."""
    if isinstance(node, dict):
        found = {node["env"]} if set(node) == {"env"} else set()
        return found.union(*(env_vars_named(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(env_vars_named(v) for v in node))
    return set()


def deploy_config() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "dagster.yaml").read_text())


@pytest.fixture
def deploy_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A DAGSTER_HOME holding deploy/dagster.yaml, with its environment variables set."""
    for name, value in INSTANCE_ENV.items():
        monkeypatch.setenv(name, value)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(DEPLOY / "dagster.yaml", home / "dagster.yaml")
    return home


def test_dagster_yaml_names_only_the_documented_variables():
    assert env_vars_named(deploy_config()) == set(INSTANCE_ENV)


def test_dagster_yaml_passes_dagsters_instance_validation(deploy_home):
    config, custom_class = dagster_instance_config(str(deploy_home))
    assert custom_class is None
    assert set(config["storage"]) == {"postgres"}
    assert config["run_launcher"]["class"] == "EcsRunLauncher"


def rehydration_check(data: ConfigurableClassData) -> dict[str, Any]:
    """What ConfigurableClassData.rehydrate does, minus constructing the class (which would connect)."""
    klass = getattr(importlib.import_module(data.module_name), data.class_name)
    result = process_config(resolve_to_config_type(klass.config_type()), data.config_dict)
    assert result.success, f"{data.module_name}.{data.class_name}: {[e.message for e in result.errors]}"
    return result.value


def test_each_configured_class_accepts_its_section(deploy_home):
    ref = InstanceRef.from_dir(str(deploy_home))

    storage = rehydration_check(ref.storage_data)
    assert (ref.storage_data.module_name, ref.storage_data.class_name) == ("dagster_postgres", "DagsterPostgresStorage")
    # Run, event-log and schedule storage are all that one Postgres database.
    assert {d.class_name for d in (ref.run_storage_data, ref.event_storage_data, ref.schedule_storage_data)} == {
        "PostgresRunStorage", "PostgresEventLogStorage", "PostgresScheduleStorage"}
    for data in (ref.run_storage_data, ref.event_storage_data, ref.schedule_storage_data):
        rehydration_check(data)
    db = storage["postgres_db"]
    assert (db["hostname"], db["db_name"], db["username"], db["password"]) == (
        "db.example.internal", "dagster", "dagster", "not-a-real-password")  # resolved from the environment
    assert db["params"] == {"sslmode": "require"}

    launcher = rehydration_check(ref.run_launcher_data)
    assert (ref.run_launcher_data.module_name, ref.run_launcher_data.class_name) == ("dagster_aws.ecs", "EcsRunLauncher")
    assert launcher["task_definition"] == {"env": "DAGSTER_ECS_TASK_DEFINITION"}  # read by the launcher itself
    assert launcher["container_name"] == "run"
    assert launcher["secrets_tag"] is None
    assert launcher["run_resources"] == {"cpu": "1024", "memory": "2048"}

    logs = rehydration_check(ref.compute_logs_data)
    assert logs["bucket"] == "social-enrich-dagster-logs"

    assert ref.run_coordinator_data.class_name == "QueuedRunCoordinator"
    rehydration_check(ref.run_coordinator_data)


def test_the_run_task_definition_has_the_container_the_launcher_overrides():
    """deploy/ecs/run-task-definition.json and deploy/dagster.yaml agree (the launcher refuses a mismatch)."""
    definition = json.loads((DEPLOY / "ecs" / "run-task-definition.json").read_text())
    launcher = deploy_config()["run_launcher"]["config"]
    (container,) = definition["containerDefinitions"]
    assert container["name"] == launcher["container_name"]
    assert definition["family"] == {e["name"]: e["value"] for e in container["environment"]}["DAGSTER_ECS_TASK_DEFINITION"]
    # Every variable the instance reads is given to the run's container, the password as a secret.
    given = {e["name"] for e in container["environment"]} | {s["name"] for s in container["secrets"]}
    assert set(INSTANCE_ENV) <= given
    assert "DAGSTER_PG_PASSWORD" not in {e["name"] for e in container["environment"]}
    # The default run size is a valid Fargate size and matches the task definition's own.
    assert (definition["cpu"], definition["memory"]) == (launcher["run_resources"]["cpu"], launcher["run_resources"]["memory"])


def test_concurrency_lets_one_run_use_the_model_deployment_at_a_time(tmp_path):
    pool = load_job_config(BUILTIN_JOBS_DIR / "sentiment" / "defs.yaml").automation.pool
    assert pool == "azure_openai"
    # The enrichment asset really runs in that pool, and no asset uses another pool (which
    # default_limit: 1 would silently serialize too).
    defs = build_definitions()
    pools = {a.op.pool for a in defs.resolve_asset_graph().assets_defs if a.is_executable and a.op.pool}
    assert pools == {pool}
    assert defs.resolve_assets_def("social_media_sentiment").op.pool == pool

    # Read back the way Dagster reads it, from an instance with these sections (SQLite underneath).
    sections = {k: v for k, v in deploy_config().items() if k in ("run_queue", "concurrency", "run_monitoring", "run_retries")}
    with dg.instance_for_test(overrides=sections, temp_dir=str(tmp_path)) as instance:
        assert instance.global_op_concurrency_default_limit == 1
        concurrency = instance.get_concurrency_config()
        assert concurrency.pool_config.pool_granularity == PoolGranularity.RUN
        assert concurrency.run_queue_config.max_concurrent_runs == 10
        assert concurrency.run_queue_config.should_block_op_concurrency_limited_runs
        # A pool gets the default limit when Dagster first meets it: azure_openai gets 1.
        instance.event_log_storage.initialize_concurrency_limit_to_default(pool)
        assert instance.event_log_storage.get_concurrency_info(pool).slot_count == 1

        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_start_timeout_seconds == 300
        assert instance.run_monitoring_max_runtime_seconds == 21600
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
        assert not instance.run_retries_retry_on_asset_or_op_failure


def test_the_run_command_fits_in_ecs_overrides(deploy_home):
    """ECS rejects RunTask overrides above 8192 characters, and the command carries the whole instance
    config (the production one here, with Postgres, S3 logs and the launcher)."""
    job_origin = JobPythonOrigin(
        job_name="__ASSET_JOB",
        repository_origin=RepositoryPythonOrigin(
            executable_path="/opt/venv/bin/python",
            code_pointer=ModuleCodePointer(MODULE, "defs", working_directory="/opt/dagster/dagster_home"),
            entry_point=["dagster"],
        ),
    )
    args = ExecuteRunArgs(job_origin=job_origin, run_id=str(uuid.uuid4()), instance_ref=InstanceRef.from_dir(str(deploy_home)))
    overrides = {"containerOverrides": [{"name": "run", "command": args.get_command_args(), "cpu": 16384, "memory": 122880}],
                 "cpu": "16384", "memory": "122880"}
    size = len(json.dumps(overrides))
    assert size < 8192 * 0.8, f"RunTask overrides are {size} characters; ECS allows 8192"
    assert INSTANCE_ENV["DAGSTER_PG_PASSWORD"] not in json.dumps(overrides)  # names of variables travel, not values


# --- workspaces ---------------------------------------------------------------------------------

def run_dagster(args: list[str], tmp_path: Path, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    (tmp_path / "dagster.yaml").touch()  # a default local instance, stated
    env = {**os.environ, "SOCIAL_ENRICH_HOME": str(tmp_path / "state"), "DAGSTER_HOME": str(tmp_path), **(extra_env or {})}
    return subprocess.run([DAGSTER, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)


def test_workspace_yaml_loads_the_code_location(tmp_path):
    (entry,) = yaml.safe_load((REPO / "workspace.yaml").read_text())["load_from"]
    assert entry == {"python_module": {"module_name": MODULE, "location_name": LOCATION}}
    done = run_dagster(["definitions", "validate", "-w", "workspace.yaml"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Validation successful for code location {LOCATION}" in done.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def code_server(tmp_path: Path) -> Iterator[int]:
    """The image's default command (the Dockerfile's CMD) serving on loopback, on a free port."""
    parser = DockerfileParser(path=str(REPO / "Dockerfile"))
    (cmd_instruction,) = [i for i in parser.structure if i["instruction"] == "CMD"]
    command = json.loads(cmd_instruction["value"])
    port = free_port()
    command[command.index("-h") + 1] = "127.0.0.1"
    command[command.index("-p") + 1] = str(port)
    command[0] = DAGSTER
    env = {**os.environ, "SOCIAL_ENRICH_HOME": str(tmp_path / "state"), "DAGSTER_HOME": str(tmp_path)}
    server = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert server.poll() is None, "the code server exited"
            done = subprocess.run([DAGSTER, "api", "grpc-health-check", "-p", str(port)], capture_output=True, timeout=30, check=False)
            if done.returncode == 0:
                break
            time.sleep(0.5)
        else:
            pytest.fail("the code server did not answer within 60 s")
        yield port
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)


def test_deploy_workspace_reaches_the_images_code_server(code_server, tmp_path):
    """deploy/workspace.yaml, as the webserver and daemon read it, against the server the image runs."""
    workspace = yaml.safe_load((DEPLOY / "workspace.yaml").read_text())
    (entry,) = workspace["load_from"]
    grpc = entry["grpc_server"]
    assert grpc["location_name"] == LOCATION
    assert grpc["host"] == {"env": "SOCIAL_ENRICH_CODE_SERVER_HOST"}
    # Same file with the test's free port instead of 4000 (test_deploy_image checks 4000 is the image's port).
    grpc["port"] = code_server
    local = tmp_path / "workspace.yaml"
    local.write_text(yaml.safe_dump(workspace))
    done = run_dagster(["definitions", "validate", "-w", str(local)], tmp_path, {"SOCIAL_ENRICH_CODE_SERVER_HOST": "127.0.0.1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Validation successful for code location {LOCATION}" in done.stdout


# --- Dagster+ -----------------------------------------------------------------------------------

CLOUD_LOCATION_KEYS = {"location_name", "code_source", "build", "working_directory", "image", "executable_path",
                       "attribute", "container_context", "agent_queue"}


def test_dagster_cloud_yaml_matches_the_code_location():
    """dagster-cloud is not installed: check what its loader would need, and the ECS part with dagster_aws's schema."""
    (location,) = yaml.safe_load((REPO / "dagster_cloud.yaml").read_text())["locations"]
    assert set(location) <= CLOUD_LOCATION_KEYS
    assert location["location_name"] == LOCATION
    assert location["code_source"] == {"module_name": MODULE}
    assert importlib.util.find_spec(location["code_source"]["module_name"]) is not None
    assert ((REPO / location["build"]["directory"]) / "Dockerfile").is_file()

    context = EcsContainerContext.create_from_config(location["container_context"])  # raises on a schema error
    env = dict(v.split("=", 1) if "=" in v else (v, None) for v in context.env_vars)
    assert env["OPENAI_SECRET_NAME"]  # the runs fetch the model key from Secrets Manager
    assert context.run_resources == deploy_config()["run_launcher"]["config"]["run_resources"]
