"""What the server sends back (:class:`Reply`), and error bodies shaped like Azure's."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Reply:
    """What the server sends back: status, JSON payload and extra headers, plus bookkeeping for stats."""

    status: int
    payload: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # The request asked for EMULATOR_FAULT:slow: hold the reply for settings.slow_seconds more.
    slow: bool = False
    cached_tokens: int = 0
    # Items in the per-post array of a 200 answer, or 1 for a single-post answer; 0 if unusable.
    posts: int = 0
    # Fault kinds applied to this request (markers and random), for stats.
    faults: tuple[str, ...] = ()
    # "drop" or "timeout": send nothing and close the connection (after holding it, for timeout).
    no_answer: str | None = None
    # What the request was charged against the token rate limit; 0 when it was not admitted.
    rate_limit_tokens: int = 0
    # The configured deployment the request was for, when known (for the per-deployment stats).
    deployment: str | None = None


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
    headers = {"retry-after": "1", "retry-after-ms": "1000"} if status == 429 else {}
    return Reply(status, {"error": {"code": code or default_code, "message": message or default_message}}, headers)


def throttled_reply(retry_after_seconds: float, limit: str, api_version: str) -> Reply:
    """Azure's 429 for a request over the deployment's rate limit (``limit``: "call" or "token")."""
    retry_ms = max(1, math.ceil(retry_after_seconds * 1000))
    retry_s = max(1, math.ceil(retry_ms / 1000))
    message = (
        f"Requests to the ChatCompletions_Create Operation under Azure OpenAI API version {api_version} have "
        f"exceeded {limit} rate limit of your current OpenAI S0 pricing tier. Please retry after {retry_s} "
        f"second{'s' if retry_s != 1 else ''}. Please go here: https://aka.ms/oai/quotaincrease if you would "
        "like to further increase the default rate limit."
    )
    headers = {"retry-after": str(retry_s), "retry-after-ms": str(retry_ms)}
    return Reply(429, {"error": {"code": "429", "message": message}}, headers)


def content_filter_error() -> Reply:
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
                    "content_filter_result": filter_results(hate=True),
                },
            }
        },
    )


def filter_results(hate: bool = False) -> dict[str, Any]:
    safe = {"filtered": False, "severity": "safe"}
    return {
        "hate": {"filtered": True, "severity": "high"} if hate else dict(safe),
        "self_harm": dict(safe),
        "sexual": dict(safe),
        "violence": dict(safe),
    }
