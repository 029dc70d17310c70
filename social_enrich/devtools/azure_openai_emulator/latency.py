"""The latency model: how long a reply is held before it is sent."""

from __future__ import annotations

import random

from .replies import Reply
from .settings import EmulatorSettings


def jitter_factor(settings: EmulatorSettings, rng: random.Random) -> float:
    """A factor uniform in [1 - latency_jitter, 1 + latency_jitter]; no draw without jitter."""
    if settings.latency_jitter == 0:
        return 1.0
    return rng.uniform(1 - settings.latency_jitter, 1 + settings.latency_jitter)


def reply_delay(settings: EmulatorSettings, reply: Reply, jitter: float = 1.0) -> float:
    """Seconds to hold ``reply`` before sending it.  Pure: the caller draws ``jitter`` (see jitter_factor).

    A successful answer takes ``(latency_seconds + latency_per_output_token_seconds * completion
    tokens) * jitter``, as a model's time is mostly spent generating.  Errors (429, 401, 404, 5xx,
    content filter) are decided before any generation, so they get none of it.  EMULATOR_FAULT:slow
    adds ``slow_seconds`` to either.
    """
    delay = 0.0
    if reply.status == 200:
        generation = settings.latency_seconds + settings.latency_per_output_token_seconds * reply.completion_tokens
        delay = generation * jitter
    if reply.slow:
        delay += settings.slow_seconds
    return max(0.0, delay)
