"""The enrichment target table: its schema, and a write path whose cost does not grow with the table.

Every row carries ``partition_date``, the daily partition that last wrote it, and the table is
partitioned by it (then by the job's ``partition_by`` transforms of the write time). Writing days D
(one day, or a backfill's range):
1. find which *other* days currently hold the posts being written (one key column read, pyarrow
   ``is_in``; no Iceberg ``In`` of keys over the whole table);
2. in one transaction, drop the partitions of D and of those days, and append D's rows plus those
   days' rows without the moved posts.
So a post has one row, a re-run replaces rather than adds, and the files rewritten are those of
the days involved, never the whole table.
"""

from __future__ import annotations

import datetime as dt
import warnings
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NamespaceAlreadyExistsError, NoSuchTableError
from pyiceberg.expressions import In, NotIn
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.transforms import DayTransform, HourTransform, IdentityTransform, MonthTransform, YearTransform
from pyiceberg.types import (
    BooleanType,
    DateType,
    DoubleType,
    IcebergType,
    LongType,
    NestedField,
    StringType,
    TimestamptzType,
)

from social_enrich.config import JobConfig
from social_enrich.lakehouse.keys import plain

PARTITION_DATE = "partition_date"
TRANSFORMS = {"year": YearTransform(), "month": MonthTransform(), "day": DayTransform(), "hour": HourTransform()}
_JSON_TYPES: dict[str, IcebergType] = {
    "string": StringType(),
    "number": DoubleType(),
    "integer": LongType(),
    "boolean": BooleanType(),
}


class TargetSchemaError(ValueError):
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


def response_fields(model: type[BaseModel]) -> list[tuple[str, IcebergType]]:
    """A response model's fields as Iceberg columns; anything not a JSON scalar is stored as JSON text."""
    properties = model.model_json_schema().get("properties", {})
    fields = []
    for name, spec in properties.items():
        kind = spec.get("type") if "enum" not in spec else "string"
        fields.append((name, _JSON_TYPES.get(kind, StringType())))
    return fields


def json_text_fields(model: type[BaseModel]) -> set[str]:
    """The response fields response_fields stores as JSON text."""
    properties = model.model_json_schema().get("properties", {})
    return {name for name, spec in properties.items() if "enum" not in spec and spec.get("type") not in _JSON_TYPES}


def target_schema(job: JobConfig, index_type: IcebergType) -> Schema:
    index = job.connector.target.index_field
    columns = [*response_fields(job.response_model), *bookkeeping_fields(job)]
    names = [index] + [name for name, _ in columns]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise TargetSchemaError(
            f"{job.path}: response model {job.response_model.__name__} uses reserved column names {clashes}"
        )
    fields = [NestedField(1, index, index_type, required=True)]
    fields += [NestedField(i, name, kind, required=False) for i, (name, kind) in enumerate(columns, start=2)]
    return Schema(*fields)


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
    problems += [f"column {n} is {have[n]}, expected {t}" for n, t in want.items() if n in have and have[n] != t]
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
    if drop:
        try:
            catalog.drop_table(target.identifier)
        except NoSuchTableError:
            pass
    try:
        table = catalog.load_table(target.identifier)
    except NoSuchTableError:
        return catalog.create_table(target.identifier, schema, partition_spec=target_partition_spec(job, schema))
    problems = _schema_differences(table.schema(), schema)
    if problems:
        raise TargetSchemaError(
            f"target table {target.identifier} does not match job '{job.name}': {'; '.join(problems)}. "
            "Materialize with run config drop: true to rebuild it."
        )
    return table


@dataclass(frozen=True)
class WriteStats:
    rows_written: int
    moved_from_other_days: int  # posts whose previous row lived in another day's partition
    snapshot_id: int | None


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


def write_days(table: Table, job: JobConfig, days: list[dt.date], rows: pa.Table, *, keep_other_posts: bool = False) -> WriteStats:
    """Replace the rows of ``days`` with ``rows`` (each carrying its partition_date) and remove the same
    posts from any other day, in one commit. ``keep_other_posts``: the rows are a part of the days'
    posts (a run stopped early), so the days' rows of posts not in ``rows`` stay as they are."""
    index = job.connector.target.index_field
    rows = conform(rows, table)
    keys = plain(rows[index])
    written = [d.isoformat() for d in days]
    elsewhere = table.scan(row_filter=NotIn(PARTITION_DATE, written), selected_fields=(index, PARTITION_DATE))
    held = elsewhere.to_arrow()
    moved = held.filter(pc.is_in(plain(held[index]), value_set=keys))
    # The other days that held some of these posts are rewritten without them. Whole day partitions
    # are replaced, so pyiceberg drops files by partition and never evaluates a key predicate.
    other_days = [d.isoformat() for d in sorted(set(moved[PARTITION_DATE].to_pylist()))]
    rewritten = other_days + (written if keep_other_posts else [])
    if rewritten:
        old = table.scan(row_filter=In(PARTITION_DATE, rewritten)).to_arrow()
        rows = pa.concat_tables([rows, old.filter(pc.invert(pc.is_in(plain(old[index]), value_set=keys)))])
    replaced = written + other_days
    with warnings.catch_warnings():
        # Replacing a day that has no rows yet is expected, not worth a warning.
        warnings.filterwarnings("ignore", message="Delete operation did not match any records")
        with table.transaction() as tx:
            tx.delete(In(PARTITION_DATE, replaced))
            tx.append(rows)
    snapshot = table.current_snapshot()
    return WriteStats(len(keys), moved.num_rows, snapshot.snapshot_id if snapshot else None)
