"""Which response fields a materialization summarises, declared by the response model or the job.

A response model declares it with a class variable (not a field: it is not in the JSON schema sent
to the model)::

    class Sentiment(BaseModel):
        summary: ClassVar[Summary] = Summary(counts={"label": "labels"}, means=("score", "confidence"))

and a job may replace it with ``inference.summary: {counts: ..., means: [...]}``. Every named field
is checked against the model when the job loads.

- ``counts``: field names, or ``{field: metadata name}`` (default name: the field's). A counted field
  is a string, Literal, Enum, bool or int field, or a list of those (each element is counted). The
  metadata has ``<name>`` (JSON ``{value: count}``), ``<name>/<value>`` (ints) and
  ``<field>_share/<value>`` (the count over the posts whose field has a value). Bools count as
  ``true``/``false``. So Sentiment's ``label`` gives ``labels``, ``labels/positive`` and
  ``label_share/positive``.
- ``means``: int or float fields; ``mean/<field>`` is their mean over the posts that have a value.

With nothing declared, every Literal, Enum and bool field and every list of Literals or Enums is
counted (under its own name) and every float field is averaged; ``Summary()`` summarises nothing.
The figures are per day, from the ``ok`` rows (fresh answers and rows kept unchanged).
"""

from __future__ import annotations

import enum
import types
import typing
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

from social_enrich.errors import SocialEnrichError


class SummaryError(SocialEnrichError, ValueError):
    """A summary names a field the response model does not have, or one that cannot be summarised."""


@dataclass(frozen=True)
class Summary:
    counts: Mapping[str, str] | tuple[str, ...] = ()
    means: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        counts = dict(self.counts) if isinstance(self.counts, Mapping) else {name: name for name in self.counts}
        object.__setattr__(self, "counts", counts)
        object.__setattr__(self, "means", tuple(self.means))

    @property
    def fields(self) -> list[str]:
        return list(dict.fromkeys([*self.counts, *self.means]))


def _unwrap(tp: Any) -> tuple[Any, bool]:
    """(type without Annotated and None, is it a list: then the element type)."""
    def strip(t: Any) -> Any:
        while typing.get_origin(t) is typing.Annotated:
            t = typing.get_args(t)[0]
        if typing.get_origin(t) in (typing.Union, types.UnionType):
            rest = [a for a in typing.get_args(t) if a is not type(None)]
            if len(rest) == 1:
                return strip(rest[0])
        return t
    tp = strip(tp)
    if typing.get_origin(tp) is list and typing.get_args(tp):
        return strip(typing.get_args(tp)[0]), True
    return tp, False


def _kind(tp: Any) -> str:
    """'category' (countable, a closed set), 'text' (countable), 'int', 'float' or 'other'."""
    if tp is bool or typing.get_origin(tp) is Literal or (isinstance(tp, type) and issubclass(tp, enum.Enum)):
        return "category"
    if tp is str:
        return "text"
    if tp is int:
        return "int"
    if tp is float:
        return "float"
    return "other"


def default_summary(model: type[BaseModel]) -> Summary:
    counts, means = [], []
    for name, info in model.model_fields.items():
        tp, is_list = _unwrap(info.annotation)
        kind = _kind(tp)
        if kind == "category":
            counts.append(name)
        elif kind == "float" and not is_list:
            means.append(name)
    return Summary(counts=tuple(counts), means=tuple(means))


def check_summary(model: type[BaseModel], summary: Summary, where: str) -> Summary:
    """The summary, after checking each field it names against the model (``where``: who declared it)."""
    fields = model.model_fields
    for setting, names, allowed, what in (
        ("counts", summary.counts, ("category", "text", "int"), "a str, Literal, Enum, bool or int field, or a list of them"),
        ("means", summary.means, ("int", "float"), "an int or float field"),
    ):
        for name in names:
            if name not in fields:
                raise SummaryError(f"{where}: summary {setting} names '{name}', which is not a field of {model.__name__} "
                                   f"(its fields: {list(fields)})")
            tp, is_list = _unwrap(fields[name].annotation)
            if _kind(tp) not in allowed or (is_list and setting == "means"):
                raise SummaryError(f"{where}: summary {setting} cannot use field '{name}' of {model.__name__}: it must be {what}")
    return summary


def model_summary(model: type[BaseModel], override: Summary | None = None, where: str | None = None) -> Summary:
    """The job's override, else the model's declared ``summary``, else the default; checked."""
    if override is not None:
        return check_summary(model, override, where or "inference.summary")
    declared = getattr(model, "summary", None)
    if isinstance(declared, Summary):
        return check_summary(model, declared, f"{model.__name__}.summary")
    return default_summary(model)


def _key(value: Any) -> str:
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass
class Tally:
    """The summary's figures of some posts; adding two tallies adds their figures (none dropped)."""

    counts: dict[str, Counter[str]] = field(default_factory=dict)  # field -> value -> count
    answered: Counter[str] = field(default_factory=Counter)  # field -> posts whose field had a value
    sums: dict[str, float] = field(default_factory=dict)
    numbers: Counter[str] = field(default_factory=Counter)

    def add(self, summary: Summary, values: Mapping[str, Any], times: int = 1) -> None:
        """Count one answer (its fields by name: a model, as attributes, or a dict)."""
        for name in summary.counts:
            value = values.get(name)
            if value is None:
                continue
            counted = self.counts.setdefault(name, Counter())
            for item in value if isinstance(value, list) else (value,):
                if item is not None:
                    counted[_key(item)] += times
            self.answered[name] += times
        for name in summary.means:
            value = values.get(name)
            if value is not None:
                self.sums[name] = self.sums.get(name, 0.0) + float(value) * times
                self.numbers[name] += times

    def add_answer(self, summary: Summary, response: BaseModel) -> None:
        self.add(summary, {name: getattr(response, name, None) for name in summary.fields})

    def add_columns(self, summary: Summary, columns: Mapping[str, list[Any]], statuses: Iterable[str]) -> None:
        """Count the ``ok`` rows of columns read back from the target."""
        names = [n for n in summary.fields if n in columns]
        for n, status in enumerate(statuses):
            if status == "ok":
                self.add(summary, {name: columns[name][n] for name in names})

    def __add__(self, other: Tally) -> Tally:
        total = Tally({k: Counter(v) for k, v in self.counts.items()}, Counter(self.answered), dict(self.sums), Counter(self.numbers))
        for name, counted in other.counts.items():
            total.counts.setdefault(name, Counter()).update(counted)
        total.answered.update(other.answered)
        for name, value in other.sums.items():
            total.sums[name] = total.sums.get(name, 0.0) + value
        total.numbers.update(other.numbers)
        return total

    def metadata(self, summary: Summary) -> dict[str, Any]:
        """``<name>`` (a dict: JSON metadata), ``<name>/<value>``, ``<field>_share/<value>``, ``mean/<field>``."""
        out: dict[str, Any] = {}
        for name, label in summary.counts.items():
            counted = dict(sorted(self.counts.get(name, Counter()).items()))
            answered = self.answered[name]
            out[label] = counted
            # Numbers, so Dagster plots each value's count and share per day.
            out.update({f"{label}/{value}": count for value, count in counted.items()})
            out.update({f"{name}_share/{value}": round(count / answered, 4) for value, count in counted.items() if answered})
        for name in summary.means:
            if self.numbers[name]:
                out[f"mean/{name}"] = round(self.sums[name] / self.numbers[name], 6)
        return out
