"""Per-deployment rate limits over a sliding window, the way Azure OpenAI throttles.

Azure converts a deployment's tokens-per-minute and requests-per-minute quota into allowances for
short periods (1 s or 10 s), so a burst is throttled well below the per-minute figure.  Here: in
any window of ``rate_window_seconds``, at most ``floor(rpm * window / 60)`` requests and
``floor(tpm * window / 60)`` rate-limit tokens are admitted.  A request's token cost is decided on
arrival (see :func:`~.prompt.rate_limit_tokens`).  A rejected request consumes nothing.

Each deployment has its own window, and its own limits when ``deployment_limits`` names it (else
the server-wide ``requests_per_minute`` and ``tokens_per_minute``).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .settings import EmulatorSettings

# Sent as "remaining" when a dimension has no limit: large, and constant.
UNLIMITED_REQUESTS = 1_000_000
UNLIMITED_TOKENS = 1_000_000_000


@dataclass(frozen=True)
class Admission:
    """The limiter's verdict on one request, and what remains of the window afterwards."""

    admitted: bool
    remaining_requests: int
    remaining_tokens: int
    # When rejected: seconds until the same request would fit, and which limit it hit ("call" or "token").
    retry_after_seconds: float = 0.0
    limit: str | None = None

    def headers(self) -> dict[str, str]:
        return {
            "x-ratelimit-remaining-requests": str(self.remaining_requests),
            "x-ratelimit-remaining-tokens": str(self.remaining_tokens),
        }


def _per_window(per_minute: int | None, window: float) -> int | None:
    # The epsilon keeps 300 * 0.2 / 60 from flooring to 0.999... -> 0.
    return None if per_minute is None else math.floor(per_minute * window / 60 + 1e-9)


def _allowances(deployment: str, settings: EmulatorSettings) -> tuple[int | None, int | None]:
    """Requests and tokens ``deployment`` may use per window: its own limits, else the server-wide ones."""
    rpm, tpm = settings.rate_limits_of(deployment)
    return _per_window(rpm, settings.rate_window_seconds), _per_window(tpm, settings.rate_window_seconds)


class _Window:
    """Admitted requests of one deployment still inside the window: (arrival, cost), oldest first."""

    def __init__(self) -> None:
        self.entries: deque[tuple[float, int]] = deque()
        self.tokens = 0

    def prune(self, now: float, window: float) -> None:
        while self.entries and self.entries[0][0] <= now - window:
            self.tokens -= self.entries.popleft()[1]


class RateLimiter:
    """Thread-safe sliding-window limiter, one window per deployment.  ``clock`` is injectable for tests."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._windows: dict[str, _Window] = {}
        self._lock = threading.Lock()

    def admit(self, deployment: str, cost: int, settings: EmulatorSettings) -> Admission:
        """Admit a request costing ``cost`` tokens now, or say when it would fit."""
        window_s = settings.rate_window_seconds
        max_requests, max_tokens = _allowances(deployment, settings)
        if max_requests is None and max_tokens is None:
            return Admission(True, UNLIMITED_REQUESTS, UNLIMITED_TOKENS)
        with self._lock:
            now = self._clock()
            window = self._windows.setdefault(deployment, _Window())
            window.prune(now, window_s)
            count, used = len(window.entries), window.tokens

            def fits(count: int, used: int) -> bool:
                return (max_requests is None or count + 1 <= max_requests) and (
                    max_tokens is None or used + cost <= max_tokens
                )

            if fits(count, used):
                window.entries.append((now, cost))
                window.tokens += cost
                return Admission(True, *self._remaining(max_requests, max_tokens, count + 1, used + cost))

            calls_ok = max_requests is None or count + 1 <= max_requests
            limit = "token" if calls_ok else "call"
            if max_tokens is not None and cost > max_tokens:
                # Never fits; Azure still answers with a retry-after, so say one window.
                wait = window_s
            else:
                # Walk the expiries, oldest first, until enough has left the window.
                wait, gone_count, gone_tokens = window_s, 0, 0
                for arrival, spent in window.entries:
                    gone_count += 1
                    gone_tokens += spent
                    if fits(count - gone_count, used - gone_tokens):
                        wait = arrival + window_s - now
                        break
            remaining = self._remaining(max_requests, max_tokens, count, used)
            return Admission(False, *remaining, retry_after_seconds=max(wait, 0.0), limit=limit)

    def remaining(self, deployment: str, settings: EmulatorSettings) -> Admission:
        """What remains of ``deployment``'s window now, consuming nothing (for answers not rate-limited)."""
        window_s = settings.rate_window_seconds
        max_requests, max_tokens = _allowances(deployment, settings)
        with self._lock:
            window = self._windows.get(deployment)
            if window is not None:
                window.prune(self._clock(), window_s)
            count, used = (len(window.entries), window.tokens) if window is not None else (0, 0)
        return Admission(True, *self._remaining(max_requests, max_tokens, count, used))

    @staticmethod
    def _remaining(max_requests: int | None, max_tokens: int | None, count: int, used: int) -> tuple[int, int]:
        # Clamped: lowering a limit on a running emulator can leave a window over its new allowance.
        requests = UNLIMITED_REQUESTS if max_requests is None else max(0, max_requests - count)
        tokens = UNLIMITED_TOKENS if max_tokens is None else max(0, max_tokens - used)
        return requests, tokens
