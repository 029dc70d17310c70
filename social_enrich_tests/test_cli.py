"""The README's main command, `python -m social_enrich demo`, run as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys

import dagster as dg

from social_enrich.lakehouse.catalog import load_table


def test_demo_seeds_materializes_every_day_and_summarises(state_home, catalog, tmp_path):
    env = {**os.environ, "SOCIAL_ENRICH_HOME": str(state_home)}
    env.pop("DAGSTER_HOME", None)
    command = [sys.executable, "-m", "social_enrich", "demo", "--posts", "400", "--days", "3"]
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    for day in ("2026-11-01", "2026-11-02", "2026-11-03"):
        assert f"  {day}: " in out
    assert "target table   enriched.social_media_sentiment: 400 rows, 400 distinct posts" in out
    assert f"warehouse      {state_home / 'warehouse'}" in out
    assert "BetaWarning" not in done.stderr

    rows = load_table(catalog, "enriched.social_media_sentiment").scan().to_arrow()
    assert rows.num_rows == 400
    # The runs are kept in a Dagster home under the state folder, for `dagster dev` to show.
    with dg.DagsterInstance.from_config(str(state_home / "dagster_home")) as instance:
        assert len(instance.get_run_records()) == 3
        assert len(instance.get_materialized_partitions(dg.AssetKey("social_media_sentiment"))) == 3


def test_bad_arguments_are_refused(state_home, tmp_path):
    env = {**os.environ, "SOCIAL_ENRICH_HOME": str(state_home)}
    for args, message in [(["demo", "--posts", "0"], "--posts and --days must be at least 1"), (["seed", "--job", "nope"], "unknown job 'nope'")]:
        done = subprocess.run([sys.executable, "-m", "social_enrich", *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode != 0 and message in done.stderr
