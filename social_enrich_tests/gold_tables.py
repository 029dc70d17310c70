"""Small hand-made gold tables with arbitrary names and types, for tests that need exact rows."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NamespaceAlreadyExistsError
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.types import IcebergType, NestedField


def create_table(catalog: Catalog, identifier: str, columns: list[tuple[str, IcebergType]]) -> Table:
    try:
        catalog.create_namespace(identifier.split(".")[0])
    except NamespaceAlreadyExistsError:
        pass
    fields = [NestedField(i, name, kind, required=False) for i, (name, kind) in enumerate(columns, start=1)]
    return catalog.create_table(identifier, Schema(*fields))


def append_rows(table: Table, rows: list[dict[str, Any]]) -> None:
    schema = table.schema().as_arrow()
    table.append(pa.Table.from_pylist(rows, schema=schema))
