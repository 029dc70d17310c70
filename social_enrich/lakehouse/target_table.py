"""The enrichment target table: its schema, and a write path whose cost does not grow with the table.

Every row carries ``partition_date``, the day of its post's latest touch in any source, and the
table is partitioned by it (then by the job's ``partition_by`` transforms of the write time).
Writing days D (one day, or a backfill's range):
1. find which *other* days hold the posts being written: only the days their source versions were
   written on can (one key column read of those days, pyarrow ``is_in``; no Iceberg ``In`` of keys);
2. in one transaction, drop the partitions of D and of those days, and append the new rows plus
   those days' rows of every other post.
So a post has one row, a re-run replaces rather than adds, and the data read and rewritten is that
of the days involved, never the whole table.
"""

from __future__ import annotations

import datetime as dt
import itertools
import random
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import (
    CommitFailedException,
    NamespaceAlreadyExistsError,
    NoSuchTableError,
    TableAlreadyExistsError,
    ValidationException,
)
from pyiceberg.expressions import BooleanExpression, In, NotIn
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema, assign_fresh_schema_ids
from pyiceberg.io.pyarrow import _check_pyarrow_schema_compatible, _dataframe_to_data_files
from pyiceberg.table import Table, Transaction
from pyiceberg.transforms import DayTransform, HourTransform, IdentityTransform, MonthTransform, YearTransform
from pyiceberg.types import (
    BooleanType,
    DateType,
    IcebergType,
    NestedField,
    StringType,
    TimestamptzType,
)

from social_enrich.config import JobConfig
from social_enrich.errors import SocialEnrichError
from social_enrich.lakehouse.keys import plain
from social_enrich.lakehouse.response_schema import response_columns, same_type, type_text

PARTITION_DATE = "partition_date"
APPEND_SLICE_ROWS = 200_000  # rows written to files at a time: bounds the append's copies
GOOD_STATUSES = ("ok", "filtered")  # answers worth keeping; failed ones are tried again
TRANSFORMS = {"year": YearTransform(), "month": MonthTransform(), "day": DayTransform(), "hour": HourTransform()}


class TargetSchemaError(SocialEnrichError, ValueError):
    """The target table or the rows for it do not match the job's schema."""


def bookkeeping_fields(job: JobConfig) -> list[tuple[str, IcebergType]]:
    """Columns every enrichment target carries besides the index and the response fields."""
    return [
        ("model", StringType()),
        ("prompt_version", StringType()),
        ("input_hash", StringType()),
        ("status", StringType()),
        ("error", StringType()),
        ("input_truncated", BooleanType()),  # the text was cut to inference.max_input_tokens_per_post
        ("source_update_time", TimestamptzType()),
        (PARTITION_DATE, DateType()),
        (job.connector.target.datetime_field, TimestamptzType()),
    ]


def target_schema(job: JobConfig, index_type: IcebergType) -> Schema:
    index = job.connector.target.index_field
    response = response_columns(job.response_model, first_id=2)
    columns = [*((f.name, f.field_type) for f in response), *bookkeeping_fields(job)]
    names = [index] + [name for name, _ in columns]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise TargetSchemaError(
            f"{job.path}: response model {job.response_model.__name__} uses reserved column names {clashes}"
        )
    fields = [NestedField(1, index, index_type, required=True)]
    # Response columns are optional whatever their type: a failed or filtered post stores nulls there.
    fields += [NestedField(i, name, kind, required=False) for i, (name, kind) in enumerate(columns, start=2)]
    return assign_fresh_schema_ids(Schema(*fields))


def target_partition_spec(job: JobConfig, schema: Schema) -> PartitionSpec:
    target = job.connector.target
    fields = [PartitionField(schema.find_field(PARTITION_DATE).field_id, 1000, IdentityTransform(), PARTITION_DATE)]
    source_id = schema.find_field(target.datetime_field).field_id
    for offset, name in enumerate(target.partition_by, start=1):
        fields.append(PartitionField(source_id, 1000 + offset, TRANSFORMS[name], f"{target.datetime_field}_{name}"))
    return PartitionSpec(*fields)


def _schema_differences(actual: Schema, expected: Schema) -> list[str]:
    have = {f.name: f.field_type for f in actual.fields}
    want = {f.name: f.field_type for f in expected.fields}
    problems = [f"missing column {n} ({t})" for n, t in want.items() if n not in have]
    for n, t in want.items():
        if n in have and not same_type(have[n], t):
            older = " (stored as JSON text by an older social_enrich)" if isinstance(have[n], StringType) and not t.is_primitive else ""
            problems.append(f"column {n} is {type_text(have[n])}{older}, expected {type_text(t)}")
    problems += [f"unexpected column {n}" for n in have if n not in want]
    return problems


def open_target(catalog: Catalog, job: JobConfig, index_type: IcebergType, drop: bool = False) -> Table:
    """Load the target table, creating it (or re-creating it when ``drop``); refuse one with another schema."""
    target = job.connector.target
    schema = target_schema(job, index_type)
    # Asked first, so a least-privilege role needs no glue:CreateDatabase once the database exists.
    if not catalog.namespace_exists(target.database):
        try:
            catalog.create_namespace(target.database)
        except NamespaceAlreadyExistsError:
            pass  # created meanwhile by a concurrent run
        except Exception:
            # The SQL catalog reports that race as its database's unique-constraint error instead.
            if not catalog.namespace_exists(target.database):
                raise
    if drop:
        try:
            catalog.drop_table(target.identifier)
        except NoSuchTableError:
            pass
    try:
        table = catalog.load_table(target.identifier)
    except NoSuchTableError:
        try:
            return catalog.create_table(target.identifier, schema, partition_spec=target_partition_spec(job, schema))
        except TableAlreadyExistsError:
            table = catalog.load_table(target.identifier)  # created meanwhile by a concurrent run: use that one
    problems = _schema_differences(table.schema(), schema)
    if problems:
        raise TargetSchemaError(
            f"target table {target.identifier} does not match job '{job.name}': {'; '.join(problems)}. "
            "Materialize with run config drop: true to rebuild it (its rows are scored again), or point "
            "connector.target at a new table."
        )
    return table


@dataclass(frozen=True)
class WriteStats:
    rows_written: int
    moved_from_other_days: int  # posts whose previous row lived in another day's partition
    snapshot_id: int | None
    kept_good: int = 0  # posts whose new attempt failed, kept with their earlier good answer to the same input
    commit_attempts: int = 1
    committed: bool = True  # False: nothing had changed, so nothing was written
    superseded: int = 0  # posts the target already holds on a later day (touched again since): that row stays


def conform(rows: pa.Table, table: Table) -> pa.Table:
    """Cast rows to the table's Arrow schema, naming every column that does not fit."""
    schema = table.schema().as_arrow()
    missing = [f.name for f in schema if f.name not in rows.column_names]
    extra = [n for n in rows.column_names if schema.get_field_index(n) < 0]
    if missing or extra:
        raise TargetSchemaError(f"rows for {table.name()} do not fit: missing {missing}, unexpected {extra}")
    columns = []
    for target_field in schema:
        column = rows[target_field.name]
        if not target_field.nullable and column.null_count:
            raise TargetSchemaError(f"column {target_field.name} of {table.name()} is required but has nulls")
        try:
            columns.append(column.cast(target_field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise TargetSchemaError(f"column {target_field.name}: cannot store {column.type} as {target_field.type}: {e}") from e
    return pa.Table.from_arrays(columns, schema=schema)


COMMIT_ATTEMPTS = 10  # a lost commit race is re-applied on the refreshed table this many times at most


def write_days(
    table: Table, job: JobConfig, days: list[dt.date], rows: pa.Table, *, may_live_on: Iterable[dt.date] | None = None,
    later_rows_stay: bool = False,
) -> WriteStats:
    """Write ``rows`` (each carrying its partition_date, one of ``days``) in one commit: each post's new
    row replaces its old one, on whichever day that lived; the days' rows of other posts stay.

    ``may_live_on``: the days the posts' old rows can be on (the days their source versions were
    written, see partition_scan.read_days), so only those partitions are read, not the whole table;
    None reads the index column of every other day. ``later_rows_stay``: a post found on a day after
    ``days`` keeps that row and this one is dropped (``superseded``), for rows read long before they
    are written (a batch), whose posts may have been touched again since. A commit that loses a race
    with another writer is re-applied on the refreshed table, so concurrent runs of different days (or
    the same) all land."""
    rows = conform(rows, table)
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        try:
            return _write_once(table, job, days, rows, may_live_on, later_rows_stay, attempt)
        except (CommitFailedException, ValidationException):
            # Lost a race: another writer committed first (pyiceberg's own retries rebase our commit,
            # and refuse it when the other one added rows to the days we replace). Re-read, re-apply.
            if attempt == COMMIT_ATTEMPTS:
                raise
            time.sleep(random.uniform(0.05, 0.2 * attempt))  # let the winner finish, then re-read what it wrote
            table.refresh()
    raise AssertionError("unreachable")


def _write_once(
    table: Table, job: JobConfig, days: list[dt.date], rows: pa.Table, may_live_on: Iterable[dt.date] | None, later_rows_stay: bool, attempt: int
) -> WriteStats:
    index = job.connector.target.index_field
    keys = plain(rows[index])
    written = sorted({d.isoformat() for d in days})
    # 1. Which other days hold some of these posts now: only the index column of the days they may be on.
    if may_live_on is None:
        where: BooleanExpression | None = NotIn(PARTITION_DATE, written)
    else:
        candidates = sorted({d.isoformat() for d in may_live_on} - set(written))
        where = In(PARTITION_DATE, candidates) if candidates else None
    other_days: list[str] = []
    moved = superseded = 0
    if where is not None:
        held = table.scan(row_filter=where, selected_fields=(index, PARTITION_DATE)).to_arrow()
        held = held.filter(pc.is_in(plain(held[index]), value_set=keys))
        later = pc.greater(held[PARTITION_DATE], pa.scalar(max(days), pa.date32()))
        if later_rows_stay and pc.any(later).as_py():
            newer = plain(held.filter(later)[index])
            superseded = len(newer)
            rows = rows.filter(pc.invert(pc.is_in(plain(rows[index]), value_set=newer)))
            keys = plain(rows[index])
            held = held.filter(pc.invert(later))
        moved = held.num_rows
        other_days = [d.isoformat() for d in sorted(set(held[PARTITION_DATE].to_pylist()))]
    # 2. Those days and the written ones are rewritten whole: pyiceberg drops files by partition and
    #    never evaluates a key predicate. Their rows of other posts stay as they are.
    replaced = written + other_days
    old = table.scan(row_filter=In(PARTITION_DATE, replaced)).to_arrow()
    old_is_written = pc.is_in(plain(old[index]), value_set=keys)
    rows, kept_good = _keep_good_answers(rows, old.filter(old_is_written), index)
    final = pa.concat_tables([rows, old.filter(pc.invert(old_is_written))])
    with warnings.catch_warnings():
        # Replacing a day that has no rows yet is expected, not worth a warning.
        warnings.filterwarnings("ignore", message="Delete operation did not match any records")
        with table.transaction() as tx:
            tx.delete(In(PARTITION_DATE, replaced))
            _append_in_slices(tx, final)
    snapshot = table.current_snapshot()
    return WriteStats(len(keys), moved, snapshot.snapshot_id if snapshot else None, kept_good, attempt, superseded=superseded)


def _append_in_slices(tx: Transaction, rows: pa.Table) -> None:
    """Append ``rows`` as one snapshot, written to files in slices of APPEND_SLICE_ROWS. pyiceberg's
    own append copies the whole table several times on the way to its files (the partition split, the
    file schema), so a day of a million rows would be held three or four times at once."""
    _check_pyarrow_schema_compatible(tx.table_metadata.schema(), rows.schema, format_version=tx.table_metadata.format_version)
    files = itertools.count()  # one numbering for the snapshot's files: their names must not repeat
    with tx.update_snapshot().fast_append() as append:
        for start in range(0, rows.num_rows, APPEND_SLICE_ROWS):
            piece = rows.slice(start, APPEND_SLICE_ROWS)
            for data_file in _dataframe_to_data_files(tx.table_metadata, piece, tx._table.io, append.commit_uuid, files):
                append.append_data_file(data_file)


def _keep_good_answers(rows: pa.Table, old: pa.Table, index: str) -> tuple[pa.Table, int]:
    """A post whose new attempt failed keeps its earlier good row for the same input, model and prompt
    (moved to the new row's day): a failed attempt never replaces a good result."""
    failed = pc.equal(rows["status"], "failed")
    if not pc.any(failed).as_py() or old.num_rows == 0:
        return rows, 0
    good = old.filter(pc.is_in(old["status"], value_set=pa.array(GOOD_STATUSES)))
    new = rows.take(pc.index_in(plain(good[index]), value_set=plain(rows[index])))
    same = pc.and_(pc.and_(pc.equal(new["status"], "failed"), pc.equal(good["input_hash"], new["input_hash"])),
                   pc.and_(pc.equal(good["model"], new["model"]), pc.equal(good["prompt_version"], new["prompt_version"])))
    kept, new = good.filter(same), new.filter(same)
    if kept.num_rows == 0:
        return rows, 0
    for name in (PARTITION_DATE, "source_update_time"):  # where and as of when the post lives now
        kept = kept.set_column(kept.schema.get_field_index(name), name, new[name])
    rest = rows.filter(pc.invert(pc.is_in(plain(rows[index]), value_set=plain(kept[index]))))
    return pa.concat_tables([rest, kept]), kept.num_rows


def partition_row_counts(table: Table, days: list[dt.date]) -> dict[dt.date, int]:
    """Rows each of these days' partitions holds (one column of those partitions read)."""
    held = table.scan(row_filter=In(PARTITION_DATE, [d.isoformat() for d in days]), selected_fields=(PARTITION_DATE,)).to_arrow()
    counts = {row["values"]: row["counts"] for row in pc.value_counts(held[PARTITION_DATE]).to_pylist()} if held.num_rows else {}
    return {day: counts.get(day, 0) for day in days}
