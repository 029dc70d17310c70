"""A run killed outright (SIGKILL) keeps its pool slot until someone sees that its process is gone:
the next run does, before it claims a slot (social_enrich/dead_runs.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import dagster as dg

from social_enrich.dead_runs import RunWorker, sweep_dead_runs, this_machine, worker_of, worker_record
from social_enrich.definitions import build_definitions
from social_enrich.environment import state_dir
from social_enrich.inference.local_sentiment import VaderSentimentModel
from social_enrich_tests.dagster_helpers import edited_sentiment_yaml, dagster_materialize_command, wait_until

REPO = Path(__file__).resolve().parents[1]
POOL = "azure_openai"
MATERIALIZE = dagster_materialize_command("2026-11-01")
HOLD_SECONDS = 120  # far longer than the test needs, short enough that a stray process ends by itself


class HoldingModel(VaderSentimentModel):
    """VADER that, at its first post, says so in the state folder and holds: the run sits on its slot."""

    model_id = "vader-holding"

    def score(self, fields: dict[str, Any], text: str | None) -> Any:
        marker = state_dir() / "holding"
        if not marker.exists():
            marker.touch()
            time.sleep(HOLD_SECONDS)
        return super().score(fields, text)


def dagster_home(tmp_path: Path) -> Path:
    """A Dagster home whose pools have a limit of 1, as the README recommends for azure_openai."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\nconcurrency:\n  pools:\n    default_limit: 1\n")
    return home


def cli_env(state_home: Path, home: Path) -> dict[str, str]:
    return {**os.environ, "SOCIAL_ENRICH_HOME": str(state_home), "DAGSTER_HOME": str(home), "PYTHONPATH": str(REPO)}


def start_holding_run(env: dict[str, str], tmp_path: Path) -> subprocess.Popen[bytes]:
    """`dagster asset materialize` of a day whose model holds its first post: the run sits on its slot."""
    jobs = edited_sentiment_yaml(tmp_path / "jobs", {"local_model: vader": "local_model: social_enrich_tests.test_dead_runs:HoldingModel"})
    with open(tmp_path / "first.log", "w") as log:
        return subprocess.Popen(MATERIALIZE, cwd=REPO, env={**env, "SOCIAL_ENRICH_JOBS_DIR": str(jobs.parent)},
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def test_a_killed_run_is_failed_and_its_slot_freed_by_the_next_run(seeded, state_home, tmp_path):
    home = dagster_home(tmp_path)
    env = cli_env(state_home, home)
    first = start_holding_run(env, tmp_path)
    try:
        wait_until(lambda: (state_home / "holding").exists() or first.poll() is not None, 120, "the first run to start scoring")
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        with dg.DagsterInstance.from_config(str(home)) as instance:
            (run,) = instance.get_runs()
            assert [s.run_id for s in instance.event_log_storage.get_concurrency_info(POOL).claimed_slots] == [run.run_id]
            assert sweep_dead_runs(instance) == []  # alive: left alone
            assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED

        os.killpg(first.pid, signal.SIGKILL)  # the CLI, its step process and their helpers, by the CLI's own group
        first.wait(timeout=60)
        second = subprocess.run(MATERIALIZE, cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(timeout=60)

    output = second.stdout + second.stderr
    assert second.returncode == 0, output[-3000:]
    assert f"Marked run {run.run_id} failed: its run worker on this machine is gone" in output
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
        messages = [entry.message for entry in instance.all_logs(run.run_id)]
        assert any(f"its run worker, pid {first.pid} on {this_machine()}, is gone" in m for m in messages), messages[-5:]
        (later,) = [r for r in instance.get_runs() if r.run_id != run.run_id]
        assert later.status == dg.DagsterRunStatus.SUCCESS
        info = instance.event_log_storage.get_concurrency_info(POOL)
        assert info.claimed_slots == [] and info.pending_steps == []


def sentiment_job() -> dg.JobDefinition:
    """The enrichment as a job of the real Definitions (with their executor), for dg.reconstructable."""
    job = dg.define_asset_job("enrich_sentiment", selection="social_media_sentiment")
    return dg.Definitions.merge(build_definitions(), dg.Definitions(jobs=[job])).resolve_job_def("enrich_sentiment")


# A run of the day whose parent process repeats "Step still blocked by limit for pool" every second
# rather than every 5 minutes (a module constant of Dagster's); the waiting run sweeps each time.
WAITING_RUN = """
import sys
import dagster as dg
import dagster._core.execution.plan.active as active
active.CONCURRENCY_CLAIM_MESSAGE_INTERVAL = 1
from social_enrich_tests.test_dead_runs import sentiment_job
with dg.DagsterInstance.get() as instance:
    result = dg.execute_job(dg.reconstructable(sentiment_job), instance, tags={"dagster/partition": "2026-11-01"})
sys.exit(0 if result.success else 1)
"""


def test_a_run_waiting_for_the_pool_frees_it_when_its_holder_dies(seeded, state_home, tmp_path):
    home = dagster_home(tmp_path)
    env = cli_env(state_home, home)
    first = start_holding_run(env, tmp_path)
    second = None
    try:
        wait_until(lambda: (state_home / "holding").exists() or first.poll() is not None, 120, "the first run to start scoring")
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        with open(tmp_path / "second.log", "w") as log:
            second = subprocess.Popen([sys.executable, "-c", WAITING_RUN], cwd=REPO, env=env, stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        with dg.DagsterInstance.from_config(str(home)) as instance:
            (held,) = instance.get_runs()
            wait_until(lambda: instance.event_log_storage.get_concurrency_info(POOL).pending_step_count > 0 or second.poll() is not None,
                       120, "the second run to wait for the pool")
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(timeout=60)
            assert second.wait(timeout=120) == 0, (tmp_path / "second.log").read_text()[-3000:]
            assert instance.get_run_by_id(held.run_id).status == dg.DagsterRunStatus.FAILURE
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=60)


def test_only_runs_whose_worker_died_on_this_machine_are_failed(instance):
    storage = instance.event_log_storage
    storage.set_concurrency_slots(POOL, 5)
    ended = subprocess.Popen(["sleep", "60"])
    gone = worker_of(ended.pid)
    ended.kill()
    ended.wait()
    workers: dict[str, RunWorker | None] = {
        "alive": worker_of(os.getpid()),
        "gone": gone,
        "on another machine": RunWorker(gone.pid, "another-host", gone.started),
        "not recorded": None,
    }
    if gone.started:  # where the system tells a process's start time (Linux), a reused pid is seen through
        workers["pid reused"] = RunWorker(os.getpid(), this_machine(), "1")
    runs = {}
    for name, worker in workers.items():
        run = instance.add_run(dg.DagsterRun(job_name="__ASSET_JOB", run_id=str(uuid.uuid4()), status=dg.DagsterRunStatus.STARTED))
        if worker is not None:
            instance.report_engine_event("run worker", run, worker_record(worker))
        assert storage.claim_concurrency_slot(POOL, run.run_id, "social_media_sentiment").is_claimed
        runs[name] = run.run_id

    failed = sweep_dead_runs(instance)
    dead = {name for name, run_id in runs.items() if run_id in failed}

    assert dead == {"gone", "pid reused"} & set(runs)
    for name, run_id in runs.items():
        status = instance.get_run_by_id(run_id).status
        assert status == (dg.DagsterRunStatus.FAILURE if name in dead else dg.DagsterRunStatus.STARTED), name
    claimed = {slot.run_id for slot in storage.get_concurrency_info(POOL).claimed_slots}
    assert claimed == {runs[name] for name in runs if name not in dead}
    assert sweep_dead_runs(instance) == []  # a run is failed once
