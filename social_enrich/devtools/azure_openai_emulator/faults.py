"""Fault kinds: deterministic markers in the user text, and random faults drawn by share.

A marker ``EMULATOR_FAULT:<name>`` anywhere in a user message applies to the whole request.  Random
faults are drawn once per admitted chat request from the ``share_<kind>`` settings; a request that
already carries an answer-changing marker keeps its marker's fault.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .settings import EmulatorSettings

FAULT_MARKER = "EMULATOR_FAULT:"

# Faults that change what is answered (or whether anything is); at most one applies per request,
# the first marker in the user messages.
ANSWER_FAULTS = (
    "http_500",  # HTTP 500, Azure's InternalServerError body
    "http_503",  # HTTP 503, Azure's ServiceUnavailable body
    "malformed_json",  # HTTP 200 whose content is truncated JSON
    "content_filter",  # HTTP 400 code content_filter: the prompt was filtered
    "finish_content_filter",  # HTTP 200, finish_reason content_filter, content null: the answer was filtered
    "missing_post",  # HTTP 200 whose per-post array lacks one item
    "drop",  # the connection is closed without an answer
    "timeout",  # held for timeout_hold_seconds, then closed without an answer
)
# Faults that only change when it is answered; they combine with an answer fault.
TIMING_FAULTS = ("slow",)
# Older marker names, still accepted.
MARKER_ALIASES = {"invalid_json": "malformed_json"}
KNOWN_MARKERS = ANSWER_FAULTS + TIMING_FAULTS + tuple(MARKER_ALIASES)

# Faults that can be drawn at random, each with its settings field share_<kind>.  The order is
# the order of the cumulative shares pick_fault() walks, so a seed gives the same faults forever.
RANDOM_FAULTS = ("http_500", "http_503", "drop", "timeout", "malformed_json", "content_filter", "missing_post")
# Faults after which the client gets no HTTP answer at all.
NO_ANSWER_FAULTS = ("drop", "timeout")

_MARKER_RE = re.compile(re.escape(FAULT_MARKER) + r"([A-Za-z0-9_]+)")


def share_field(kind: str) -> str:
    return f"share_{kind}"


def markers_in(text: str) -> list[str]:
    """Fault names marked in ``text``, in order, aliases resolved; unknown names kept as they are."""
    return [MARKER_ALIASES.get(name, name) for name in _MARKER_RE.findall(text)]


def pick_fault(settings: EmulatorSettings, draw: float) -> str | None:
    """The random fault for a uniform ``draw`` in [0, 1), or None.  Pure: the caller owns the RNG.

    The shares are laid end to end on [0, 1) in RANDOM_FAULTS order; ``draw`` lands in one or in
    the rest (no fault).
    """
    edge = 0.0
    for kind in RANDOM_FAULTS:
        share = getattr(settings, share_field(kind))
        edge += share
        if share > 0 and draw < edge:
            return kind
    return None
