"""The durable record of Batch API work: days queued, their posts and answers, batches and requests.

In the state store, like the response cache: the asset runs that submit and collect, and the sensor
that polls, are different processes (and ticks, and on a deployment hosts), and nothing may be lost between
them. Every change is one transaction, so a crash leaves either the old or the new state.

No batch is paid twice. Posts are claimed for a batch in one write transaction (:meth:`BatchStore.claim`)
that records a submission *intent* (its id and the posts of each request) before anything is
uploaded; the intent id goes to Azure as the batch's metadata, so a process that crashed between
creating the batch and recording it leaves an intent the next submitter looks up at Azure and adopts
(``batch_enrichment.send_unsent``). Submitting holds the job's submit lock (:meth:`BatchStore.submitting`),
so an intent is only ever resumed by one process, and never while its submitter is alive.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from social_enrich.inference.provider import ScoreResult
from social_enrich.inference.usage import Usage

if TYPE_CHECKING:
    from social_enrich.state.store import Connection

T = TypeVar("T")

# Azure's statuses; the last four are final.
OPEN_STATUSES = ("validating", "in_progress", "finalizing", "cancelling")
FINAL_STATUSES = ("completed", "failed", "expired", "cancelled")

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS days (
    job TEXT NOT NULL, day TEXT NOT NULL, posts INTEGER NOT NULL, queued_at TEXT NOT NULL,
    realtime INTEGER NOT NULL DEFAULT 0,  -- handed to a realtime run, which forgets the day when done
    may_live_on TEXT,  -- JSON list of the days the posts' target rows can be on now; NULL: any day
    submitted TEXT,  -- JSON: what the submitting run read (its days, rows read), for the day's materialization
    PRIMARY KEY (job, day))""",
    # custom_id set and batch_id NULL: claimed by the intent_id, not yet (known to be) at Azure.
    """CREATE TABLE IF NOT EXISTS posts (
    job TEXT NOT NULL, day TEXT NOT NULL, post_key TEXT NOT NULL, update_time TEXT, input_hash TEXT NOT NULL,
    truncated INTEGER NOT NULL, fields TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    custom_id TEXT, batch_id TEXT, pack_position INTEGER, status TEXT, response TEXT, error TEXT,
    prompt_tokens {float} NOT NULL DEFAULT 0, completion_tokens {float} NOT NULL DEFAULT 0,
    cached_tokens {float} NOT NULL DEFAULT 0, intent_id TEXT, requests {float} NOT NULL DEFAULT 0,
    PRIMARY KEY (job, day, post_key))""",
    "CREATE INDEX IF NOT EXISTS posts_by_request ON posts (custom_id)",
    """CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT PRIMARY KEY, job TEXT NOT NULL, status TEXT NOT NULL, input_file_id TEXT NOT NULL,
    output_file_id TEXT, error_file_id TEXT, requests INTEGER NOT NULL, completed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0, submitted_at TEXT NOT NULL, closed_at TEXT, note TEXT)""",
    # A batch about to be created: gone once the batch is recorded (or found at Azure and adopted).
    """CREATE TABLE IF NOT EXISTS intents (
    intent_id TEXT PRIMARY KEY, job TEXT NOT NULL, requests INTEGER NOT NULL, created_at TEXT NOT NULL)""",
)
# Columns added since the first stores were written: (table, column, type).
# A batch's deployment (NULL: the provider's first, as before pools) and its tokens, which count against that
# deployment's enqueued-token quota until the batch is final.
_ADDED_COLUMNS = (("days", "may_live_on", "TEXT"), ("posts", "intent_id", "TEXT"), ("days", "submitted", "TEXT"),
                  ("posts", "requests", "{float} NOT NULL DEFAULT 0"), ("batches", "deployment", "TEXT"),
                  ("batches", "tokens", "{float} NOT NULL DEFAULT 0"))
_BATCH_COLUMNS = ("batch_id", "job", "status", "input_file_id", "output_file_id", "error_file_id", "requests",
                  "completed", "failed", "submitted_at", "closed_at", "note")
_POST_COLUMNS = "day, post_key, update_time, input_hash, truncated, fields, attempts"


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
    deployment: str | None = None  # None: the provider's first deployment


@dataclass(frozen=True)
class Intent:
    """A batch claimed for, and maybe created at Azure, but not recorded: its id is the batch's metadata."""

    intent_id: str
    job: str
    requests: int
    created_at: dt.datetime


def new_intent_id() -> str:
    return f"intent-{uuid.uuid4().hex}"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


class BatchStore:
    def __init__(self, db: Connection) -> None:
        self._db = db
        try:
            db.create_schema([statement.format(float=db.float_type) for statement in _SCHEMA],
                             [(table, column, kind.format(float=db.float_type)) for table, column, kind in _ADDED_COLUMNS])
        except BaseException:
            db.close()
            raise

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> BatchStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- days and posts -------------------------------------------------------------------------

    def queue_days(
        self, job: str, days: Sequence[dt.date], posts: Iterable[QueuedPost], may_live_on: Iterable[dt.date] | None = None,
        submitted: dict[str, Any] | None = None,
    ) -> None:
        """Replace whatever was queued for these days with ``posts`` (a re-submitted day starts over).
        ``may_live_on``: the days the posts' rows can be on in the target now (None: any day), so that
        writing a day reads only those partitions. ``submitted``: what the submitting run read, reported
        with each day when it is written (:meth:`day_submitted`)."""
        where = json.dumps(sorted(d.isoformat() for d in may_live_on)) if may_live_on is not None else None
        rows = [
            (job, p.day.isoformat(), json.dumps(p.key), p.update_time.isoformat() if p.update_time else None,
             p.input_hash, int(p.truncated), json.dumps(p.fields, default=str, ensure_ascii=False), *_result_columns(p.result))
            for p in posts
        ]
        counts = {d.isoformat(): 0 for d in days}
        for row in rows:
            counts[row[1]] += 1
        with self._db.write(f"batches:{job}"):
            for day, n in counts.items():
                self._db.execute("DELETE FROM posts WHERE job = ? AND day = ?", (job, day))
                self._db.execute(
                    "INSERT INTO days (job, day, posts, queued_at, may_live_on, submitted) VALUES (?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (job, day) DO UPDATE SET posts = excluded.posts, queued_at = excluded.queued_at,"
                    " realtime = 0, may_live_on = excluded.may_live_on, submitted = excluded.submitted",
                    (job, day, n, _now(), where, json.dumps(submitted, default=str) if submitted is not None else None),
                )
            self._db.execute_many(
                "INSERT INTO posts (job, day, post_key, update_time, input_hash, truncated, fields, status, response, error)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def unsent(self, job: str) -> list[QueuedPost]:
        """Posts with no answer and in no open request or intent: to submit."""
        return self._unsent(job)

    def _unsent(self, job: str) -> list[QueuedPost]:
        rows = self._db.query(
            f"SELECT {_POST_COLUMNS} FROM posts"
            " WHERE job = ? AND status IS NULL AND custom_id IS NULL"
            " AND day NOT IN (SELECT day FROM days WHERE job = ? AND realtime = 1) ORDER BY day, post_key",
            (job, job),
        )
        return [_queued(*row) for row in rows]

    # -- submitting: the lock, intents, batches ----------------------------------------------------

    def submitting(self, job: str, wait_seconds: float) -> AbstractContextManager[bool]:
        """Hold the job's submit lock for the block: True, or False when another process held it for
        all of ``wait_seconds``. Released when the block ends, or when this process ends however it ends."""
        return self._holding(f"submit:{job}", wait_seconds)

    def collecting(self, job: str, wait_seconds: float) -> AbstractContextManager[bool]:
        """Hold the job's collect lock for the block (like :meth:`submitting`): one process at a time reads
        the job's finished batches, so no batch is read twice at once."""
        return self._holding(f"collect:{job}", wait_seconds)

    @contextmanager
    def _holding(self, name: str, wait_seconds: float) -> Iterator[bool]:
        deadline = time.monotonic() + wait_seconds
        while not self._db.try_lock(name):
            if time.monotonic() >= deadline:
                yield False
                return
            time.sleep(min(0.1, max(deadline - time.monotonic(), 0.0)))
        try:
            yield True
        finally:
            self._db.unlock(name)

    def claim(self, job: str, plan: Callable[[list[QueuedPost]], Sequence[tuple[T, dict[str, list[QueuedPost]]]]]
              ) -> list[tuple[Intent, T]]:
        """In one write transaction: read the unsent posts, let ``plan`` split them into batches
        (each: what to upload, and its requests by custom_id with their posts in pack order), and
        record an intent per batch that claims its posts. Two submitters never claim one post."""
        claimed = []
        with self._db.write(f"batches:{job}"):
            for payload, requests in plan(self._unsent(job)):
                intent = Intent(new_intent_id(), job, len(requests), dt.datetime.now(dt.timezone.utc))
                self._db.execute("INSERT INTO intents (intent_id, job, requests, created_at) VALUES (?, ?, ?, ?)",
                                 (intent.intent_id, job, intent.requests, intent.created_at.isoformat()))
                self._db.execute_many(
                    "UPDATE posts SET custom_id = ?, intent_id = ?, pack_position = ?"
                    " WHERE job = ? AND day = ? AND post_key = ? AND custom_id IS NULL AND status IS NULL",
                    [(cid, intent.intent_id, n, job, p.day.isoformat(), json.dumps(p.key))
                     for cid, posts in requests.items() for n, p in enumerate(posts)],
                )
                claimed.append((intent, payload))
        return claimed

    def unrecorded_intents(self, job: str) -> list[Intent]:
        """Intents whose batch was never recorded: their submitter died, or failed, before it could."""
        rows = self._db.query("SELECT intent_id, job, requests, created_at FROM intents WHERE job = ? ORDER BY created_at", (job,))
        return [Intent(i, j, n, dt.datetime.fromisoformat(at)) for i, j, n, at in rows]

    def intent_requests(self, job: str, intent_id: str) -> dict[str, list[QueuedPost]]:
        """The unanswered posts an intent claimed, by custom_id, in pack order."""
        return self._requests(job, "intent_id", intent_id)

    def drop_intent(self, job: str, intent_id: str) -> None:
        """No batch was created for the intent and none will be: its posts are unsent again."""
        with self._db.write(f"batches:{job}"):
            self._db.execute("UPDATE posts SET custom_id = NULL, intent_id = NULL WHERE job = ? AND intent_id = ? AND batch_id IS NULL",
                             (job, intent_id))
            self._db.execute("DELETE FROM intents WHERE job = ? AND intent_id = ?", (job, intent_id))

    def record_batch(self, job: str, intent_id: str, batch_id: str, status: str, input_file_id: str,
                     deployment: str | None = None, tokens: int = 0) -> None:
        """The intent's batch exists at Azure (on ``deployment``, ``tokens`` enqueued): its posts now wait
        for it. One transaction."""
        with self._db.write(f"batches:{job}"):
            (requests,) = self._db.query("SELECT COUNT(DISTINCT custom_id) FROM posts WHERE job = ? AND intent_id = ?",
                                         (job, intent_id))[0]
            self._db.execute(
                "INSERT INTO batches (batch_id, job, status, input_file_id, requests, submitted_at, deployment, tokens)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (batch_id, job, status, input_file_id, requests, _now(), deployment, tokens),
            )
            self._db.execute(
                "UPDATE posts SET batch_id = ?, intent_id = NULL, attempts = attempts + 1 WHERE job = ? AND intent_id = ?",
                (batch_id, job, intent_id),
            )
            self._db.execute("DELETE FROM intents WHERE job = ? AND intent_id = ?", (job, intent_id))

    def batch_requests(self, job: str, batch_id: str) -> dict[str, list[QueuedPost]]:
        """The unanswered posts of a batch by custom_id, in pack order (the ids inside each request)."""
        return self._requests(job, "batch_id", batch_id)

    def _requests(self, job: str, column: str, value: str) -> dict[str, list[QueuedPost]]:
        rows = self._db.query(
            f"SELECT custom_id, {_POST_COLUMNS} FROM posts"
            f" WHERE job = ? AND {column} = ? AND status IS NULL ORDER BY custom_id, pack_position",
            (job, value),
        )
        requests: dict[str, list[QueuedPost]] = {}
        for cid, *post in rows:
            requests.setdefault(cid, []).append(_queued(*post))
        return requests

    # -- answers ----------------------------------------------------------------------------------

    def settle(self, job: str, answers: Sequence[tuple[QueuedPost, ScoreResult, Usage]]) -> None:
        """Store answers, each with its share of its request's tokens."""
        if answers:
            with self._db.write(f"batches:{job}"):
                self._settle(job, answers)

    def _settle(self, job: str, answers: Sequence[tuple[QueuedPost, ScoreResult, Usage]]) -> None:
        self._db.execute_many(
            "UPDATE posts SET status = ?, response = ?, error = ?, custom_id = NULL, batch_id = NULL, intent_id = NULL,"
            " prompt_tokens = ?, completion_tokens = ?, cached_tokens = ?, requests = ? WHERE job = ? AND day = ? AND post_key = ?",
            [(*_result_columns(r), u.prompt_tokens, u.completion_tokens, u.cached_tokens, u.requests, job, p.day.isoformat(),
              json.dumps(p.key)) for p, r, u in answers],
        )

    def release(self, job: str, posts: Sequence[QueuedPost]) -> None:
        """Take posts out of their request, unanswered, so they are sent again."""
        if posts:
            with self._db.write(f"batches:{job}"):
                self._release(job, posts)

    def _release(self, job: str, posts: Sequence[QueuedPost], batch_id: str | None = None) -> None:
        # With batch_id: only the posts still waiting for that batch (not any sent again since).
        self._db.execute_many(
            "UPDATE posts SET custom_id = NULL, batch_id = NULL, intent_id = NULL"
            " WHERE job = ? AND day = ? AND post_key = ? AND status IS NULL" + (" AND batch_id = ?" if batch_id else ""),
            [(job, p.day.isoformat(), json.dumps(p.key), *((batch_id,) if batch_id else ())) for p in posts],
        )

    def collect(self, job: str, batch_id: str, answers: Sequence[tuple[QueuedPost, ScoreResult, Usage]],
                again: Sequence[QueuedPost], note: str) -> None:
        """A finished batch read: its answers stored, the posts it did not answer released, and the batch
        closed, in one transaction. A collect that dies before it leaves the batch as it was, to read again."""
        with self._db.write(f"batches:{job}"):
            if answers:
                self._settle(job, answers)
            if again:
                self._release(job, again, batch_id)
            self._db.execute("UPDATE batches SET closed_at = ?, note = ? WHERE batch_id = ?", (_now(), note, batch_id))

    def day_usage(self, job: str, day: dt.date) -> Usage:
        row = self._db.query(
            "SELECT SUM(prompt_tokens), SUM(completion_tokens), SUM(cached_tokens), SUM(requests) FROM posts WHERE job = ? AND day = ?",
            (job, day.isoformat()),
        )[0]
        return Usage(prompt_tokens=round(row[0] or 0), completion_tokens=round(row[1] or 0), cached_tokens=round(row[2] or 0),
                     requests=round(row[3] or 0))

    def day_submitted(self, job: str, day: dt.date) -> dict[str, Any]:
        """What the run that submitted the day read (:meth:`queue_days`); empty for a store from before."""
        rows = self._db.query("SELECT submitted FROM days WHERE job = ? AND day = ?", (job, day.isoformat()))
        return json.loads(rows[0][0]) if rows and rows[0][0] else {}

    def queued_days(self, job: str) -> dict[dt.date, str]:
        """Every queued day (realtime ones too), with when it was queued."""
        rows = self._db.query("SELECT day, queued_at FROM days WHERE job = ? ORDER BY day", (job,))
        return {dt.date.fromisoformat(day): queued_at for day, queued_at in rows}

    def batch_days(self, job: str, batch_id: str) -> list[dt.date]:
        """The days with posts waiting for the batch's answers."""
        rows = self._db.query("SELECT DISTINCT day FROM posts WHERE job = ? AND batch_id = ? AND status IS NULL ORDER BY day",
                              (job, batch_id))
        return [dt.date.fromisoformat(day) for (day,) in rows]

    def unsent_days(self, job: str) -> list[dt.date]:
        """Days with posts to submit (unsent, or claimed by an intent whose batch was never recorded)."""
        rows = self._db.query(
            "SELECT DISTINCT day FROM posts WHERE job = ? AND status IS NULL AND batch_id IS NULL"
            " AND day NOT IN (SELECT day FROM days WHERE job = ? AND realtime = 1) ORDER BY day",
            (job, job),
        )
        return [dt.date.fromisoformat(day) for (day,) in rows]

    def complete_days(self, job: str) -> list[dt.date]:
        """Days whose every post has an answer (or that have no posts)."""
        rows = self._db.query(
            "SELECT d.day FROM days d WHERE d.job = ? AND d.realtime = 0 AND NOT EXISTS"
            " (SELECT 1 FROM posts p WHERE p.job = d.job AND p.day = d.day AND p.status IS NULL) ORDER BY d.day",
            (job,),
        )
        return [dt.date.fromisoformat(day) for (day,) in rows]

    def open_days(self, job: str) -> list[dt.date]:
        rows = self._db.query("SELECT day FROM days WHERE job = ? ORDER BY day", (job,))
        return [dt.date.fromisoformat(day) for (day,) in rows]

    def hand_to_realtime(self, job: str, days: Iterable[dt.date]) -> None:
        """These days are no longer sent in batches; a realtime run will write them (and forget them)."""
        with self._db.write(f"batches:{job}"):
            self._db.execute_many("UPDATE days SET realtime = 1 WHERE job = ? AND day = ?", [(job, d.isoformat()) for d in days])

    def realtime_days(self, job: str) -> list[tuple[dt.date, str]]:
        """(day, when it was queued) of the days waiting for a realtime run."""
        rows = self._db.query("SELECT day, queued_at FROM days WHERE job = ? AND realtime = 1 ORDER BY day", (job,))
        return [(dt.date.fromisoformat(day), queued_at) for day, queued_at in rows]

    def day_may_live_on(self, job: str, day: dt.date) -> list[dt.date] | None:
        """The days the queued day's posts can have target rows on (None: unknown, any day)."""
        rows = self._db.query("SELECT may_live_on FROM days WHERE job = ? AND day = ?", (job, day.isoformat()))
        return [dt.date.fromisoformat(d) for d in json.loads(rows[0][0])] if rows and rows[0][0] is not None else None

    def day_posts(self, job: str, day: dt.date, response_model: type[BaseModel]) -> list[QueuedPost]:
        rows = self._db.query(
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
        with self._db.write(f"batches:{job}"):
            self._db.execute_many("DELETE FROM posts WHERE job = ? AND day = ?", keys)
            self._db.execute_many("DELETE FROM days WHERE job = ? AND day = ?", keys)

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
        rows = self._db.query(
            "SELECT batch_id, job, status, input_file_id, output_file_id, error_file_id, requests, submitted_at, deployment"
            " FROM batches WHERE job = ? AND closed_at IS NULL ORDER BY submitted_at",
            (job,),
        )
        return [BatchRecord(*row[:7], dt.datetime.fromisoformat(row[7]), row[8]) for row in rows]

    def enqueued_tokens(self) -> dict[str | None, int]:
        """Per deployment (None: a provider's first), the tokens of every job's batches not yet final, as last
        seen: what Azure counts against the deployment's enqueued-token quota."""
        marks = ", ".join("?" * len(OPEN_STATUSES))
        rows = self._db.query(
            f"SELECT deployment, SUM(tokens) FROM batches WHERE closed_at IS NULL AND status IN ({marks}) GROUP BY deployment",
            OPEN_STATUSES,
        )
        return {deployment: round(tokens or 0) for deployment, tokens in rows}

    def batches(self, job: str) -> list[dict[str, Any]]:
        rows = self._db.query(f"SELECT {', '.join(_BATCH_COLUMNS)} FROM batches WHERE job = ? ORDER BY submitted_at", (job,))
        return [dict(zip(_BATCH_COLUMNS, row)) for row in rows]


def _queued(day: str, key: str, update_time: str | None, input_hash: str, truncated: int, fields: str, attempts: int) -> QueuedPost:
    return QueuedPost(dt.date.fromisoformat(day), json.loads(key), dt.datetime.fromisoformat(update_time) if update_time else None,
                      input_hash, bool(truncated), json.loads(fields), attempts)


def _result_columns(result: ScoreResult | None) -> tuple[str | None, str | None, str | None]:
    if result is None:
        return None, None, None
    return result.status, result.response.model_dump_json() if result.response is not None else None, result.error


def _result(status: str | None, response: str | None, error: str | None, model: type[BaseModel]) -> ScoreResult | None:
    if status is None:
        return None
    return ScoreResult(status, model.model_validate_json(response) if response is not None else None, error)  # type: ignore[arg-type]
