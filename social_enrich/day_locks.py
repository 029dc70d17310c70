"""One run at a time scores a given day of a job, so two runs of one cold day do not both pay for it.

The second run waits for the first, then finds its answers in the response cache and pays nothing.
Advisory file locks (``fcntl.flock``) in the state folder: the kernel releases them when a process
dies, however it dies, so a killed run never leaves a day locked. They hold between runs on one
host, as the SQLite response cache does. With a PostgreSQL state store ($SOCIAL_ENRICH_STATE_URL)
the locks are PostgreSQL advisory locks of the run's own session instead, so they hold across hosts
as the cache does, and the server drops them when the run's process or connection ends.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from social_enrich.environment import default_state_store, state_dir

WAIT_POLL_SECONDS = 0.5  # a wait for a shared lock polls, so a stop signal still ends the run at once


def _lock_path(job_name: str, day: dt.date) -> Path:
    folder = state_dir() / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{job_name}-{day.isoformat()}.lock"


@contextmanager
def scoring_days(job_name: str, days: list[dt.date], log: logging.Logger) -> Iterator[None]:
    """Hold every day's lock, taken in date order so two runs of overlapping ranges cannot deadlock."""
    shared = default_state_store().shared_locks()
    if shared is None:
        with _file_locks(job_name, days, log):
            yield
        return
    try:
        for day in sorted(days):
            name = f"scoring:{job_name}:{day.isoformat()}"
            if not shared.try_lock(name):
                log.info("%s %s is being scored by another run (on this or another host); waiting for it, then reusing its answers",
                         job_name, day)
                while not shared.try_lock(name):
                    time.sleep(WAIT_POLL_SECONDS)
        yield
    finally:
        shared.close()  # releases every lock it holds


@contextmanager
def _file_locks(job_name: str, days: list[dt.date], log: logging.Logger) -> Iterator[None]:
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
