from __future__ import annotations

import datetime as dt
import json
import logging
import time
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
    # Post 3 was not touched on D2; post 1 was, but was touched again on D3: it lives there.
    assert sorted(rows) == [2] and result.touched_later == 1
    assert rows[2]["body"] == "post two"
    reactions = result.sources["gold.reactions"]
    assert reactions.touched_rows == 3 and reactions.null_keys == 1
    assert result.version_days == {D1, D2, D3}  # where the target may hold posts 1 and 2 today

    result = read_partition(catalog, job, D3)
    rows = {r["post_key"]: r for r in result.posts.to_pylist()}
    assert sorted(rows) == [1]
    assert rows[1]["body"] == "final text"  # text from D1, latest of two versions
    assert rows[1]["likes"] == 9  # the latest reactions row, written on D3
    latest = dict(zip(result.posts["post_key"].to_pylist(), result.source_update_time.to_pylist()))
    assert latest[1] == dt.datetime(2026, 11, 3, 0, 0, tzinfo=UTC)
    assert result.partition_date.to_pylist() == [D3]
    assert result.sources["gold.reactions"].versions_collapsed == 2  # post 1 had three reaction rows
    assert result.sources["gold.texts"].versions_collapsed == 1


def test_a_day_with_no_posts_is_empty(catalog, sentiment_job, reactions_and_texts):
    job = job_for(sentiment_job, reactions_and_texts, text_field="body")
    result = read_partition(catalog, job, dt.date(2026, 12, 24))
    assert result.posts.num_rows == 0 and len(result.source_update_time) == 0


def test_max_records_caps_the_posts_and_counts_the_rest(catalog, sentiment_job, reactions_and_texts):
    raw = job_for(sentiment_job, reactions_and_texts, text_field="body").model_dump()
    raw["connector"]["source"]["max_records"] = 1
    result = read_partition(catalog, JobConfig.model_validate(raw), D1)
    assert result.posts["post_key"].to_pylist() == [3] and result.capped == 0  # post 1 lives on D3
    raw["connector"]["source"]["max_records"] = 1
    append_rows(catalog.load_table("gold.texts"), [{"post_key": 4, "body": "post four", "updated": dt.datetime(2026, 11, 1, 20, tzinfo=UTC)}])
    result = read_partition(catalog, JobConfig.model_validate(raw), D1)
    assert result.posts["post_key"].to_pylist() == [3] and result.capped == 1


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
        raw = job_for(sentiment_job, [{"database": "gold", "table": f"posts_{name}", "datetime_field": "at", "index_field": "k"}],
                      text_field="body", include_fields=None).model_dump()
        raw["connector"]["target"].update(index_field="k", table=f"scores_{name}")
        job = JobConfig.model_validate(raw)
        assert enrich_partition(job, D1, catalog, provider).statuses == {"ok": 2}
        # A later snapshot touches keys[0] again on D2: enriching D2 moves it there.
        append_rows(table, [{"k": keys[0], "body": "I hate it now", "tags": [], "meta": {"shares": 2}, "at": at(D2)}])
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


def test_a_text_field_that_is_not_a_string_column_fails_before_any_post_and_keeps_the_rows(catalog, sentiment_job):
    """A job whose text_field is numeric fails at the start, naming the column and its type; a target
    written before by a correct job is left exactly as it was."""
    table = create_table(catalog, "gold.numbers", [("id", LongType()), ("body", StringType()), ("n", LongType()), ("at", TimestamptzType())])
    append_rows(table, [{"id": k, "body": "I love it", "n": 42, "at": dt.datetime(2026, 11, 2, 9, tzinfo=UTC)} for k in range(3)])
    raw = job_for(sentiment_job, [{"database": "gold", "table": "numbers", "datetime_field": "at", "index_field": "id"}],
                  text_field="body", include_fields=None).model_dump()
    raw["connector"]["target"]["index_field"] = "id"
    provider = LocalProvider(VaderSentimentModel(), Sentiment)
    assert enrich_partition(JobConfig.model_validate(raw), D2, catalog, provider).statuses == {"ok": 3}
    target = catalog.load_table("enriched.social_media_sentiment")
    before = target.scan().to_arrow()

    raw["inference"]["text_field"] = "n"
    with pytest.raises(SourceSchemaError, match=r"inference.text_field 'n' is a long column of gold.numbers, not a string"):
        enrich_partition(JobConfig.model_validate(raw), D2, catalog, provider)
    target.refresh()
    assert target.scan().to_arrow().equals(before)


def test_progress_is_logged_while_the_model_is_slow_and_counts_failures_apart(catalog, sentiment_job, reactions_and_texts, caplog, monkeypatch):
    """A line at least every PROGRESS_EVERY_SECONDS, also while no answer comes; failed posts are not 'scored'."""
    monkeypatch.setattr(enrichment, "PROGRESS_EVERY_SECONDS", 0.05)
    append_rows(catalog.load_table("gold.texts"), [{"post_key": 5, "body": "  ", "updated": dt.datetime(2026, 11, 2, 14, tzinfo=UTC)}])

    class SlowVader(VaderSentimentModel):
        def score(self, fields, text):
            time.sleep(0.5)  # a request that hangs: the progress line must not go silent
            return super().score(fields, text)

    job = job_for(sentiment_job, reactions_and_texts, text_field="body", include_fields=None, max_failed_share=1.0)
    with caplog.at_level(logging.INFO):
        report = enrich_partition(job, D2, catalog, LocalProvider(SlowVader(), Sentiment), log=logging.getLogger("t"))
    assert report.statuses == {"ok": 1, "failed": 1}
    lines = [r.getMessage() for r in caplog.records if "posts done:" in r.getMessage()]
    waiting = [line for line in lines if line.startswith("1/2 posts done: 0 scored, 1 failed")]
    assert len(waiting) >= 3, lines  # several lines during the half second the one post took
    assert lines[-1].startswith("2/2 posts done: 1 scored, 1 failed, 0 from cache, 0 shared")
    assert "1 posts not scored: body is empty (post_key=5)" in caplog.text


def test_binary_map_and_struct_fields_go_to_the_model_as_json(catalog, sentiment_job):
    """Read from a real table: binary as base64 text, a map as an object, a struct as an object."""
    from pyiceberg.types import BinaryType, MapType

    from social_enrich.enrichment import prepare_chunk
    from social_enrich.inference.packing import build_messages

    labels = MapType(30, StringType(), 31, LongType(), value_required=False)
    meta = StructType(NestedField(40, "shares", LongType(), required=False), NestedField(41, "thumb", BinaryType(), required=False))
    table = create_table(catalog, "gold.typed", [("k", LongType()), ("body", StringType()), ("raw", BinaryType()),
                                                 ("counts", labels), ("meta", meta), ("at", TimestamptzType())])
    append_rows(table, [{"k": 1, "body": "I love it", "raw": b"\x00\xffhi", "counts": {"like": 3},
                         "meta": {"shares": 2, "thumb": b"\x01"}, "at": dt.datetime(2026, 11, 2, 9, tzinfo=UTC)}])
    job = job_for(sentiment_job, [{"database": "gold", "table": "typed", "datetime_field": "at", "index_field": "k"}],
                  text_field="body", include_fields=["body", "raw", "counts", "meta"])
    posts = read_partition(catalog, job, D2)
    chunk = prepare_chunk(job, posts.posts, ["body", "raw", "counts", "meta"])
    assert chunk.fields == [{"body": "I love it", "raw": "AP9oaQ==", "counts": {"like": 3}, "meta": {"shares": 2, "thumb": "AQ=="}}]
    sent = build_messages("p", [chunk.post(0)])[1]["content"]
    body = json.loads(sent)
    assert "b'" not in sent and dict(zip(body["fields"], body["posts"][0]))["raw"] == "AP9oaQ=="
