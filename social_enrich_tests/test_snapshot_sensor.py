"""The gold snapshot sensor against real Iceberg tables and a real Dagster instance, and the
metadata reading beneath it (``days_touched_since``)."""

from __future__ import annotations

import datetime as dt
import json

import dagster as dg
import pytest
from pyiceberg.catalog import Catalog
from pyiceberg.expressions import EqualTo, GreaterThanOrEqual
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Operation, Summary
from pyiceberg.types import DateType, LongType, StringType, TimestampType, TimestamptzType

from social_enrich import demo
from social_enrich.assets import build_enrichment_asset, gold_source_assets
from social_enrich.config import JobConfig, load_job_config
from social_enrich.environment import BUILTIN_JOBS_DIR
from social_enrich.resources import environment_resources
from social_enrich.lakehouse.snapshot_changes import days_touched_since
from social_enrich.sensors.snapshot_sensor import SnapshotCursorError, build_snapshot_sensor
from social_enrich_tests.dagster_helpers import sentiment_job_text
from social_enrich_tests.emulated_azure import append_posts
from social_enrich_tests.gold_tables import append_rows, create_table

FACT = "gold.fact_social_media_reaction_post"
DIM = "gold.dim_post_details"
ASSET = dg.AssetKey("social_media_sentiment")
NOV = [dt.date(2026, 11, d) for d in range(1, 31)]  # NOV[0] is 2026-11-01, the first partition


def day(n: int) -> dt.date:
    return NOV[n - 1]


def at(when: dt.date, hour: int = 12) -> dt.datetime:
    return dt.datetime.combine(when, dt.time(hour), dt.timezone.utc)


class Sensor:
    """The sensor of a job, ticked as the daemon ticks it: the cursor carried over, the
    observations reported to the instance."""

    def __init__(self, job: JobConfig, instance: dg.DagsterInstance):
        self.instance = instance
        asset = build_enrichment_asset(job)
        self.definition = build_snapshot_sensor(job, asset)
        self.defs = dg.Definitions(assets=[*gold_source_assets([job]), asset], sensors=[self.definition],
                                   resources=environment_resources())
        self.cursor: str | None = None

    def tick(self, cursor: str | None = None) -> dg.SensorResult:
        context = dg.build_sensor_context(instance=self.instance, cursor=cursor or self.cursor, definitions=self.defs, resources=self.defs.resources)
        result = self.definition.evaluate_tick(context)
        for event in result.asset_events:  # what the sensor daemon does with them
            self.instance.report_runless_asset_event(event)
        self.cursor = result.cursor
        return result

    def tables(self) -> dict:
        return json.loads(self.cursor)["tables"]


def snapshot_id(catalog: Catalog, identifier: str) -> int:
    return catalog.load_table(identifier).current_snapshot().snapshot_id


def partition_keys(result) -> list[str]:
    return [r.partition_key for r in result.run_requests]


@pytest.fixture
def sensor(sentiment_job, instance) -> Sensor:
    return Sensor(sentiment_job, instance)


@pytest.fixture
def log_lines(capsys: pytest.CaptureFixture):
    """The messages the sensor logged through ``context.log`` so far: Dagster's console logger writes
    them to stderr (its logger is not attached to Python's logging tree, so caplog does not see them)."""
    lines: list[str] = []

    def read() -> list[str]:
        lines.extend(line.split(" - ", 3)[-1] for line in capsys.readouterr().err.splitlines())
        return lines

    return read


# --- The sensor --------------------------------------------------------------------


def test_definition(sentiment_job, sensor):
    definition = sensor.definition
    assert definition.name == "sentiment_gold_snapshots"
    assert definition.minimum_interval_seconds == sentiment_job.automation.sensor_interval_seconds
    assert definition.default_status == dg.DefaultSensorStatus.STOPPED
    dg.Definitions.validate_loadable(sensor.defs)


def test_first_tick_records_the_snapshots_and_requests_nothing(catalog, seeded, sensor, log_lines):
    result = sensor.tick()
    assert result.run_requests == []
    cursor = json.loads(result.cursor)
    assert cursor["version"] == 1
    assert cursor["tables"] == {FACT: snapshot_id(catalog, FACT), DIM: snapshot_id(catalog, DIM)}
    assert any("launch a backfill of social_media_sentiment" in line and "--partition YYYY-MM-DD" in line for line in log_lines())


def test_an_append_on_one_day_requests_exactly_that_day(catalog, seeded, sensor):
    sensor.tick()
    append_posts(catalog, {9001: "new post"}, day(5))
    result = sensor.tick()
    assert partition_keys(result) == ["2026-11-05"]
    (request,) = result.run_requests
    assert request.asset_selection == [ASSET]
    assert request.tags["social_enrich/trigger"] == "gold_snapshot"
    assert request.run_key == f"gold_snapshot:2026-11-05:{DIM}@{snapshot_id(catalog, DIM)},{FACT}@{snapshot_id(catalog, FACT)}"
    assert sensor.tables() == {FACT: snapshot_id(catalog, FACT), DIM: snapshot_id(catalog, DIM)}


def test_snapshots_between_ticks_collapse_into_one_request_per_day(catalog, seeded, sensor):
    sensor.tick()
    append_posts(catalog, {9001: "a"}, day(4))
    append_posts(catalog, {9002: "b"}, day(5))
    append_posts(catalog, {9003: "c"}, day(4))  # 3 snapshots per table, 2 days
    result = sensor.tick()
    assert partition_keys(result) == ["2026-11-04", "2026-11-05"]
    # Day 4's key names the latest snapshots touching it: a later snapshot asks again.
    assert result.run_requests[0].run_key.endswith(f"{DIM}@{snapshot_id(catalog, DIM)},{FACT}@{snapshot_id(catalog, FACT)}")


def test_a_repeated_tick_with_the_same_cursor_asks_with_the_same_run_keys(catalog, seeded, sensor):
    sensor.tick()
    before = sensor.cursor
    append_posts(catalog, {9001: "a"}, day(4))
    append_posts(catalog, {9002: "b"}, day(6))
    first = sensor.tick(before)
    again = sensor.tick(before)
    assert [r.run_key for r in first.run_requests] == [r.run_key for r in again.run_requests]
    assert len({r.run_key for r in first.run_requests}) == 2
    assert first.cursor == again.cursor


def test_a_delete_only_snapshot_requests_nothing_but_moves_the_cursor(catalog, seeded, sensor, log_lines):
    sensor.tick()
    before = sensor.tables()
    table = catalog.load_table(FACT)
    table.delete(GreaterThanOrEqual("last_update_time", "2026-11-03T00:00:00+00:00"))  # whole files: a delete
    assert catalog.load_table(FACT).current_snapshot().summary.operation == Operation.DELETE
    result = sensor.tick()
    assert result.run_requests == []
    assert sensor.tables()[FACT] == snapshot_id(catalog, FACT) != before[FACT]
    assert sensor.tables()[DIM] == before[DIM]
    assert f"{FACT}: snapshot {snapshot_id(catalog, FACT)} (delete) touched no day" in log_lines()


def test_a_table_that_does_not_exist_yet_is_watched_until_it_appears(catalog, sensor, log_lines):
    result = sensor.tick()
    assert result.run_requests == []
    assert sensor.tables() == {FACT: None, DIM: None}
    assert f"{FACT} does not exist yet; watching for it" in log_lines()
    demo.seed_gold_tables(catalog, posts=60, days=3, start=day(1))
    result = sensor.tick()  # every snapshot of a table that appeared is new
    assert partition_keys(result) == ["2026-11-01", "2026-11-02", "2026-11-03"]
    assert sensor.tables() == {FACT: snapshot_id(catalog, FACT), DIM: snapshot_id(catalog, DIM)}


def test_a_re_created_table_re_enriches_its_latest_days(catalog, seeded, instance, tmp_path, log_lines):
    job = load_job_config(_job_yaml(tmp_path, "automation: {fallback_days: 2}"))
    sensor = Sensor(job, instance)
    sensor.tick()
    old = sensor.tables()[DIM]
    demo.seed_gold_tables(catalog, posts=60, days=3, start=day(1))  # drops and re-creates both tables
    result = sensor.tick()
    assert partition_keys(result) == ["2026-11-02", "2026-11-03"]
    assert (
        f"snapshot {old} of {DIM} is no longer in its history (table re-created or rolled back): "
        "re-enriching its latest 2 days, 2026-11-02..2026-11-03"
    ) in log_lines()


# Raised inside Dagster itself when it checks a sensor's backfill request (SensorDefinition.validate_backfill_requests).
@pytest.mark.filterwarnings("ignore:Function `AssetSelection.keys` is deprecated:DeprecationWarning")
def test_one_snapshot_over_200_days_asks_for_one_backfill(catalog, seeded, monkeypatch, instance, log_lines):
    monkeypatch.setenv("SOCIAL_ENRICH_START_DATE", "2026-01-01")
    job = load_job_config(BUILTIN_JOBS_DIR / "sentiment" / "defs.yaml")
    sensor = Sensor(job, instance)
    sensor.tick()
    days = [dt.date(2026, 1, 1) + dt.timedelta(days=n) for n in range(200)]
    append_rows(catalog.load_table(FACT), [{"post_key": 10_000 + n, "last_update_time": at(d)} for n, d in enumerate(days)])
    result = sensor.tick()
    (request,) = result.run_requests
    assert request.requires_backfill_daemon()
    assert request.tags["social_enrich/trigger"] == "gold_snapshot"
    subset = request.asset_graph_subset
    assert subset.asset_keys == {ASSET}
    assert sorted(subset.get_partitions_subset(ASSET).get_partition_keys()) == [d.isoformat() for d in days]
    assert any("requesting one backfill of 2026-01-01..2026-07-19" in line for line in log_lines())


def test_a_week_off_asks_for_each_day_in_one_tick(catalog, seeded, sensor):
    sensor.tick()
    for n in range(4, 11):
        append_posts(catalog, {9000 + n: f"post of day {n}"}, day(n))
    result = sensor.tick()
    assert partition_keys(result) == [day(n).isoformat() for n in range(4, 11)]
    assert all(r.run_key.startswith(f"gold_snapshot:{r.partition_key}:") for r in result.run_requests)


def test_days_without_a_partition_yet_wait_in_the_cursor(catalog, seeded, sensor, log_lines):
    sensor.tick()
    today = dt.datetime.now(dt.timezone.utc).date()
    later = today + dt.timedelta(days=2)  # its partition cannot exist yet
    early = dt.date(2026, 10, 30)  # before connector.source.start_date: never a partition
    append_posts(catalog, {9001: "from the future"}, later)
    waiting_for = {FACT: snapshot_id(catalog, FACT), DIM: snapshot_id(catalog, DIM)}
    append_posts(catalog, {9002: "too early"}, early)
    result = sensor.tick()
    assert result.run_requests == []
    assert json.loads(sensor.cursor)["pending_days"] == {later.isoformat(): waiting_for}
    assert any(line.startswith(f"holding {later}") for line in log_lines())
    # The skip message says the same as the log: days are held, not "nothing touched".
    assert result.skip_message.startswith(f"holding {later}: touched by new gold snapshots, but without a partition yet")
    assert any(line.startswith("not requesting 2026-10-30: before the first partition") for line in log_lines())

    # Once the day has a partition (here: a cursor written when day 7 was still in the future), it is asked for.
    waiting = json.loads(sensor.cursor)
    waiting["pending_days"]["2026-11-07"] = {FACT: 11, DIM: 12}
    result = sensor.tick(json.dumps(waiting))
    assert [r.run_key for r in result.run_requests] == [f"gold_snapshot:2026-11-07:{DIM}@12,{FACT}@11"]
    assert later.isoformat() in json.loads(result.cursor)["pending_days"]
    assert "2026-11-07" not in json.loads(result.cursor)["pending_days"]


def test_an_unpartitioned_table_is_read_through_its_column_bounds(catalog, sensor):
    columns = [("post_key", LongType()), ("post_text", StringType()), ("last_update_time", TimestamptzType())]
    fact, dim = create_table(catalog, FACT, columns), create_table(catalog, DIM, columns)
    append_rows(dim, [{"post_key": 1, "post_text": "x", "last_update_time": at(day(1))}])
    sensor.tick()
    append_rows(dim, [{"post_key": 2, "post_text": "y", "last_update_time": at(day(2), 22)},
                      {"post_key": 3, "post_text": "z", "last_update_time": at(day(4), 1)}])
    result = sensor.tick()
    assert partition_keys(result) == ["2026-11-02", "2026-11-03", "2026-11-04"]  # every day from lower to upper bound
    append_rows(fact, [{"post_key": 2, "last_update_time": at(day(6))}])  # a table empty until now
    assert partition_keys(sensor.tick()) == ["2026-11-06"]


def test_the_sensor_records_each_gold_table_s_data_version(catalog, seeded, sensor, instance):
    sensor.tick()
    append_posts(catalog, {9001: "a"}, day(4))
    sensor.tick()
    for identifier in (FACT, DIM):
        key = dg.AssetKey(identifier.split("."))
        record = instance.get_latest_data_version_record(key, is_source=True)
        observation = record.event_log_entry.asset_observation
        assert observation.data_version == str(snapshot_id(catalog, identifier))
        assert observation.metadata["days_touched"].value == "2026-11-04"


@pytest.mark.parametrize(
    ("cursor", "message"),
    [
        ("not json", "the cursor is not JSON"),
        ('{"tables": {}}', "the cursor has no version"),
        ('{"version": 2, "tables": {}}', "version 2, written by a newer social_enrich"),
        ('{"version": 0, "tables": {}}', "unknown cursor version 0"),
        ('{"version": 1, "tables": []}', "malformed version 1 cursor"),
        ('{"version": 1, "tables": {"gold.x": "abc"}}', "malformed version 1 cursor"),
    ],
)
def test_a_bad_cursor_fails_the_tick_saying_how_to_reset_it(sensor, cursor, message):
    with pytest.raises(SnapshotCursorError, match=message) as raised:
        sensor.tick(cursor)
    assert "dagster sensor cursor sentiment_gold_snapshots --delete" in str(raised.value)


def _job_yaml(tmp_path, extra: str):
    path = tmp_path / "jobs" / "sentiment.yaml"
    path.parent.mkdir()
    path.write_text(sentiment_job_text() + extra + "\n")
    return path


# --- days_touched_since ------------------------------------------------------------


def test_days_from_day_partition_values_over_the_whole_history(catalog, seeded):
    table = catalog.load_table(DIM)
    changes = days_touched_since(table, None, "last_update_time", fallback_days=7)
    assert changes.current_snapshot_id == table.current_snapshot().snapshot_id
    assert changes.days == frozenset({day(1), day(2), day(3)})
    assert [s.snapshot_id for s in changes.snapshots] == [s.snapshot_id for s in table.snapshots()]
    assert {s.operation for s in changes.snapshots} == {"append"}
    assert changes.fallback is None
    latest = days_touched_since(table, changes.current_snapshot_id, "last_update_time", 7)
    assert latest.days == frozenset() and latest.snapshots == ()


def test_a_row_level_delete_rewrites_its_file_so_its_day_counts(catalog, seeded):
    table = catalog.load_table(FACT)
    before = table.current_snapshot().snapshot_id
    table.delete(EqualTo("post_key", 1))  # copy-on-write: an overwrite that re-adds the rest of the file
    changes = days_touched_since(catalog.load_table(FACT), before, "last_update_time", 7)
    assert [(s.operation, s.days) for s in changes.snapshots] == [("overwrite", frozenset({day(1)}))]


def test_a_replace_snapshot_touches_no_day(catalog, seeded):
    # pyiceberg cannot write a replace (compaction) snapshot; relabel the last append as one, as Spark's
    # rewrite_data_files would have written it.
    table = catalog.load_table(DIM)
    current = table.current_snapshot()
    relabelled = current.model_copy(update={"summary": Summary(Operation.REPLACE)})
    snapshots = [relabelled if s.snapshot_id == current.snapshot_id else s for s in table.metadata.snapshots]
    metadata = table.metadata.model_copy(update={"snapshots": snapshots})
    compacted = Table(table.name(), metadata, table.metadata_location, table.io, catalog)
    changes = days_touched_since(compacted, current.parent_snapshot_id, "last_update_time", 7)
    assert changes.snapshots == ((current.snapshot_id, "replace", frozenset()),)
    assert changes.days == frozenset()


def test_an_empty_table_touches_no_day(catalog):
    table = create_table(catalog, "gold.empty", [("post_key", LongType()), ("last_update_time", TimestamptzType())])
    changes = days_touched_since(table, None, "last_update_time", 7)
    assert (changes.current_snapshot_id, changes.days, changes.snapshots) == (None, frozenset(), ())


@pytest.mark.parametrize(
    ("kind", "first", "last"),
    [
        (TimestamptzType(), at(day(1), 23), at(day(3), 0)),
        (TimestampType(), at(day(1), 23).replace(tzinfo=None), at(day(3), 0).replace(tzinfo=None)),  # taken as UTC
        (DateType(), day(1), day(3)),
        (StringType(), "2026-11-01T23:59:00+00:00", "2026-11-03T00:30:00+00:00"),  # the date prefix, as the scan reads it
    ],
    ids=["timestamptz", "timestamp", "date", "iso-string"],
)
def test_days_from_column_bounds_of_an_unpartitioned_table(catalog, kind, first, last):
    table = create_table(catalog, "gold.flat", [("post_key", LongType()), ("updated", kind)])
    append_rows(table, [{"post_key": 1, "updated": first}, {"post_key": 2, "updated": last}])
    append_rows(table, [{"post_key": 3, "updated": None}])  # only nulls: no day
    changes = days_touched_since(catalog.load_table("gold.flat"), None, "updated", 7)
    assert [s.days for s in changes.snapshots] == [frozenset({day(1), day(2), day(3)}), frozenset()]


def test_files_without_bounds_fall_back_to_the_latest_days(catalog):
    table = create_table(catalog, "gold.flat", [("post_key", LongType()), ("updated", TimestamptzType())])
    append_rows(table, [{"post_key": n, "updated": at(day(n))} for n in range(1, 6)])  # bounds kept
    with table.transaction() as transaction:
        transaction.set_properties({"write.metadata.metrics.default": "none"})
    table = catalog.load_table("gold.flat")
    since = table.current_snapshot().snapshot_id
    append_rows(table, [{"post_key": 9, "updated": at(day(9))}])
    changes = days_touched_since(catalog.load_table("gold.flat"), since, "updated", fallback_days=2)
    # The file without bounds says nothing; the window is the latest days the other files know.
    assert changes.days == frozenset({day(4), day(5)})
    assert "added files with neither a day partition nor bounds for updated" in changes.fallback
    assert changes.fallback.endswith("re-enriching its latest 2 days, 2026-11-04..2026-11-05")


def test_an_unknown_snapshot_falls_back_to_the_latest_days(catalog, seeded):
    changes = days_touched_since(catalog.load_table(DIM), 12345, "last_update_time", fallback_days=7)
    assert changes.days == frozenset({day(1), day(2), day(3)})
    assert changes.fallback == (
        f"snapshot 12345 of {DIM} is no longer in its history (table re-created or rolled back): "
        "re-enriching its latest 7 days, 2026-11-01..2026-11-03"
    )
