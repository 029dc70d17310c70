from __future__ import annotations

import datetime as dt
import logging
import uuid
from decimal import Decimal

import pytest
from pyiceberg.types import (
    DateType,
    DecimalType,
    ListType,
    LongType,
    NestedField,
    StringType,
    StructType,
    TimestampType,
    TimestamptzType,
    UUIDType,
)

from social_enrich import enrichment
from social_enrich.config import JobConfig
from social_enrich.enrichment import enrich_partition
from social_enrich.inference.local_sentiment import LocalProvider, VaderSentimentModel
from social_enrich.inference.response_models import Sentiment
from social_enrich.lakehouse.partition_scan import SourceSchemaError, read_partition
from social_enrich_tests.gold_tables import append_rows, create_table

UTC = dt.timezone.utc
D1, D2, D3 = dt.date(2026, 11, 1), dt.date(2026, 11, 2), dt.date(2026, 11, 3)


def job_for(base: JobConfig, tables: list[dict], **inference) -> JobConfig:
    raw = base.model_dump()
    raw["connector"]["source"]["tables"] = tables
    raw["inference"].update(inference)
    return JobConfig.model_validate(raw)


@pytest.fixture
def reactions_and_texts(catalog):
    """Post 1: text written on D1, reactions changed on D2 and D3. Post 2: everything on D2. Post 3: D1 only."""
    reactions = create_table(catalog, "gold.reactions", [("post_key", LongType()), ("likes", LongType()), ("updated", TimestamptzType())])
    texts = create_table(catalog, "gold.texts", [("post_key", LongType()), ("body", StringType()), ("updated", TimestamptzType())])
    at = lambda day, hour: dt.datetime.combine(day, dt.time(hour), tzinfo=UTC)  # noqa: E731
    append_rows(texts, [
        {"post_key": 1, "body": "first draft", "updated": at(D1, 8)},
        {"post_key": 1, "body": "final text", "updated": at(D1, 9)},
        {"post_key": 2, "body": "post two", "updated": at(D2, 10)},
        {"post_key": 3, "body": "post three", "updated": at(D1, 11)},
    ])
    append_rows(reactions, [
        {"post_key": 1, "likes": 1, "updated": at(D1, 8)},
        {"post_key": 3, "likes": 7, "updated": at(D1, 12)},
        {"post_key": None, "likes": 0, "updated": at(D2, 1)},
    ])
    append_rows(reactions, [
        {"post_key": 1, "likes": 5, "updated": at(D2, 12)},
        {"post_key": 2, "likes": 2, "updated": at(D2, 13)},
        {"post_key": 1, "likes": 9, "updated": at(D3, 0)},  # midnight belongs to D3, not D2
    ])
    tables = [
        {"database": "gold", "table": "reactions", "datetime_field": "updated", "index_field": "post_key"},
        {"database": "gold", "table": "texts", "datetime_field": "updated", "index_field": "post_key"},
    ]
    return tables


def test_day_reads_latest_rows_from_every_source_whatever_day_they_were_written(catalog, sentiment_job, reactions_and_texts, caplog):
    job = job_for(sentiment_job, reactions_and_texts, text_field="body")
    with caplog.at_level(logging.WARNING):
        result = read_partition(catalog, job, D2, logging.getLogger("test"))
    assert "gold.reactions: 1 rows touched on 2026-11-02 have a null post_key and were skipped" in caplog.text
    rows = {r["post_key"]: r for r in result.posts.to_pylist()}
    assert sorted(rows) == [1, 2]  # post 3 was not touched on D2
    assert rows[1]["body"] == "final text"  # text from D1, latest of two versions
    assert rows[1]["likes"] == 9  # the latest reactions row, written on D3
    assert rows[2]["body"] == "post two"
    latest = dict(zip(result.posts["post_key"].to_pylist(), result.source_update_time.to_pylist()))
    assert latest[1] == dt.datetime(2026, 11, 3, 0, 0, tzinfo=UTC)
    reactions = result.sources["gold.reactions"]
    assert reactions.touched_rows == 3 and reactions.null_keys == 1
    assert reactions.versions_collapsed == 2  # post 1 had three reaction rows
    assert result.sources["gold.texts"].versions_collapsed == 1


def test_a_day_with_no_posts_is_empty(catalog, sentiment_job, reactions_and_texts):
    job = job_for(sentiment_job, reactions_and_texts, text_field="body")
    result = read_partition(catalog, job, dt.date(2026, 12, 24))
    assert result.posts.num_rows == 0 and len(result.source_update_time) == 0


def test_max_records_caps_the_posts_and_counts_the_rest(catalog, sentiment_job, reactions_and_texts):
    raw = job_for(sentiment_job, reactions_and_texts, text_field="body").model_dump()
    raw["connector"]["source"]["max_records"] = 1
    result = read_partition(catalog, JobConfig.model_validate(raw), D2)
    assert result.posts["post_key"].to_pylist() == [1] and result.capped == 1


@pytest.mark.parametrize(
    ("index_type", "keys", "datetime_type", "values"),
    [
        (StringType(), ["a-1", "b-2"], TimestampType(), [dt.datetime(2026, 11, 2, 5), dt.datetime(2026, 11, 1, 23, 59)]),
        (LongType(), [10, 20], DateType(), [D2, D1]),
        (StringType(), ["x", "y"], StringType(), ["2026-11-02T07:00:00", "2026-11-01T07:00:00"]),
    ],
    ids=["string-key-naive-timestamp", "long-key-date", "string-key-iso-string"],
)
def test_any_index_and_datetime_types(catalog, sentiment_job, index_type, keys, datetime_type, values):
    table = create_table(catalog, "gold.custom", [("id", index_type), ("text", StringType()), ("at", datetime_type)])
    append_rows(table, [{"id": k, "text": f"post {k}", "at": v} for k, v in zip(keys, values)])
    job = job_for(sentiment_job, [{"database": "gold", "table": "custom", "datetime_field": "at", "index_field": "id"}])
    result = read_partition(catalog, job, D2)
    assert result.posts["id"].to_pylist() == [keys[0]]
    assert result.posts["text"].to_pylist() == [f"post {keys[0]}"]
    assert result.source_update_time[0].as_py().date() == D2


def test_uuid_and_decimal_keys_with_nested_columns_are_scored_and_moved_between_days(catalog, sentiment_job):
    """Keys of types Arrow kernels handle specially, and list/struct columns sent to the model, end to end."""
    provider = LocalProvider(VaderSentimentModel(), Sentiment)
    tags = ListType(10, StringType(), element_required=False)
    meta = StructType(NestedField(20, "shares", LongType(), required=False))
    for key_type, keys in [(UUIDType(), [uuid.uuid4(), uuid.uuid4()]), (DecimalType(10, 2), [Decimal("1.50"), Decimal("2.25")])]:
        name = str(key_type).split("(")[0]
        table = create_table(catalog, f"gold.posts_{name}", [("k", key_type), ("body", StringType()), ("tags", tags), ("meta", meta), ("at", TimestamptzType())])
        at = lambda day: dt.datetime.combine(day, dt.time(9), tzinfo=UTC)  # noqa: E731
        append_rows(table, [{"k": k, "body": "I love it", "tags": ["a"], "meta": {"shares": 1}, "at": at(D1)} for k in keys])
        append_rows(table, [{"k": keys[0], "body": "I hate it now", "tags": [], "meta": {"shares": 2}, "at": at(D2)}])
        raw = job_for(sentiment_job, [{"database": "gold", "table": f"posts_{name}", "datetime_field": "at", "index_field": "k"}],
                      text_field="body", include_fields=None).model_dump()
        raw["connector"]["target"].update(index_field="k", table=f"scores_{name}")
        job = JobConfig.model_validate(raw)
        assert enrich_partition(job, D1, catalog, provider).statuses == {"ok": 2}
        report = enrich_partition(job, D2, catalog, provider)
        assert report.write.moved_from_other_days == 1
        rows = {r["k"]: r for r in catalog.load_table(f"enriched.scores_{name}").scan().to_arrow().to_pylist()}
        assert sorted(rows, key=str) == sorted(keys, key=str)
        assert rows[keys[0]]["label"] == "negative" and rows[keys[0]]["partition_date"] == D2
        assert rows[keys[1]]["label"] == "positive" and rows[keys[1]]["partition_date"] == D1


def test_missing_configured_field_names_table_and_setting(catalog, sentiment_job, reactions_and_texts):
    tables = [dict(reactions_and_texts[0], datetime_field="changed_at"), reactions_and_texts[1]]
    with pytest.raises(SourceSchemaError, match=r"gold.reactions has no field 'changed_at' \(connector.source.tables.0.datetime_field\)"):
        read_partition(catalog, job_for(sentiment_job, tables), D2)


def test_datetime_field_of_an_unusable_type_is_rejected(catalog, sentiment_job, reactions_and_texts):
    tables = [dict(reactions_and_texts[0], datetime_field="likes"), reactions_and_texts[1]]
    with pytest.raises(SourceSchemaError, match=r"gold.reactions.likes is long, not a date, timestamp"):
        read_partition(catalog, job_for(sentiment_job, tables), D2)


def test_a_post_body_that_is_not_text_is_stored_as_failed(catalog, sentiment_job):
    """A job whose text_field is numeric: every post fails alone, named by the error, and nothing stops."""
    table = create_table(catalog, "gold.numbers", [("id", LongType()), ("body", LongType()), ("at", TimestamptzType())])
    append_rows(table, [{"id": 1, "body": 42, "at": dt.datetime(2026, 11, 2, 9, tzinfo=UTC)}])
    job = job_for(sentiment_job, [{"database": "gold", "table": "numbers", "datetime_field": "at", "index_field": "id"}],
                  text_field="body", include_fields=None, max_failed_share=1.0)
    raw = job.model_dump()
    raw["connector"]["target"]["index_field"] = "id"
    job = JobConfig.model_validate(raw)
    report = enrich_partition(job, D2, catalog, LocalProvider(VaderSentimentModel(), Sentiment))
    assert report.statuses == {"failed": 1}
    (row,) = catalog.load_table("enriched.social_media_sentiment").scan().to_arrow().to_pylist()
    assert row["id"] == 1 and row["status"] == "failed" and row["error"] == "body is not text (int)"


def test_progress_is_logged_with_rate_and_eta(catalog, sentiment_job, reactions_and_texts, caplog, monkeypatch):
    monkeypatch.setattr(enrichment, "PROGRESS_EVERY_SECONDS", 0.0)
    monkeypatch.setattr(enrichment, "CHUNK_POSTS", 1)  # one post per chunk: progress after each
    job = job_for(sentiment_job, reactions_and_texts, text_field="body", include_fields=None)
    with caplog.at_level(logging.INFO):
        report = enrich_partition(job, D2, catalog, LocalProvider(VaderSentimentModel(), Sentiment), log=logging.getLogger("t"))
    assert report.statuses == {"ok": 2}
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("scored ")]
    assert [line.split(" (")[0] for line in lines] == ["scored 1/2 posts", "scored 2/2 posts"]
    assert all("posts/s, ETA" in line for line in lines)
