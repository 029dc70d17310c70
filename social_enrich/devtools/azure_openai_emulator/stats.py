"""Counters of what the emulator answered, read as one consistent snapshot."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .replies import Reply


@dataclass
class BatchLineCounts:
    """What a finished batch wrote: lines per kind, and the usage of its output lines."""

    answered: int = 0
    error_lines: int = 0
    unanswered: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    posts: int = 0

    def add(self, reply: Reply) -> None:
        """Count one answered line: an output line (200) or an error line."""
        if reply.status != 200:
            self.error_lines += 1
            return
        self.answered += 1
        self.prompt_tokens += reply.prompt_tokens
        self.completion_tokens += reply.completion_tokens
        self.posts += reply.posts

    def merge(self, other: BatchLineCounts) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass
class DeploymentCounts:
    """The chat counters of one deployment (a subset of the server-wide ones, same meanings)."""

    requests: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    throttled: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    rate_limit_tokens: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    posts_answered: int = 0

    def add(self, reply: Reply) -> None:
        self.requests += 1
        if reply.no_answer is None:
            self.by_status[reply.status] = self.by_status.get(reply.status, 0) + 1
        if reply.status == 429:
            self.throttled += 1
        if reply.status == 200:
            self.posts_answered += reply.posts
        self.rate_limit_tokens += reply.rate_limit_tokens
        self.prompt_tokens += reply.prompt_tokens
        self.completion_tokens += reply.completion_tokens
        self.cached_tokens += reply.cached_tokens
        for kind in reply.faults:
            self.faults[kind] = self.faults.get(kind, 0) + 1

    def to_json(self) -> dict[str, Any]:
        counts = asdict(self)
        # String statuses, unlike the top-level by_status: the snapshot reads the same as its JSON.
        counts["by_status"] = {str(status): n for status, n in sorted(self.by_status.items())}
        counts["faults"] = dict(sorted(self.faults.items()))
        return counts


# Snapshot key of each BatchLineCounts total.
_BATCH_LINE_KEYS = {
    "answered": "batch_lines_answered",
    "error_lines": "batch_error_lines",
    "unanswered": "batch_lines_unanswered",
    "prompt_tokens": "batch_prompt_tokens",
    "completion_tokens": "batch_completion_tokens",
    "posts": "batch_posts_answered",
}


class Stats:
    """Thread-safe counters.  Snapshot keys:

    * ``requests``: requests answered (or dropped); ``by_status``: status -> count (dropped ones have none);
    * ``prompt_tokens``, ``completion_tokens``, ``cached_tokens``: usage of the answers sent;
    * ``rate_limit_tokens``: sum of what admitted requests were charged against the token limit;
    * ``throttled``: 429 answers; ``faults``: fault kind -> count (markers and random, drop and timeout too);
    * ``posts_answered``: items in the per-post arrays of 200 answers (1 for a single-post answer);
    * ``in_flight``: chat requests received and not yet answered; ``max_in_flight``: the most at once;
    * ``started_at`` (Unix time) and ``uptime_seconds``: since the emulator was created or the stats reset.

    For the Files and Batches APIs (zero until they are used):

    * ``files_uploaded``: files uploaded through ``POST files`` (batch outputs are not counted);
    * ``batches_created``; ``batches_by_status``: final status (completed, failed, expired,
      cancelled) -> batches that reached it;
    * ``batch_lines_answered``: lines in output files (status 200); ``batch_error_lines``: lines in
      error files with an error response (a 500, or what the chat route would have answered as an
      error); ``batch_lines_unanswered``: lines in error files never answered (batch_expired,
      batch_cancelled);
    * ``batch_prompt_tokens``, ``batch_completion_tokens``, ``batch_posts_answered``: like the
      chat counters, for batch output lines.

    Batches count when they reach a final status; chat counters (``requests`` and the others above)
    never include Files or Batches API calls or batch lines.

    Per deployment, ``by_deployment``: name -> ``requests``, ``by_status``, ``throttled``, ``faults``,
    ``rate_limit_tokens``, ``prompt_tokens``, ``completion_tokens``, ``cached_tokens`` and
    ``posts_answered`` of its chat requests, every configured deployment listed (zeros until used);
    its ``by_status`` keys are strings ("200", "429", "503"), as in the JSON.  Requests for no
    configured deployment (404) count only server-wide.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight = 0
        self._zero()

    def _zero(self) -> None:
        self._requests = 0
        self._by_status: dict[int, int] = {}
        self._prompt_tokens = 0
        self._completion_tokens = 0
        self._cached_tokens = 0
        self._rate_limit_tokens = 0
        self._throttled = 0
        self._faults: dict[str, int] = {}
        self._posts_answered = 0
        self._max_in_flight = self._in_flight  # a peak since the reset; what is in flight now counts
        self._files_uploaded = 0
        self._batches_created = 0
        self._batches_by_status: dict[str, int] = {}
        self._batch_lines = BatchLineCounts()  # totals over finished batches
        self._by_deployment: dict[str, DeploymentCounts] = {}
        self._started_at = time.time()
        self._started_monotonic = time.monotonic()

    def reset(self) -> None:
        with self._lock:
            self._zero()

    def record(self, reply: Reply) -> None:
        with self._lock:
            self._requests += 1
            if reply.no_answer is None:
                self._by_status[reply.status] = self._by_status.get(reply.status, 0) + 1
            if reply.status == 429:
                self._throttled += 1
            if reply.status == 200:
                self._posts_answered += reply.posts
            self._prompt_tokens += reply.prompt_tokens
            self._completion_tokens += reply.completion_tokens
            self._cached_tokens += reply.cached_tokens
            self._rate_limit_tokens += reply.rate_limit_tokens
            for kind in reply.faults:
                self._faults[kind] = self._faults.get(kind, 0) + 1
            if reply.deployment is not None:
                self._by_deployment.setdefault(reply.deployment, DeploymentCounts()).add(reply)

    def record_file_upload(self) -> None:
        with self._lock:
            self._files_uploaded += 1

    def record_batch_created(self) -> None:
        with self._lock:
            self._batches_created += 1

    def record_batch_finished(self, status: str, outcome: BatchLineCounts) -> None:
        """A batch reached its final ``status``; ``outcome`` counts its output and error lines."""
        with self._lock:
            self._batches_by_status[status] = self._batches_by_status.get(status, 0) + 1
            self._batch_lines.merge(outcome)

    @contextmanager
    def in_flight(self) -> Iterator[None]:
        """Count a chat request as in flight for the duration of the block."""
        with self._lock:
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1

    def snapshot(self, deployments: tuple[str, ...] = ()) -> dict[str, Any]:
        """Every counter; ``by_deployment`` lists ``deployments`` and any other deployment counted."""
        with self._lock:
            snapshot = {
                "requests": self._requests,
                "by_status": dict(self._by_status),
                "prompt_tokens": self._prompt_tokens,
                "completion_tokens": self._completion_tokens,
                "cached_tokens": self._cached_tokens,
                "rate_limit_tokens": self._rate_limit_tokens,
                "throttled": self._throttled,
                "faults": dict(self._faults),
                "posts_answered": self._posts_answered,
                "in_flight": self._in_flight,
                "max_in_flight": self._max_in_flight,
                "started_at": self._started_at,
                "uptime_seconds": round(time.monotonic() - self._started_monotonic, 3),
            }
            snapshot.update(
                files_uploaded=self._files_uploaded,
                batches_created=self._batches_created,
                batches_by_status=dict(self._batches_by_status),
            )
            snapshot.update({_BATCH_LINE_KEYS[name]: total for name, total in asdict(self._batch_lines).items()})
            names = list(deployments) + [name for name in self._by_deployment if name not in deployments]
            snapshot["by_deployment"] = {
                name: self._by_deployment.get(name, DeploymentCounts()).to_json() for name in names
            }
            return snapshot
