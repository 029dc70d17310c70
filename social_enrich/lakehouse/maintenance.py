"""Upkeep of a daily-written Iceberg table (no Dagster): compact small data files, merge manifests,
expire old snapshots and delete the files only they referenced.

Why: every write adds snapshots (the write path's delete and append), a manifest, and leaves the
files it replaced on storage. Loading the table parses every snapshot and planning a scan reads every
manifest of the current one, so a one-day write slows as they pile up (bench/bench_maintenance.py).

Concurrent writers. Each rewrite is one pyiceberg commit based on the table as passed in:
- compaction overwrites its partitions with a partition filter. If another commit landed first,
  pyiceberg refreshes and checks it: one that touched none of those partitions is kept and the
  compaction lands on top of it; one that added or removed files in them makes the compaction raise
  CompactionConflictError (a CommitFailedException) with nothing of it committed, so the newer data
  stands. Its new files stay unreferenced on storage. An enrichment write that loses the race to a
  compaction of its days is refused the same way, and the write path re-applies it on the
  refreshed table (target_table.write_days), so it lands on the compacted files;
- merging manifests copies the live entries of the current manifests; a lost race is redone on the
  refreshed table, so it never drops a concurrent commit's files;
- expiring removes snapshots by id (a concurrent commit's new snapshot is not among them) and then
  deletes only files that no remaining snapshot references. A reader or writer still on a snapshot
  younger than ``older_than`` is unaffected.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from functools import reduce
from typing import Any, TypeVar

import pyarrow as pa
from pyiceberg.exceptions import CommitFailedException, ValidationException
from pyiceberg.expressions import And, BooleanExpression, EqualTo, IsNull, Or
from pyiceberg.manifest import ManifestFile
from pyiceberg.table import Table, TableProperties
from pyiceberg.table.snapshots import Snapshot
from pyiceberg.transforms import IdentityTransform
from pyiceberg.utils.datetime import datetime_to_millis

from social_enrich.config import MaintenanceConfig

MB = 1024 * 1024
T = TypeVar("T")
# Marks maintenance commits in the snapshot summary, so they are not mistaken for enrichment writes.
MAINTENANCE_PROPERTY = "social-enrich.maintenance"
_MERGE_PROPERTIES = (TableProperties.MANIFEST_MERGE_ENABLED, TableProperties.MANIFEST_MIN_MERGE_COUNT,
                     TableProperties.MANIFEST_TARGET_SIZE_BYTES)


class CompactionConflictError(CommitFailedException):
    """A concurrent commit changed partitions being compacted; the compaction of them was not committed."""


@dataclass(frozen=True)
class ExpireResult:
    snapshots_before: int
    snapshots_expired: int
    files_deleted: int  # data files, manifests and manifest lists that no remaining snapshot references
    bytes_deleted: int  # of the data files and manifests (a manifest list's size is not recorded)
    files_not_deleted: int = 0  # could not be deleted (left on storage, the table is not affected)


@dataclass(frozen=True)
class CompactionResult:
    partitions_rewritten: int
    data_files_before: int  # in the whole table
    data_files_after: int
    files_rewritten: int
    bytes_rewritten: int  # on storage, of the files replaced
    bytes_written: int
    rows_rewritten: int


@dataclass(frozen=True)
class ManifestResult:
    manifests_before: int
    manifests_after: int


@dataclass(frozen=True)
class MaintenanceReport:
    compaction: CompactionResult
    manifests: ManifestResult
    expiry: ExpireResult
    seconds: dict[str, float]

    def metadata(self) -> dict[str, Any]:
        """Flat figures for a run's metadata and log."""
        figures: dict[str, Any] = {**asdict(self.compaction), **asdict(self.manifests), **asdict(self.expiry)}
        figures["snapshots_after"] = self.expiry.snapshots_before - self.expiry.snapshots_expired
        figures.update({f"seconds/{step}": round(s, 3) for step, s in self.seconds.items()})
        figures["duration_seconds"] = round(sum(self.seconds.values()), 3)
        return figures


# --- Snapshots ---------------------------------------------------------------------------------


def expire_snapshots(table: Table, older_than: dt.datetime, retain_last: int, *, delete_files: bool = True) -> ExpireResult:
    """Expire the snapshots committed before ``older_than``, keeping the ``retain_last`` newest, the
    current one and every branch or tag head; then delete the files only expired snapshots referenced."""
    if retain_last < 1:
        raise ValueError(f"retain_last must be at least 1, got {retain_last}")
    if older_than.tzinfo is None:
        raise ValueError(f"older_than must be timezone-aware, got {older_than.isoformat()}")
    snapshots = sorted(table.metadata.snapshots, key=lambda s: s.timestamp_ms, reverse=True)
    keep = {s.snapshot_id for s in snapshots[:retain_last]} | {ref.snapshot_id for ref in table.metadata.refs.values()}
    cutoff = datetime_to_millis(older_than)
    expired = [s for s in snapshots if s.snapshot_id not in keep and s.timestamp_ms < cutoff]
    if not expired:
        return ExpireResult(len(snapshots), 0, 0, 0)
    table.maintenance.expire_snapshots().by_ids([s.snapshot_id for s in expired]).commit()
    deleted = not_deleted = size = 0
    if delete_files:
        # What the snapshots left after the commit reference, concurrent commits included, is kept.
        for path, nbytes in _files_only_in(table, expired, table.metadata.snapshots):
            try:
                table.io.delete(path)
                deleted, size = deleted + 1, size + nbytes
            except FileNotFoundError:
                pass  # already gone
            except OSError:
                not_deleted += 1
    return ExpireResult(len(snapshots), len(expired), deleted, size, not_deleted)


def _files_only_in(table: Table, gone: list[Snapshot], remaining: list[Snapshot]) -> Iterable[tuple[str, int]]:
    """(path, bytes) of the manifest lists, manifests and data files that ``gone`` snapshots reference
    and ``remaining`` ones do not."""
    kept_manifests = {m.manifest_path: m for s in remaining for m in s.manifests(table.io)}
    gone_manifests = {m.manifest_path: m for s in gone for m in s.manifests(table.io)}
    kept_data = {path for m in kept_manifests.values() for path, _ in _live_files(table, m)}
    data: dict[str, int] = {}
    for path, manifest in gone_manifests.items():
        if path not in kept_manifests:  # a manifest still referenced only holds files still referenced
            data.update((p, n) for p, n in _live_files(table, manifest) if p not in kept_data)
    yield from data.items()
    yield from ((p, m.manifest_length) for p, m in gone_manifests.items() if p not in kept_manifests)
    kept_lists = {s.manifest_list for s in remaining}
    yield from ((s.manifest_list, 0) for s in gone if s.manifest_list not in kept_lists)


def _live_files(table: Table, manifest: ManifestFile) -> list[tuple[str, int]]:
    return [(e.data_file.file_path, e.data_file.file_size_in_bytes) for e in manifest.fetch_manifest_entry(table.io, discard_deleted=True)]


# --- Small data files --------------------------------------------------------------------------


def compact_small_files(
    table: Table,
    max_files_per_partition: int = 4,
    small_file_bytes: int = 64 * MB,
    max_bytes_per_commit: int = 256 * MB,
) -> CompactionResult:
    """Rewrite each partition holding more than ``max_files_per_partition`` files smaller than
    ``small_file_bytes`` into as few files as the table's target file size allows, every row kept
    as it was and in the same partition. Partitions go in commits of up to ``max_bytes_per_commit``
    of files read (one commit, usually), so memory stays bounded.

    A partition is named by the spec's identity fields (``partition_date`` for an enrichment
    target); rows are read and overwritten with that filter, on the same snapshot."""
    spec = table.spec()
    names = [table.schema().find_column_name(f.source_id) for f in spec.fields]
    identity = [i for i, f in enumerate(spec.fields) if isinstance(f.transform, IdentityTransform)]
    if not identity:
        raise ValueError(f"{_name(table)}: compaction selects partitions by identity partition fields, and the spec has none")
    tasks = list(table.scan().plan_files()) if table.current_snapshot() else []
    groups: dict[tuple[Any, ...], list[Any]] = defaultdict(list)
    for task in tasks:
        groups[tuple(task.file.partition[i] for i in identity)].append(task)

    def due(group: list[Any]) -> bool:
        small = sum(1 for t in group if t.file.file_size_in_bytes < small_file_bytes)
        # Delete files would be left behind by a rewrite of the data files they apply to.
        return small > max_files_per_partition and not any(t.delete_files for t in group)

    selected = {key: group for key, group in groups.items() if due(group)}
    rewritten = written = rows = 0
    for batch in _batches(selected, max_bytes_per_commit):
        where = reduce(Or, [_partition_filter(key, [names[i] for i in identity]) for key in batch])
        expected = sum(t.file.record_count for key in batch for t in selected[key])
        data = table.scan(row_filter=where, snapshot_id=table.current_snapshot().snapshot_id).to_arrow()
        if data.num_rows != expected:
            raise RuntimeError(f"{_name(table)}: read {data.num_rows} rows from partitions {sorted(batch)} "
                               f"whose files hold {expected}; nothing was rewritten")
        _overwrite(table, data, where, sorted(batch, key=str))
        rewritten += sum(t.file.file_size_in_bytes for key in batch for t in selected[key])
        rows += data.num_rows
    after = list(table.scan().plan_files()) if selected else tasks
    if selected:
        keys = set(selected)
        written = sum(t.file.file_size_in_bytes for t in after if tuple(t.file.partition[i] for i in identity) in keys)
    return CompactionResult(
        partitions_rewritten=len(selected),
        data_files_before=len(tasks),
        data_files_after=len(after),
        files_rewritten=sum(len(g) for g in selected.values()),
        bytes_rewritten=rewritten,
        bytes_written=written,
        rows_rewritten=rows,
    )


def _batches(groups: dict[tuple[Any, ...], list[Any]], max_bytes: int) -> Iterable[list[tuple[Any, ...]]]:
    batch: list[tuple[Any, ...]] = []
    size = 0
    for key, group in groups.items():
        group_bytes = sum(t.file.file_size_in_bytes for t in group)
        if batch and size + group_bytes > max_bytes:
            yield batch
            batch, size = [], 0
        batch.append(key)
        size += group_bytes
    if batch:
        yield batch


def _partition_filter(values: tuple[Any, ...], names: list[str]) -> BooleanExpression:
    terms = [IsNull(n) if v is None else EqualTo(n, v) for n, v in zip(names, values, strict=True)]
    return reduce(And, terms)


def _overwrite(table: Table, data: pa.Table, where: BooleanExpression, partitions: list[tuple[Any, ...]]) -> None:
    try:
        # Delete by the partition filter and append in one transaction: on a lost race pyiceberg
        # refreshes and refuses (ValidationException) if the other commit touched these partitions.
        with table.transaction() as tx:
            tx.overwrite(data, overwrite_filter=where, snapshot_properties={MAINTENANCE_PROPERTY: "compaction"})
    except (CommitFailedException, ValidationException) as e:
        raise CompactionConflictError(
            f"{_name(table)}: partitions {partitions} changed while being compacted (a concurrent write committed "
            f"first: {e}); this compaction of them was not committed and the newer data stands. Run maintenance again."
        ) from e


# --- Manifests ---------------------------------------------------------------------------------


def merge_manifests(table: Table, when_over: int = 4, target_bytes: int = 32 * 1024) -> ManifestResult:
    """Merge the current snapshot's data manifests, in write order, into ones of up to ``target_bytes``
    when there are more than ``when_over``: every write adds one, and every scan plan reads them all.
    Bounded, since a write that replaces a day's files rewrites each manifest listing one of them
    (one merged manifest of the whole table would make every write rewrite the whole table's list)."""
    snapshot = table.current_snapshot()
    before = len(snapshot.manifests(table.io)) if snapshot else 0
    if before <= when_over:
        return ManifestResult(before, before)
    previous = {key: table.properties.get(key) for key in _MERGE_PROPERTIES}
    with table.transaction() as tx:
        # pyiceberg merges manifests on a merge-append; enabled for this commit only, then restored.
        tx.set_properties({TableProperties.MANIFEST_MERGE_ENABLED: "true", TableProperties.MANIFEST_MIN_MERGE_COUNT: "2",
                           TableProperties.MANIFEST_TARGET_SIZE_BYTES: str(target_bytes)})
        tx.update_snapshot(snapshot_properties={MAINTENANCE_PROPERTY: "merge-manifests"}).merge_append().commit()
        if restore := {k: v for k, v in previous.items() if v is not None}:
            tx.set_properties(restore)
        if unset := [k for k, v in previous.items() if v is None]:
            tx.remove_properties(*unset)
    return ManifestResult(before, len(table.current_snapshot().manifests(table.io)))


# --- All of it -----------------------------------------------------------------------------------


def run_maintenance(table: Table, settings: MaintenanceConfig, now: dt.datetime) -> MaintenanceReport:
    """Compact, merge manifests, then expire: the rewrites' own snapshots are new, so the expiry that
    follows keeps them and drops the old ones."""
    seconds: dict[str, float] = {}

    def timed(step: str, work: Callable[[], T]) -> T:
        started = time.perf_counter()
        try:
            return work()
        finally:
            seconds[step] = time.perf_counter() - started

    small = int(settings.compact_files_smaller_than_mb * MB)
    compaction = timed("compact", lambda: compact_small_files(table, settings.compact_when_files_per_partition_over, small))
    manifests = timed("merge_manifests", lambda: merge_manifests(table, settings.merge_manifests_when_over, settings.merged_manifest_kb * 1024))
    older_than = now - dt.timedelta(days=settings.expire_snapshots_older_than_days)
    expiry = timed("expire", lambda: expire_snapshots(
        table, older_than, settings.retain_last_snapshots, delete_files=settings.delete_expired_files
    ))
    return MaintenanceReport(compaction, manifests, expiry, seconds)


def _name(table: Table) -> str:
    return ".".join(table.name())
