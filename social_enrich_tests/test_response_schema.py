"""The response model's field types as Iceberg columns, and the summary a model or job declares."""

from __future__ import annotations

import enum
from typing import ClassVar, Literal

import pyarrow as pa
import pytest
from pydantic import BaseModel

from social_enrich.lakehouse.response_schema import ResponseSchemaError, arrow_columns, response_columns, type_text
from social_enrich.response_summary import Summary, SummaryError, Tally, model_summary


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Span(BaseModel):
    start: int
    end: int | None


class Everything(BaseModel):
    text: str
    count: int
    ratio: float
    yes: bool
    label: Literal["a", "b"]
    colour: Colour
    level: Level
    maybe: float | None
    tags: list[str]
    optional_tags: list[str | None]
    span: Span
    spans: list[Span]


def types_of(model: type[BaseModel]) -> dict[str, str]:
    return {f.name: type_text(f.field_type) for f in response_columns(model)}


def test_each_field_type_maps_to_its_iceberg_type():
    assert types_of(Everything) == {
        "text": "string", "count": "long", "ratio": "double", "yes": "boolean", "label": "string",
        "colour": "string", "level": "long", "maybe": "double", "tags": "list<string>",
        "optional_tags": "list<optional string>", "span": "struct<start: long, end: optional long>",
        "spans": "list<struct<start: long, end: optional long>>",
    }
    # A response column is optional at the top: a failed post stores nulls there.
    assert not any(f.required for f in response_columns(Everything))


def test_answers_become_typed_arrow_columns_with_null_for_no_answer():
    answer = Everything(text="t", count=2, ratio=0.5, yes=True, label="a", colour=Colour.RED, level=Level.HIGH, maybe=None,
                        tags=["x", "y"], optional_tags=[None, "z"], span=Span(start=1, end=None), spans=[Span(start=0, end=3)])
    columns = arrow_columns(Everything, [answer.model_dump(mode="json"), None])
    assert columns["count"].type == pa.int64() and columns["ratio"].type == pa.float64()
    assert columns["tags"].to_pylist() == [["x", "y"], None]
    assert columns["maybe"].to_pylist() == [None, None]
    assert columns["span"].to_pylist() == [{"start": 1, "end": None}, None]
    assert columns["level"].to_pylist() == [2, None] and columns["colour"].to_pylist() == ["red", None]


@pytest.mark.parametrize("annotation, why", [
    (dict[str, int], "dict"), (int | str, "union"), (tuple[int, int], "tuple"), (list, "list needs its element type"),
])
def test_a_type_with_no_column_is_refused_naming_the_model_and_field(annotation, why):
    model = type("Odd", (BaseModel,), {"__annotations__": {"fine": str, "odd": annotation}})
    with pytest.raises(ResponseSchemaError) as error:
        response_columns(model)
    message = str(error.value)
    assert "Odd" in message and "'odd'" in message and "supported types" in message


def test_a_nested_field_is_named_by_its_path():
    inner = type("Inner", (BaseModel,), {"__annotations__": {"when": dict[str, str]}})
    outer = type("Outer", (BaseModel,), {"__annotations__": {"items": list[inner]}})
    with pytest.raises(ResponseSchemaError, match=r"'items\[\]\.when'"):
        response_columns(outer)


class Declared(BaseModel):
    summary: ClassVar[Summary] = Summary(counts={"label": "labels"}, means=("ratio",))
    label: Literal["a", "b"]
    ratio: float
    other: float


def test_the_summary_is_the_jobs_else_the_models_declared_else_the_default():
    assert model_summary(Declared).counts == {"label": "labels"} and model_summary(Declared).means == ("ratio",)
    assert model_summary(Declared, Summary(means=("other",))).means == ("other",)
    default = model_summary(Everything)
    assert set(default.counts) == {"yes", "label", "colour", "level"} and set(default.means) == {"ratio", "maybe"}


@pytest.mark.parametrize("summary, named", [
    (Summary(counts=("missing",)), "'missing'"), (Summary(means=("label",)), "'label'"), (Summary(means=("tags",)), "'tags'"),
])
def test_a_summary_naming_a_wrong_field_is_refused_naming_it(summary, named):
    with pytest.raises(SummaryError) as error:
        model_summary(Everything, summary, "inference.summary")
    assert "inference.summary" in str(error.value) and named in str(error.value)


def test_tallies_count_list_elements_and_add_up():
    summary = Summary(counts=("tags", "yes"), means=("maybe",))
    first, second = Tally(), Tally()
    first.add(summary, {"tags": ["x", "y"], "yes": True, "maybe": 0.5})
    second.add(summary, {"tags": ["x"], "yes": False, "maybe": None}, times=2)
    meta = (first + second).metadata(summary)
    assert meta["tags"] == {"x": 3, "y": 1} and meta["tags/x"] == 3
    assert meta["yes"] == {"false": 2, "true": 1} and meta["yes_share/false"] == round(2 / 3, 4)
    assert meta["mean/maybe"] == 0.5  # posts with no value are not averaged in
