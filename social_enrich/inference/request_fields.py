"""What each source column becomes in a model request: JSON values the model can read.

- strings, numbers, booleans and nulls as they are; lists as JSON arrays; structs as JSON objects;
- maps as JSON objects (keys as text), not as lists of [key, value] pairs;
- binary and fixed-size binary as base64 text (never Python's ``b'...'`` repr);
- dates, times, timestamps, decimals and UUIDs as text (``str()`` of the value, e.g.
  ``2026-11-01 09:00:00+00:00``), which is also how the input hash has always seen them.
"""

from __future__ import annotations

import base64
from typing import Any

import pyarrow as pa


def _has_binary_or_map(kind: pa.DataType) -> bool:
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind) or pa.types.is_map(kind):
        return not isinstance(kind, pa.BaseExtensionType)
    if isinstance(kind, pa.BaseExtensionType):
        return False  # UUIDs and the like convert to their own Python objects
    return any(_has_binary_or_map(kind.field(i).type) for i in range(kind.num_fields))


def _json_value(value: Any, kind: pa.DataType) -> Any:
    if value is None or isinstance(kind, pa.BaseExtensionType):
        return value
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind):
        return base64.b64encode(value).decode("ascii")
    if pa.types.is_map(kind):
        return {str(k): _json_value(v, kind.item_type) for k, v in value}
    if pa.types.is_struct(kind):
        return {f.name: _json_value(value.get(f.name), f.type) for f in kind}
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return [_json_value(v, kind.value_type) for v in value]
    return value


def request_rows(table: pa.Table) -> list[dict[str, Any]]:
    """The table's rows as the dicts a request sends (see the module docstring)."""
    columns = {}
    for name in table.column_names:
        values, kind = table[name].to_pylist(), table.schema.field(name).type
        columns[name] = [_json_value(v, kind) for v in values] if _has_binary_or_map(kind) else values
    return [dict(zip(columns, row)) for row in zip(*columns.values())] if columns else [{} for _ in range(table.num_rows)]
