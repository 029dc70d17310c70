"""Token estimates that need no tokenizer download, their calibration against the server, and the
truncation of over-long posts.

Azure OpenAI's rate limiter does not run a tokenizer either: it estimates a request's cost from
its character count plus ``max_tokens``. Estimating the same way needs no network (``tiktoken``
downloads its encodings on first use) and predicts what the quota will be charged. Where the
server counts otherwise, :class:`PromptCalibration` learns the ratio from the answers' usage.
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


class PromptCalibration:
    """The server's prompt tokens over the client's estimate, per deployment, from each answer's usage.

    A moving average, so a deployment whose tokenizer counts 10% more is charged 10% more by the
    pacer: it neither overruns the quota (429s) nor leaves it unused.
    """

    WEIGHT = 0.1  # of each new answer in the average

    def __init__(self) -> None:
        self.ratio = 1.0
        self._seen = 0

    def charge(self, estimate: int) -> int:
        return math.ceil(estimate * self.ratio)

    def observe(self, estimate: int, server_tokens: int) -> None:
        if estimate <= 0 or server_tokens <= 0:
            return
        ratio = server_tokens / estimate
        self._seen += 1
        # The first answers set it outright; then it moves slowly, so one odd answer cannot swing the pace.
        weight = max(self.WEIGHT, 1 / self._seen)
        self.ratio += weight * (ratio - self.ratio)


def truncate_to_tokens(text: str, budget: int) -> tuple[str, bool]:
    """``text`` cut to about ``budget`` tokens, and whether it was cut."""
    limit = budget * CHARS_PER_TOKEN
    if len(text) <= limit:
        return text, False
    return text[:limit], True
