"""One run at a time scores a given day of a job, so two runs of one cold day do not both pay for it.

The second run waits for the first, then finds its answers in the response cache and pays nothing.
Advisory file locks (``fcntl.flock``) in the state folder: the kernel releases them when a process
dies, however it dies, so a killed run never leaves a day locked. They hold between runs on one
host, as the SQLite response cache does; runs on several hosts share neither.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from social_enrich.environment import state_dir


def _lock_path(job_name: str, day: dt.date) -> Path:
    folder = state_dir() / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{job_name}-{day.isoformat()}.lock"


@contextmanager
def scoring_days(job_name: str, days: list[dt.date], log: logging.Logger) -> Iterator[None]:
    """Hold every day's lock, taken in date order so two runs of overlapping ranges cannot deadlock."""
    with ExitStack() as held:
        for day in sorted(days):
            handle = held.enter_context(open(_lock_path(job_name, day), "a+"))
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("%s %s is being scored by another run (pid %s); waiting for it, then reusing its answers",
                         job_name, day, _holder(handle) or "unknown")
                fcntl.flock(handle, fcntl.LOCK_EX)
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
        yield


def _holder(handle) -> str:
    handle.seek(0)
    return handle.read().strip()
