"""A loopback emulator of Azure OpenAI's chat-completions API, for tests and benchmarks.

It speaks enough of the wire format that the unmodified ``openai`` SDK (``AzureOpenAI`` and
``OpenAI(base_url=.../openai/v1/)``) works against it, including ``chat.completions.parse``
with a pydantic ``response_format``.  Answers are deterministic: sentiment-like fields come
from VADER, everything else from a generic JSON-schema walker:

* an enum containing "positive" and "negative" gets VADER's label (compound >= 0.05 positive,
  <= -0.05 negative, else neutral); ``score`` gets the compound, ``confidence`` 0.5 + |compound|/2;
* other enums their first value, strings ``"emulated <name>"``, numbers 0 pulled into their bounds;
* the first top-level array-of-objects property gets one item per post when the last user message
  is JSON carrying a list of posts with ``id``s; each item echoes its post's ``id``.

Layout, so later features (rate limits, batch API) have an obvious home:

* :class:`EmulatorSettings` - server-wide knobs.
* :func:`build_chat_reply` - pure function: request body -> :class:`Reply` (status, JSON, headers).
* :func:`reply_delay` - pure function: how long to hold a reply before sending it (the latency model).
* :class:`_Handler` - HTTP plumbing: routing, auth, deployment lookup, latency, stats.
* :class:`AzureOpenAIEmulator` - runs the server on a daemon thread; context manager.  Its
  :attr:`~AzureOpenAIEmulator.stats` count requests, statuses and tokens, and the chat requests
  in flight now (``in_flight``) and at most at once since the emulator was created (``max_in_flight``).

Fault injection: put ``EMULATOR_FAULT:<name>`` anywhere in a user message, where name is one of
``http_500``, ``http_503``, ``invalid_json``, ``content_filter``, ``finish_content_filter`` (these
change the answer; the first one wins) or ``slow`` (answers normally, ``slow_seconds`` late; combines
with any of the others).

Run standalone::

    python -m social_enrich.devtools.azure_openai_emulator --port 0 --api-key KEY --deployment NAME
"""

from __future__ import annotations

import argparse
import json
import math
import re
import signal
import socket
import socketserver
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from social_enrich.inference.local_sentiment import NEGATIVE_AT, POSITIVE_AT

__all__ = [
    "AzureOpenAIEmulator",
    "EmulatorSettings",
    "Reply",
    "build_chat_reply",
    "error_reply",
    "fill_schema",
    "reply_delay",
    "FAULT_MARKER",
]

FAULT_MARKER = "EMULATOR_FAULT:"
# Faults that change what is answered; at most one applies (the first in the user messages).
ANSWER_FAULTS = ("http_500", "http_503", "invalid_json", "content_filter", "finish_content_filter")
# Faults that only change when it is answered; they combine with an answer fault.
TIMING_FAULTS = ("slow",)
KNOWN_FAULTS = ANSWER_FAULTS + TIMING_FAULTS

# Plausible Azure quota numbers; real throttling arrives with the rate-limit feature.
_REQUEST_LIMIT = 1_000
_TOKEN_LIMIT = 1_000_000

_DEPLOYMENT_ROUTE = re.compile(r"^/openai/deployments/([^/]+)/chat/completions/?$")
_V1_ROUTE = re.compile(r"^/openai/v1/chat/completions/?$")
_FAULT_RE = re.compile(re.escape(FAULT_MARKER) + r"([A-Za-z0-9_]+)")


@dataclass
class EmulatorSettings:
    """Server-wide knobs.  Read on every request, so a test may change fields of a running emulator."""

    api_key: str = "test-key"
    deployments: tuple[str, ...] = ("gpt-4o-mini",)
    # When set, every chat request fails with this HTTP status (after routing, before auth).
    fail_all_with: int | None = None
    # Latency model, applied by reply_delay() to every chat request, whatever its answer.  For now a
    # fixed base delay; per-token and jitter terms are meant to join it as latency_* fields.
    latency_seconds: float = 0.0
    # Extra delay for a request carrying EMULATOR_FAULT:slow, on top of the latency model.
    slow_seconds: float = 2.0

    def __post_init__(self) -> None:
        for name in ("latency_seconds", "slow_seconds"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 <= value < math.inf):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass
class Reply:
    """What the server sends back: status, JSON payload and extra headers."""

    status: int
    payload: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # The request asked for EMULATOR_FAULT:slow: hold the reply for settings.slow_seconds more.
    slow: bool = False


# --------------------------------------------------------------------------------------------
# Errors, shaped like Azure's
# --------------------------------------------------------------------------------------------

_AZURE_ERRORS: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "The request is invalid."),
    401: (
        "401",
        "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide "
        "a valid key for an active subscription and use a correct regional API endpoint for your resource.",
    ),
    403: ("403", "Access denied due to Virtual Network/Firewall rules."),
    404: ("404", "Resource not found"),
    408: ("Timeout", "The operation was timeout."),
    429: (
        "429",
        "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 "
        "have exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after 1 second.",
    ),
    500: ("InternalServerError", "The server had an error while processing your request. Sorry about that!"),
    502: ("BadGateway", "Bad gateway."),
    503: ("ServiceUnavailable", "The service is temporarily unable to process your request. Please try again later."),
    504: ("GatewayTimeout", "The operation was timeout."),
}


def error_reply(status: int, code: str | None = None, message: str | None = None) -> Reply:
    """An Azure-style ``{"error": {"code", "message"}}`` reply for any status."""
    default_code, default_message = _AZURE_ERRORS.get(status, (str(status), f"Emulated HTTP {status} error."))
    headers = {"retry-after": "1"} if status == 429 else {}
    return Reply(status, {"error": {"code": code or default_code, "message": message or default_message}}, headers)


def _content_filter_error() -> Reply:
    # Verbatim shape of Azure's prompt-filter rejection (HTTP 400, code content_filter).
    return Reply(
        400,
        {
            "error": {
                "message": "The response was filtered due to the prompt triggering Azure OpenAI's content "
                "management policy. Please modify your prompt and retry. To learn more about our content "
                "filtering policies please read our documentation: https://go.microsoft.com/fwlink/?linkid=2198766",
                "type": None,
                "param": "prompt",
                "code": "content_filter",
                "status": 400,
                "innererror": {
                    "code": "ResponsibleAIPolicyViolation",
                    "content_filter_result": _filter_results(hate=True),
                },
            }
        },
    )


def _filter_results(hate: bool = False) -> dict[str, Any]:
    safe = {"filtered": False, "severity": "safe"}
    return {
        "hate": {"filtered": True, "severity": "high"} if hate else dict(safe),
        "self_harm": dict(safe),
        "sexual": dict(safe),
        "violence": dict(safe),
    }


# --------------------------------------------------------------------------------------------
# Reading the request
# --------------------------------------------------------------------------------------------


def _message_text(message: Any) -> str:
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


def _user_texts(messages: list[Any]) -> list[str]:
    return [_message_text(m) for m in messages if isinstance(m, dict) and m.get("role") == "user"]


def _estimate_tokens(chars: int) -> int:
    return max(1, math.ceil(chars / 4))


_POST_TEXT_KEYS = ("text", "content", "body", "message", "post")


def _extract_posts(text: str) -> list[tuple[Any, str]] | None:
    """``[(id, text), ...]`` if the user message is JSON carrying a list of posts with ids."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    candidates = [data] if isinstance(data, list) else list(data.values()) if isinstance(data, dict) else []
    for candidate in candidates:
        if isinstance(candidate, list) and candidate and all(isinstance(p, dict) and "id" in p for p in candidate):
            return [(post["id"], _post_text(post)) for post in candidate]
    return None


def _post_text(post: dict[str, Any]) -> str:
    for key in _POST_TEXT_KEYS:
        if isinstance(post.get(key), str):
            return post[key]
    return json.dumps({k: v for k, v in post.items() if k != "id"}, sort_keys=True)


# --------------------------------------------------------------------------------------------
# Sentiment
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _analyzer() -> SentimentIntensityAnalyzer:
    # Built on first use: loading the lexicon takes ~100 ms and only answers need it.
    return SentimentIntensityAnalyzer()


@dataclass(frozen=True)
class _Sentiment:
    compound: float

    @property
    def label(self) -> str:
        # The local model's thresholds (VADER's own); the emulator answers with three labels only.
        if self.compound >= POSITIVE_AT:
            return "positive"
        if self.compound <= NEGATIVE_AT:
            return "negative"
        return "neutral"

    @property
    def confidence(self) -> float:
        # Never below 0.5 so neutral texts don't look like failed classifications.
        return round(0.5 + abs(self.compound) / 2, 4)


def _sentiment(text: str) -> _Sentiment:
    return _Sentiment(_analyzer().polarity_scores(text)["compound"])


# --------------------------------------------------------------------------------------------
# Generic JSON-schema filler
# --------------------------------------------------------------------------------------------

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

    sentiment: _Sentiment
    post_id: Any = _NO_VALUE  # set inside one item of a multi-post answer

    @classmethod
    def for_text(cls, text: str, post_id: Any = _NO_VALUE) -> "_Ctx":
        return cls(_sentiment(text), post_id)


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

    def fill_top_level(self, schema: Any, user_text: str) -> Any:
        """Like ``fill``, but the first array-of-objects property gets one item per post."""
        schema = self.resolve(schema)
        whole = _Ctx.for_text(user_text)
        props = schema.get("properties")
        if not props:
            return self.fill(schema, whole)
        fan_out = next((key for key, sub in props.items() if self._is_array_of_objects(sub)), None)
        result = {}
        for key, sub in props.items():
            if key != fan_out:
                result[key] = self.fill(sub, whole, key, 1)
                continue
            posts = _extract_posts(user_text) or [(_NO_VALUE, user_text)]
            item_schema = self.resolve(self.resolve(sub).get("items", {}))
            result[key] = [self.fill(item_schema, _Ctx.for_text(text, post_id), key, 2) for post_id, text in posts]
        return result

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
    return _SchemaFiller(schema).fill_top_level(schema, user_text)


# --------------------------------------------------------------------------------------------
# The answer
# --------------------------------------------------------------------------------------------


def build_chat_reply(
    body: dict[str, Any],
    deployment: str,
    *,
    completion_id: str = "chatcmpl-emulator",
    created: int = 0,
) -> Reply:
    """Pure: turn a validated, authorised chat-completions request into the emulator's reply."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return error_reply(400, "BadRequest", "'messages' is a required property and must be a non-empty array.")
    if body.get("stream"):
        return error_reply(400, "BadRequest", "The emulator does not support stream=true yet.")

    user_texts = _user_texts(messages)
    faults = _FAULT_RE.findall("\n".join(user_texts))
    unknown = next((f for f in faults if f not in KNOWN_FAULTS), None)
    if unknown is not None:
        return error_reply(400, "BadRequest", f"Unknown emulator fault {unknown!r}; known: {', '.join(KNOWN_FAULTS)}.")
    answer_fault = next((f for f in faults if f in ANSWER_FAULTS), None)
    reply = _chat_reply(body, deployment, user_texts, answer_fault, completion_id=completion_id, created=created)
    reply.slow = "slow" in faults
    return reply


def _chat_reply(
    body: dict[str, Any], deployment: str, user_texts: list[str], fault: str | None, *, completion_id: str, created: int
) -> Reply:
    messages = body["messages"]
    if fault == "http_500":
        return error_reply(500)
    if fault == "http_503":
        return error_reply(503)
    if fault == "content_filter":
        return _content_filter_error()

    post_text = user_texts[-1] if user_texts else ""
    finish_reason = "stop"
    content: str | None
    if fault == "finish_content_filter":
        content, finish_reason = None, "content_filter"
    elif fault == "invalid_json":
        content = '{"label": "posi'  # truncated mid-string, as a cut-off model would leave it
    else:
        content = _answer_content(body.get("response_format"), post_text)

    prompt_tokens = _estimate_tokens(sum(len(_message_text(m)) for m in messages))
    completion_tokens = _estimate_tokens(len(content)) if content else 0
    choice_count = body.get("n") if isinstance(body.get("n"), int) and body["n"] > 0 else 1
    payload = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": deployment,
        "system_fingerprint": "fp_emulator",
        "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": _filter_results()}],
        "choices": [
            {
                "index": index,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "finish_reason": finish_reason,
                "logprobs": None,
                "content_filter_results": _filter_results(hate=finish_reason == "content_filter"),
            }
            for index in range(choice_count)
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens * choice_count,
            "total_tokens": prompt_tokens + completion_tokens * choice_count,
        },
    }
    return Reply(200, payload, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens * choice_count)


def _answer_content(response_format: Any, post_text: str) -> str:
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema") or {"type": "object"}
        return json.dumps(fill_schema(schema, post_text))
    sentiment = _sentiment(post_text)
    if kind == "json_object":
        return json.dumps(
            {"label": sentiment.label, "score": sentiment.compound, "confidence": sentiment.confidence}
        )
    return f"The sentiment is {sentiment.label} (VADER compound {sentiment.compound:+.4f})."


def reply_delay(settings: EmulatorSettings, reply: Reply) -> float:
    """Seconds to hold ``reply`` before sending it: the latency model, plus ``slow_seconds`` if asked.

    Pure, so the latency model can grow (per-token cost from ``reply.completion_tokens``, jitter from a
    seeded RNG) without touching the HTTP plumbing.
    """
    delay = settings.latency_seconds
    if reply.slow:
        delay += settings.slow_seconds
    return max(0.0, delay)


# --------------------------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 keep-alive: the SDK pools connections, and benchmarks should measure the same.
    protocol_version = "HTTP/1.1"
    server_version = "AzureOpenAIEmulator/1"
    server: "_EmulatorHTTPServer"

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # quiet: tests and benchmarks don't want a line per request on stderr

    def do_GET(self) -> None:
        self._read_body()
        if urlsplit(self.path).path.rstrip("/") == "/stats":
            self._send(Reply(200, self.server.emulator.stats_json()), count=False)
        else:
            self._send(error_reply(404))

    def do_POST(self) -> None:
        raw = self._read_body()
        emulator = self.server.emulator
        with emulator.request_in_flight():
            try:
                reply = self._handle_post(raw)
            except Exception as exc:  # an emulator bug should surface as a 500, not a dropped connection
                reply = error_reply(500, "EmulatorError", f"{type(exc).__name__}: {exc}")
            delay = reply_delay(emulator.settings, reply)
            if delay > 0:
                self.server.stopping.wait(delay)  # stop() cuts the wait short
            # Counted, and out of flight, before the client can see the answer: a client that has
            # its answer always finds it in the stats.
            emulator.record(reply)
        self._send(reply, count=False)

    def do_PUT(self) -> None:
        self._read_body()
        self._send(error_reply(404))

    do_DELETE = do_PATCH = do_PUT

    def _handle_post(self, raw: bytes) -> Reply:
        emulator = self.server.emulator
        settings = emulator.settings
        url = urlsplit(self.path)
        route = _DEPLOYMENT_ROUTE.match(url.path)
        if route is None and not _V1_ROUTE.match(url.path):
            return error_reply(404)
        # Azure answers 404 "Resource not found" when a deployments call lacks api-version.
        if route is not None and not parse_qs(url.query).get("api-version"):
            return error_reply(404)
        if settings.fail_all_with is not None:
            return error_reply(settings.fail_all_with)
        if not self._authorised(settings.api_key):
            return error_reply(401)

        try:
            body = json.loads(raw)
        except ValueError:
            return error_reply(400, "BadRequest", "We could not parse the JSON body of your request.")
        if not isinstance(body, dict):
            return error_reply(400, "BadRequest", "The request body must be a JSON object.")
        emulator.log_request(body)

        deployment = route.group(1) if route is not None else body.get("model")
        if deployment not in settings.deployments:
            return error_reply(
                404,
                "DeploymentNotFound",
                "The API deployment for this resource does not exist. If you created the deployment "
                "within the last 5 minutes, please wait a moment and try again.",
            )
        return build_chat_reply(
            body, deployment, completion_id=f"chatcmpl-{uuid.uuid4().hex[:24]}", created=int(time.time())
        )

    def _authorised(self, api_key: str) -> bool:
        if self.headers.get("api-key") == api_key:
            return True
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        return scheme.lower() == "bearer" and token.strip() == api_key

    def _read_body(self) -> bytes:
        # Always drain the body, or the next request on this keep-alive connection is garbage.
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send(self, reply: Reply, count: bool = True) -> None:
        if count:
            self.server.emulator.record(reply)
        data = json.dumps(reply.payload).encode()
        request_id = str(uuid.uuid4())
        tokens = reply.prompt_tokens + reply.completion_tokens
        self.send_response(reply.status)
        headers = {
            "Content-Type": "application/json",
            "Content-Length": str(len(data)),
            "apim-request-id": request_id,
            "x-request-id": request_id,
            "x-ms-region": "Emulator",
            "x-ratelimit-limit-requests": str(_REQUEST_LIMIT),
            "x-ratelimit-limit-tokens": str(_TOKEN_LIMIT),
            "x-ratelimit-remaining-requests": str(_REQUEST_LIMIT - 1),
            "x-ratelimit-remaining-tokens": str(_TOKEN_LIMIT - tokens),
            **reply.headers,
        }
        try:
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (e.g. its timeout beat a slow answer): nothing to tell it.
            self.close_connection = True


class _EmulatorHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # the default listen backlog of 5 resets connections under concurrent load
    allow_reuse_address = False  # port 0: the kernel picks a free port; no reuse games needed

    def __init__(self, address: tuple[str, int], emulator: "AzureOpenAIEmulator"):
        self.emulator = emulator
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self._no_connections = threading.Condition(self._connections_lock)
        self.stopping = threading.Event()  # set by close_connections(); ends any reply delay early
        super().__init__(address, _Handler)

    def track(self, conn: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(conn)

    def untrack(self, conn: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(conn)
            self._no_connections.notify_all()

    def server_bind(self) -> None:
        # Skip HTTPServer.server_bind's socket.getfqdn(), a reverse DNS lookup that can stall.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def close_connections(self, timeout: float = 2.0) -> None:
        """Unblock idle keep-alive handlers so each closes its own socket, then wait for them.

        Only the read side is shut: a handler mid-request still writes its answer, then sees EOF.
        A handler holding its answer back (latency, ``slow``) sends it at once.
        """
        self.stopping.set()
        with self._connections_lock:
            for conn in list(self._connections):
                try:
                    conn.shutdown(socket.SHUT_RD)
                except OSError:
                    pass  # already gone
            self._no_connections.wait_for(lambda: not self._connections, timeout)


class AzureOpenAIEmulator:
    """Azure OpenAI chat-completions emulator on a background thread. Usage::

        with AzureOpenAIEmulator() as emu:
            client = openai.AzureOpenAI(azure_endpoint=emu.endpoint, api_key="test-key", api_version="2024-10-21")
    """

    def __init__(self, settings: EmulatorSettings | None = None, host: str = "127.0.0.1", port: int = 0):
        self.settings = settings or EmulatorSettings()
        self.host = host
        self.port = port
        self.endpoint = ""
        self.requests_log: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._requests = 0
        self._by_status: dict[int, int] = {}
        self._prompt_tokens = 0
        self._completion_tokens = 0
        self._in_flight = 0
        self._max_in_flight = 0
        self._server: _EmulatorHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "AzureOpenAIEmulator":
        if self._server is not None:
            raise RuntimeError("emulator already started")
        self._server = _EmulatorHTTPServer((self.host, self.port), self)
        host, port = self._server.server_address[:2]
        self.port = port
        self.endpoint = f"http://{host}:{port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="azure-openai-emulator", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        server.shutdown()
        server.close_connections()
        server.server_close()
        if thread is not None:
            thread.join()

    def __enter__(self) -> "AzureOpenAIEmulator":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    # -- bookkeeping, called from handler threads ---------------------------------------------

    def log_request(self, body: dict[str, Any]) -> None:
        with self._lock:
            self.requests_log.append(body)

    def record(self, reply: Reply) -> None:
        with self._lock:
            self._requests += 1
            self._by_status[reply.status] = self._by_status.get(reply.status, 0) + 1
            self._prompt_tokens += reply.prompt_tokens
            self._completion_tokens += reply.completion_tokens

    @contextmanager
    def request_in_flight(self) -> Iterator[None]:
        """Count a chat request as in flight for the duration of the block."""
        with self._lock:
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1

    @property
    def stats(self) -> dict[str, Any]:
        """A consistent snapshot.  ``in_flight``: chat requests received and not yet answered;
        ``max_in_flight``: the most there have been at once since the emulator was created."""
        with self._lock:
            return {
                "requests": self._requests,
                "by_status": dict(self._by_status),
                "prompt_tokens": self._prompt_tokens,
                "completion_tokens": self._completion_tokens,
                "in_flight": self._in_flight,
                "max_in_flight": self._max_in_flight,
            }

    def stats_json(self) -> dict[str, Any]:
        stats = self.stats
        stats["by_status"] = {str(k): v for k, v in sorted(stats["by_status"].items())}
        return stats


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Loopback Azure OpenAI chat-completions emulator.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--api-key", default=EmulatorSettings.api_key)
    parser.add_argument("--deployment", action="append", help="repeatable; default gpt-4o-mini")
    parser.add_argument("--fail-all-with", type=int, default=None, help="HTTP status for every chat request")
    parser.add_argument(
        "--latency-seconds", type=float, default=EmulatorSettings.latency_seconds, help="delay before every answer"
    )
    parser.add_argument(
        "--slow-seconds", type=float, default=EmulatorSettings.slow_seconds, help="extra delay for EMULATOR_FAULT:slow"
    )
    args = parser.parse_args(argv)

    try:
        settings = EmulatorSettings(
            api_key=args.api_key,
            deployments=tuple(args.deployment) if args.deployment else EmulatorSettings.deployments,
            fail_all_with=args.fail_all_with,
            latency_seconds=args.latency_seconds,
            slow_seconds=args.slow_seconds,
        )
    except ValueError as exc:
        parser.error(str(exc))
    # SIGTERM takes the same clean path as Ctrl-C, so the socket is closed properly.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    with AzureOpenAIEmulator(settings, host=args.host, port=args.port) as emulator:
        print(emulator.endpoint, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
