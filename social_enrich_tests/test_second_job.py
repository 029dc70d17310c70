"""Adding an enrichment job is a YAML file plus a pydantic model: no change to social_enrich."""

from __future__ import annotations

import dagster as dg
import pyarrow.compute as pc

from social_enrich.definitions import build_definitions
from social_enrich.lakehouse.catalog import load_table
from social_enrich_tests.dagster_helpers import materialization_metadata, materialize_day
from social_enrich_tests.second_job import SECOND_JOB_YAML


def test_a_second_job_from_a_jobs_folder_materializes_its_own_table(catalog, seeded, tmp_path, monkeypatch):
    jobs = tmp_path / "more_jobs"
    jobs.mkdir()
    (jobs / "topics.yaml").write_text(SECOND_JOB_YAML)
    monkeypatch.setenv("SOCIAL_ENRICH_JOBS_DIR", str(jobs))

    defs = build_definitions()
    graph = defs.resolve_asset_graph()
    assert dg.AssetKey("post_topics") in graph.get_all_asset_keys()
    assert dg.AssetKey("social_media_sentiment") in graph.get_all_asset_keys()
    assert graph.get(dg.AssetKey("post_topics")).parent_keys == {dg.AssetKey(["gold", "dim_post_details"])}

    day = seeded.days[0].isoformat()
    with dg.instance_for_test() as instance:
        result = materialize_day(instance, day, asset="post_topics", defs=defs)
    meta = materialization_metadata(result, "post_topics")
    assert meta["model"] == "keyword-topics-1" and meta["prompt_version"] == "topics-v1"

    table = load_table(catalog, "enriched.post_topics")
    types = {f.name: str(f.field_type) for f in table.schema().fields}
    assert types["topic"] == "string" and types["mentions_someone"] == "boolean" and types["keywords"] == "list<string>"
    assert types["labelled_at"] == "timestamptz"
    assert [f.name for f in table.spec().fields] == ["partition_date", "labelled_at_month"]
    rows = table.scan().to_arrow()
    assert rows.num_rows == meta["posts_touched"] > 0
    ok = rows.filter(pc.equal(rows["status"], "ok"))
    assert set(ok["topic"].to_pylist()) >= {"food", "tech"}
    assert all(isinstance(k, list) for k in ok["keywords"].to_pylist())  # lists are stored as Iceberg lists
    # No summary declared: the Literal and bool fields are counted by default.
    assert set(meta["topic"]) >= {"food", "tech"} and meta["topic/food"] > 0
    assert sum(meta["mentions_someone"].values()) == meta["posts_scored"]
    # The sentiment job's table was not touched.
    assert "social_media_sentiment" not in [t[1] for t in catalog.list_tables("enriched")]
