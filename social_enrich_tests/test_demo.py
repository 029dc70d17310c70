"""Tests for social_enrich.demo against a real pyiceberg SQL catalog on SQLite."""

import collections
import datetime

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.transforms import DayTransform
from pyiceberg.types import IntegerType, LongType, StringType, TimestamptzType
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from social_enrich import demo
from social_enrich.demo import DIM_TABLE, FACT_TABLE, TRUTH_TABLE, generate_posts, intended_labels, seed_gold_tables

START = datetime.date(2026, 11, 1)


def make_catalog(path) -> SqlCatalog:
    return SqlCatalog("t", uri=f"sqlite:///{path}/c.db", warehouse=f"file://{path}/wh")


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """One default-sized demo (3000 posts, 7 days, 3 snapshots) shared by the read-only tests."""
    catalog = make_catalog(tmp_path_factory.mktemp("seeded"))
    summary = seed_gold_tables(catalog)
    return catalog, summary


def read(catalog, name, namespace="gold") -> pa.Table:
    return catalog.load_table((namespace, name)).scan().to_arrow()


def read_sorted(catalog, name) -> pa.Table:
    table = read(catalog, name)
    keys = [key for key in ("post_key", "last_update_time") if key in table.column_names]
    return table.sort_by([(key, "ascending") for key in keys])


def texts_with_labels(catalog) -> list[tuple[str | None, str]]:
    labels = intended_labels(catalog)
    dim = read(catalog, DIM_TABLE)
    return [(text, labels[key]) for key, text in zip(dim["post_key"].to_pylist(), dim["post_text"].to_pylist())]


def test_schemas_match_the_spec(seeded):
    catalog, _ = seeded
    expected = {
        FACT_TABLE: [
            ("post_key", LongType(), True), ("channel_key", IntegerType(), False),
            ("date_key", IntegerType(), False), ("hashtag_key", IntegerType(), False),
            *[(name, LongType(), False) for name in demo.REACTIONS],
            ("comment_count", LongType(), False), ("share_count", LongType(), False),
            ("last_update_time", TimestamptzType(), True),
        ],
        DIM_TABLE: [
            ("post_key", LongType(), True), ("channel_key", IntegerType(), False),
            ("channel_name", StringType(), False), ("author_handle", StringType(), False),
            ("post_text", StringType(), False), ("post_url", StringType(), False),
            ("hashtags", StringType(), False), ("language", StringType(), False),
            ("created_time", TimestamptzType(), False), ("last_update_time", TimestamptzType(), True),
        ],
        TRUTH_TABLE: [("post_key", LongType(), True), ("intended_label", StringType(), True)],
    }
    for name, fields in expected.items():
        schema = catalog.load_table(("gold", name)).schema()
        assert [(f.name, f.field_type, f.required) for f in schema.fields] == fields, name


def test_gold_tables_partitioned_by_day_of_last_update(seeded):
    catalog, _ = seeded
    for name in (FACT_TABLE, DIM_TABLE):
        table = catalog.load_table(("gold", name))
        (field,) = table.spec().fields
        assert isinstance(field.transform, DayTransform)
        assert table.schema().find_field(field.source_id).name == "last_update_time"
    assert catalog.load_table(("gold", TRUTH_TABLE)).spec().is_unpartitioned()


def test_several_snapshots_and_row_counts_match_summary(seeded):
    catalog, summary = seeded
    assert summary.snapshots[FACT_TABLE] == summary.snapshots[DIM_TABLE] == 3
    for name in (FACT_TABLE, DIM_TABLE, TRUTH_TABLE):
        assert len(catalog.load_table(("gold", name)).snapshots()) == summary.snapshots[name]
    fact, dim, truth = (read(catalog, name) for name in (FACT_TABLE, DIM_TABLE, TRUTH_TABLE))
    assert (fact.num_rows, dim.num_rows, truth.num_rows) == (summary.fact_rows, summary.dim_rows, summary.posts)
    assert summary.posts == 3000 == len(pc.unique(fact["post_key"])) == len(pc.unique(dim["post_key"]))
    assert summary.days == [START + datetime.timedelta(days=d) for d in range(7)]


def test_values_are_plausible(seeded):
    catalog, _ = seeded
    fact, dim = read(catalog, FACT_TABLE), read(catalog, DIM_TABLE)
    assert set(dim["channel_name"].to_pylist()) == {"facebook", "instagram", "x", "tiktok", "linkedin", "youtube"}
    assert set(dim["language"].to_pylist()) == {"en"}
    assert all(url.startswith("https://") for url in dim["post_url"].to_pylist())
    assert all(tag.startswith("#") for tags in dim["hashtags"].to_pylist() for tag in tags.split())
    for row in fact.select(["date_key", "last_update_time"]).to_pylist():
        when = row["last_update_time"]
        assert row["date_key"] == when.year * 10_000 + when.month * 100 + when.day
    for row in dim.select(["created_time", "last_update_time"]).to_pylist():
        assert row["created_time"] <= row["last_update_time"]


def test_updates_add_later_versions_of_a_post(seeded):
    catalog, _ = seeded
    fact, dim = read(catalog, FACT_TABLE).to_pylist(), read(catalog, DIM_TABLE).to_pylist()
    versions = collections.defaultdict(list)
    for row in fact:
        versions[row["post_key"]].append(row)
    updated = {
        key: sorted(rows, key=lambda r: r["last_update_time"]) for key, rows in versions.items() if len(rows) > 1
    }
    assert 0.10 * 3000 < len(updated) < 0.20 * 3000  # update_share=0.15
    for first, second in updated.values():
        assert first["last_update_time"] < second["last_update_time"]
        assert first["reaction_like"] < second["reaction_like"]
        assert second["last_update_time"].date() > first["last_update_time"].date() or (
            second["last_update_time"].date() == START + datetime.timedelta(days=6)  # capped to the last day
        )

    # Some posts also get an edited text row; others are touched later only in the fact table.
    dim_versions = collections.Counter(row["post_key"] for row in dim)
    edited = {key for key, count in dim_versions.items() if count > 1}
    assert edited and edited < set(updated)
    assert len(set(updated) - edited) > len(edited)


def test_every_post_has_a_label_in_rough_proportions(seeded):
    catalog, summary = seeded
    labels = intended_labels(catalog)
    assert set(labels) == set(read(catalog, FACT_TABLE)["post_key"].to_pylist())
    shares = {label: count / summary.posts for label, count in collections.Counter(labels.values()).items()}
    for label, expected in {"positive": 0.35, "negative": 0.30, "neutral": 0.25, "mixed": 0.10}.items():
        assert shares[label] == pytest.approx(expected, abs=0.04), label


def test_truth_table_is_not_in_the_gold_tables(seeded):
    catalog, _ = seeded
    for name in (FACT_TABLE, DIM_TABLE):
        assert "intended_label" not in catalog.load_table(("gold", name)).schema().column_names


def test_texts_are_varied_and_include_special_cases(seeded):
    catalog, _ = seeded
    rows = texts_with_labels(catalog)
    texts = [text for text, _ in rows]
    assert len(set(texts)) > 200
    present = [t for t in texts if t]
    assert any("😍" in t or "🎉" in t for t in present)
    assert any("😡" in t for t in present)
    assert any("https://" in t for t in present)
    assert any(t.startswith("@") for t in present)
    assert any(" #" in t for t in present)
    assert "" in texts
    assert None in texts
    assert any(t.isspace() for t in present)
    assert any(len(t) > 5000 for t in present)
    for text, label in rows:
        if text is None or not text.strip():
            assert label == "neutral"


def test_same_seed_same_data_other_seed_different():
    def posts(seed):
        (batches,) = generate_posts(posts=500, days=5, start=START, seed=seed)  # one batch: fact, dim, truth
        return [pa.Table.from_batches([batch]) for batch in batches]

    assert all(a.equals(b) for a, b in zip(posts(1), posts(1)))
    assert not posts(1)[1].equals(posts(2)[1])


def test_replace_twice_keeps_the_same_data(tmp_path):
    catalog = make_catalog(tmp_path)
    first = seed_gold_tables(catalog, posts=400, days=4)
    before = {name: read_sorted(catalog, name) for name in (FACT_TABLE, DIM_TABLE, TRUTH_TABLE)}
    second = seed_gold_tables(catalog, posts=400, days=4)
    assert first == second
    for name, table in before.items():
        assert read_sorted(catalog, name).equals(table), name


def test_replace_false_appends_new_posts(tmp_path):
    catalog = make_catalog(tmp_path)
    seed_gold_tables(catalog, posts=200, days=3)
    seed_gold_tables(catalog, posts=100, days=3, replace=False, seed=8)
    labels = intended_labels(catalog)
    assert sorted(labels) == list(range(1, 301))


def test_many_batches_still_write_one_append_per_day_range(tmp_path, monkeypatch):
    # Small batches exercise the streaming path large demos take (50k posts per batch).
    monkeypatch.setattr(demo, "BATCH_POSTS", 250)
    catalog = make_catalog(tmp_path)
    summary = seed_gold_tables(catalog, namespace="demo", posts=2000, days=10, snapshots=4)
    assert summary.snapshots == {FACT_TABLE: 4, DIM_TABLE: 4, TRUTH_TABLE: 8}
    assert len(summary.days) == 10
    # 10 days in 4 appends: days 0-2, 3-4, 5-7, 8-9. Snapshot k holds exactly the rows up to its last day.
    for name in (FACT_TABLE, DIM_TABLE):
        table = catalog.load_table(("demo", name))
        day_of_rows = [(t.date() - START).days for t in read(catalog, name, "demo")["last_update_time"].to_pylist()]
        assert len(day_of_rows) == (summary.fact_rows if name == FACT_TABLE else summary.dim_rows)
        for snapshot, last_day in zip(table.snapshots(), (2, 4, 7, 9), strict=True):
            rows = table.scan(snapshot_id=snapshot.snapshot_id).to_arrow().num_rows
            assert rows == sum(day <= last_day for day in day_of_rows), (name, last_day)


def test_batches_never_exceed_the_batch_size(monkeypatch):
    monkeypatch.setattr(demo, "BATCH_POSTS", 300)
    truths = [truth for _, _, truth in generate_posts(posts=1000, days=3, start=START, seed=1)]
    assert [t.num_rows for t in truths] == [300, 300, 300, 100]


def test_vader_agrees_with_intended_labels(seeded):
    catalog, _ = seeded
    analyzer = SentimentIntensityAnalyzer()

    def vader_label(text):
        compound = analyzer.polarity_scores(text or "")["compound"]
        return "positive" if compound >= 0.05 else "negative" if compound <= -0.05 else "neutral"

    scored = [(vader_label(text), label) for text, label in texts_with_labels(catalog) if label != "mixed"]
    agreement = sum(got == want for got, want in scored) / len(scored)
    assert agreement >= 0.80, f"VADER agreement {agreement:.1%}"
