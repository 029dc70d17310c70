"""Read the posts of a day (or a range of days) from the gold tables: touched keys, each post's latest row per source, joined.

Everything stays in Arrow. pyiceberg prunes files with the day window and the key range; the exact
key match runs in pyarrow (``is_in``), since binding thousands of keys into an Iceberg ``In``
predicate is slow.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog import Catalog
from pyiceberg.expressions import AlwaysFalse, AlwaysTrue, And, BooleanExpression, GreaterThanOrEqual, LessThan, LessThanOrEqual
from pyiceberg.io.pyarrow import ArrowScan, _read_all_delete_files, schema_to_pyarrow
from pyiceberg.table import DataScan, Table
from pyiceberg.table.snapshots import Operation
from pyiceberg.types import (
    DateType,
    IcebergType,
    StringType,
    TimestampNanoType,
    TimestampType,
    TimestamptzNanoType,
    TimestamptzType,
)

from social_enrich.config import JobConfig, TableRef
from social_enrich.errors import SocialEnrichError
from social_enrich.lakehouse.catalog import load_table
from social_enrich.lakehouse.keys import plain, plain_type

UTC_MICROS = pa.timestamp("us", tz="UTC")
NAIVE_TIMESTAMPS = (TimestampType, TimestampNanoType)
AWARE_TIMESTAMPS = (TimestamptzType, TimestamptzNanoType)
DATETIME_TYPES = (DateType, StringType, *NAIVE_TIMESTAMPS, *AWARE_TIMESTAMPS)
PARTITION_DAY = "__partition_day"
UPDATED = "__updated"


class SourceSchemaError(SocialEnrichError, ValueError):
    """A source table does not have what the job config says it has."""


@dataclass
class SourceStats:
    touched_rows: int = 0  # rows whose datetime falls on the day
    version_rows: int = 0  # rows read for the touched posts, all versions
    null_keys: int = 0  # rows touched on the day but skipped for a null index value
    versions_collapsed: int = 0  # older versions dropped in favour of the latest


@dataclass
class PartitionPosts:
    """One row per post touched on the day: the index, every source's columns, and the latest update time."""

    posts: pa.Table
    source_update_time: pa.Array  # timestamp[us, UTC], the latest datetime over all sources
    partition_date: pa.Array  # date32: the day of the post's latest touch in any source, its partition
    index_type: IcebergType  # the index field's Iceberg type, shared by every source
    sources: dict[str, SourceStats] = field(default_factory=dict)
    capped: int = 0  # touched posts left for a later run by max_records
    touched_later: int = 0  # touched in the range but last touched after it: they live on that later day
    version_days: frozenset[dt.date] = frozenset()  # every day a version of these posts was written on
    # The sources' retained history only ever added rows, so every earlier version of a post is still
    # there and version_days holds every day the target can have the post on (see keeps_every_version).
    versions_complete: bool = True


def day_window(name: str, iceberg_type: IcebergType, first: dt.date, last: dt.date | None = None) -> BooleanExpression:
    """[first, last + 1) as a pyiceberg predicate on a date, timestamp or ISO-8601 string field."""
    start, end = first, (last or first) + dt.timedelta(days=1)
    if isinstance(iceberg_type, (DateType, StringType)):
        lo, hi = start.isoformat(), end.isoformat()
    elif isinstance(iceberg_type, NAIVE_TIMESTAMPS):
        lo, hi = f"{start}T00:00:00", f"{end}T00:00:00"
    else:
        lo, hi = f"{start}T00:00:00+00:00", f"{end}T00:00:00+00:00"
    return And(GreaterThanOrEqual(name, lo), LessThan(name, hi))


def days_text(first: dt.date, last: dt.date) -> str:
    """'2026-11-02', or '2026-11-01..2026-11-07' for a range."""
    return str(first) if first == last else f"{first}..{last}"


def to_utc_timestamps(values: pa.ChunkedArray | pa.Array, where: str) -> pa.Array:
    """Any supported datetime column as timestamp[us, UTC]; naive values are taken as UTC."""
    values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    kind = values.type
    try:
        if pa.types.is_timestamp(kind):
            if kind.tz is None:
                values = pc.assume_timezone(values, "UTC")
            return values.cast(UTC_MICROS, safe=False)  # ns -> us drops sub-microsecond digits
        if pa.types.is_date(kind):
            return values.cast(pa.timestamp("us")).cast(UTC_MICROS)
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            try:
                return pc.cast(values, UTC_MICROS)  # text with a zone offset
            except pa.ArrowInvalid:
                return pc.assume_timezone(pc.cast(values, pa.timestamp("us")), "UTC")
    except pa.ArrowInvalid as e:
        raise SourceSchemaError(f"{where}: values are not ISO-8601 datetimes: {e}") from e
    raise SourceSchemaError(f"{where}: type {kind} is not a date, timestamp or ISO-8601 string")


def _check_source(table: Table, ref: TableRef, position: int) -> None:
    schema = table.schema()
    for setting in ("index_field", "datetime_field"):
        name = getattr(ref, setting)
        if name not in schema.column_names:
            raise SourceSchemaError(
                f"{ref.identifier} has no field '{name}' (connector.source.tables.{position}.{setting}); "
                f"its fields are {schema.column_names}"
            )
    kind = schema.find_field(ref.datetime_field).field_type
    if not isinstance(kind, DATETIME_TYPES):
        raise SourceSchemaError(
            f"{ref.identifier}.{ref.datetime_field} is {kind}, not a date, timestamp or ISO-8601 string "
            f"(connector.source.tables.{position}.datetime_field)"
        )


def _key_range(keys: pa.Array, name: str) -> BooleanExpression | None:
    """min <= key <= max, so pyiceberg skips files by their column bounds before the exact match."""
    if len(keys) == 0:
        return AlwaysFalse()  # nothing to look up: read no file
    if not (pa.types.is_integer(keys.type) or pa.types.is_string(keys.type) or pa.types.is_large_string(keys.type)):
        return None
    bounds = pc.min_max(keys)
    return And(GreaterThanOrEqual(name, bounds["min"].as_py()), LessThanOrEqual(name, bounds["max"].as_py()))


def _latest_per_key(rows: pa.Table, key: str, updated: str) -> pa.Table:
    """Keep each key's row with the greatest update time (nulls last)."""
    rows = rows.sort_by([(key, "ascending"), (updated, "descending")])
    if rows.num_rows < 2:
        return rows
    keys = rows[key].combine_chunks()
    first_of_group = pc.not_equal(keys.slice(1), keys.slice(0, len(keys) - 1))
    return rows.filter(pa.concat_arrays([pa.array([True]), first_of_group.fill_null(True)]))


def _touched_keys(table: Table, ref: TableRef, key: str, first: dt.date, last: dt.date, stats: SourceStats, log: logging.Logger) -> pa.Array:
    """The distinct index values of the rows whose datetime falls in [first, last]; null keys are counted and named."""
    window = day_window(ref.datetime_field, table.schema().find_field(ref.datetime_field).field_type, first, last)
    rows = table.scan(row_filter=window, selected_fields=(key, ref.datetime_field)).to_arrow()
    column = plain(rows[key])
    stats.touched_rows = len(column)
    if column.null_count:
        stats.null_keys = column.null_count
        when = rows.filter(pc.is_null(column))[ref.datetime_field].to_pylist()[:5]
        log.warning(
            "%s: %d rows touched on %s have a null %s and were skipped (their %s: %s)",
            ref.identifier, column.null_count, days_text(first, last), key, ref.datetime_field, ", ".join(map(str, when)),
        )
    return pc.unique(column.drop_null())


def _versions(table: Table, key: str, keys: pa.Array, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """Every version of the given posts, only ``columns``, batch by batch: files are pruned by the key
    range, the exact match runs in pyarrow on each batch, so only the matching rows are ever kept."""
    key_range = _key_range(keys, key)
    scan = table.scan(row_filter=key_range if key_range is not None else AlwaysTrue(), selected_fields=tuple(columns))
    for batch in _batches(scan):
        batch = batch.set_column(batch.schema.get_field_index(key), key, plain(batch[key]))
        yield batch.filter(pc.is_in(batch[key], value_set=keys))


def _batches(scan: DataScan) -> Iterator[pa.RecordBatch]:
    """The scan's record batches, one file at a time, each batch as Arrow decodes it. pyiceberg 0.12's
    own ``to_arrow_batch_reader`` decodes every file of the scan up front (``executor.map`` over all
    files, each into a list) and holds them until read: a whole day in memory, not a batch."""
    tasks = list(scan.plan_files())
    target = schema_to_pyarrow(scan.projection())
    arrow = ArrowScan(scan.table_metadata, scan.io, scan.projection(), scan.row_filter, scan.case_sensitive)
    for batch in arrow._record_batches_from_scan_tasks_and_deletes(tasks, _read_all_delete_files(scan.io, tasks)):
        yield batch.cast(target)


def _latest_touch(table: Table, ref: TableRef, key: str, keys: pa.Array, stats: SourceStats) -> tuple[pa.Table, set[dt.date]]:
    """Each post's latest datetime in this source (as ``__updated``), and every day one of its versions was written on."""
    where = f"{ref.identifier}.{ref.datetime_field}"
    parts, days = [], set()
    for batch in _versions(table, key, keys, [key, ref.datetime_field]):
        times = to_utc_timestamps(batch[ref.datetime_field], where)
        days.update(pc.unique(times.cast(pa.date32())).drop_null().to_pylist())
        parts.append(pa.table({key: batch[key], UPDATED: times}))
    rows = pa.concat_tables(parts) if parts else pa.table({key: pa.array([], keys.type), UPDATED: pa.array([], UTC_MICROS)})
    stats.version_rows = rows.num_rows
    latest = rows.group_by(key).aggregate([(UPDATED, "max")]).rename_columns([key, UPDATED])
    stats.versions_collapsed = rows.num_rows - latest.num_rows
    return latest, days


def _latest_rows(table: Table, ref: TableRef, key: str, latest: pa.Table, columns: list[str]) -> pa.Table:
    """The latest row in this source of each post of ``latest`` (key, its latest time), only ``columns``,
    whatever day it was written. Each batch keeps only those rows, so older versions are never held."""
    where = f"{ref.identifier}.{ref.datetime_field}"
    wanted = list(dict.fromkeys([key, ref.datetime_field, *columns]))
    keys, times = latest[key].combine_chunks(), latest[UPDATED].combine_chunks()
    parts = []
    for batch in _versions(table, key, keys, wanted):
        at = to_utc_timestamps(batch[ref.datetime_field], where)
        newest = pc.equal(at, times.take(pc.index_in(batch[key], value_set=keys)))
        parts.append(batch.append_column(UPDATED, at).filter(newest))
    if parts:
        rows = pa.Table.from_batches(parts)
    else:
        schema = table.schema().select(*wanted).as_arrow()
        schema = schema.set(schema.get_field_index(key), pa.field(key, plain_type(schema.field(key).type)))
        rows = schema.append(pa.field(UPDATED, UTC_MICROS)).empty_table()
    if rows.num_rows > pc.count_distinct(rows[key]).as_py():  # two rows of one post at the same time: keep one
        rows = _latest_per_key(rows, key, UPDATED)
    return rows.select([c for c in wanted if c != ref.datetime_field or c in columns])


def _cap_per_day(posts: pa.Table, cap: int, log: logging.Logger) -> tuple[pa.Table, int]:
    """At most ``cap`` posts per day (the lowest keys); the rest are left for a later run."""
    kept, capped = [], 0
    for day in pc.unique(posts[PARTITION_DAY]).to_pylist():
        rows = posts.filter(pc.equal(posts[PARTITION_DAY], day))
        if rows.num_rows > cap:
            capped += rows.num_rows - cap
            log.info("max_records=%d: scoring %d of %d posts touched on %s; %d left for a later run",
                     cap, cap, rows.num_rows, day, rows.num_rows - cap)
        kept.append(rows.slice(0, cap))
    return (pa.concat_tables(kept) if kept else posts), capped


@dataclass(frozen=True)
class SourceColumn:
    table: str  # the source table that provides it (the first that has a column of this name)
    type: IcebergType


def keeps_every_version(table: Table) -> bool:
    """Whether the table's retained snapshots only ever appended rows or rewrote files (compaction). A
    table updated in place (MERGE, overwrite, delete) has lost earlier versions of some rows, so the
    days those were written on can no longer be read from it."""
    return all(s.summary is None or s.summary.operation in (Operation.APPEND, Operation.REPLACE) for s in table.snapshots())


def joined_columns(job: JobConfig, tables: list[Table]) -> dict[str, SourceColumn]:
    """The columns of the joined sources (``source_tables``), in order, without reading any data: what a
    configured field can name."""
    columns: dict[str, SourceColumn] = {}
    for table, ref in zip(tables, job.connector.source.tables):
        for f in table.schema().fields:
            columns.setdefault(f.name, SourceColumn(ref.identifier, f.field_type))
    return columns


def source_tables(catalog: Catalog, job: JobConfig) -> list[Table]:
    """The job's source tables, loaded and checked against its config."""
    refs = job.connector.source.tables
    tables = [load_table(catalog, ref.identifier) for ref in refs]
    for position, (table, ref) in enumerate(zip(tables, refs)):
        _check_source(table, ref, position)
    key_types = {ref.identifier: t.schema().find_field(job.index_field).field_type for t, ref in zip(tables, refs)}
    if len({str(v) for v in key_types.values()}) > 1:
        raise SourceSchemaError(f"index field '{job.index_field}' has different types across sources: {key_types}")
    return tables


def read_days(
    catalog: Catalog, job: JobConfig, first: dt.date, last: dt.date, log: logging.Logger | None = None,
    columns: list[str] | None = None, tables: list[Table] | None = None,
) -> PartitionPosts:
    """The posts that live on the days first..last: touched on one of them in some source, and touched
    last (latest datetime across every source) on one of them. A post touched again later lives on
    that later day and is left for it, whichever day is run first: the partition of a post never
    depends on the order in which days are materialized.

    Only ``columns`` (default: every column) of each post's latest row are read, batch by batch, so
    memory holds the chosen fields of the posts, never every column of every version. ``tables``: the
    source tables when the caller has loaded them already (``source_tables``)."""
    log = log or logging.getLogger(__name__)
    refs = job.connector.source.tables
    key = job.index_field
    tables = tables if tables is not None else source_tables(catalog, job)
    index_type = tables[0].schema().find_field(key).field_type
    stats = {ref.identifier: SourceStats() for ref in refs}

    # 1. The posts touched in the range in any source (index and datetime columns only).
    touched = _distinct([_touched_keys(t, ref, key, first, last, stats[ref.identifier], log) for t, ref in zip(tables, refs)])

    # 2. Each post's latest touch in any source: its partition. Posts whose latest touch is after the range
    #    live on that later day; the days of all their versions say where the target may hold them now.
    latest_per_source, version_days = [], set()
    for table, ref in zip(tables, refs):
        latest, days = _latest_touch(table, ref, key, touched, stats[ref.identifier])
        latest_per_source.append(latest)
        version_days |= days
    # Each source's latest touch aligned to the posts (null where a source lacks the post); max_element_wise
    # has no timestamp kernel, so the underlying microseconds are compared.
    micros = [latest[UPDATED].take(pc.index_in(touched, value_set=latest[key])).combine_chunks().cast(pa.int64())
              for latest in latest_per_source]
    updated = pc.max_element_wise(*micros, skip_nulls=True).cast(UTC_MICROS)
    posts = pa.table({key: touched, UPDATED: updated, PARTITION_DAY: updated.cast(pa.date32())})
    del touched, micros, updated  # a million posts' bookkeeping is ~100 MB: free it before the fields are read
    in_range = pc.and_(pc.greater_equal(posts[PARTITION_DAY], pa.scalar(first, pa.date32())),
                       pc.less_equal(posts[PARTITION_DAY], pa.scalar(last, pa.date32())))
    later = posts.num_rows - pc.sum(in_range).as_py() if posts.num_rows else 0
    posts = posts.filter(in_range).sort_by([(PARTITION_DAY, "ascending"), (key, "ascending")])
    if later:
        log.info("%d posts touched on %s were touched again later: they live on their later day", later, days_text(first, last))
    capped = 0
    if job.connector.source.max_records is not None:
        posts, capped = _cap_per_day(posts, job.connector.source.max_records, log)
    keys = posts[key].combine_chunks()

    # 3. Each post's latest row in every source, only the columns asked for, joined on the index.
    wanted = None if columns is None else set(columns)
    joined = pa.table({key: keys})
    for table, ref, touches in zip(tables, refs, latest_per_source):
        names = [f.name for f in table.schema().fields if f.name not in joined.column_names and (wanted is None or f.name in wanted)]
        if not names:
            continue  # this source adds no column: nothing more to read from it
        latest = _latest_rows(table, ref, key, touches.filter(pc.is_in(touches[key], value_set=keys)), names)
        # Align to the posts; a post missing from this source gets nulls. The first source with a column wins.
        aligned = latest.take(pc.index_in(keys, value_set=latest[key]))
        del latest
        for name in names:
            joined = joined.append_column(name, aligned[name])
        del aligned
    del latest_per_source
    complete = all(keeps_every_version(t) for t in tables)
    return PartitionPosts(
        joined, posts[UPDATED].combine_chunks(), posts[PARTITION_DAY].combine_chunks(), index_type,
        sources=stats, capped=capped, touched_later=later, version_days=frozenset(version_days), versions_complete=complete,
    )


def _distinct(arrays: list[pa.Array]) -> pa.Array:
    non_empty = [a for a in arrays if len(a)] or arrays[:1]
    return pc.unique(pa.concat_arrays([a.cast(non_empty[0].type) for a in non_empty]))


def read_partition(catalog: Catalog, job: JobConfig, day: dt.date, log: logging.Logger | None = None) -> PartitionPosts:
    """The posts touched on one day."""
    return read_days(catalog, job, day, day, log)
