"""An enrichment job is a Dagster Component: dg checks, scaffolds and lists it, and a hand-written
asset beside it uses its partitions and the catalog resource.

Real parts: the `dg` CLI in subprocesses, a scratch dg project on disk, the sample gold in a catalog
on disk and a real Dagster instance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg
import pytest

from social_enrich.config import discover_job_configs
from social_enrich.definitions import load_defs_folder
from social_enrich.environment import BUILTIN_JOBS_DIR
from social_enrich.resources import environment_resources
from social_enrich_tests.dagster_helpers import materialization_metadata

ROOT = Path(__file__).resolve().parents[1]
DG = str(Path(sys.executable).parent / "dg")


def run_dg(args: list[str], cwd: Path, extra_path: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in (extra_path, ROOT) if p)}
    return subprocess.run([DG, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """A dg project of the user's own, package `lake_jobs`, whose defs folder holds a copy of the sentiment job."""
    (tmp_path / "pyproject.toml").write_text(textwrap.dedent("""
        [project]
        name = "lake-jobs"
        version = "0"
        [tool.dg]
        directory_type = "project"
        [tool.dg.project]
        root_module = "lake_jobs"
        defs_module = "lake_jobs.defs"
        registry_modules = ["social_enrich.components"]
    """))
    defs = tmp_path / "lake_jobs" / "defs"
    (defs / "sentiment").mkdir(parents=True)
    (tmp_path / "lake_jobs" / "__init__.py").write_text("")
    (defs / "__init__.py").write_text("")
    (defs / "sentiment" / "defs.yaml").write_text((BUILTIN_JOBS_DIR / "sentiment" / "defs.yaml").read_text())
    return tmp_path


def test_dg_check_yaml_passes_on_the_project():
    done = run_dg(["check", "yaml"], ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "All component YAML validated successfully" in done.stdout + done.stderr


def test_dg_check_yaml_names_the_line_and_the_field_of_a_mistake(scratch: Path):
    path = scratch / "lake_jobs" / "defs" / "sentiment" / "defs.yaml"
    lines = path.read_text().splitlines()
    at = next(n for n, line in enumerate(lines) if "workers: 20" in line)
    lines[at] = lines[at].replace("workers: 20", "workers: many")
    path.write_text("\n".join(lines) + "\n")

    done = run_dg(["check", "yaml"], scratch, scratch)

    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert f"defs.yaml:{at + 1}" in output and "attributes.inference.workers" in output and "'many'" in output


def test_dg_scaffold_defs_writes_a_new_job_that_loads(scratch: Path):
    done = run_dg(["scaffold", "defs", "social_enrich.components.EnrichmentComponent", "moderation"], scratch, scratch)
    assert done.returncode == 0, done.stdout + done.stderr

    written = scratch / "lake_jobs" / "defs" / "moderation" / "defs.yaml"
    assert written.is_file() and "type: social_enrich.components.EnrichmentComponent" in written.read_text()
    jobs = {job.name: job for job in discover_job_configs([scratch / "lake_jobs" / "defs"])}
    assert set(jobs) == {"sentiment", "moderation"}
    assert jobs["moderation"].asset_name == "moderation" and jobs["moderation"].path == written
    assert run_dg(["check", "yaml"], scratch, scratch).returncode == 0


def test_dg_list_defs_shows_each_jobs_asset_sensors_and_schedule():
    done = run_dg(["list", "defs", "--json"], ROOT)
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout[done.stdout.index("{"):])
    assets = {a["asset_key"] for a in listed["assets"]}
    assert {"social_media_sentiment", "gold/dim_post_details", "gold/fact_social_media_reaction_post"} <= assets
    assert {s["name"] for s in listed["sensors"]} == {"sentiment_gold_snapshots", "sentiment_batch_poller"}
    assert {s["name"] for s in listed["schedules"]} == {"social_media_sentiment_maintenance_schedule"}
    # Each is traced to the job's component file.
    assert {s["source"].split(":")[0] for s in listed["sensors"]} == {"social_enrich/defs/sentiment/defs.yaml"}


def test_a_hand_written_asset_beside_the_components_reads_the_enrichment_by_day(scratch: Path, seeded, monkeypatch, instance):
    (scratch / "lake_jobs" / "defs" / "labels_per_day.py").write_text(textwrap.dedent("""
        import dagster as dg
        import pyarrow.compute as pc
        from social_enrich.downstream import IcebergCatalogResource, enrichment

        sentiment = enrichment("sentiment")

        @dg.asset(deps=[sentiment.asset_key], partitions_def=sentiment.partitions)
        def labels_per_day(context: dg.AssetExecutionContext, catalog: IcebergCatalogResource) -> dg.MaterializeResult:
            day = context.partition_key
            rows = catalog.open().load_table(sentiment.target_table).scan(row_filter=f"partition_date == '{day}'").to_arrow()
            ok = rows.filter(pc.equal(rows["status"], "ok"))
            return dg.MaterializeResult(metadata={"rows": rows.num_rows, "positive": ok["label"].to_pylist().count("positive")})
    """))
    monkeypatch.syspath_prepend(str(scratch))
    import lake_jobs.defs

    defs = dg.Definitions.merge(load_defs_folder(lake_jobs.defs, scratch), dg.Definitions(resources=environment_resources()))
    day = seeded.days[0].isoformat()
    job = defs.resolve_implicit_global_asset_job_def()
    enriched = job.execute_in_process(partition_key=day, asset_selection=[dg.AssetKey("social_media_sentiment")], instance=instance)
    downstream = job.execute_in_process(partition_key=day, asset_selection=[dg.AssetKey("labels_per_day")], instance=instance)

    meta = materialization_metadata(downstream, "labels_per_day")
    sentiment = materialization_metadata(enriched)
    assert meta["rows"] == sentiment["dagster/partition_row_count"] > 0
    assert meta["positive"] == sentiment["labels/positive"]
    graph = defs.resolve_asset_graph()
    assert graph.get(dg.AssetKey("labels_per_day")).parent_keys == {dg.AssetKey("social_media_sentiment")}
