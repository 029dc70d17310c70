"""Every model answer, kept by a hash of what produced it, so no post is paid for twice.

The key hashes the model, the prompt version, the response schema and the exact fields sent:
change any of them and the post is scored again. Answers are saved in chunks as they arrive, so
the cache is also the checkpoint of a run that is killed half-way.

Why a key-value table in the state store rather than an Iceberg table: lookups are by key (an
Iceberg scan cannot prune random hashes, so every lookup would read the whole table), and a chunk
commits in milliseconds without leaving a snapshot behind. The state store is SQLite in the state
folder (one host) or PostgreSQL (every host of a deployment): see ``social_enrich/state/``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import TYPE_CHECKING

from pydantic import BaseModel, ValidationError

from social_enrich.inference.provider import ScoreResult

if TYPE_CHECKING:
    from social_enrich.state.store import Connection

CACHED_STATUSES = ("ok", "filtered")  # failed answers are not kept: they are tried again
_QUERY_CHUNK = 500  # keys per IN (...) query, under SQLite's variable limit

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS answers ("
    " key TEXT PRIMARY KEY, status TEXT NOT NULL, response TEXT, error TEXT,"
    " saved_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)",
)
# Both backends: a later answer for a key replaces the earlier one.
_PUT = (
    "INSERT INTO answers (key, status, response, error) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (key) DO UPDATE SET status = excluded.status, response = excluded.response,"
    " error = excluded.error, saved_at = CURRENT_TIMESTAMP"
)


@lru_cache(maxsize=64)
def _schema_text(response_model: type[BaseModel]) -> str:
    # Built once per model class: generating the JSON schema costs about 0.3 ms, once per post otherwise.
    return json.dumps(response_model.model_json_schema(), sort_keys=True)


def cache_key(model: str, prompt_version: str, response_model: type[BaseModel], input_hash: str) -> str:
    schema = _schema_text(response_model)
    return hashlib.sha256("\x1f".join((model, prompt_version, schema, input_hash)).encode()).hexdigest()


class ResponseCache:
    """``fill_on_miss``: answers kept elsewhere (the target table), loaded into the cache once, the
    first time a lookup misses: a warm cache never pays for reading them."""

    def __init__(self, db: Connection, fill_on_miss: Callable[[], Iterable[tuple[str, ScoreResult]]] | None = None) -> None:
        self._db = db
        self._fill_on_miss = fill_on_miss
        try:
            db.create_schema(_SCHEMA)
        except BaseException:
            db.close()
            raise

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get_many(self, keys: list[str], response_model: type[BaseModel]) -> dict[str, ScoreResult]:
        keys = list(dict.fromkeys(keys))  # a key asked twice is one answer: duplicates are no miss
        found = self._get_many(keys, response_model)
        if len(found) < len(keys) and self._fill_on_miss is not None:
            fill, self._fill_on_miss = self._fill_on_miss, None  # once
            self.put_many(fill())
            found |= self._get_many([key for key in keys if key not in found], response_model)
        return found

    def _get_many(self, keys: list[str], response_model: type[BaseModel]) -> dict[str, ScoreResult]:
        found: dict[str, ScoreResult] = {}
        for start in range(0, len(keys), _QUERY_CHUNK):
            chunk = keys[start : start + _QUERY_CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self._db.query(f"SELECT key, status, response, error FROM answers WHERE key IN ({marks})", chunk)
            for key, status, response, error in rows:
                try:
                    parsed = response_model.model_validate_json(response) if response is not None else None
                except ValidationError:
                    continue  # written by an older model class: score again
                found[key] = ScoreResult(status, parsed, error)
        return found

    def put_many(self, items: Iterable[tuple[str, ScoreResult]]) -> int:
        rows = {
            key: (key, r.status, r.response.model_dump_json() if r.response is not None else None, r.error)
            for key, r in items
            if r.status in CACHED_STATUSES
        }
        if not rows:
            return 0
        # One row per key (the last answer), in key order: writers that overlap lock rows in one order.
        with self._db.write("response_cache"):
            self._db.execute_many(_PUT, [rows[key] for key in sorted(rows)])
        return len(rows)


class Checkpoint:
    """Saves answers to the cache every ``every`` results, so a killed run loses one chunk at most."""

    def __init__(self, cache: ResponseCache, every: int) -> None:
        self.cache, self.every = cache, every
        self.pending: list[tuple[str, ScoreResult]] = []

    def add(self, key: str, result: ScoreResult) -> None:
        self.pending.append((key, result))
        if len(self.pending) >= self.every:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.cache.put_many(self.pending)
            self.pending = []
