"""A step stops between chunks, not in the middle of one: on SIGINT or SIGTERM, or when its run worker is gone.

What Dagster does (1.13): ``dagster asset materialize``, and any run worker, catches SIGINT and SIGTERM
and forwards them to the step's process through an event, which that process turns into a SIGINT to
itself; Ctrl-C in a terminal also sends SIGINT to the step's process directly. While the step's code
runs, Dagster's handler raises DagsterExecutionInterruptedError wherever the code is, so the chunk
being scored is lost. A run worker killed outright (SIGKILL) forwards nothing: its step process,
orphaned, scores every chunk and commits.

``stop_between_chunks()``, called in the step's code, swaps that handler for one that only takes note
(Dagster puts its own back when the step's code returns), and gives ``stop_reason`` for
``enrich_days(should_stop=...)``: the chunk under way finishes, the rows so far are written and
``report.posts_left`` counts the rest. A second signal does not hurry it: Ctrl-C reaches the step
twice (directly and forwarded). SIGKILL remains the way to stop at once.
"""

from __future__ import annotations

import multiprocessing
import signal
import threading
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from types import FrameType

# Signals are process-wide, so is what they left here.
_signalled: str | None = None
_parent: BaseProcess | None = None  # the run worker, when this is a step process it started


def _take_note(signum: int, frame: FrameType | None) -> None:
    global _signalled
    _signalled = signal.Signals(signum).name


def stop_between_chunks() -> Callable[[], str | None]:
    """Catch SIGINT and SIGTERM from now on (main thread only, as Python allows) and return ``stop_reason``."""
    global _signalled, _parent
    _signalled = None
    # A step of Dagster's multiprocess executor is a multiprocessing child of its run worker; an
    # in-process run has no such parent to outlive (its shell may go away without stopping it).
    _parent = multiprocessing.parent_process()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _take_note)
        signal.signal(signal.SIGTERM, _take_note)
    return stop_reason


def stop_reason() -> str | None:
    """Why the step should stop before its next chunk, or None."""
    if _signalled:
        return f"{_signalled} received: the run is being stopped"
    if _parent is not None and not _parent.is_alive():
        return f"its run worker (pid {_parent.pid}) is gone"
    return None
