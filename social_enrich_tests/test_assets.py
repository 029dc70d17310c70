"""The enrichment asset end to end: real sample gold tables, a real Dagster instance, the local model."""

from __future__ import annotations

import json

import datetime as dt

import pyarrow as pa
import pyarrow.compute as pc

from social_enrich.lakehouse.catalog import load_table
from social_enrich_tests.gold_tables import append_rows, latest_touch_days, posts_living_on
from social_enrich_tests.dagster_helpers import drop_config, edited_sentiment_defs, materialization_metadata, materialize_day

TARGET = "enriched.social_media_sentiment"


def target_rows(catalog) -> pa.Table:
    return load_table(catalog, TARGET).scan().to_arrow()


def test_materializing_a_day_scores_every_post_whose_latest_touch_is_that_day(catalog, seeded, instance):
    day = seeded.days[1]
    result = materialize_day(instance, day.isoformat())
    assert result.success
    rows = target_rows(catalog)
    expected = posts_living_on(catalog, day)
    assert set(rows["post_key"].to_pylist()) == expected
    assert rows.num_rows == len(expected)  # one row per post
    assert set(rows["status"].to_pylist()) <= {"ok", "failed"}
    ok = rows.filter(pc.equal(rows["status"], "ok"))
    assert set(ok["label"].to_pylist()) <= {"positive", "negative", "neutral", "mixed"}
    assert pc.min(ok["score"]).as_py() >= -1 and pc.max(ok["score"]).as_py() <= 1
    assert set(rows["model"].to_pylist()) == {"vader-3.3.2"}
    assert set(rows["prompt_version"].to_pylist()) == {"sentiment-v1"}
    assert all(len(h) == 64 for h in rows["input_hash"].to_pylist())
    assert set(rows["partition_date"].to_pylist()) == {day}
    assert rows["source_update_time"].null_count == 0 and rows["written_at"].null_count == 0

    meta = materialization_metadata(result)
    assert meta["posts_touched"] == len(expected)
    assert meta["posts_scored"] + meta["posts_failed"] == len(expected)
    assert meta["dagster/partition_row_count"] == len(expected) == meta["dagster/row_count"]
    assert sum(meta["labels"].values()) == meta["posts_scored"]
    assert meta["model"] == "vader-3.3.2"
    assert meta["rows_read/gold.fact_social_media_reaction_post"] > 0
    assert meta["rows_read/gold.dim_post_details"] > 0
    assert meta["versions_collapsed"] > 0  # the sample has later versions of some posts
    assert meta["duration_seconds"] > 0


def test_target_is_partitioned_by_partition_date_and_the_configured_transform(catalog, seeded, instance):
    materialize_day(instance, seeded.days[0].isoformat())
    spec = load_table(catalog, TARGET).spec()
    assert [(f.name, str(f.transform)) for f in spec.fields] == [("partition_date", "identity"), ("written_at_year", "year")]


def test_rematerializing_adds_no_duplicates_and_posts_live_in_one_day(catalog, seeded, instance):
    for day in [*seeded.days, seeded.days[0], seeded.days[1]]:  # every day, then two days again
        assert materialize_day(instance, day.isoformat()).success
    rows = target_rows(catalog)
    keys = rows["post_key"].to_pylist()
    assert len(keys) == len(set(keys)) == seeded.posts
    # A post updated on a later day was moved out of the earlier day's partition, not copied.
    assert dict(zip(keys, rows["partition_date"].to_pylist())) == latest_touch_days(catalog)


def test_a_post_touched_again_later_moves_to_that_day_and_is_counted(catalog, seeded, instance):
    first, second = seeded.days[0], seeded.days[1]
    materialize_day(instance, first.isoformat())
    living = sorted(posts_living_on(catalog, first))[:5]
    # A later snapshot touches five of the first day's posts again, on the second day.
    fact = load_table(catalog, "gold.fact_social_media_reaction_post")
    old = fact.scan().to_arrow().filter(pc.is_in(fact.scan().to_arrow()["post_key"], pa.array(living))).to_pylist()
    at = dt.datetime.combine(second, dt.time(23), tzinfo=dt.timezone.utc)
    append_rows(fact, [{**row, "last_update_time": at} for row in {r["post_key"]: r for r in old}.values()])
    meta = materialization_metadata(materialize_day(instance, second.isoformat()))
    assert meta["moved_from_other_days"] == len(living)
    rows = target_rows(catalog)
    where = dict(zip(rows["post_key"].to_pylist(), rows["partition_date"].to_pylist()))
    assert rows.num_rows == len(where) == len(posts_living_on(catalog, first) | posts_living_on(catalog, second))
    assert {where[k] for k in living} == {second}  # the first day no longer holds them


def test_drop_rebuilds_the_target_from_scratch(catalog, seeded, instance):
    materialize_day(instance, seeded.days[0].isoformat())
    result = materialize_day(instance, seeded.days[2].isoformat(), run_config=drop_config())
    assert result.success
    rows = target_rows(catalog)
    assert set(rows["partition_date"].to_pylist()) == {seeded.days[2]}
    assert set(rows["post_key"].to_pylist()) == posts_living_on(catalog, seeded.days[2])


def test_a_null_post_body_is_stored_as_failed_and_the_partition_completes(catalog, seeded, instance):
    day = seeded.days[0]
    at = dt.datetime.combine(day, dt.time(12), tzinfo=dt.timezone.utc)
    details = load_table(catalog, "gold.dim_post_details")
    schema = details.schema().as_arrow()
    extra = [
        {"post_key": 900_001, "post_text": None, "last_update_time": at},  # null body: stored as failed
        {"post_key": 900_002, "post_text": "I love this, best day ever!", "last_update_time": at},
    ]
    details.append(pa.Table.from_pylist(extra, schema=schema))

    result = materialize_day(instance, day.isoformat())
    meta = materialization_metadata(result)
    rows = {r["post_key"]: r for r in target_rows(catalog).to_pylist()}
    assert rows[900_001]["status"] == "failed" and rows[900_001]["error"] == "post_text is null"
    assert rows[900_002]["status"] == "ok" and rows[900_002]["label"] == "positive"
    assert meta["posts_failed"] >= 1


def test_source_missing_a_field_fails_clearly_and_leaves_the_target_as_it_was(catalog, seeded, instance, tmp_path):
    materialize_day(instance, seeded.days[0].isoformat())
    before = load_table(catalog, TARGET).current_snapshot().snapshot_id
    defs = edited_sentiment_defs(tmp_path, {"text_field: post_text": "text_field: body_text"})
    result = materialize_day(instance, seeded.days[1].isoformat(), defs=defs, raise_on_error=False)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    error = failure.step_failure_data.error
    # One readable line, once: the cause is the message, not a chain of tracebacks.
    assert "inference.text_field ['body_text'] not in any source table" in failure.step_failure_data.user_failure_data.description
    assert error.cause is None and error.message.count("not in any source table") == 1
    assert load_table(catalog, TARGET).current_snapshot().snapshot_id == before


def test_unreachable_catalog_is_named_without_secrets(instance, monkeypatch):
    catalog = {"type": "rest", "uri": "http://user:hunter2@127.0.0.1:9", "credential": "id:s3cr3t"}  # secrets written in, not {"env": ...}
    monkeypatch.setenv("SOCIAL_ENRICH_CATALOG", json.dumps(catalog))
    result = materialize_day(instance, "2026-11-02", raise_on_error=False)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = str(failure.step_failure_data.error)
    assert "cannot reach the rest catalog at http://***@127.0.0.1:9" in message
    logs = " ".join(str(record) for record in instance.all_logs(result.run_id))
    assert "hunter2" not in logs and "s3cr3t" not in logs


def test_a_day_without_posts_materializes_empty(catalog, seeded, instance):
    materialize_day(instance, seeded.days[0].isoformat())
    before = target_rows(catalog).num_rows
    meta = materialization_metadata(materialize_day(instance, "2026-11-20"))
    assert meta["posts_touched"] == 0 and meta["dagster/partition_row_count"] == 0
    assert target_rows(catalog).num_rows == before


def test_a_target_with_another_schema_is_refused_until_dropped(catalog, seeded, instance, tmp_path):
    materialize_day(instance, seeded.days[0].isoformat())
    before = load_table(catalog, TARGET).current_snapshot().snapshot_id
    defs = edited_sentiment_defs(tmp_path, {
        "response_format: sentiment": "response_format: social_enrich_tests.second_job:PostTopic",
        "local_model: vader": "local_model: social_enrich_tests.second_job:KeywordTopicModel",
    })

    result = materialize_day(instance, seeded.days[1].isoformat(), defs=defs, raise_on_error=False)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.step_failure_data.error.message
    assert "does not match job 'sentiment'" in message and "missing column topic (string)" in message
    assert "unexpected column label" in message and "drop: true" in message
    assert load_table(catalog, TARGET).current_snapshot().snapshot_id == before

    assert materialize_day(instance, seeded.days[1].isoformat(), defs=defs, run_config=drop_config()).success
    assert "topic" in load_table(catalog, TARGET).schema().column_names
