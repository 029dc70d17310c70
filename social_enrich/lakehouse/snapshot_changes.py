"""Which days (UTC) the new snapshots of a gold table touched, read from Iceberg metadata alone.

A snapshot's own manifests (``added_snapshot_id`` is the snapshot) list the data files it added;
each file's day comes from its partition value (a ``day``/``hour`` transform, or identity on a
date) or else from the lower/upper bounds of the datetime column. No data file is ever opened.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import NamedTuple

from pyiceberg.conversions import from_bytes
from pyiceberg.manifest import DataFile, DataFileContent, ManifestContent, ManifestEntryStatus
from pyiceberg.partitioning import PartitionSpec
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Operation, Snapshot
from pyiceberg.transforms import DayTransform, HourTransform, IdentityTransform
from pyiceberg.types import DateType, IcebergType, StringType, TimestampNanoType, TimestamptzNanoType

from social_enrich.lakehouse.partition_scan import DATETIME_TYPES, SourceSchemaError

EPOCH = dt.date(1970, 1, 1)
MICROS_PER_DAY = 86_400_000_000
NANOS_PER_DAY = MICROS_PER_DAY * 1000
# Operations that may add rows; delete removes rows and replace (compaction) rewrites the same rows.
ADDS_DATA = {Operation.APPEND, Operation.OVERWRITE}


class SnapshotChange(NamedTuple):
    snapshot_id: int
    operation: str
    days: frozenset[dt.date]


@dataclass(frozen=True)
class SnapshotChanges:
    current_snapshot_id: int | None  # None: the table has no snapshot yet
    days: frozenset[dt.date]  # every day touched by the new snapshots (or the fallback window)
    snapshots: tuple[SnapshotChange, ...]  # the new snapshots, oldest first
    fallback: str | None = None  # why the days are a bounded window rather than exact


def days_touched_since(
    table: Table, since_snapshot_id: int | None, datetime_field: str, fallback_days: int
) -> SnapshotChanges:
    """The days touched by the snapshots after ``since_snapshot_id`` (None: the whole history).

    When the history cannot say (the snapshot is gone: table re-created, rolled back or expired;
    or a file has neither a day partition nor bounds), the days are the table's latest
    ``fallback_days`` days of live data, and ``fallback`` says why.
    """
    field_id, field_type = _datetime_field(table, datetime_field)
    current = table.current_snapshot()
    if current is None:
        return SnapshotChanges(None, frozenset(), ())
    new, complete = _snapshots_after(table, current, since_snapshot_id)
    if not complete:
        days = _latest_live_days(table, field_id, field_type, fallback_days)
        if since_snapshot_id is None:
            reason = f"the history of {_name(table)} before snapshot {new[0].snapshot_id} has expired"
        else:
            reason = (
                f"snapshot {since_snapshot_id} of {_name(table)} is no longer in its history "
                "(table re-created or rolled back)"
            )
        changes = tuple(SnapshotChange(s.snapshot_id, _operation(s), frozenset()) for s in new)
        return SnapshotChanges(current.snapshot_id, days, changes, _fallback_sentence(reason, fallback_days, days))

    changes, unknown = [], []
    for snapshot in new:
        days = _days_added_by(table, snapshot, field_id, field_type)
        if days is None:
            unknown.append(snapshot.snapshot_id)
            days = frozenset()
        changes.append(SnapshotChange(snapshot.snapshot_id, _operation(snapshot), days))
    touched = frozenset().union(*(c.days for c in changes))
    fallback = None
    if unknown:
        window = _latest_live_days(table, field_id, field_type, fallback_days)
        touched |= window
        reason = (
            f"snapshot(s) {', '.join(map(str, unknown))} of {_name(table)} added files with neither a day "
            f"partition nor bounds for {datetime_field} (metrics mode none?)"
        )
        fallback = _fallback_sentence(reason, fallback_days, window)
    return SnapshotChanges(current.snapshot_id, touched, tuple(changes), fallback)


def _name(table: Table) -> str:
    return ".".join(table.name())


def _operation(snapshot: Snapshot) -> str:
    return snapshot.summary.operation.value if snapshot.summary else "unknown"


def _datetime_field(table: Table, name: str) -> tuple[int, IcebergType]:
    schema = table.schema()
    if name not in schema.column_names:
        raise SourceSchemaError(f"{_name(table)} has no field '{name}'; its fields are {schema.column_names}")
    field = schema.find_field(name)
    if not isinstance(field.field_type, DATETIME_TYPES):
        raise SourceSchemaError(f"{_name(table)}.{name} is {field.field_type}, not a date, timestamp or ISO-8601 string")
    return field.field_id, field.field_type


def _snapshots_after(table: Table, current: Snapshot, since_snapshot_id: int | None) -> tuple[list[Snapshot], bool]:
    """The snapshots from ``since_snapshot_id`` (exclusive) to the current one, oldest first, and
    whether the walk reached ``since_snapshot_id`` (or, when it is None, the table's first snapshot)."""
    new: list[Snapshot] = []
    snapshot: Snapshot | None = current
    while snapshot is not None and snapshot.snapshot_id != since_snapshot_id:
        new.append(snapshot)
        parent = snapshot.parent_snapshot_id
        if parent is None:
            new.reverse()
            return new, since_snapshot_id is None
        snapshot = table.snapshot_by_id(parent)  # None once older snapshots have expired
    new.reverse()
    return new, snapshot is not None


def _days_added_by(table: Table, snapshot: Snapshot, field_id: int, field_type: IcebergType) -> frozenset[dt.date] | None:
    """The days of the data files this snapshot added; None when a file's days cannot be known."""
    if snapshot.summary is None or snapshot.summary.operation not in ADDS_DATA:
        return frozenset()
    specs = table.specs()
    days: set[dt.date] = set()
    for manifest in snapshot.manifests(table.io):
        if manifest.added_snapshot_id != snapshot.snapshot_id or manifest.content != ManifestContent.DATA:
            continue  # written by an earlier snapshot, or delete files (no new rows)
        spec = specs[manifest.partition_spec_id]
        for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
            if entry.status != ManifestEntryStatus.ADDED or entry.data_file.content != DataFileContent.DATA:
                continue
            file_days = _file_days(entry.data_file, spec, field_id, field_type)
            if file_days is None:
                return None
            days |= file_days
    return frozenset(days)


def _latest_live_days(table: Table, field_id: int, field_type: IcebergType, count: int) -> frozenset[dt.date]:
    """The latest ``count`` days holding live data in the current snapshot (files without a known
    day are skipped); the ``count`` days up to today (UTC) when no file says."""
    snapshot = table.current_snapshot()
    specs = table.specs()
    days: set[dt.date] = set()
    for manifest in snapshot.manifests(table.io) if snapshot else []:
        if manifest.content != ManifestContent.DATA:
            continue
        spec = specs[manifest.partition_spec_id]
        for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
            if entry.data_file.content == DataFileContent.DATA:
                days |= _file_days(entry.data_file, spec, field_id, field_type) or frozenset()
    if not days:
        today = dt.datetime.now(dt.timezone.utc).date()
        return frozenset(today - dt.timedelta(days=n) for n in range(count))
    return frozenset(sorted(days)[-count:])


def _fallback_sentence(reason: str, count: int, days: frozenset[dt.date]) -> str:
    return f"{reason}: re-enriching its latest {count} days, {min(days)}..{max(days)}"


def _file_days(data_file: DataFile, spec: PartitionSpec, field_id: int, field_type: IcebergType) -> frozenset[dt.date] | None:
    """The days a data file's rows fall on: from its partition value, else its column bounds."""
    for position, partition_field in enumerate(spec.fields):
        if partition_field.source_id != field_id:
            continue
        transform = partition_field.transform
        value = data_file.partition[position]
        if isinstance(transform, (DayTransform, HourTransform)) or (
            isinstance(transform, IdentityTransform) and isinstance(field_type, DateType)
        ):
            if value is None:
                return frozenset()  # rows with a null datetime fall on no day
            if isinstance(value, dt.date):
                return frozenset({value})
            return frozenset({EPOCH + dt.timedelta(days=value // 24 if isinstance(transform, HourTransform) else value)})
    lower, upper = data_file.lower_bounds.get(field_id), data_file.upper_bounds.get(field_id)
    if lower is None or upper is None:
        if data_file.null_value_counts.get(field_id) == data_file.record_count:
            return frozenset()  # only nulls: no day
        return None
    first, last = _day_of(field_type, lower), _day_of(field_type, upper)
    if first is None or last is None:
        return None
    return frozenset(first + dt.timedelta(days=n) for n in range((last - first).days + 1))


def _day_of(field_type: IcebergType, bound: bytes) -> dt.date | None:
    """The UTC day of an encoded bound; naive timestamps are taken as UTC."""
    value = from_bytes(field_type, bound)
    if isinstance(field_type, StringType):
        # The day is the text's date prefix, as the partition scan's day window compares it;
        # bounds may be truncated (truncate(16) keeps the date), so the rest is not parsed.
        try:
            return dt.date.fromisoformat(value[:10])
        except ValueError:
            return None
    if isinstance(field_type, DateType):
        return EPOCH + dt.timedelta(days=value)
    per_day = NANOS_PER_DAY if isinstance(field_type, (TimestampNanoType, TimestamptzNanoType)) else MICROS_PER_DAY
    return EPOCH + dt.timedelta(days=value // per_day)
