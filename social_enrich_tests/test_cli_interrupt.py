"""`dagster asset materialize` as a user runs it: stopped with a signal, its step stops after the chunk
under way and writes it (social_enrich/graceful_stop.py); and it prints none of Dagster's beta warnings."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from social_enrich import demo
from social_enrich.dead_runs import sweep_dead_runs
from social_enrich.enrichment import CHUNK_POSTS
from social_enrich.environment import state_dir
from social_enrich.graceful_stop import stop_reason
from social_enrich.inference.local_sentiment import VaderSentimentModel
from social_enrich.lakehouse.catalog import load_table
from social_enrich_tests.conftest import SAMPLE_START
from social_enrich_tests.dagster_helpers import edited_sentiment_yaml, dagster_materialize_command, wait_until

REPO = Path(__file__).resolve().parents[1]
MATERIALIZE = dagster_materialize_command(SAMPLE_START.isoformat())
DAY_POSTS = CHUNK_POSTS + 500  # two chunks: the stop comes between them
HOLD_SECONDS = 60  # a stop that never comes fails the test, not the machine


class ModelWaitingForStop(VaderSentimentModel):
    """VADER that, at its first post, says so in the state folder and holds until the step is told to stop."""

    model_id = "vader-waiting-for-stop"

    def score(self, fields: dict[str, Any], text: str | None) -> Any:
        marker = state_dir() / "scoring"
        if not marker.exists():
            marker.touch()
            deadline = time.monotonic() + HOLD_SECONDS
            while stop_reason() is None and time.monotonic() < deadline:
                time.sleep(0.05)
        return super().score(fields, text)


def group_members(group: int) -> list[int]:
    """Live (not zombie) processes of a process group, from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # ended meanwhile
        if int(fields[2]) == group and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def cli_env(state_home: Path, tmp_path: Path, **extra: str) -> dict[str, str]:
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return {**os.environ, "SOCIAL_ENRICH_HOME": str(state_home), "DAGSTER_HOME": str(home), "PYTHONPATH": str(REPO), **extra}


@pytest.mark.parametrize(
    ("sent", "to_group", "reason"),
    [
        (signal.SIGTERM, False, "SIGINT received"),  # Dagster forwards a stop to the step as SIGINT
        (signal.SIGINT, False, "SIGINT received"),
        (signal.SIGINT, True, "SIGINT received"),  # Ctrl-C in a terminal: the step gets it twice
        (signal.SIGKILL, False, "its run worker (pid {cli}) is gone"),  # nothing forwarded: the step outlives the CLI
    ],
    ids=["SIGTERM to the CLI", "SIGINT to the CLI", "Ctrl-C", "SIGKILL to the CLI"],
)
def test_a_stopped_cli_stops_its_step_after_the_chunk_under_way(sent, to_group, reason, catalog, state_home, tmp_path):
    demo.seed_gold_tables(catalog, posts=DAY_POSTS, days=1, start=SAMPLE_START)
    jobs = edited_sentiment_yaml(tmp_path / "jobs", {"local_model: vader": f"local_model: {__name__}:ModelWaitingForStop"})
    env = cli_env(state_home, tmp_path, SOCIAL_ENRICH_JOBS_DIR=str(jobs.parent))
    with open(tmp_path / "cli.log", "w") as log:
        cli = subprocess.Popen(MATERIALIZE, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: (state_home / "scoring").exists() or cli.poll() is not None, 120, "the first chunk to start")
        assert cli.poll() is None, (tmp_path / "cli.log").read_text()[-3000:]
        os.killpg(cli.pid, sent) if to_group else os.kill(cli.pid, sent)
        cli.wait(timeout=120)
        wait_until(lambda: not group_members(cli.pid), 120, "every process of the CLI's group to end")
    finally:
        if group_members(cli.pid):
            os.killpg(cli.pid, signal.SIGKILL)  # the CLI's own group: what this test started
        if cli.poll() is None:
            cli.wait(timeout=60)

    assert cli.returncode != 0
    rows = load_table(catalog, "enriched.social_media_sentiment").scan().to_arrow()
    assert rows.num_rows == CHUNK_POSTS  # the first chunk is written, the rest left for a later run
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        (run,) = instance.get_runs()
        messages = [entry.message for entry in instance.all_logs(run.run_id)]
        stop = f"stopping before post {CHUNK_POSTS + 1} of {DAY_POSTS}: {reason.format(cli=cli.pid)}"
        assert any(stop in m for m in messages), messages[-10:]
        assert instance.get_materialized_partitions(dg.AssetKey("social_media_sentiment")) == set()  # not done: not materialized
        if sent == signal.SIGKILL:  # nobody was left to end the run: the next run's sweep does
            assert sweep_dead_runs(instance) == [run.run_id]
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE


def test_dagster_cli_prints_no_beta_warnings(seeded, state_home, tmp_path):
    done = subprocess.run(MATERIALIZE, cwd=REPO, env=cli_env(state_home, tmp_path), capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "RUN_SUCCESS" in done.stderr + done.stdout
    assert "BetaWarning" not in done.stderr + done.stdout
