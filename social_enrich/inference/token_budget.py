"""Token estimates that need no tokenizer download, and the truncation of over-long posts.

Azure OpenAI's rate limiter does not run a tokenizer either: it estimates a request's cost from
its character count plus ``max_tokens``. Estimating the same way needs no network (``tiktoken``
downloads its encodings on first use) and predicts what the quota will be charged.
"""

from __future__ import annotations

import json
import math
from typing import Any

CHARS_PER_TOKEN = 4


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def estimate_request_tokens(messages: list[dict[str, str]], response_format: dict[str, Any] | None, max_tokens: int) -> int:
    """What the rate limiter charges for a request: its prompt (messages and schema) plus max_tokens."""
    chars = sum(len(m["content"]) for m in messages)
    if response_format and response_format.get("type") == "json_schema":
        chars += len(json.dumps(response_format["json_schema"], separators=(",", ":")))
    return math.ceil(chars / CHARS_PER_TOKEN) + max_tokens


def truncate_to_tokens(text: str, budget: int) -> tuple[str, bool]:
    """``text`` cut to about ``budget`` tokens, and whether it was cut."""
    limit = budget * CHARS_PER_TOKEN
    if len(text) <= limit:
        return text, False
    return text[:limit], True
