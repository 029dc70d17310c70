"""Client-side rate limiting: pace requests and tokens under the quota, and adapt concurrency.

Why not aiolimiter: its leaky bucket admits a full bucket at once on top of the steady rate, and
Azure enforces its per-minute quotas over short sliding windows (1 or 10 s), so a burst earns 429s
below the per-minute figure. Pacing (each request reserves a slot of 1/rate, and of tokens/rate)
never bursts: in any window of W seconds it admits at most rate x W, plus one request; a ledger of
the last window's starts takes that one request off.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque


class RequestPacer:
    """Spaces request starts so requests and tokens per minute stay under ``headroom`` x the quota, and
    keeps every window of ``window_seconds`` within the server's allowance for it.

    Pacing alone can still overrun a window by a request (its tokens are charged at once, in whatever
    window it lands), and a pace won back after a pause can overrun it by more. So the pacer also keeps
    a ledger of what it started in the last window, as the server counts it, and starts nothing that
    would not fit: the client never earns a 429 of its own making, and the headroom can stay small.
    Starts are counted a little longer than the window (``ARRIVAL_SLACK``), since the server counts
    arrivals, which come a little later and not all equally late.

    429s in a row (another client sharing the quota, or a server counting otherwise) slow the pace by a
    fifth each, and healthy answers win the pace back slowly.
    """

    SLOWEST = 0.1  # never below a tenth of the configured quota
    ARRIVAL_SLACK = 0.1  # seconds: how much later than others a request may reach the server

    def __init__(self, requests_per_minute: int | None, tokens_per_minute: int | None, headroom: float = 0.98,
                 window_seconds: float = 10.0) -> None:
        self._seconds_per_request = 60 / (requests_per_minute * headroom) if requests_per_minute else 0.0
        self._seconds_per_token = 60 / (tokens_per_minute * headroom) if tokens_per_minute else 0.0
        self._next_request = self._next_tokens = self._paused_until = 0.0
        self._last_throttled = -math.inf
        self.pace = 1.0  # share of the configured rate in use
        self._window = window_seconds
        self._window_requests = math.floor(requests_per_minute * window_seconds / 60 + 1e-9) if requests_per_minute else None
        self._window_tokens = math.floor(tokens_per_minute * window_seconds / 60 + 1e-9) if tokens_per_minute else None
        self._started: deque[tuple[float, int]] = deque()  # (start, tokens) still inside the window, oldest first
        self._started_tokens = 0

    def ready_at(self, tokens: int) -> float:
        """The monotonic time a request of ``tokens`` could start, were it asked now (routing reads it)."""
        earliest = max(time.monotonic(), self._next_request, self._next_tokens, self._paused_until)
        return self._window_room_at(earliest, tokens)

    async def wait_turn(self, tokens: int) -> None:
        now = time.monotonic()
        start = self.ready_at(tokens)
        self._next_request = start + self._seconds_per_request / self.pace
        self._next_tokens = start + tokens * self._seconds_per_token / self.pace
        if self._window_requests is not None or self._window_tokens is not None:
            self._started.append((start, tokens))
            self._started_tokens += tokens
        if start > now:
            await asyncio.sleep(start - now)

    def _window_room_at(self, earliest: float, tokens: int) -> float:
        """The first time from ``earliest`` on when the window has room for one more request of ``tokens``."""
        held = self._window + self.ARRIVAL_SLACK
        while self._started and self._started[0][0] + held <= earliest:
            self._started_tokens -= self._started.popleft()[1]

        def fits(count: int, used: int) -> bool:
            return (self._window_requests is None or count < self._window_requests) and (
                self._window_tokens is None or used + tokens <= self._window_tokens
            )

        count, used = len(self._started), self._started_tokens
        if fits(count, used):
            return earliest
        for start, spent in self._started:  # oldest first: the first to leave the window
            count, used = count - 1, used - spent
            if fits(count, used):
                return max(earliest, start + held)
        return earliest  # larger than a whole window allows: the server will say so

    def on_answer(self) -> None:
        self.pace = min(1.0, self.pace + 0.002)

    def on_throttled(self, retry_after: float) -> None:
        """After a 429: no request starts before the server said it may. A second 429 within a window
        also slows the pace: the quota is shared, or counted otherwise, and pausing is not enough.
        (One alone is a request that reached the server late; slowing for it would cost more than it saved.)"""
        now = time.monotonic()
        self._paused_until = max(self._paused_until, now + retry_after)
        if now - self._last_throttled < self._window:
            self.pace = max(self.SLOWEST, self.pace * 0.8)
        self._last_throttled = now


class AdaptiveConcurrency:
    """Requests in flight, as an async context manager whose limit adapts (AIMD, like TCP).

    The limit grows by one per round of healthy answers, halves on a 429, and shrinks by one when
    the server's remaining quota could not take another request like this one. Answers are reported inside
    the block, so the release that follows wakes the waiters a raised limit lets in.
    """

    def __init__(self, ceiling: int, start: int = 4) -> None:
        self.ceiling = ceiling
        self.limit = min(ceiling, start)
        self.peak = self.limit
        self._in_flight = 0
        self._healthy = 0
        self._changed = asyncio.Condition()

    async def __aenter__(self) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self._in_flight < self.limit)
            self._in_flight += 1

    async def __aexit__(self, *exc: object) -> None:
        async with self._changed:
            self._in_flight -= 1
            self._changed.notify_all()

    def on_answer(self, remaining_requests: int | None, remaining_tokens: int | None, request_tokens: int) -> None:
        # The server says the next request would not fit: more at once would only collect 429s. (Not
        # "little is left": pacing near the quota leaves little on purpose.)
        starved = (remaining_requests is not None and remaining_requests < 1) or (
            remaining_tokens is not None and remaining_tokens < request_tokens
        )
        if starved:
            self._healthy = 0
            self.limit = max(1, self.limit - 1)
            return
        self._healthy += 1
        if self._healthy >= self.limit and self.limit < self.ceiling:
            self._healthy = 0
            self.limit += 1
            self.peak = max(self.peak, self.limit)

    def on_throttled(self) -> None:
        self._healthy = 0
        self.limit = max(1, self.limit // 2)
