"""A generic JSON-schema filler: a value valid against any ``response_format`` schema.

Sentiment-like fields describe the post (see the package docstring); the first top-level
array-of-objects property gets one item per post when the user message carries a list of posts.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from .prompt import extract_posts, single_post_text
from .sentiment import Sentiment, sentiment_of

_SCORE_NAMES = {"score", "sentiment_score", "compound", "polarity"}
_CONFIDENCE_NAMES = {"confidence", "probability"}
_ID_NAMES = {"id", "post_id"}
_MAX_DEPTH = 8  # guards recursive models (trees): deeper than this, optional -> null and arrays -> minItems
_FORMAT_EXAMPLES = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00",
    "email": "emulator@example.com",
    "uri": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
}
_NO_VALUE = object()


@dataclass(frozen=True)
class _Ctx:
    """What the walker knows about the post it is describing."""

    sentiment: Sentiment
    post_id: Any = _NO_VALUE  # set inside one item of a multi-post answer

    @classmethod
    def for_text(cls, text: str, post_id: Any = _NO_VALUE) -> "_Ctx":
        return cls(sentiment_of(text), post_id)


class _SchemaFiller:
    def __init__(self, root: dict[str, Any]):
        self.root = root

    def resolve(self, schema: Any) -> dict[str, Any]:
        """Inline ``$ref`` and ``allOf`` so callers only see concrete keywords."""
        if not isinstance(schema, dict):
            return {}
        schema = dict(schema)
        while "$ref" in schema:
            target = self._lookup(schema.pop("$ref"))
            schema = {**target, **schema}
        if "allOf" in schema:
            merged: dict[str, Any] = {}
            for part in schema.pop("allOf"):
                merged.update(self.resolve(part))
            schema = {**merged, **schema}
        return schema

    def _lookup(self, ref: str) -> dict[str, Any]:
        if not ref.startswith("#"):
            raise ValueError(f"only local $ref supported, got {ref!r}")
        node: Any = self.root
        for token in ref.lstrip("#").strip("/").split("/"):
            if token:
                node = node[token.replace("~1", "/").replace("~0", "~")]
        return node

    def fill(self, schema: Any, ctx: _Ctx, name: str = "", depth: int = 0) -> Any:
        schema = self.resolve(schema)
        if "const" in schema:
            return schema["const"]
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return self.fill(self._pick_branch(schema[key], ctx, name, depth), ctx, name, depth)
        if "enum" in schema:
            return self._enum(schema["enum"], ctx)

        kind = schema.get("type")
        if isinstance(kind, list):  # e.g. ["string", "null"]
            non_null = [k for k in kind if k != "null"]
            if not non_null or (depth > _MAX_DEPTH and "null" in kind):
                return None
            kind = non_null[0]
        if kind is None:
            kind = "object" if "properties" in schema else "string"

        if name in _ID_NAMES and ctx.post_id is not _NO_VALUE:
            return _coerce_id(ctx.post_id, kind)
        if kind == "object":
            return self._object(schema, ctx, depth)
        if kind == "array":
            return self._array(schema, ctx, name, depth)
        if kind in ("number", "integer"):
            return self._number(schema, ctx, name, integer=kind == "integer")
        if kind == "boolean":
            return False
        if kind == "null":
            return None
        return self._string(schema, name)

    def _pick_branch(self, branches: list[Any], ctx: _Ctx, name: str, depth: int) -> Any:
        resolved = [self.resolve(b) for b in branches]
        non_null = [b for b in resolved if b.get("type") != "null"]
        if not non_null or (depth > _MAX_DEPTH and len(non_null) < len(resolved)):
            return {"type": "null"}
        # An echoed id should land in the branch that already matches its Python type.
        if name in _ID_NAMES and ctx.post_id is not _NO_VALUE:
            for branch in non_null:
                if _json_type(ctx.post_id) == branch.get("type"):
                    return branch
        return non_null[0]

    @staticmethod
    def _enum(values: list[Any], ctx: _Ctx) -> Any:
        # Any enum that looks like a sentiment label gets VADER's verdict, matching the enum's case.
        by_lower = {v.lower(): v for v in values if isinstance(v, str)}
        if "positive" in by_lower and "negative" in by_lower:
            label = ctx.sentiment.label
            if label in by_lower:
                return by_lower[label]
            return by_lower.get("mixed", values[0])
        return values[0]

    def _object(self, schema: dict[str, Any], ctx: _Ctx, depth: int) -> dict[str, Any]:
        props = schema.get("properties") or {}
        return {key: self.fill(sub, ctx, key, depth + 1) for key, sub in props.items()}

    def _array(self, schema: dict[str, Any], ctx: _Ctx, name: str, depth: int) -> list[Any]:
        low = schema.get("minItems", 0)
        count = low if depth > _MAX_DEPTH else max(low, 1)
        if "maxItems" in schema:
            count = min(count, schema["maxItems"])
        return [self.fill(schema.get("items", {}), ctx, name, depth + 1) for _ in range(count)]

    @staticmethod
    def _number(schema: dict[str, Any], ctx: _Ctx, name: str, integer: bool) -> float | int:
        lowered = name.lower()
        if lowered in _SCORE_NAMES:
            value: float = ctx.sentiment.compound
        elif lowered in _CONFIDENCE_NAMES:
            value = ctx.sentiment.confidence
        else:
            value = 0.0
        return _within_bounds(value, schema, integer)

    @staticmethod
    def _string(schema: dict[str, Any], name: str) -> str:
        value = _FORMAT_EXAMPLES.get(schema.get("format", ""), f"emulated {name or 'text'}")
        if len(value) < schema.get("minLength", 0):
            value = value.ljust(schema["minLength"], "x")
        if "maxLength" in schema:
            value = value[: schema["maxLength"]]
        return value

    def fill_top_level(self, schema: Any, user_text: str, omit_pick: float | None = None) -> tuple[Any, int | None]:
        """Like ``fill``, but the first array-of-objects property gets one item per post.

        Returns the value and the number of items in that per-post array (None without one).
        ``omit_pick`` in [0, 1) leaves one item out (the missing_post fault): item int(pick * count).
        """
        schema = self.resolve(schema)
        posts = extract_posts(user_text)
        # The post's own text, not its JSON wrapping or metadata, decides the sentiment.
        text = user_text if posts else single_post_text(user_text)
        whole = _Ctx.for_text(text)
        props = schema.get("properties")
        if not props:
            return self.fill(schema, whole), None
        fan_out = next((key for key, sub in props.items() if self._is_array_of_objects(sub)), None)
        result = {}
        count = None
        for key, sub in props.items():
            if key != fan_out:
                result[key] = self.fill(sub, whole, key, 1)
                continue
            targets = posts or [(_NO_VALUE, text)]
            if omit_pick is not None:
                del targets[min(int(omit_pick * len(targets)), len(targets) - 1)]
            item_schema = self.resolve(self.resolve(sub).get("items", {}))
            result[key] = [self.fill(item_schema, _Ctx.for_text(t, post_id), key, 2) for post_id, t in targets]
            count = len(result[key])
        return result, count

    def _is_array_of_objects(self, schema: Any) -> bool:
        schema = self.resolve(schema)
        if schema.get("type") != "array":
            return False
        items = self.resolve(schema.get("items", {}))
        return items.get("type") == "object" or "properties" in items


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return "string"


def _coerce_id(value: Any, kind: str) -> Any:
    if kind == "string":
        return value if isinstance(value, str) else json.dumps(value)
    if kind in ("integer", "number"):
        try:
            return int(value) if kind == "integer" else float(value)
        except (TypeError, ValueError):
            return 0
    return value


def _within_bounds(value: float, schema: dict[str, Any], integer: bool) -> float | int:
    low, high = schema.get("minimum", -math.inf), schema.get("maximum", math.inf)
    ex_low, ex_high = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if integer:
        if ex_low is not None:
            low = max(low, math.floor(ex_low) + 1)
        if ex_high is not None:
            high = min(high, math.ceil(ex_high) - 1)
        low = math.ceil(low) if math.isfinite(low) else low
        high = math.floor(high) if math.isfinite(high) else high
        return int(min(max(round(value), low), high))
    value = min(max(value, low), high)
    if (ex_low is not None and value <= ex_low) or (ex_high is not None and value >= ex_high):
        # Step strictly inside: midpoint of the allowed interval, or 1 away from a lone bound.
        low = max(low, ex_low if ex_low is not None else -math.inf)
        high = min(high, ex_high if ex_high is not None else math.inf)
        value = (low + high) / 2 if math.isfinite(low) and math.isfinite(high) else low + 1 if math.isfinite(low) else high - 1
    return float(value)




def fill_schema(schema: dict[str, Any], user_text: str) -> Any:
    """A value valid against ``schema`` whose sentiment fields describe ``user_text``."""
    return _SchemaFiller(schema).fill_top_level(schema, user_text)[0]


def fill_answer(schema: dict[str, Any], user_text: str, omit_pick: float | None = None) -> tuple[Any, int | None]:
    """``fill_schema`` plus the size of the per-post array, optionally with one item left out."""
    return _SchemaFiller(schema).fill_top_level(schema, user_text, omit_pick)
