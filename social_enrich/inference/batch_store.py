"""The durable record of Batch API work: days queued, their posts and answers, batches and requests.

SQLite in the state folder, like the response cache: the asset run that submits and the sensor that
polls are different processes (and ticks), and nothing may be lost between them. Every change is
one transaction, so a crash leaves either the old or the new state.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from social_enrich.inference.provider import ScoreResult
from social_enrich.inference.usage import Usage

# Azure's statuses; the last four are final.
OPEN_STATUSES = ("validating", "in_progress", "finalizing", "cancelling")
FINAL_STATUSES = ("completed", "failed", "expired", "cancelled")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS days (
    job TEXT NOT NULL, day TEXT NOT NULL, posts INTEGER NOT NULL, queued_at TEXT NOT NULL,
    realtime INTEGER NOT NULL DEFAULT 0,  -- handed to a realtime run, which forgets the day when done
    may_live_on TEXT,  -- JSON list of the days the posts' target rows can be on now; NULL: any day
    PRIMARY KEY (job, day));
CREATE TABLE IF NOT EXISTS posts (
    job TEXT NOT NULL, day TEXT NOT NULL, post_key TEXT NOT NULL, update_time TEXT, input_hash TEXT NOT NULL,
    truncated INTEGER NOT NULL, fields TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    custom_id TEXT, batch_id TEXT, pack_position INTEGER, status TEXT, response TEXT, error TEXT,
    prompt_tokens REAL NOT NULL DEFAULT 0, completion_tokens REAL NOT NULL DEFAULT 0, cached_tokens REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (job, day, post_key));
CREATE INDEX IF NOT EXISTS posts_by_request ON posts (custom_id);
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT PRIMARY KEY, job TEXT NOT NULL, status TEXT NOT NULL, input_file_id TEXT NOT NULL,
    output_file_id TEXT, error_file_id TEXT, requests INTEGER NOT NULL, completed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0, submitted_at TEXT NOT NULL, closed_at TEXT, note TEXT);
"""


@dataclass(frozen=True)
class QueuedPost:
    """A post waiting for (or holding) its batch answer, with what its target row needs."""

    day: dt.date
    key: Any
    update_time: dt.datetime | None
    input_hash: str
    truncated: bool
    fields: dict[str, Any]
    attempts: int = 0
    result: ScoreResult | None = None  # known before submission: a cache hit, or a post not sendable


@dataclass(frozen=True)
class BatchRecord:
    batch_id: str
    job: str
    status: str
    input_file_id: str
    output_file_id: str | None
    error_file_id: str | None
    requests: int
    submitted_at: dt.datetime


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


class BatchStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, timeout=60, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(days)")}
        if "may_live_on" not in columns:  # a store written before the column existed: its days may be anywhere
            self._db.execute("ALTER TABLE days ADD COLUMN may_live_on TEXT")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> BatchStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- days and posts -------------------------------------------------------------------------

    def queue_days(
        self, job: str, days: Sequence[dt.date], posts: Iterable[QueuedPost], may_live_on: Iterable[dt.date] | None = None
    ) -> None:
        """Replace whatever was queued for these days with ``posts`` (a re-submitted day starts over).
        ``may_live_on``: the days the posts' rows can be on in the target now (None: any day), so that
        writing a day reads only those partitions."""
        where = json.dumps(sorted(d.isoformat() for d in may_live_on)) if may_live_on is not None else None
        rows = [
            (job, p.day.isoformat(), json.dumps(p.key), p.update_time.isoformat() if p.update_time else None,
             p.input_hash, int(p.truncated), json.dumps(p.fields, default=str, ensure_ascii=False), *_result_columns(p.result))
            for p in posts
        ]
        counts = {d.isoformat(): 0 for d in days}
        for row in rows:
            counts[row[1]] += 1
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            for day, n in counts.items():
                self._db.execute("DELETE FROM posts WHERE job = ? AND day = ?", (job, day))
                self._db.execute("INSERT OR REPLACE INTO days (job, day, posts, queued_at, may_live_on) VALUES (?, ?, ?, ?, ?)",
                                 (job, day, n, _now(), where))
            self._db.executemany(
                "INSERT INTO posts (job, day, post_key, update_time, input_hash, truncated, fields, status, response, error)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def unsent(self, job: str) -> list[QueuedPost]:
        """Posts with no answer and in no open request: to submit."""
        rows = self._db.execute(
            "SELECT day, post_key, update_time, input_hash, truncated, fields, attempts FROM posts"
            " WHERE job = ? AND status IS NULL AND custom_id IS NULL"
            " AND day NOT IN (SELECT day FROM days WHERE job = ? AND realtime = 1) ORDER BY day, post_key",
            (job, job),
        )
        return [
            QueuedPost(dt.date.fromisoformat(day), json.loads(key), dt.datetime.fromisoformat(t) if t else None,
                       h, bool(cut), json.loads(fields), attempts)
            for day, key, t, h, cut, fields, attempts in rows
        ]

    def record_batch(self, job: str, batch_id: str, status: str, input_file_id: str, requests: dict[str, list[QueuedPost]]) -> None:
        """A batch was created for these requests (custom_id -> its posts, in pack order): one transaction."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT INTO batches (batch_id, job, status, input_file_id, requests, submitted_at) VALUES (?, ?, ?, ?, ?, ?)",
                (batch_id, job, status, input_file_id, len(requests), _now()),
            )
            self._db.executemany(
                "UPDATE posts SET custom_id = ?, batch_id = ?, pack_position = ?, attempts = attempts + 1"
                " WHERE job = ? AND day = ? AND post_key = ?",
                [(cid, batch_id, n, job, p.day.isoformat(), json.dumps(p.key))
                 for cid, posts in requests.items() for n, p in enumerate(posts)],
            )

    def batch_requests(self, job: str, batch_id: str) -> dict[str, list[QueuedPost]]:
        """The unanswered posts of a batch by custom_id, in pack order (the ids inside each request)."""
        rows = self._db.execute(
            "SELECT custom_id, day, post_key, update_time, input_hash, truncated, fields, attempts FROM posts"
            " WHERE job = ? AND batch_id = ? AND status IS NULL ORDER BY custom_id, pack_position",
            (job, batch_id),
        )
        requests: dict[str, list[QueuedPost]] = {}
        for cid, day, key, t, h, cut, fields, attempts in rows:
            post = QueuedPost(dt.date.fromisoformat(day), json.loads(key), dt.datetime.fromisoformat(t) if t else None,
                              h, bool(cut), json.loads(fields), attempts)
            requests.setdefault(cid, []).append(post)
        return requests

    def settle(self, job: str, answers: Sequence[tuple[QueuedPost, ScoreResult, Usage]]) -> None:
        """Store answers, each with its share of its request's tokens."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "UPDATE posts SET status = ?, response = ?, error = ?, custom_id = NULL, batch_id = NULL,"
                " prompt_tokens = ?, completion_tokens = ?, cached_tokens = ? WHERE job = ? AND day = ? AND post_key = ?",
                [(*_result_columns(r), u.prompt_tokens, u.completion_tokens, u.cached_tokens, job, p.day.isoformat(), json.dumps(p.key))
                 for p, r, u in answers],
            )

    def release(self, job: str, posts: Sequence[QueuedPost]) -> None:
        """Take posts out of their request, unanswered, so they are sent again."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "UPDATE posts SET custom_id = NULL, batch_id = NULL WHERE job = ? AND day = ? AND post_key = ? AND status IS NULL",
                [(job, p.day.isoformat(), json.dumps(p.key)) for p in posts],
            )

    def day_usage(self, job: str, day: dt.date) -> Usage:
        row = self._db.execute(
            "SELECT SUM(prompt_tokens), SUM(completion_tokens), SUM(cached_tokens) FROM posts WHERE job = ? AND day = ?",
            (job, day.isoformat()),
        ).fetchone()
        return Usage(prompt_tokens=round(row[0] or 0), completion_tokens=round(row[1] or 0), cached_tokens=round(row[2] or 0))

    def complete_days(self, job: str) -> list[dt.date]:
        """Days whose every post has an answer (or that have no posts)."""
        rows = self._db.execute(
            "SELECT d.day FROM days d WHERE d.job = ? AND d.realtime = 0 AND NOT EXISTS"
            " (SELECT 1 FROM posts p WHERE p.job = d.job AND p.day = d.day AND p.status IS NULL) ORDER BY d.day",
            (job,),
        )
        return [dt.date.fromisoformat(day) for (day,) in rows]

    def open_days(self, job: str) -> list[dt.date]:
        rows = self._db.execute("SELECT day FROM days WHERE job = ? ORDER BY day", (job,))
        return [dt.date.fromisoformat(day) for (day,) in rows]

    def hand_to_realtime(self, job: str, days: Iterable[dt.date]) -> None:
        """These days are no longer sent in batches; a realtime run will write them (and forget them)."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("UPDATE days SET realtime = 1 WHERE job = ? AND day = ?", [(job, d.isoformat()) for d in days])

    def realtime_days(self, job: str) -> list[tuple[dt.date, str]]:
        """(day, when it was queued) of the days waiting for a realtime run."""
        rows = self._db.execute("SELECT day, queued_at FROM days WHERE job = ? AND realtime = 1 ORDER BY day", (job,))
        return [(dt.date.fromisoformat(day), queued_at) for day, queued_at in rows]

    def day_may_live_on(self, job: str, day: dt.date) -> list[dt.date] | None:
        """The days the queued day's posts can have target rows on (None: unknown, any day)."""
        row = self._db.execute("SELECT may_live_on FROM days WHERE job = ? AND day = ?", (job, day.isoformat())).fetchone()
        return [dt.date.fromisoformat(d) for d in json.loads(row[0])] if row and row[0] is not None else None

    def day_posts(self, job: str, day: dt.date, response_model: type[BaseModel]) -> list[QueuedPost]:
        rows = self._db.execute(
            "SELECT post_key, update_time, input_hash, truncated, fields, attempts, status, response, error FROM posts"
            " WHERE job = ? AND day = ? ORDER BY post_key",
            (job, day.isoformat()),
        )
        return [
            QueuedPost(day, json.loads(key), dt.datetime.fromisoformat(t) if t else None, h, bool(cut), json.loads(fields),
                       attempts, _result(status, response, error, response_model))
            for key, t, h, cut, fields, attempts, status, response, error in rows
        ]

    def forget_days(self, job: str, days: Iterable[dt.date]) -> None:
        """The days were written to the target: their queue entries go (late batch answers are ignored)."""
        keys = [(job, d.isoformat()) for d in days]
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("DELETE FROM posts WHERE job = ? AND day = ?", keys)
            self._db.executemany("DELETE FROM days WHERE job = ? AND day = ?", keys)

    # -- batches --------------------------------------------------------------------------------

    def update_batch(self, batch_id: str, status: str, output_file_id: str | None, error_file_id: str | None,
                     completed: int, failed: int) -> None:
        self._db.execute(
            "UPDATE batches SET status = ?, output_file_id = ?, error_file_id = ?, completed = ?, failed = ? WHERE batch_id = ?",
            (status, output_file_id, error_file_id, completed, failed, batch_id),
        )

    def close_batch(self, batch_id: str, note: str | None = None) -> None:
        """Its answers are collected (or its posts released): the batch is no longer polled."""
        self._db.execute("UPDATE batches SET closed_at = ?, note = ? WHERE batch_id = ?", (_now(), note, batch_id))

    def open_batches(self, job: str) -> list[BatchRecord]:
        """Batches not yet collected: still running, or final but not yet read."""
        rows = self._db.execute(
            "SELECT batch_id, job, status, input_file_id, output_file_id, error_file_id, requests, submitted_at"
            " FROM batches WHERE job = ? AND closed_at IS NULL ORDER BY submitted_at",
            (job,),
        )
        return [BatchRecord(*row[:7], dt.datetime.fromisoformat(row[7])) for row in rows]

    def batches(self, job: str) -> list[dict[str, Any]]:
        cursor = self._db.execute("SELECT * FROM batches WHERE job = ? ORDER BY submitted_at", (job,))
        names = [c[0] for c in cursor.description]
        return [dict(zip(names, row)) for row in cursor]


def _result_columns(result: ScoreResult | None) -> tuple[str | None, str | None, str | None]:
    if result is None:
        return None, None, None
    return result.status, result.response.model_dump_json() if result.response is not None else None, result.error


def _result(status: str | None, response: str | None, error: str | None, model: type[BaseModel]) -> ScoreResult | None:
    if status is None:
        return None
    return ScoreResult(status, model.model_validate_json(response) if response is not None else None, error)  # type: ignore[arg-type]
