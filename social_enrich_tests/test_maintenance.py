"""Table maintenance against a real pyiceberg catalog on disk and a real Dagster instance: expiring
snapshots (and the files only they referenced), compacting small files, merging manifests, a
compaction that loses a race, and the maintenance job and schedule of the sentiment job."""

from __future__ import annotations

import datetime as dt
import os

import dagster as dg
import pyarrow as pa
import pytest
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.expressions import EqualTo
from pyiceberg.table import Table
from pyiceberg.types import LongType

from social_enrich.config import JobConfigError, MaintenanceConfig, load_job_config
from social_enrich.definitions import build_definitions
from social_enrich.lakehouse.maintenance import (
    CompactionConflictError,
    compact_small_files,
    expire_snapshots,
    merge_manifests,
    run_maintenance,
)
from social_enrich.lakehouse.target_table import open_target, write_days
from social_enrich_tests.dagster_helpers import edited_sentiment_defs, edited_sentiment_yaml, materialize_day

TARGET = "enriched.social_media_sentiment"
DAYS = [dt.date(2026, 11, 1) + dt.timedelta(days=i) for i in range(3)]
WRITTEN_AT = dt.datetime(2026, 11, 4, 12, tzinfo=dt.timezone.utc)
EPOCH = dt.date(1970, 1, 1)


def rows_for(table: Table, keys: range, day: dt.date, label: str = "positive") -> pa.Table:
    """Target rows as an enrichment writes them, for posts ``keys`` on ``day``."""
    return pa.Table.from_pylist(
        [
            {"post_key": k, "label": label, "score": k / 1000, "model": "vader-3.3.2", "prompt_version": "sentiment-v1",
             "input_hash": f"{k:064d}", "status": "ok", "error": None, "input_truncated": False,
             "source_update_time": WRITTEN_AT, "partition_date": day, "written_at": WRITTEN_AT}
            for k in keys
        ],
        schema=table.schema().as_arrow(),
    )


@pytest.fixture
def target(catalog, sentiment_job) -> Table:
    return open_target(catalog, sentiment_job, LongType())


@pytest.fixture
def small_files(target) -> Table:
    """20 small appends over 3 day partitions (7, 7 and 6 files), 10 new posts each."""
    for i in range(20):
        target.append(rows_for(target, range(i * 10, i * 10 + 10), DAYS[i % 3]))
    return target


def content(table: Table, snapshot_id: int | None = None) -> list[dict]:
    return table.scan(snapshot_id=snapshot_id).to_arrow().sort_by("post_key").to_pylist()


def files_per_day(table: Table) -> dict[dt.date, list[str]]:
    files: dict[dt.date, list[str]] = {}
    for task in table.scan().plan_files():
        day = EPOCH + dt.timedelta(days=task.file.partition[0])  # partition_date, stored as days since the epoch
        files.setdefault(day, []).append(task.file.file_path)
    return files


def referenced_files(table: Table) -> set[str]:
    """Every manifest list, manifest and data file a snapshot of the table references."""
    paths: set[str] = set()
    for snapshot in table.metadata.snapshots:
        paths.add(snapshot.manifest_list)
        for manifest in snapshot.manifests(table.io):
            paths.add(manifest.manifest_path)
            paths.update(e.data_file.file_path for e in manifest.fetch_manifest_entry(table.io, discard_deleted=True))
    return paths


def local(path: str) -> str:
    return path.removeprefix("file://")


# --- Expiring snapshots -----------------------------------------------------------------------


def test_expire_keeps_the_last_snapshots_and_the_current_data(catalog, small_files):
    before = content(small_files)
    current = small_files.current_snapshot().snapshot_id
    newest = max(s.timestamp_ms for s in small_files.metadata.snapshots)
    now = dt.datetime.fromtimestamp(newest / 1000, dt.timezone.utc) + dt.timedelta(days=30)  # every snapshot is old

    result = expire_snapshots(small_files, older_than=now - dt.timedelta(days=7), retain_last=5)

    assert (result.snapshots_before, result.snapshots_expired) == (20, 15)
    reloaded = catalog.load_table(TARGET)
    assert len(reloaded.metadata.snapshots) == 5
    assert reloaded.current_snapshot().snapshot_id == current
    assert content(reloaded) == before
    # The oldest snapshot kept still reads whole: it holds the first 16 appends.
    oldest = min(reloaded.metadata.snapshots, key=lambda s: s.timestamp_ms)
    assert [r["post_key"] for r in content(reloaded, oldest.snapshot_id)] == list(range(160))
    # Appends only add files: the expired snapshots' data and manifests are still referenced, their
    # manifest lists are not.
    assert result.files_deleted == 15
    assert all(os.path.exists(local(p)) for p in referenced_files(reloaded))


def test_expire_leaves_snapshots_younger_than_the_cutoff(small_files):
    snapshots = sorted(small_files.metadata.snapshots, key=lambda s: s.timestamp_ms)
    cutoff_ms = snapshots[12].timestamp_ms
    older = {s.snapshot_id for s in snapshots if s.timestamp_ms < cutoff_ms}
    assert older, "the 20 appends were committed over more than one millisecond"

    result = expire_snapshots(small_files, dt.datetime.fromtimestamp(cutoff_ms / 1000, dt.timezone.utc), retain_last=1)

    assert result.snapshots_expired == len(older)
    assert {s.snapshot_id for s in small_files.metadata.snapshots} == {s.snapshot_id for s in snapshots} - older


def test_expire_deletes_the_files_only_expired_snapshots_referenced(catalog, sentiment_job, target):
    for label in ("negative", "neutral", "positive"):  # the same day written three times: each replaces the last
        write_days(target, sentiment_job, [DAYS[0]], rows_for(target, range(50), DAYS[0], label))
    target = catalog.load_table(TARGET)
    snapshots_before, every_file = len(target.metadata.snapshots), referenced_files(target)
    before = content(target)
    now = dt.datetime.fromtimestamp(target.current_snapshot().timestamp_ms / 1000, dt.timezone.utc) + dt.timedelta(days=8)

    result = expire_snapshots(target, now - dt.timedelta(days=7), retain_last=1)

    kept = referenced_files(target)
    gone = every_file - kept
    assert result.snapshots_expired == snapshots_before - 1 and len(target.metadata.snapshots) == 1
    assert any(p.endswith(".parquet") for p in gone), "the replaced days' data files"
    assert result.files_deleted == len(gone)
    assert not any(os.path.exists(local(p)) for p in gone)
    assert all(os.path.exists(local(p)) for p in kept)
    assert content(catalog.load_table(TARGET)) == before
    assert {r["label"] for r in before} == {"positive"}


def test_expire_needs_an_aware_time_and_one_snapshot_kept(small_files):
    with pytest.raises(ValueError, match="timezone-aware"):
        expire_snapshots(small_files, dt.datetime(2026, 1, 1), retain_last=1)
    with pytest.raises(ValueError, match="retain_last"):
        expire_snapshots(small_files, WRITTEN_AT, retain_last=0)


# --- Compacting small files -------------------------------------------------------------------


def test_compaction_rewrites_partitions_with_many_small_files_and_keeps_every_row(catalog, small_files):
    fourth = DAYS[2] + dt.timedelta(days=1)
    for keys in (range(1000, 1005), range(1005, 1010)):  # two files: under the threshold, left alone
        small_files.append(rows_for(small_files, keys, fourth))
    before, files_before = content(small_files), files_per_day(small_files)
    assert [len(files_before[d]) for d in [*DAYS, fourth]] == [7, 7, 6, 2]
    spec = small_files.spec()

    result = compact_small_files(small_files, max_files_per_partition=4)

    reloaded = catalog.load_table(TARGET)
    files_after = files_per_day(reloaded)
    assert [len(files_after[d]) for d in DAYS] == [1, 1, 1]
    assert files_after[fourth] == files_before[fourth]  # the same two files, untouched
    assert content(reloaded) == before  # every row, every column, exactly
    for day in DAYS:  # each row still in its own day's partition
        on_day = reloaded.scan(row_filter=EqualTo("partition_date", day.isoformat())).to_arrow()
        assert set(on_day["partition_date"].to_pylist()) == {day}
    assert reloaded.spec() == spec
    assert (result.partitions_rewritten, result.files_rewritten, result.rows_rewritten) == (3, 20, 200)
    assert (result.data_files_before, result.data_files_after) == (22, 5)
    assert result.bytes_rewritten > result.bytes_written > 0
    # Again: nothing is due any more.
    assert compact_small_files(reloaded, max_files_per_partition=4).partitions_rewritten == 0


def test_compaction_counts_only_small_files(small_files):
    result = compact_small_files(small_files, max_files_per_partition=4, small_file_bytes=1)  # no file is under 1 byte
    assert result.partitions_rewritten == 0 and result.data_files_after == 20


def test_compaction_losing_a_race_for_its_partition_leaves_the_newer_data(catalog, sentiment_job, small_files):
    stale = catalog.load_table(TARGET)  # what the compaction planned on
    newer = rows_for(stale, range(10), DAYS[0], "negative")  # posts 0-9 of day 1, labelled again
    write_days(catalog.load_table(TARGET), sentiment_job, [DAYS[0]], newer)  # an enrichment commits day 1 meanwhile
    expected = content(catalog.load_table(TARGET))

    with pytest.raises(CompactionConflictError, match="changed while being compacted") as raised:
        compact_small_files(stale, max_files_per_partition=4)

    assert isinstance(raised.value, CommitFailedException)
    after = catalog.load_table(TARGET)
    assert content(after) == expected  # nothing of the compaction landed: day 1 is the enrichment's write
    assert [r["label"] for r in content(after)[:10]] == ["negative"] * 10


def test_compaction_lands_on_top_of_a_concurrent_write_to_another_partition(catalog, sentiment_job, small_files):
    stale = catalog.load_table(TARGET)
    other_day = DAYS[2] + dt.timedelta(days=1)
    write_days(catalog.load_table(TARGET), sentiment_job, [other_day], rows_for(stale, range(5000, 5010), other_day))
    expected = content(catalog.load_table(TARGET))

    result = compact_small_files(stale, max_files_per_partition=4)

    after = catalog.load_table(TARGET)
    assert result.partitions_rewritten == 3
    assert content(after) == expected  # the concurrent day kept, the compacted days intact
    assert [len(files_per_day(after)[d]) for d in [*DAYS, other_day]] == [1, 1, 1, 1]


def test_an_enrichment_write_that_loses_the_race_to_a_compaction_still_lands(catalog, sentiment_job, small_files):
    stale = catalog.load_table(TARGET)  # what the enrichment run planned on
    compact_small_files(catalog.load_table(TARGET), max_files_per_partition=4)

    write_days(stale, sentiment_job, [DAYS[0]], rows_for(stale, range(10), DAYS[0], "negative"))

    after = content(catalog.load_table(TARGET))
    assert [r["post_key"] for r in after] == list(range(200))
    assert [r["label"] for r in after[:10]] == ["negative"] * 10


# --- Manifests --------------------------------------------------------------------------------


def test_merging_manifests_keeps_the_data_and_the_table_properties(catalog, small_files):
    small_files.transaction().set_properties({"commit.manifest.min-count-to-merge": "50"}).commit_transaction()
    before = content(small_files)
    assert len(small_files.current_snapshot().manifests(small_files.io)) == 20

    result = merge_manifests(small_files, when_over=4, target_bytes=8 * 1024 * 1024)  # room for all twenty

    reloaded = catalog.load_table(TARGET)
    assert (result.manifests_before, result.manifests_after) == (20, 1)
    assert len(reloaded.current_snapshot().manifests(reloaded.io)) == 1
    assert content(reloaded) == before
    assert reloaded.properties.get("commit.manifest.min-count-to-merge") == "50"  # restored
    assert "commit.manifest-merge.enabled" not in reloaded.properties  # was unset, unset again
    assert merge_manifests(reloaded, when_over=4).manifests_after == 1  # nothing to do


def test_merged_manifests_stay_under_their_target_size(catalog, small_files):
    before = content(small_files)
    sizes = [m.manifest_length for m in small_files.current_snapshot().manifests(small_files.io)]
    target = sum(sorted(sizes)[:5])  # room for about five of the twenty

    result = merge_manifests(small_files, when_over=4, target_bytes=target)

    reloaded = catalog.load_table(TARGET)
    merged = reloaded.current_snapshot().manifests(reloaded.io)
    assert result.manifests_before == 20 and 3 <= result.manifests_after == len(merged) < 20
    assert content(reloaded) == before
    assert "commit.manifest.target-size-bytes" not in reloaded.properties  # set for the merge only


def test_run_maintenance_does_all_three_with_the_configured_settings(catalog, small_files):
    before = content(small_files)
    now = dt.datetime.fromtimestamp(small_files.current_snapshot().timestamp_ms / 1000, dt.timezone.utc) + dt.timedelta(days=8)

    report = run_maintenance(small_files, MaintenanceConfig(retain_last_snapshots=3), now)

    figures = report.metadata()
    assert figures["partitions_rewritten"] == 3 and figures["data_files_after"] == 3
    assert figures["manifests_after"] == 1  # the compaction's own commit already dropped the 20 appends' manifests
    # Every snapshot is older than the cutoff: the 3 newest (the compaction's two, the last append) are kept.
    assert figures["snapshots_before"] == 22 and figures["snapshots_after"] == 3
    assert set(report.seconds) == {"compact", "merge_manifests", "expire"}
    reloaded = catalog.load_table(TARGET)
    assert content(reloaded) == before
    assert all(os.path.exists(local(p)) for p in referenced_files(reloaded))


# --- The Dagster job and schedule -------------------------------------------------------------


def split_into_files(catalog, day: dt.date, parts: int) -> None:
    """Rewrite a day's partition as ``parts`` small files (same rows), as many small writes leave it."""
    table = catalog.load_table(TARGET)
    rows = table.scan(row_filter=EqualTo("partition_date", day.isoformat())).to_arrow()
    size = -(-rows.num_rows // parts)
    with table.transaction() as tx:
        tx.delete(EqualTo("partition_date", day.isoformat()))
        for start in range(0, rows.num_rows, size):
            tx.append(rows.slice(start, size))


MAINTENANCE_YAML = "\nmaintenance: {expire_snapshots_older_than_days: 0, retain_last_snapshots: 3, merge_manifests_when_over: 1}\nautomation:\n"


def test_maintenance_job_runs_through_dagster_and_reports_what_it_did(catalog, seeded, instance, tmp_path):
    defs = edited_sentiment_defs(tmp_path, {"\nautomation:\n": MAINTENANCE_YAML})
    for day in [*seeded.days, seeded.days[0]]:
        assert materialize_day(instance, day.isoformat(), defs=defs).success
    split_into_files(catalog, seeded.days[1], parts=6)
    table = catalog.load_table(TARGET)
    before, snapshots_before = content(table), len(table.metadata.snapshots)
    assert len(files_per_day(table)[seeded.days[1]]) == 6

    result = defs.get_job_def("social_media_sentiment_maintenance").execute_in_process(instance=instance)

    assert result.success
    (observation,) = result.asset_observations_for_node("maintain_social_media_sentiment")
    assert observation.asset_key == dg.AssetKey("social_media_sentiment")
    meta = {k: v.value for k, v in observation.metadata.items()}
    assert meta["partitions_rewritten"] == 1 and meta["files_rewritten"] == 6
    assert meta["data_files_before"] == 8 and meta["data_files_after"] == 3
    assert meta["snapshots_before"] == snapshots_before + 3  # the compaction's two and the manifest merge's one
    # Every earlier snapshot is older than the run's start; the maintenance's own three are kept.
    assert meta["snapshots_after"] == 3 and meta["duration_seconds"] > 0
    table = catalog.load_table(TARGET)
    assert len(table.metadata.snapshots) == 3
    assert content(table) == before
    messages = [e.message for e in instance.all_logs(result.run_id) if e.message]
    assert any("compacted 1 partitions: 8 -> 3 data files" in m and "expired" in m for m in messages)
    # The maintained table takes the next write as before.
    assert materialize_day(instance, seeded.days[2].isoformat(), defs=defs).success


def test_maintenance_job_with_no_target_yet_does_nothing(instance):
    result = build_definitions().get_job_def("social_media_sentiment_maintenance").execute_in_process(instance=instance)
    assert result.success
    assert result.asset_observations_for_node("maintain_social_media_sentiment") == []


def test_schedule_runs_the_job_on_the_configured_cron(tmp_path):
    schedule = build_definitions().resolve_schedule_def("social_media_sentiment_maintenance_schedule")
    assert schedule.cron_schedule == "0 3 * * *" and schedule.execution_timezone == "UTC"
    assert schedule.job_name == "social_media_sentiment_maintenance"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING

    edited = edited_sentiment_defs(tmp_path, {"\nautomation:\n": "\nmaintenance: {enabled: false, cron: '30 2 * * 0'}\nautomation:\n"})
    schedule = edited.resolve_schedule_def("social_media_sentiment_maintenance_schedule")
    assert schedule.cron_schedule == "30 2 * * 0"
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED


def test_a_bad_maintenance_setting_names_the_field(tmp_path):
    path = edited_sentiment_yaml(tmp_path / "jobs", {"\nautomation:\n": "\nmaintenance: {cron: 'every night'}\nautomation:\n"})
    with pytest.raises(JobConfigError, match="maintenance.cron"):
        load_job_config(path)
