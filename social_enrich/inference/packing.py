"""Several posts in one request: each carries an id, and the answers are matched back by it.

The system prompt and the response schema are paid once per request instead of once per post,
which is most of a short post's tokens. Both sides are compact, since Azure charges the quota for
every character: the request names the fields once, ``{"fields": ["id", "post_text"], "posts": [[0,
"..."], ...]}``, and the schema is inlined, without titles or defaults. The answer is ``{"results":
[{"id": 0, <fields>}]}``; each item is validated alone, so one bad item costs only its own post a retry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ValidationError, create_model

from social_enrich.inference.provider import PostToScore

PACKING_INSTRUCTIONS = (
    'The user message is a JSON object {"fields": [...], "posts": [[...], ...]}: each post is a list of its '
    'values in the order of "fields", the first its "id". '
    'Answer with exactly one entry in "results" per post, in any order, each with that post\'s "id".'
)


@lru_cache(maxsize=16)
def packed_models(response_model: type[BaseModel]) -> tuple[type[BaseModel], type[BaseModel]]:
    """The item model (the response model plus ``id``) and the answer model that lists items."""
    # id first: a model writes fields in schema order, so the id is settled before the answer.
    fields: dict[str, Any] = {name: (f.annotation, f) for name, f in response_model.model_fields.items()}
    item = create_model(f"{response_model.__name__}Item", id=(int, ...), **fields)
    answer = create_model(f"{response_model.__name__}Results", results=(list[item], ...))  # type: ignore[valid-type]
    return item, answer


def response_format(response_model: type[BaseModel]) -> dict[str, Any]:
    """Structured outputs for the packed answer: a strict json_schema (every field required, no extras)."""
    _, answer = packed_models(response_model)
    schema = _strict(_inlined(answer.model_json_schema()))
    return {"type": "json_schema", "json_schema": {"name": answer.__name__, "schema": schema, "strict": True}}


def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with every ``$ref`` replaced by its definition: shorter when each is used once, as in a
    packed answer. A recursive model keeps its ``$defs`` (inlining it would never end)."""
    definitions = schema.get("$defs", {})

    def inline(node: Any, seen: tuple[str, ...]) -> Any:
        if isinstance(node, list):
            return [inline(item, seen) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            name = ref.removeprefix("#/$defs/")
            if name in seen:
                raise RecursionError(name)
            return inline({**definitions[name], **{k: v for k, v in node.items() if k != "$ref"}}, (*seen, name))
        return {key: inline(value, seen) for key, value in node.items() if key != "$defs"}

    try:
        return inline(schema, ())
    except RecursionError:
        return schema


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    # Strict mode rejects defaults; titles only cost tokens.
    schema = {k: v for k, v in schema.items() if k not in ("default", "title")}
    for key in ("properties", "$defs"):
        if isinstance(schema.get(key), dict):
            schema[key] = {name: _strict(sub) for name, sub in schema[key].items()}
    if "properties" in schema:
        schema["required"] = list(schema["properties"])
        schema["additionalProperties"] = False
    if isinstance(schema.get("items"), dict):
        schema["items"] = _strict(schema["items"])
    for key in ("anyOf", "allOf"):
        if isinstance(schema.get(key), list):
            schema[key] = [_strict(sub) for sub in schema[key]]
    return schema


def build_messages(prompt: str, posts: list[PostToScore]) -> list[dict[str, str]]:
    """The system prompt, then the posts as rows of values under one list of field names; a post's id
    is its position in the pack. (A field some post lacks is null in its row.)"""
    names = list(dict.fromkeys(name for post in posts for name in post.fields))
    rows = [[i, *(post.fields.get(name) for name in names)] for i, post in enumerate(posts)]
    user = json.dumps({"fields": ["id", *names], "posts": rows}, ensure_ascii=False, default=str, separators=(",", ":"))
    return [{"role": "system", "content": f"{prompt}\n\n{PACKING_INSTRUCTIONS}"}, {"role": "user", "content": user}]


@dataclass
class MatchedAnswer:
    answers: dict[int, BaseModel] = field(default_factory=dict)  # position in the pack -> its response
    problems: dict[int, str] = field(default_factory=dict)  # position -> why it has no valid answer


class UnreadableAnswer(ValueError):
    """The answer as a whole is not the expected JSON; no item can be trusted."""


def match_answer(content: str | None, size: int, response_model: type[BaseModel]) -> MatchedAnswer:
    """Validate each item of an answer for a pack of ``size`` posts and match it to its post."""
    try:
        results = json.loads(content or "")["results"]
        if not isinstance(results, list):
            raise TypeError("results is not a list")
    except (ValueError, KeyError, TypeError) as e:
        raise UnreadableAnswer(f"the answer is not a JSON object with a results list: {type(e).__name__}: {e}") from None
    matched = MatchedAnswer()
    seen: set[int] = set()
    for item in results:
        post_id = item.get("id") if isinstance(item, dict) else None
        if isinstance(post_id, str) and post_id.isdigit():
            post_id = int(post_id)  # a model that quotes the id still means it
        position = post_id if isinstance(post_id, int) and not isinstance(post_id, bool) else -1
        if not 0 <= position < size:
            continue  # an id that was never asked for: ignored
        if position in seen:
            matched.answers.pop(position, None)
            matched.problems[position] = "the answer lists this post twice"
            continue
        seen.add(position)
        try:
            fields = {k: v for k, v in item.items() if k != "id"}
            matched.answers[position] = response_model.model_validate(fields)
        except ValidationError as e:
            first = e.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "(item)"
            matched.problems[position] = f"invalid answer: {where}: {first['msg']}"
    for position in range(size):
        if position not in seen:
            matched.problems[position] = "the answer has no result for this post"
    return matched
