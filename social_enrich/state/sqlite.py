"""The embedded backend: one SQLite file per store in the state folder, in WAL mode. One host only.

WAL lets the runs and the sensor of one host read while one writes; it needs shared memory, so it
does not work over a network filesystem (EFS, NFS): deployments over several hosts use PostgreSQL.
Writers serialize on SQLite's own lock (``BEGIN IMMEDIATE``); the longer submit lock of the batch
store is an ``flock`` on a file next to the database, released by the kernel however a process ends.
"""

from __future__ import annotations

import fcntl
import hashlib
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from social_enrich.state.store import StateStore

BUSY_TIMEOUT_SECONDS = 60  # a writer waits this long for another's transaction before "database is locked"


def _use_wal(db: sqlite3.Connection) -> None:
    """Put the file in WAL mode (it stays so). Processes opening a new file at once both try; SQLite
    answers one of them "database is locked" at once, without waiting (deadlock avoidance), so that
    one tries again until the other has switched the file."""
    deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
    while True:
        try:
            if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class SQLiteConnection:
    float_type = "REAL"  # SQLite's REAL is 8 bytes

    def __init__(self, path: Path, synchronous: str = "FULL") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._locks: dict[str, IO[str]] = {}
        self._db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
        try:
            _use_wal(self._db)
            # The cache uses NORMAL: with WAL a crash loses no committed transaction, only an OS crash can.
            self._db.execute(f"PRAGMA synchronous={synchronous}")
        except BaseException:
            self._db.close()
            raise

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._db.execute(sql, params).fetchall()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._db.execute(sql, params)

    def execute_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._db.executemany(sql, rows)

    @contextmanager
    def write(self, lock: str) -> Iterator[None]:
        # IMMEDIATE takes the write lock first, so a read-then-write transaction cannot be overtaken
        # (every writer of the file waits, whatever ``lock`` names: SQLite has one writer at a time).
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def create_schema(self, statements: Sequence[str], columns: Sequence[tuple[str, str, str]] = ()) -> None:
        with self.write("schema"):
            for statement in statements:
                self._db.execute(statement)
            for table, column, kind in columns:  # SQLite has no ADD COLUMN IF NOT EXISTS
                if column not in {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    def try_lock(self, name: str) -> bool:
        if name in self._locks:
            return True
        digest = hashlib.sha256(name.encode()).hexdigest()[:16]  # any name makes a safe file name
        handle = open(self.path.with_name(f"{self.path.name}.lock-{digest}"), "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self._locks[name] = handle
        return True

    def unlock(self, name: str) -> None:
        handle = self._locks.pop(name, None)
        if handle is not None:
            handle.close()  # closing the file releases its flock

    def close(self) -> None:
        for name in list(self._locks):
            self.unlock(name)
        self._db.close()


class SQLiteState(StateStore):
    """The embedded default: ``response_cache.sqlite3`` and ``batches.sqlite3`` in the state folder."""

    def __init__(self, cache_path: Path, batches_path: Path) -> None:
        self.cache_path, self.batches_path = cache_path, batches_path

    def batch_store_exists(self) -> bool:
        return self.batches_path.exists()

    def _connect(self, which: str) -> SQLiteConnection:
        if which == "cache":
            return SQLiteConnection(self.cache_path, synchronous="NORMAL")
        return SQLiteConnection(self.batches_path)

    def __repr__(self) -> str:
        return f"SQLiteState(cache={str(self.cache_path)!r}, batches={str(self.batches_path)!r})"
