"""The answer to a chat-completions request: a pure function of the request body (and a fault)."""

from __future__ import annotations

import json
from typing import Any

from .faults import ANSWER_FAULTS, KNOWN_MARKERS, NO_ANSWER_FAULTS, markers_in
from .prompt import estimate_tokens, extract_posts, max_output_tokens, prompt_tokens_estimate, single_post_text, user_texts
from .replies import Reply, content_filter_error, error_reply, filter_results
from .schema_filler import fill_answer
from .sentiment import sentiment_of

# What a cut-off model leaves when the answer is plain text and JSON was expected anyway.
_TRUNCATED_LITERAL = '{"label": "posi'


def build_chat_reply(
    body: dict[str, Any],
    deployment: str,
    *,
    completion_id: str = "chatcmpl-emulator",
    created: int = 0,
    fault: str | None = None,
    omit_pick: float | None = None,
) -> Reply:
    """Pure: turn a validated, authorised chat-completions request into the emulator's reply.

    Fault markers in the user messages apply first; ``fault`` (one of ANSWER_FAULTS, e.g. drawn at
    random) applies when no marker picked an answer fault.  ``omit_pick`` in [0, 1] chooses which
    item the missing_post fault leaves out (default: the last).
    """
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return error_reply(400, "BadRequest", "'messages' is a required property and must be a non-empty array.")
    if body.get("stream"):
        return error_reply(400, "BadRequest", "The emulator does not support stream=true yet.")
    if fault is not None and fault not in ANSWER_FAULTS:
        raise ValueError(f"fault must be one of {', '.join(ANSWER_FAULTS)}, got {fault!r}")

    texts = user_texts(messages)
    marked = markers_in("\n".join(texts))
    unknown = next((f for f in marked if f not in KNOWN_MARKERS), None)
    if unknown is not None:
        return error_reply(400, "BadRequest", f"Unknown emulator fault {unknown!r}; known: {', '.join(KNOWN_MARKERS)}.")
    answer_fault = next((f for f in marked if f in ANSWER_FAULTS), fault)
    reply = _chat_reply(body, deployment, texts, answer_fault, omit_pick, completion_id=completion_id, created=created)
    reply.slow = "slow" in marked
    reply.faults = tuple(f for f in (answer_fault, "slow" if reply.slow else None) if f is not None)
    return reply


def answer_fault_of(reply: Reply) -> str | None:
    """The answer fault already applied to ``reply`` (by a marker), if any."""
    return next((f for f in reply.faults if f in ANSWER_FAULTS), None)


def _chat_reply(
    body: dict[str, Any],
    deployment: str,
    texts: list[str],
    fault: str | None,
    omit_pick: float | None,
    *,
    completion_id: str,
    created: int,
) -> Reply:
    if fault in NO_ANSWER_FAULTS:
        return Reply(0, {}, no_answer=fault)
    if fault == "http_500":
        return error_reply(500)
    if fault == "http_503":
        return error_reply(503)
    if fault == "content_filter":
        return content_filter_error()

    user_text = texts[-1] if texts else ""
    response_format = body.get("response_format")
    finish_reason = "stop"
    content: str | None
    posts = 0
    if fault == "finish_content_filter":
        content, finish_reason = None, "content_filter"
    else:
        pick = (1.0 if omit_pick is None else omit_pick) if fault == "missing_post" else None
        content, posts = _answer_content(response_format, user_text, pick)
        if fault == "malformed_json":
            # Cut mid-way, as a model stopped short would leave it: never valid JSON, no post usable.
            content = content[: max(1, len(content) // 2)] if _is_json_format(response_format) else _TRUNCATED_LITERAL
            posts = 0

    choice_count = body.get("n") if isinstance(body.get("n"), int) and body["n"] > 0 else 1
    most = max_output_tokens(body)  # over all choices
    if content and most is not None and estimate_tokens(len(content)) > most // choice_count:
        # A model stops at max_tokens, mid-answer: the content is cut and says so.
        content, finish_reason, posts = content[: most // choice_count * 4], "length", 0
    prompt_tokens = prompt_tokens_estimate(body)
    completion_tokens = estimate_tokens(len(content)) if content else 0
    completion_tokens *= choice_count
    payload = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": deployment,
        "system_fingerprint": "fp_emulator",
        "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": filter_results()}],
        "choices": [
            {
                "index": index,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "finish_reason": finish_reason,
                "logprobs": None,
                "content_filter_results": filter_results(hate=finish_reason == "content_filter"),
            }
            for index in range(choice_count)
        ],
        "usage": _usage(prompt_tokens, completion_tokens, cached_tokens=0),
    }
    return Reply(200, payload, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, posts=posts)


def _usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    # The details objects as Azure sends them for a text-only, non-reasoning deployment.
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def with_cached_tokens(reply: Reply, cached_tokens: int) -> Reply:
    """``reply`` reporting ``cached_tokens`` of its prompt as served from the prompt cache."""
    if reply.status == 200 and "usage" in reply.payload:
        reply.payload["usage"] = _usage(reply.prompt_tokens, reply.completion_tokens, cached_tokens)
        reply.cached_tokens = cached_tokens
    return reply


def _is_json_format(response_format: Any) -> bool:
    return isinstance(response_format, dict) and response_format.get("type") in ("json_schema", "json_object")


def _answer_content(response_format: Any, user_text: str, omit_pick: float | None) -> tuple[str, int]:
    """The answer's content and how many posts it answers."""
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema") or {"type": "object"}
        value, per_post = fill_answer(schema, user_text, omit_pick)
        return json.dumps(value), 1 if per_post is None else per_post
    posts = extract_posts(user_text)
    judged = sentiment_of(single_post_text(user_text) if not posts else user_text)
    if kind == "json_object":
        content = {"label": judged.label, "score": judged.compound, "confidence": judged.confidence}
        return json.dumps(content), 1
    return f"The sentiment is {judged.label} (VADER compound {judged.compound:+.4f}).", 1
