"""A post lives in the partition of its latest touch in any source, whatever the order, ranges or
number of writers that materialize the days: the target table is the same every time."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import random
from collections import Counter

import pyarrow.compute as pc
import pytest

from social_enrich import demo
from social_enrich.config import JobConfig
from social_enrich.enrichment import enrich_days
from social_enrich.inference.local_sentiment import LocalProvider, VaderSentimentModel
from social_enrich.inference.response_models import Sentiment
from social_enrich.lakehouse import target_table
from social_enrich.lakehouse.catalog import open_catalog
from social_enrich_tests.conftest import SAMPLE_START
from social_enrich_tests.dagster_helpers import materialize_days
from social_enrich_tests.gold_tables import latest_touch_days

DAYS = [SAMPLE_START + dt.timedelta(days=n) for n in range(5)]
WRITER_SECONDS = 120


def with_target(job: JobConfig, table: str) -> JobConfig:
    raw = job.model_dump()
    raw["connector"]["target"]["table"] = table
    return JobConfig.model_validate(raw)


def run(job: JobConfig, catalog, ranges: list[tuple[dt.date, dt.date]]) -> None:
    provider = LocalProvider(VaderSentimentModel(), Sentiment)
    for first, last in ranges:
        enrich_days(job, first, last, catalog, provider)


def content(catalog, job: JobConfig) -> list[tuple]:
    rows = catalog.load_table(job.connector.target.identifier).scan().to_arrow()
    keys = rows["post_key"].to_pylist()
    assert len(keys) == len(set(keys)), "a post has more than one row"
    columns = ["post_key", "partition_date", "label", "status", "input_hash", "source_update_time"]
    return sorted(zip(*(rows[c].to_pylist() for c in columns)))


@pytest.fixture
def week(catalog):
    """Five days of sample gold, with posts updated on later days in either table."""
    return demo.seed_gold_tables(catalog, posts=500, days=len(DAYS), start=SAMPLE_START, update_share=0.4)


def single(days):
    return [(d, d) for d in days]


ORDERS = {
    "forward": single(DAYS),
    "backward": single(reversed(DAYS)),
    "shuffled": single(random.Random(7).sample(DAYS, len(DAYS))),
    "overlapping ranges": [(DAYS[0], DAYS[2]), (DAYS[1], DAYS[4]), (DAYS[3], DAYS[4])],
    "old days again after later ones": [*single(DAYS), (DAYS[0], DAYS[0]), (DAYS[1], DAYS[2]), (DAYS[0], DAYS[0])],
    "one range": [(DAYS[0], DAYS[4])],
}


def test_every_order_gives_the_same_table_and_each_post_lives_on_its_latest_touch(catalog, sentiment_job, week):
    expected = latest_touch_days(catalog)
    tables = {}
    for n, (name, ranges) in enumerate(ORDERS.items()):
        job = with_target(sentiment_job, f"order_{n}")
        run(job, catalog, ranges)
        tables[name] = content(catalog, job)
        assert {row[0]: row[1] for row in tables[name]} == expected, name
    reference = tables["forward"]
    assert len(reference) == week.posts
    for name, table in tables.items():
        assert table == reference, f"{name} differs from forward"


def test_a_write_in_many_slices_is_one_snapshot_and_the_same_table(catalog, sentiment_job, week, monkeypatch):
    whole = with_target(sentiment_job, "in_one_slice")
    run(whole, catalog, [(DAYS[0], DAYS[4])])
    monkeypatch.setattr(target_table, "APPEND_SLICE_ROWS", 37)  # the 500 posts go to files 37 rows at a time
    sliced = with_target(sentiment_job, "in_slices")
    run(sliced, catalog, [(DAYS[0], DAYS[4])])
    table = catalog.load_table(sliced.connector.target.identifier)
    assert [s.summary.operation.value for s in table.snapshots()] == ["append"]
    assert len(list(table.scan().plan_files())) >= week.posts // 37
    assert content(catalog, sliced) == content(catalog, whole)


def test_a_later_touch_moves_the_post_and_its_old_day_no_longer_holds_it(catalog, sentiment_job, week):
    """As the snapshot sensor sees it: the old day is written, then a new snapshot touches a post again."""
    run(sentiment_job, catalog, single(DAYS[:2]))
    table = catalog.load_table("enriched.social_media_sentiment")
    on_first = table.scan().to_arrow().filter(pc.equal(table.scan().to_arrow()["partition_date"], DAYS[0]))
    post = on_first["post_key"][0].as_py()
    fact = catalog.load_table("gold.fact_social_media_reaction_post")
    row = fact.scan().to_arrow().filter(pc.equal(fact.scan().to_arrow()["post_key"], post)).slice(0, 1).to_pylist()[0]
    fact.append(fact.scan().to_arrow().schema.empty_table().from_pylist(
        [{**row, "last_update_time": dt.datetime.combine(DAYS[3], dt.time(8), tzinfo=dt.timezone.utc)}], schema=fact.schema().as_arrow()))

    run(sentiment_job, catalog, [(DAYS[0], DAYS[0])])  # re-running the old day does not pull it back or drop it
    assert dict((r[0], r[1]) for r in content(catalog, sentiment_job))[post] == DAYS[0]
    report = enrich_days(sentiment_job, DAYS[3], DAYS[3], catalog, LocalProvider(VaderSentimentModel(), Sentiment))
    assert report.write.moved_from_other_days >= 1
    where = dict((r[0], r[1]) for r in content(catalog, sentiment_job))
    assert where[post] == DAYS[3]


# --- concurrent writers ----------------------------------------------------------------


def _writer(home: str, first: str, last: str, results) -> None:
    import os

    os.environ["SOCIAL_ENRICH_HOME"] = home
    from social_enrich.config import load_job_config
    from social_enrich.environment import BUILTIN_JOBS_DIR

    job = load_job_config(BUILTIN_JOBS_DIR / "sentiment" / "defs.yaml")
    try:
        report = enrich_days(job, dt.date.fromisoformat(first), dt.date.fromisoformat(last), open_catalog(),
                             LocalProvider(VaderSentimentModel(), Sentiment))
        results.put((first, "ok", report.write.commit_attempts))
    except Exception as e:  # reported to the test, which fails on it
        results.put((first, f"{type(e).__name__}: {e}", 0))


def test_concurrent_writers_all_land_every_post_once(catalog, sentiment_job, week, state_home):
    """Four first runs of different days create the target together, two more write the same day."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    ranges = [*single(DAYS[:4]), (DAYS[4], DAYS[4]), (DAYS[4], DAYS[4])]
    writers = [context.Process(target=_writer, args=(str(state_home), a.isoformat(), b.isoformat(), results)) for a, b in ranges]
    for writer in writers:
        writer.start()
    try:
        outcomes = [results.get(timeout=WRITER_SECONDS) for _ in writers]
    finally:
        for writer in writers:
            writer.join(timeout=10)
            if writer.is_alive():
                writer.kill()
    assert [o for o in outcomes if o[1] != "ok"] == []
    assert content(catalog, sentiment_job) == content_of_one_run(catalog, sentiment_job)


def content_of_one_run(catalog, sentiment_job) -> list[tuple]:
    job = with_target(sentiment_job, "one_writer")
    run(job, catalog, [(DAYS[0], DAYS[-1])])
    return content(catalog, job)


# --- per-partition figures -----------------------------------------------------------


def test_a_range_run_gives_each_day_its_own_figures(catalog, week, instance):
    result = materialize_days(instance, DAYS[0], DAYS[-1])
    assert result.success
    events = {e.partition: {k: v.value for k, v in e.metadata.items()} for e in result.asset_materializations_for_node("social_media_sentiment")}
    assert sorted(events) == [d.isoformat() for d in DAYS]
    rows = catalog.load_table("enriched.social_media_sentiment").scan().to_arrow().to_pylist()
    for day in DAYS:
        mine = [r for r in rows if r["partition_date"] == day]
        meta = events[day.isoformat()]
        assert meta["dagster/row_count"] == meta["dagster/partition_row_count"] == meta["posts_touched"] == len(mine)
        assert meta["table_row_count"] == len(rows)
        statuses = Counter(r["status"] for r in mine)
        assert (meta["posts_scored"], meta["posts_failed"]) == (statuses["ok"], statuses["failed"])
        labels = Counter(r["label"] for r in mine if r["label"] is not None)
        assert meta["labels"] == dict(labels)
        assert {k.split("/")[1]: v for k, v in meta.items() if k.startswith("labels/")} == dict(labels)
        assert meta["run_days"] == f"{DAYS[0]}..{DAYS[-1]}"
    assert len({events[d.isoformat()]["posts_touched"] for d in DAYS}) > 1  # the days differ, and so do their figures
