"""Small hand-made gold tables with arbitrary names and types, for tests that need exact rows."""

from __future__ import annotations

import datetime as dt
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


SAMPLE_GOLD = ("gold.fact_social_media_reaction_post", "gold.dim_post_details")


def latest_touch_days(catalog: Catalog, tables: tuple[str, ...] = SAMPLE_GOLD, key: str = "post_key", when: str = "last_update_time") -> dict[Any, Any]:
    """Each post's partition by the rule, computed here in plain Python, independently of the code under
    test: the UTC day of its latest datetime in any of the tables."""
    latest: dict[Any, Any] = {}
    for identifier in tables:
        rows = catalog.load_table(identifier).scan(selected_fields=(key, when)).to_arrow()
        for k, at in zip(rows[key].to_pylist(), rows[when].to_pylist()):
            if k is not None and at is not None:
                latest[k] = max(latest.get(k, at), at)
    return {k: at.astimezone(dt.timezone.utc).date() if isinstance(at, dt.datetime) else at for k, at in latest.items()}


def posts_living_on(catalog: Catalog, day: Any) -> set[Any]:
    """The sample posts whose latest touch in any gold table falls on ``day``."""
    return {k for k, d in latest_touch_days(catalog).items() if d == day}
