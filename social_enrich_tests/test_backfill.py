"""Backfills: a range of days grouped into runs (one scan, one commit each), and the model pool across runs."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pytest

from social_enrich import __main__ as cli
from social_enrich.lakehouse.catalog import load_table
from social_enrich_tests.dagster_helpers import edited_sentiment_defs, materialize_day
from social_enrich_tests.emulated_azure import comparable

REPO = Path(__file__).resolve().parent.parent
DAYS = ["2026-11-01", "2026-11-02", "2026-11-03"]
ASSET = dg.AssetKey("social_media_sentiment")


def target_rows(catalog) -> pa.Table:
    return load_table(catalog, "enriched.social_media_sentiment").scan().to_arrow()


def test_backfill_command_groups_days_into_runs_and_matches_one_run_per_day(catalog, seeded, state_home, tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    assert cli.main(["backfill", "--from", DAYS[0], "--to", DAYS[-1], "--max-per-run", "2"]) == 0
    grouped = target_rows(catalog)
    with dg.DagsterInstance.get() as instance:
        runs = instance.get_run_records()
        # A range's run carries the range tags; a one-day run the single-partition tag, as the Runs list shows them.
        names = ("dagster/asset_partition_range_start", "dagster/asset_partition_range_end", "dagster/partition")
        tags = sorted(tuple(r.dagster_run.tags.get(name, "") for name in names) for r in runs)
        assert tags == [("", "", DAYS[2]), (DAYS[0], DAYS[1], "")]
        assert sorted(instance.get_materialized_partitions(ASSET)) == DAYS
    # Each grouped run wrote its whole range in one commit (one transaction: a delete and an append snapshot).
    snapshots = load_table(catalog, "enriched.social_media_sentiment").snapshots()
    assert [s.summary.operation.value for s in snapshots].count("append") == 2

    # The same days one run each, in a fresh instance: the same rows (write times aside).
    with dg.instance_for_test() as instance:
        for n, day in enumerate(DAYS):
            materialize_day(instance, day, run_config={"ops": {"social_media_sentiment": {"config": {"drop": n == 0}}}})
    per_day = target_rows(catalog)
    assert comparable(grouped) == comparable(per_day)
    keys = grouped["post_key"].to_pylist()
    assert len(keys) == len(set(keys)) == seeded.posts


def test_backfill_command_rejects_a_reversed_range(capsys):
    try:
        cli.main(["backfill", "--from", DAYS[2], "--to", DAYS[0]])
    except SystemExit as e:
        assert e.code == 2
    assert f"--to {DAYS[0]} is before --from {DAYS[2]}" in capsys.readouterr().err


def test_the_asset_groups_backfills_and_uses_the_model_pool(tmp_path):
    defs = edited_sentiment_defs(tmp_path, {"max_partitions_per_run: 31": "max_partitions_per_run: 5", "pool: azure_openai": "pool: llm_gpt4o"})
    node = defs.resolve_assets_def(ASSET)
    assert node.backfill_policy == dg.BackfillPolicy.multi_run(max_partitions_per_run=5)
    assert node.op.pool == "llm_gpt4o"


def _step_window(instance: dg.DagsterInstance, run_id: str) -> tuple[float, float, bool]:
    events = [e for e in instance.all_logs(run_id) if e.dagster_event is not None]
    start = next(e.timestamp for e in events if e.dagster_event.event_type_value == "STEP_START")
    end = next(e.timestamp for e in events if e.dagster_event.event_type_value == "STEP_SUCCESS")
    blocked = any("blocked by limit for pool azure_openai" in (e.message or "") for e in events)
    return start, end, blocked


def test_the_pool_limit_keeps_model_runs_apart_across_processes(seeded, state_home, tmp_path):
    """Two `dagster asset materialize` processes at once, pool limit 1: the second waits for the first."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\nconcurrency:\n  pools:\n    default_limit: 1\n")
    env = {**os.environ, "SOCIAL_ENRICH_HOME": str(state_home), "DAGSTER_HOME": str(home)}
    dagster = str(Path(sys.executable).parent / "dagster")

    def command(day: str) -> list[str]:
        return [dagster, "asset", "materialize", "-m", "social_enrich.definitions", "--select", "social_media_sentiment", "--partition", day]

    # One run first, so the two racing processes find the instance's storage already created.
    subprocess.run(command(DAYS[2]), cwd=REPO, env=env, capture_output=True, timeout=240, check=True)
    racing = [subprocess.Popen(command(day), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for day in DAYS[:2]]
    for process in racing:
        _, err = process.communicate(timeout=240)
        assert process.returncode == 0, err.decode()[-2000:]
    with dg.DagsterInstance.from_config(str(home)) as instance:
        windows = sorted(_step_window(instance, r.dagster_run.run_id) for r in instance.get_run_records()[:2])
    (first_start, first_end, _), (second_start, _, second_blocked) = windows
    assert second_start >= first_end  # never both calling the model
    assert second_blocked  # and the second really waited on the pool


def test_backfill_refuses_days_outside_the_partitions_before_any_work(catalog, seeded, capsys):
    today = dt.datetime.now(dt.timezone.utc).date()
    for first, last in [("2026-10-30", DAYS[0]), (DAYS[0], today.isoformat())]:
        with pytest.raises(SystemExit, match=r"is not within the partitions of social_media_sentiment: they run from 2026-11-01"):
            cli.main(["backfill", "--job", "sentiment", "--from", first, "--to", last])
    assert not catalog.namespace_exists("enriched") or ("enriched", "social_media_sentiment") not in catalog.list_tables("enriched")
