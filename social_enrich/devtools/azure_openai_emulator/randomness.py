"""The emulator's own seeded randomness, so a seed replays the same faults and latencies."""

from __future__ import annotations

import random
import threading

from .faults import pick_fault
from .latency import jitter_factor
from .settings import EmulatorSettings

_UNSEEDED = object()


class Randomness:
    """Two streams from ``settings.seed``: faults and jitter apart, so turning jitter on does not
    change which requests fault.  Re-seeded when the setting changes.  Thread-safe; with requests
    arriving one at a time, a seed gives the same sequence every run."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seed: object = _UNSEEDED
        self._faults = random.Random()
        self._jitter = random.Random()

    def _sync(self, seed: int | None) -> None:
        if seed != self._seed:
            self._seed = seed
            # String seeds hash deterministically (unlike hash() of a str), so runs replay.
            self._faults = random.Random(None if seed is None else f"{seed}/faults")
            self._jitter = random.Random(None if seed is None else f"{seed}/jitter")

    def draw_fault(self, settings: EmulatorSettings) -> tuple[str | None, float]:
        """One draw per admitted request: the random fault (or None), and a pick in [0, 1) for
        which post a missing_post fault leaves out."""
        with self._lock:
            self._sync(settings.seed)
            kind = pick_fault(settings, self._faults.random())
            return kind, self._faults.random()

    def draw_jitter(self, settings: EmulatorSettings) -> float:
        with self._lock:
            self._sync(settings.seed)
            return jitter_factor(settings, self._jitter)
