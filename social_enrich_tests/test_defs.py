"""The whole Definitions loads, and the README's Dagster commands work against it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg

from social_enrich.definitions import build_definitions, defs
from social_enrich.lakehouse.catalog import load_table

REPO = Path(__file__).resolve().parents[1]


def test_definitions_load_with_every_asset():
    loaded = build_definitions()
    dg.Definitions.validate_loadable(loaded)
    graph = loaded.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert keys == {"gold/fact_social_media_reaction_post", "gold/dim_post_details", "social_media_sentiment"}
    sentiment = graph.get(dg.AssetKey("social_media_sentiment"))
    assert isinstance(sentiment.partitions_def, dg.DailyPartitionsDefinition)
    assert sentiment.partitions_def.start.date().isoformat() == "2026-11-01"
    assert set(sentiment.parent_keys) == {dg.AssetKey(["gold", "fact_social_media_reaction_post"]), dg.AssetKey(["gold", "dim_post_details"])}
    assert graph.get(dg.AssetKey(["gold", "dim_post_details"])).is_observable


def test_lazy_definitions_entry_point_builds_the_same_graph():
    assert isinstance(defs(), dg.Definitions)


def test_observing_a_gold_table_reports_its_snapshot_id(catalog, seeded):
    observe = dg.define_asset_job("observe_gold", selection=dg.AssetSelection.assets(dg.AssetKey(["gold", "dim_post_details"])))
    loaded = build_definitions()
    job = dg.Definitions.merge(loaded, dg.Definitions(jobs=[observe])).resolve_job_def("observe_gold")
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(instance=instance)
        assert result.success
        table = load_table(catalog, "gold.dim_post_details")
        record = instance.get_latest_data_version_record(dg.AssetKey(["gold", "dim_post_details"]), is_source=True)
        observation = record.event_log_entry.asset_observation
        assert observation.data_version == str(table.current_snapshot().snapshot_id)
        assert observation.metadata["dagster/row_count"].value == seeded.dim_rows


def run_cli(args: list[str], home: Path, dagster_home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SOCIAL_ENRICH_HOME": str(home), "DAGSTER_HOME": str(dagster_home)}
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=240, check=False)


def test_dagster_cli_materializes_a_partition(catalog, seeded, state_home, tmp_path):
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    dagster = str(Path(sys.executable).parent / "dagster")
    days = ["2026-11-02"]
    command = [dagster, "asset", "materialize", "-m", "social_enrich.definitions", "--select", "social_media_sentiment", "--partition", days[0]]
    done = run_cli(command, state_home, dagster_home)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "RUN_SUCCESS" in done.stderr
    rows = load_table(catalog, "enriched.social_media_sentiment").scan().to_arrow()
    assert sorted({d.isoformat() for d in rows["partition_date"].to_pylist()}) == days
    keys = rows["post_key"].to_pylist()
    assert len(keys) == len(set(keys))
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        runs = instance.get_run_records()
        assert len(runs) == 1
        materialized = instance.get_materialized_partitions(dg.AssetKey("social_media_sentiment"))
        assert sorted(materialized) == days


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dagster_dev_serves_the_assets_with_their_partitions(state_home, tmp_path):
    """`dagster dev` in the repo (workspace.yaml) answers GraphQL with the gold assets and the daily partitions."""
    port = free_port()
    env = {**os.environ, "SOCIAL_ENRICH_HOME": str(state_home), "DAGSTER_HOME": str(tmp_path)}
    dagster = str(Path(sys.executable).parent / "dagster")
    # A new session, so the whole process group (webserver + code server + daemon) can be stopped.
    server = subprocess.Popen([dagster, "dev", "-h", "127.0.0.1", "-p", str(port)], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    query = b'{"query": "{ assetNodes { assetKey { path } isObservable partitionKeys } }"}'
    nodes = None
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not nodes:
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=query, headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=5) as answer:
                    nodes = json.load(answer).get("data", {}).get("assetNodes")
            except OSError:
                time.sleep(1)
    finally:
        os.killpg(server.pid, signal.SIGINT)
        server.wait(timeout=60)
    assert nodes, "dagster dev did not answer within 90 s"
    by_key = {"/".join(n["assetKey"]["path"]): n for n in nodes}
    assert by_key["gold/fact_social_media_reaction_post"]["isObservable"]
    assert by_key["gold/dim_post_details"]["isObservable"]
    partitions = by_key["social_media_sentiment"]["partitionKeys"]
    assert partitions[0] == "2026-11-01" and len(partitions) >= 7


