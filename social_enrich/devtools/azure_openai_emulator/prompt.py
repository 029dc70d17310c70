"""Reading a chat request: message texts, the posts in it, and the token estimates Azure would make.

The estimates are deliberately simple (4 characters per token) and public, so a client or a
benchmark can compute exactly the figures the emulator charges against its rate limits.
"""

from __future__ import annotations

import json
import math
from typing import Any

# Keys that usually hold a post's text, tried in this order before any heuristic.
_POST_TEXT_KEYS = ("text", "content", "body", "message", "post")
# Never taken for the text: sentiment of an id is noise.
_ID_KEYS = ("id", "post_id")


def message_text(message: Any) -> str:
    """Text of one chat message; content may be a string or a list of parts."""
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
        return "\n".join(parts)
    return ""


def user_texts(messages: list[Any]) -> list[str]:
    return [message_text(m) for m in messages if isinstance(m, dict) and m.get("role") == "user"]


def estimate_tokens(chars: int) -> int:
    return max(1, math.ceil(chars / 4))


def _messages(body: dict[str, Any]) -> list[Any]:
    messages = body.get("messages")
    return messages if isinstance(messages, list) else []


def schema_json(body: dict[str, Any]) -> str:
    """The compact JSON text of ``response_format.json_schema``, or "" without one: the model reads it too."""
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        json_schema = response_format.get("json_schema")
        if isinstance(json_schema, dict):
            return json.dumps(json_schema, separators=(",", ":"))
    return ""


def prompt_tokens_estimate(body: dict[str, Any]) -> int:
    """Prompt tokens of a chat request: ceil(chars / 4) of every message's text plus the schema JSON.

    The emulator reports this as ``usage.prompt_tokens`` and charges it against the token rate limit.
    """
    chars = sum(len(message_text(m)) for m in _messages(body)) + len(schema_json(body))
    return estimate_tokens(chars)


def max_output_tokens(body: dict[str, Any]) -> int | None:
    """``max_completion_tokens`` or else ``max_tokens``, times ``n``; None when neither is set."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            n = body.get("n")
            return value * (n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1)
    return None


def rate_limit_tokens(body: dict[str, Any], completion_tokens: int = 0) -> int:
    """What a chat request costs against the tokens-per-minute limit, as Azure counts it on arrival:
    the prompt estimate plus the output the request may produce.

    That output is ``max_completion_tokens`` / ``max_tokens`` (times ``n``) when set; otherwise
    ``completion_tokens`` (the emulator passes its answer's actual completion tokens).
    """
    most = max_output_tokens(body)
    return prompt_tokens_estimate(body) + (completion_tokens if most is None else most)


def cacheable_prefix(body: dict[str, Any]) -> tuple[str, int]:
    """The prompt prefix Azure's prompt cache would key on (first message plus schema) and its token estimate."""
    messages = _messages(body)
    first = message_text(messages[0]) if messages else ""
    schema = schema_json(body)
    return first + "\x00" + schema, estimate_tokens(len(first) + len(schema))


# --------------------------------------------------------------------------------------------
# Posts in the user message
# --------------------------------------------------------------------------------------------


def extract_posts(text: str) -> list[tuple[Any, str]] | None:
    """``[(id, text), ...]`` if the user message is JSON carrying a list of posts with ids: objects
    with an ``id`` each, or the compact form ``{"fields": ["id", ...], "posts": [[id, ...], ...]}``."""
    data = _json(text)
    compact = _compact_posts(data)
    if compact is not None:
        return [(post["id"], post_text(post)) for post in compact]
    candidates = [data] if isinstance(data, list) else list(data.values()) if isinstance(data, dict) else []
    for candidate in candidates:
        if isinstance(candidate, list) and candidate and all(isinstance(p, dict) and "id" in p for p in candidate):
            return [(post["id"], post_text(post)) for post in candidate]
    return None


def _compact_posts(data: Any) -> list[dict[str, Any]] | None:
    """The posts of a compact request as objects (each row's values under the field names), or None."""
    if not isinstance(data, dict):
        return None
    names, rows = data.get("fields"), data.get("posts")
    if not (isinstance(names, list) and "id" in names and isinstance(rows, list) and rows):
        return None
    if not all(isinstance(row, list) and len(row) == len(names) for row in rows):
        return None
    return [dict(zip(names, row)) for row in rows]


def single_post_text(text: str) -> str:
    """The text to judge in a one-post user message: a JSON object's post text, else the message itself."""
    data = _json(text)
    if isinstance(data, dict) and any(isinstance(v, str) for k, v in data.items() if k not in _ID_KEYS):
        return post_text(data)
    return text


def post_text(post: dict[str, Any]) -> str:
    """The text of one post: a well-known key, else any key ending in "text", else the longest string.

    Real requests carry the text next to metadata (``{"id": "0", "post_text": ..., "platform": "x"}``);
    the id is never taken, so sentiment is stable and plausible.
    """
    for key in _POST_TEXT_KEYS:
        if isinstance(post.get(key), str):
            return post[key]
    strings = {k: v for k, v in post.items() if isinstance(v, str) and k not in _ID_KEYS}
    for key, value in strings.items():
        if key.lower().endswith("text"):
            return value
    if strings:
        return max(strings.values(), key=len)
    return json.dumps({k: v for k, v in post.items() if k not in _ID_KEYS}, sort_keys=True)


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None
