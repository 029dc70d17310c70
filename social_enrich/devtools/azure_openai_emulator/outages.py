"""Outages on command, per deployment: what a deployment answers while an outage is on.

A test (or ``POST /control/deployments/<name>``) puts one deployment of a pool down and brings it
back, to see a client fail over and return.  Modes:

* ``http_503``: every chat request to it answers Azure's 503 ServiceUnavailable;
* ``throttle``: a 429 storm: every chat request answers 429 with ``retry-after-ms: 1000`` and
  ``retry-after: 1`` (and no quota remaining), whatever its quota holds;
* ``refuse``: its own endpoint (:meth:`~.server.AzureOpenAIEmulator.endpoint_of`) stops listening,
  so a connect fails with ECONNREFUSED; requests for it that still arrive (on the main endpoint)
  are read and the connection closed without a response.

None of them consumes quota.  Each answer counts in the stats as a fault ``outage_<mode>`` (a
refused connect reaches nothing, so it counts nowhere).  Batches are a separate service: outages
do not touch them.
"""

from __future__ import annotations

import threading

from .replies import Reply, error_reply, throttled_reply

OUTAGE_MODES = ("http_503", "refuse", "throttle")
# How long a throttling deployment tells its clients to wait.
THROTTLE_RETRY_SECONDS = 1.0


def check_mode(mode: str | None) -> None:
    if mode is not None and mode not in OUTAGE_MODES:
        raise ValueError(f"outage mode must be None or one of {', '.join(OUTAGE_MODES)}, got {mode!r}")


class Outages:
    """Deployment -> outage mode, for the deployments down now.  Thread-safe."""

    def __init__(self) -> None:
        self._modes: dict[str, str] = {}
        self._lock = threading.Lock()

    def mode_of(self, deployment: str) -> str | None:
        with self._lock:
            return self._modes.get(deployment)

    def set(self, deployment: str, mode: str | None) -> str | None:
        """Put ``deployment`` in ``mode`` (None: no outage); the mode it had before."""
        check_mode(mode)
        with self._lock:
            old = self._modes.pop(deployment, None)
            if mode is not None:
                self._modes[deployment] = mode
            return old


def outage_reply(mode: str, api_version: str) -> Reply:
    """What a request to a deployment in ``mode`` gets (``refuse``: no answer, the connection closed)."""
    if mode == "http_503":
        reply = error_reply(503)
    elif mode == "throttle":
        reply = throttled_reply(THROTTLE_RETRY_SECONDS, "call", api_version)
        reply.headers.update({"x-ratelimit-remaining-requests": "0", "x-ratelimit-remaining-tokens": "0"})
    elif mode == "refuse":
        reply = Reply(0, {}, no_answer="drop")
    else:
        raise ValueError(f"unknown outage mode {mode!r}")
    reply.faults = (f"outage_{mode}",)
    return reply
