"""Read the posts of a day (or a range of days) from the gold tables: touched keys, each post's latest row per source, joined.

Everything stays in Arrow. pyiceberg prunes files with the day window and the key range; the exact
key match runs in pyarrow (``is_in``), since binding thousands of keys into an Iceberg ``In``
predicate is slow.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog import Catalog
from pyiceberg.expressions import AlwaysFalse, And, BooleanExpression, GreaterThanOrEqual, LessThan, LessThanOrEqual
from pyiceberg.table import Table
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
from social_enrich.lakehouse.catalog import load_table
from social_enrich.lakehouse.keys import plain, plain_type

UTC_MICROS = pa.timestamp("us", tz="UTC")
NAIVE_TIMESTAMPS = (TimestampType, TimestampNanoType)
AWARE_TIMESTAMPS = (TimestamptzType, TimestamptzNanoType)
DATETIME_TYPES = (DateType, StringType, *NAIVE_TIMESTAMPS, *AWARE_TIMESTAMPS)
PARTITION_DAY = "__partition_day"


class SourceSchemaError(ValueError):
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
    partition_date: pa.Array  # date32: the last day of the range that touched the post, its partition
    index_type: IcebergType  # the index field's Iceberg type, shared by every source
    sources: dict[str, SourceStats] = field(default_factory=dict)
    capped: int = 0  # touched posts left for a later run by max_records


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


def _touched_keys(
    table: Table, ref: TableRef, key: str, first: dt.date, last: dt.date, stats: SourceStats, log: logging.Logger
) -> pa.Table:
    """The index values of the rows whose datetime falls in [first, last], each with the last day that
    touched it; null keys are counted and named."""
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
    days = to_utc_timestamps(rows[ref.datetime_field], f"{ref.identifier}.{ref.datetime_field}").cast(pa.date32())
    return pa.table({key: column, PARTITION_DAY: days}).filter(pc.is_valid(column))


def _last_day_per_key(touched: pa.Table, key: str) -> pa.Table:
    """One row per key with the latest day that touched it, sorted by day then key."""
    grouped = touched.group_by(key).aggregate([(PARTITION_DAY, "max")]).rename_columns([key, PARTITION_DAY])
    return grouped.sort_by([(PARTITION_DAY, "ascending"), (key, "ascending")])


def _cap_per_day(touched: pa.Table, cap: int, log: logging.Logger) -> tuple[pa.Table, int]:
    """At most ``cap`` posts per day (the lowest keys); the rest are left for a later run."""
    kept, capped = [], 0
    for day in pc.unique(touched[PARTITION_DAY]).to_pylist():
        rows = touched.filter(pc.equal(touched[PARTITION_DAY], day))
        if rows.num_rows > cap:
            capped += rows.num_rows - cap
            log.info("max_records=%d: scoring %d of %d posts touched on %s; %d left for a later run",
                     cap, cap, rows.num_rows, day, rows.num_rows - cap)
        kept.append(rows.slice(0, cap))
    return (pa.concat_tables(kept) if kept else touched), capped


def _latest_rows(table: Table, ref: TableRef, key: str, keys: pa.Array, updated: str, stats: SourceStats) -> pa.Table:
    """Every version of the given posts, reduced to each post's latest, with its time as ``updated``."""
    key_range = _key_range(keys, key)
    scan = table.scan(row_filter=key_range) if key_range is not None else table.scan()
    reader = scan.to_arrow_batch_reader()
    position = reader.schema.get_field_index(key)
    matches = []
    for batch in reader:
        batch = batch.set_column(position, key, plain(batch[key]))
        matches.append(batch.filter(pc.is_in(batch[key], value_set=keys)))
    schema = reader.schema.set(position, pa.field(key, plain_type(reader.schema.field(key).type)))
    rows = pa.Table.from_batches(matches, schema=schema)
    stats.version_rows = rows.num_rows
    times = to_utc_timestamps(rows[ref.datetime_field], f"{ref.identifier}.{ref.datetime_field}")
    latest = _latest_per_key(rows.append_column(updated, times), key, updated)
    stats.versions_collapsed = rows.num_rows - latest.num_rows
    return latest


def read_days(catalog: Catalog, job: JobConfig, first: dt.date, last: dt.date, log: logging.Logger | None = None) -> PartitionPosts:
    """The posts touched on the days first..last (one scan per source for the whole range), each
    assigned to the last of those days that touched it."""
    log = log or logging.getLogger(__name__)
    refs = job.connector.source.tables
    key = job.index_field
    tables = [load_table(catalog, ref.identifier) for ref in refs]
    for position, (table, ref) in enumerate(zip(tables, refs)):
        _check_source(table, ref, position)
    key_types = {ref.identifier: t.schema().find_field(key).field_type for t, ref in zip(tables, refs)}
    if len({str(v) for v in key_types.values()}) > 1:
        raise SourceSchemaError(f"index field '{key}' has different types across sources: {key_types}")
    stats = {ref.identifier: SourceStats() for ref in refs}

    # 1. The posts touched in the range in any source, each with its partition: the last day touching it.
    touched = pa.concat_tables(
        [_touched_keys(t, ref, key, first, last, stats[ref.identifier], log) for t, ref in zip(tables, refs)],
        promote_options="permissive",
    )
    touched = _last_day_per_key(touched, key)
    capped = 0
    cap = job.connector.source.max_records
    if cap is not None:
        touched, capped = _cap_per_day(touched, cap, log)
    keys = touched[key].combine_chunks()

    # 2. Each touched post's latest row in every source, whatever day it was written, joined on the index.
    posts = pa.table({key: keys})
    updated_columns = []
    for table, ref in zip(tables, refs):
        updated = "__updated"
        latest = _latest_rows(table, ref, key, keys, updated, stats[ref.identifier])
        # Align to the touched keys; a post missing from this source gets nulls.
        aligned = latest.take(pc.index_in(keys, value_set=latest[key]))
        updated_columns.append(aligned[updated].combine_chunks())
        for name in aligned.column_names:
            if name not in posts.column_names and name != updated:  # the first source with a column wins
                posts = posts.append_column(name, aligned[name])

    # max_element_wise has no timestamp kernel: compare the underlying microseconds.
    micros = [c.cast(pa.int64()) for c in updated_columns]
    latest_update = pc.max_element_wise(*micros, skip_nulls=True).cast(UTC_MICROS)
    index_type = next(iter(key_types.values()))
    partition_date = touched[PARTITION_DAY].combine_chunks()
    return PartitionPosts(posts, latest_update, partition_date, index_type, sources=stats, capped=capped)


def read_partition(catalog: Catalog, job: JobConfig, day: dt.date, log: logging.Logger | None = None) -> PartitionPosts:
    """The posts touched on one day."""
    return read_days(catalog, job, day, day, log)
