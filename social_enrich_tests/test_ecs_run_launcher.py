"""The EcsRunLauncher of deploy/dagster.yaml launches runs of the enrichment asset as ECS tasks.

Real parts: moto's ECS and Secrets Manager in server mode on loopback, a real Dagster instance with
the launcher built from deploy/dagster.yaml's own config, and the real code location loaded from
``social_enrich.definitions``. Nothing executes inside the "task": moto records RunTask and its
overrides, which is what the launcher is responsible for.
"""

from __future__ import annotations

import json
import os
import string
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
import pytest
import yaml
from dagster._core.definitions.selector import JobSubsetSelector
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.storage.dagster_run import DagsterRunStatus
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceProcessContext, WorkspaceRequestContext
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon
from dagster._grpc.types import ExecuteRunArgs
from dagster._serdes import deserialize_value

from social_enrich_tests.moto_aws import REGION, aws_env, moto_url  # noqa: F401 (fixtures)

REPO = Path(__file__).resolve().parents[1]
ASSET = dg.AssetKey("social_media_sentiment")
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/social-enrich:test"
CLUSTER = "social-enrich"
DAY = "2026-11-02"


def deploy_instance_config() -> dict[str, Any]:
    return yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text())


def render_task_definition(values: dict[str, str]) -> dict[str, Any]:
    """deploy/ecs/run-task-definition.json with its ${...} placeholders filled (as envsubst would)."""
    text = (REPO / "deploy" / "ecs" / "run-task-definition.json").read_text()
    return json.loads(string.Template(text).substitute(values))


@pytest.fixture
def ecs() -> Any:
    return boto3.client("ecs", region_name=REGION)


@pytest.fixture
def registered(ecs, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The cluster, the two secrets and the run task definition, as deploy/README.md sets them up."""
    # The moto server is shared by the module: start each test from an empty account.
    moto = os.environ["AWS_ENDPOINT_URL"]  # set by aws_env to this module's moto server
    urllib.request.urlopen(urllib.request.Request(f"{moto}/moto-api/reset", method="POST"), timeout=10).close()
    secrets = boto3.client("secretsmanager", region_name=REGION)
    openai_arn = secrets.create_secret(
        Name="social-enrich/azure-openai",
        SecretString=json.dumps({"OPENAI_API_KEY": "k-test", "OPENAI_API_BASE": "https://example.openai.azure.com"}),
    )["ARN"]
    pg_arn = secrets.create_secret(Name="social-enrich/postgres", SecretString=json.dumps({"username": "dagster", "password": "p"}))["ARN"]
    state_arn = secrets.create_secret(Name="social-enrich/state-url", SecretString="postgresql://social_enrich:p@db.internal:5432/social_enrich")["ARN"]
    ecs.create_cluster(clusterName=CLUSTER)
    definition = render_task_definition({
        "ECS_EXECUTION_ROLE_ARN": "arn:aws:iam::123456789012:role/social-enrich-execution",
        "ECS_TASK_ROLE_ARN": "arn:aws:iam::123456789012:role/social-enrich-run",
        "IMAGE": IMAGE, "DAGSTER_PG_HOST": "db.internal", "DAGSTER_COMPUTE_LOG_BUCKET": "logs-bucket",
        "SOCIAL_ENRICH_WAREHOUSE": "s3://warehouse/w", "AZURE_OPENAI_DEPLOYMENT": "gpt-4o-mini",
        "AZURE_OPENAI_RPM": "3000", "AZURE_OPENAI_TPM": "500000", "OPENAI_SECRET_ARN": openai_arn,
        "DAGSTER_PG_SECRET_ARN": pg_arn, "AWS_REGION": REGION, "STATE_URL_SECRET_ARN": state_arn,
    })
    # moto sums container-level memory to place any task, Fargate included; AWS needs none for Fargate
    # (the task-level 2048 applies), so the production file leaves it out.
    definition["containerDefinitions"][0]["memoryReservation"] = 512
    # botocore validates the request against the ECS API model: the example file must be a valid request.
    arn = ecs.register_task_definition(**definition)["taskDefinition"]["taskDefinitionArn"]
    # As in production: dagster.yaml names the family through this variable.
    monkeypatch.setenv("DAGSTER_ECS_TASK_DEFINITION", definition["family"])
    # awsvpc tasks get a network interface in a subnet: moto's default VPC has them.
    ec2 = boto3.client("ec2", region_name=REGION)
    subnet = ec2.describe_subnets()["Subnets"][0]["SubnetId"]
    group = ec2.describe_security_groups(GroupNames=["default"])["SecurityGroups"][0]["GroupId"]
    return {"task_definition_arn": arn, "openai_secret_arn": openai_arn, "subnet": subnet, "security_group": group}


def launcher_overrides(network: dict[str, str], **extra_launcher_config: Any) -> dict[str, Any]:
    """deploy/dagster.yaml minus what needs real infrastructure (Postgres, S3 logs, an ECS task around the daemon).

    The launcher keeps its production config; only ``use_current_ecs_task_config`` is off, since this
    process is not an ECS task, and the cluster/network that the daemon's task would provide are given
    instead, as a daemon outside ECS would need them.
    """
    config = deploy_instance_config()
    launcher = config["run_launcher"]
    launcher["config"] = {
        **launcher["config"],
        "use_current_ecs_task_config": False,
        "run_task_kwargs": {
            "cluster": CLUSTER,
            "launchType": "FARGATE",
            "networkConfiguration": {"awsvpcConfiguration": {
                "subnets": [network["subnet"]], "securityGroups": [network["security_group"]], "assignPublicIp": "DISABLED",
            }},
        },
        **extra_launcher_config,
    }
    return {key: config[key] for key in ("run_launcher", "run_queue", "concurrency", "run_monitoring", "run_retries")}


@pytest.fixture
def instance(registered) -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test(overrides=launcher_overrides(registered)) as instance:
        yield instance


def code_location(instance: dg.DagsterInstance) -> WorkspaceProcessContext:
    """The real code location, loaded in process, with the image the code server would report."""
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(executable_path=sys.executable, module_name="social_enrich.definitions", working_directory=str(REPO)),
        container_image=IMAGE,
        location_name="social_enrich",
    )
    return WorkspaceProcessContext(instance, InProcessWorkspaceLoadTarget(origin))


@pytest.fixture
def workspace_process(instance: dg.DagsterInstance) -> Iterator[WorkspaceProcessContext]:
    with code_location(instance) as context:
        yield context


@pytest.fixture
def workspace(workspace_process: WorkspaceProcessContext) -> WorkspaceRequestContext:
    return workspace_process.create_request_context()


def create_enrichment_run(
    instance: dg.DagsterInstance, workspace: WorkspaceRequestContext, tags: dict[str, str] | None = None, day: str = DAY
) -> dg.DagsterRun:
    """A run of one partition of the enrichment asset, created the way the daemon's sensors create runs."""
    location = workspace.get_code_location("social_enrich")
    (repository,) = location.get_repositories().values()
    remote_job = location.get_job(JobSubsetSelector(
        location_name="social_enrich", repository_name=repository.name, job_name="__ASSET_JOB",
        op_selection=None, asset_selection=[ASSET],
    ))
    plan = location.get_execution_plan(remote_job, {}, step_keys_to_execute=None, known_state=None, instance=instance)
    return instance.create_run(
        job_name=remote_job.name, run_id=None, run_config={}, status=DagsterRunStatus.NOT_STARTED,
        tags={**(remote_job.run_tags or {}), "dagster/partition": day, **(tags or {})},
        root_run_id=None, parent_run_id=None, step_keys_to_execute=None,
        execution_plan_snapshot=plan.execution_plan_snapshot, job_snapshot=remote_job.job_snapshot,
        parent_job_snapshot=remote_job.parent_job_snapshot, asset_selection=frozenset({ASSET}),
        asset_check_selection=None, resolved_op_selection=None, op_selection=None,
        remote_job_origin=remote_job.get_remote_origin(), job_code_origin=remote_job.get_python_origin(),
        asset_graph=repository.asset_graph,
    )


def tasks_of_run(ecs, run_id: str) -> list[dict[str, Any]]:
    arns = ecs.list_tasks(cluster=CLUSTER)["taskArns"]
    tasks = ecs.describe_tasks(cluster=CLUSTER, tasks=arns, include=["TAGS"])["tasks"] if arns else []
    return [t for t in tasks if {"key": "dagster/run_id", "value": run_id} in t.get("tags", [])]


def test_launching_a_run_starts_one_ecs_task_with_the_run_worker_command(instance, workspace, registered, ecs):
    run = create_enrichment_run(instance, workspace)
    instance.launch_run(run.run_id, workspace)

    (task,) = tasks_of_run(ecs, run.run_id)
    # The registered task definition is used as is: no new revision or family is registered per run.
    assert task["taskDefinitionArn"] == registered["task_definition_arn"]
    assert ecs.list_task_definitions()["taskDefinitionArns"] == [registered["task_definition_arn"]]
    assert task["launchType"] == "FARGATE"

    (override,) = task["overrides"]["containerOverrides"]
    assert override["name"] == "run"  # container_name of deploy/dagster.yaml, present in the task definition
    command = override["command"]
    assert command[:3] == ["dagster", "api", "execute_run"]
    args = deserialize_value(command[3], ExecuteRunArgs)
    assert args.run_id == run.run_id
    # The worker loads the same code (the module of the code location) and reports to this instance.
    assert args.job_origin.job_name == run.job_name
    assert args.job_origin.repository_origin.code_pointer.module == "social_enrich.definitions"
    assert args.instance_ref is not None
    # Default run size from run_resources, on the container and on the task.
    assert (override["cpu"], override["memory"]) == (1024, 2048)
    assert (task["overrides"]["cpu"], task["overrides"]["memory"]) == ("1024", "2048")

    tags = {tag["key"]: tag["value"] for tag in task["tags"]}
    assert tags["dagster/run_id"] == run.run_id
    assert tags["dagster/job_name"] == "__ASSET_JOB"
    assert tags["app"] == "social_enrich"  # run_ecs_tags
    assert tags["dagster/partition"] == DAY  # propagate_tags allow_list

    # Dagster records where the run went, which run monitoring and termination use.
    stored = instance.get_run_by_id(run.run_id)
    assert stored.tags["ecs/task_arn"] == task["taskArn"]
    assert stored.tags["ecs/cluster"] == task["clusterArn"]
    assert any("Launching run in ECS task" in e.message for e in instance.all_logs(run.run_id))


def test_the_task_gets_the_model_key_from_secrets_manager_not_from_the_launcher(instance, workspace, registered, ecs):
    run = create_enrichment_run(instance, workspace)
    instance.launch_run(run.run_id, workspace)
    (task,) = tasks_of_run(ecs, run.run_id)

    (container,) = ecs.describe_task_definition(taskDefinition=task["taskDefinitionArn"])["taskDefinition"]["containerDefinitions"]
    secrets = {s["name"]: s["valueFrom"] for s in container["secrets"]}
    # ECS resolves the JSON fields of the secret named by OPENAI_SECRET_NAME when the task starts.
    assert secrets["AZURE_OPENAI_API_KEY"] == f"{registered['openai_secret_arn']}:OPENAI_API_KEY::"
    assert secrets["AZURE_OPENAI_ENDPOINT"] == f"{registered['openai_secret_arn']}:OPENAI_API_BASE::"
    assert "DAGSTER_PG_PASSWORD" in secrets
    assert "SOCIAL_ENRICH_STATE_URL" in secrets  # the state store's URL holds a password: a secret, never a plain variable
    # No secret value travels in RunTask: the overrides carry the command and the size only.
    (override,) = task["overrides"]["containerOverrides"]
    assert set(override) == {"name", "command", "cpu", "memory"}
    assert "k-test" not in json.dumps(task)


def test_a_run_tagged_with_ecs_cpu_and_memory_gets_that_size(instance, workspace, ecs):
    run = create_enrichment_run(instance, workspace, tags={"ecs/cpu": "4096", "ecs/memory": "16384"})
    instance.launch_run(run.run_id, workspace)

    (task,) = tasks_of_run(ecs, run.run_id)
    (override,) = task["overrides"]["containerOverrides"]
    assert (override["cpu"], override["memory"]) == (4096, 16384)
    assert (task["overrides"]["cpu"], task["overrides"]["memory"]) == ("4096", "16384")


def test_launcher_secrets_are_ignored_with_a_fixed_task_definition(registered, ecs):
    """Why deploy/dagster.yaml declares no `secrets`: dagster_aws applies them only to task definitions
    it registers, so with $DAGSTER_ECS_TASK_DEFINITION they would silently do nothing. If this starts
    failing, dagster_aws changed and the secrets could move into dagster.yaml."""
    extra = {"secrets": [{"name": "SHOULD_NOT_APPEAR", "valueFrom": registered["openai_secret_arn"]}]}
    with dg.instance_for_test(overrides=launcher_overrides(registered, **extra)) as instance, code_location(instance) as context:
        workspace = context.create_request_context()
        run = create_enrichment_run(instance, workspace)
        instance.launch_run(run.run_id, workspace)
    (task,) = tasks_of_run(ecs, run.run_id)
    assert task["taskDefinitionArn"] == registered["task_definition_arn"]
    (container,) = ecs.describe_task_definition(taskDefinition=task["taskDefinitionArn"])["taskDefinition"]["containerDefinitions"]
    assert "SHOULD_NOT_APPEAR" not in {s["name"] for s in container["secrets"]}
    (override,) = task["overrides"]["containerOverrides"]
    assert set(override) == {"name", "command", "cpu", "memory"}  # no `secrets` or `environment` override either


def queued_enrichment_run(instance: dg.DagsterInstance, workspace: WorkspaceRequestContext, day: str) -> dg.DagsterRun:
    run = create_enrichment_run(instance, workspace, day=day)
    instance.submit_run(run.run_id, workspace)
    assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.QUEUED
    return run


def dequeue(daemon: QueuedRunCoordinatorDaemon, workspace_process: WorkspaceProcessContext) -> None:
    list(daemon.run_iteration(workspace_process))  # one pass of the daemon's run queue loop


def test_pool_default_limit_holds_a_second_run_in_the_queue(instance, workspace_process, workspace, ecs):
    """concurrency.pools.default_limit of deploy/dagster.yaml: while one run uses azure_openai, the next waits
    in the queue (no ECS task), and starts when the first ends."""
    first = queued_enrichment_run(instance, workspace, "2026-11-02")
    with QueuedRunCoordinatorDaemon(interval_seconds=1) as daemon:
        dequeue(daemon, workspace_process)
        assert len(tasks_of_run(ecs, first.run_id)) == 1
        (limit,) = [p for p in instance.event_log_storage.get_pool_limits() if p.name == "azure_openai"]
        assert (limit.limit, limit.from_default) == (1, True)

        second = queued_enrichment_run(instance, workspace, "2026-11-03")
        dequeue(daemon, workspace_process)
        assert tasks_of_run(ecs, second.run_id) == []
        assert instance.get_run_by_id(second.run_id).status == DagsterRunStatus.QUEUED

        # The first run ends (here: failed, as run monitoring marks a run whose task died): the slot frees.
        instance.report_run_failed(instance.get_run_by_id(first.run_id))
        dequeue(daemon, workspace_process)
        assert len(tasks_of_run(ecs, second.run_id)) == 1


def test_explicit_pool_limit_holds_runs_queued_together(instance, workspace_process, workspace, ecs):
    """The deploy step `dagster instance concurrency set azure_openai 1` (deploy/README.md) matters: Dagster
    applies default_limit to a pool only once it has seen it, and the pass that first sees it can start
    every run queued for it. With the limit set up front, two runs queued together start one at a time."""
    instance.event_log_storage.set_concurrency_slots("azure_openai", 1)  # what that CLI command does
    runs = [queued_enrichment_run(instance, workspace, day) for day in ("2026-11-02", "2026-11-03")]
    with QueuedRunCoordinatorDaemon(interval_seconds=1) as daemon:
        dequeue(daemon, workspace_process)
        started = [run for run in runs if tasks_of_run(ecs, run.run_id)]
        assert len(started) == 1, "both runs started: the azure_openai pool did not hold the second"
        (waiting,) = [run for run in runs if run not in started]
        assert instance.get_run_by_id(waiting.run_id).status == DagsterRunStatus.QUEUED
