"""A response model's fields as typed Iceberg columns (and the matching Arrow types).

Every pydantic field type maps to one Iceberg type; numbers stay numbers, lists stay lists:

| pydantic                                  | Iceberg                     | Arrow                 |
|-------------------------------------------|-----------------------------|-----------------------|
| ``str``                                   | string                      | large/plain string    |
| ``int``                                   | long                        | int64                 |
| ``float``                                 | double                      | float64               |
| ``bool``                                  | boolean                     | bool                  |
| ``Literal[...]`` / ``Enum`` of str (int)  | string (long)               | string (int64)        |
| ``X | None``                              | X, optional                 | X, nullable           |
| ``list[X]``                               | list<X>                     | list<X>               |
| a nested ``BaseModel``                    | struct of its fields        | struct                |

Anything else (``dict``, ``tuple``, ``datetime``, a union of two types, ...) is refused when the job
loads, with the response model, the field and this list. There is no JSON-text fallback: a column
is what its type says, so it can be filtered and aggregated as such in any engine.

Optional-ness: a response column itself is always optional in the target, since a failed or
filtered post has no answer and stores nulls there. Inside a column it follows the type: a list's
elements and a struct's fields are required unless their type is ``X | None``.
"""

from __future__ import annotations

import enum
import itertools
import types
import typing
from collections.abc import Callable
from typing import Any, Literal, Union

import pyarrow as pa
from pydantic import BaseModel
from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.schema import Schema
from pyiceberg.types import (
    BooleanType,
    DoubleType,
    IcebergType,
    ListType,
    LongType,
    MapType,
    NestedField,
    StringType,
    StructType,
)

from social_enrich.errors import SocialEnrichError

SUPPORTED_TYPES = (
    "str, int, float, bool, Literal[...] or Enum of strings (or of ints), X | None, list[X], "
    "a nested pydantic BaseModel"
)


class ResponseSchemaError(SocialEnrichError, ValueError):
    """A response model field whose type has no Iceberg column type."""


def _unsupported(model: type[BaseModel], where: str, tp: Any, why: str = "") -> ResponseSchemaError:
    shown = getattr(tp, "__name__", None) if isinstance(tp, type) else None
    return ResponseSchemaError(
        f"response model {model.__name__}: field '{where}' has type {shown or tp!r}, which cannot be stored as an "
        f"Iceberg column{why}; supported types: {SUPPORTED_TYPES}"
    )


def _scalar_of(values: tuple[Any, ...]) -> IcebergType | None:
    if values and all(isinstance(v, str) for v in values):
        return StringType()
    if values and all(isinstance(v, bool) for v in values):
        return BooleanType()
    if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return LongType()
    return None


def _type_of(model: type[BaseModel], where: str, tp: Any, next_id: Callable[[], int], seen: tuple[type, ...]) -> tuple[IcebergType, bool]:
    """(Iceberg type, optional) of one annotation."""
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and len(args) == 2:
            return _type_of(model, where, rest[0], next_id, seen)[0], True
        raise _unsupported(model, where, tp, " (a union other than X | None)")
    if tp is bool:
        return BooleanType(), False
    if tp is int:
        return LongType(), False
    if tp is float:
        return DoubleType(), False
    if tp is str:
        return StringType(), False
    if origin is Literal:
        scalar = _scalar_of(typing.get_args(tp))
        if scalar is None:
            raise _unsupported(model, where, tp, " (a Literal must be all strings, all ints or all bools)")
        return scalar, False
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        scalar = _scalar_of(tuple(m.value for m in tp))
        if scalar is None or isinstance(scalar, BooleanType):
            raise _unsupported(model, where, tp, " (an Enum's values must be all strings or all ints)")
        return scalar, False
    if origin is list:
        (element,) = typing.get_args(tp) or (None,)
        if element is None:
            raise _unsupported(model, where, tp, " (a list needs its element type, list[X])")
        element_type, element_optional = _type_of(model, f"{where}[]", element, next_id, seen)
        return ListType(next_id(), element_type, element_required=not element_optional), False
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        if tp in seen:
            raise _unsupported(model, where, tp, " (a model that contains itself)")
        return StructType(*_fields(tp, model, f"{where}.", next_id, (*seen, tp))), False
    raise _unsupported(model, where, tp)


def _fields(model: type[BaseModel], root: type[BaseModel], prefix: str, next_id: Callable[[], int], seen: tuple[type, ...]) -> list[NestedField]:
    fields = []
    for name, info in model.model_fields.items():
        field_type, optional = _type_of(root, prefix + name, info.annotation, next_id, seen)
        fields.append(NestedField(next_id(), name, field_type, required=not optional))
    return fields


def response_columns(model: type[BaseModel], first_id: int = 1) -> list[NestedField]:
    """The response model's fields as target columns: typed, each optional at the top (failed rows
    hold nulls), nested parts required or optional as their types say. Raises ResponseSchemaError
    naming the model and the field for a type with no column type."""
    ids = itertools.count(first_id)
    # Top-level columns first, numbered in order; nested ids after them (pyiceberg renumbers on create).
    top = [(name, next(ids)) for name in model.model_fields]
    nested = itertools.count(first_id + 10_000)
    columns = []
    for name, field_id in top:
        field_type, _ = _type_of(model, name, model.model_fields[name].annotation, lambda: next(nested), (model,))
        columns.append(NestedField(field_id, name, field_type, required=False))
    return columns


def check_response_model(model: type[BaseModel]) -> None:
    """Fail now (at job load) when a field of the model has no column type."""
    response_columns(model)


def arrow_schema(model: type[BaseModel]) -> pa.Schema:
    """The Arrow schema of the response columns, as the rows for the target are built."""
    return schema_to_pyarrow(Schema(*response_columns(model)), include_field_ids=False)


def arrow_columns(model: type[BaseModel], answers: list[dict[str, Any] | None]) -> dict[str, pa.Array]:
    """Typed Arrow arrays of the answers (``model_dump(mode="json")`` of each, None for no answer)."""
    schema = arrow_schema(model)
    columns = {}
    for arrow_field in schema:
        values = [a.get(arrow_field.name) if a is not None else None for a in answers]
        try:
            columns[arrow_field.name] = pa.array(values, type=arrow_field.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:  # pragma: no cover - the model validated the values
            raise ResponseSchemaError(f"response field '{arrow_field.name}' of {model.__name__}: cannot build {arrow_field.type}: {e}") from e
    return columns


def same_type(a: IcebergType, b: IcebergType) -> bool:
    """Iceberg types equal in structure, names and optional-ness, whatever their field ids."""
    if isinstance(a, StructType) and isinstance(b, StructType):
        return len(a.fields) == len(b.fields) and all(
            x.name == y.name and x.required == y.required and same_type(x.field_type, y.field_type) for x, y in zip(a.fields, b.fields)
        )
    if isinstance(a, ListType) and isinstance(b, ListType):
        return a.element_required == b.element_required and same_type(a.element_type, b.element_type)
    if isinstance(a, MapType) and isinstance(b, MapType):
        return (a.value_required == b.value_required and same_type(a.key_type, b.key_type)
                and same_type(a.value_type, b.value_type))
    return a == b


def type_text(t: IcebergType) -> str:
    """An Iceberg type as a person reads it, without field ids."""
    if isinstance(t, StructType):
        return "struct<" + ", ".join(f"{f.name}: {'' if f.required else 'optional '}{type_text(f.field_type)}" for f in t.fields) + ">"
    if isinstance(t, ListType):
        return f"list<{'' if t.element_required else 'optional '}{type_text(t.element_type)}>"
    return str(t)
