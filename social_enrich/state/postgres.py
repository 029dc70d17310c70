"""The deployment backend: PostgreSQL, shared by every host (it can be Dagster's run-storage server).

The tables live in their own schema, ``social_enrich``, so they share a database with anything else
(Dagster's tables included) without a clash. Connections are in autocommit; a write is one explicit
transaction that first takes a transaction-scoped advisory lock on its name (the job), so the
read-then-write transactions of one job run one at a time on every host, and never deadlock on rows.
The batch store's submit lock is a session-level advisory lock: the server drops it when the
process, or its connection, ends. The URL's password is never shown: :func:`redact_url`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from social_enrich.state.store import StateStore, StateStoreError

SCHEMA = "social_enrich"
SCHEMES = ("postgresql", "postgres")
CONNECT_TIMEOUT_SECONDS = 10
_PAGE_ROWS = 1000  # rows per round trip of execute_many


def redact_url(url: str) -> str:
    """``url`` with its password (in the user part or a ``password=`` parameter) shown as ``***``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, host = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:***@{host}"
    query = re.sub(r"(^|&)password=[^&]*", r"\1password=***", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _secrets(url: str) -> list[str]:
    parts = urlsplit(url)
    found = [parts.password] if parts.password else []
    return found + [v for k, v in parse_qsl(parts.query) if k == "password" and v]


def _scrubbed(message: str, url: str) -> str:
    for secret in _secrets(url):
        message = message.replace(secret, "***")
    return message.strip().replace("\n", " ")


@lru_cache(maxsize=256)
def _dialect(sql: str) -> str:
    # The statements are written with SQLite's ``?``; psycopg2 wants ``%s`` (and a literal % doubled).
    return sql.replace("%", "%%").replace("?", "%s")


def _lock_key(name: str) -> int:
    # Advisory locks take a bigint; the prefix keeps ours apart from any other user of the database.
    return int.from_bytes(hashlib.sha256(f"social_enrich:{name}".encode()).digest()[:8], "big", signed=True)


class PostgresConnection:
    float_type = "DOUBLE PRECISION"

    def __init__(self, url: str) -> None:
        import psycopg2  # only deployments that use PostgreSQL need it

        self._psycopg2 = psycopg2
        self._url = url
        self._held: set[str] = set()
        try:
            self._db = psycopg2.connect(url, connect_timeout=CONNECT_TIMEOUT_SECONDS, application_name="social_enrich")
        except psycopg2.Error as e:
            # from None: the original error can quote the connection string, password included.
            raise StateStoreError(
                f"cannot connect to the state store {redact_url(url)}: {_scrubbed(str(e), url)}; "
                "check $SOCIAL_ENRICH_STATE_URL and that the server accepts connections from this host"
            ) from None
        self._db.autocommit = True
        try:
            self.execute(f"SET search_path TO {SCHEMA}")
        except BaseException:
            self._db.close()
            raise

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._db.cursor() as cursor:
            cursor.execute(_dialect(sql), tuple(params))
            return cursor.fetchall()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        with self._db.cursor() as cursor:
            cursor.execute(_dialect(sql), tuple(params))

    def execute_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        from psycopg2.extras import execute_batch

        with self._db.cursor() as cursor:
            execute_batch(cursor, _dialect(sql), [tuple(row) for row in rows], page_size=_PAGE_ROWS)

    @contextmanager
    def write(self, lock: str) -> Iterator[None]:
        self.execute("BEGIN")
        try:
            self.execute("SELECT pg_advisory_xact_lock(?)", (_lock_key(lock),))
            yield
        except BaseException:
            try:
                self.execute("ROLLBACK")
            except self._psycopg2.Error:
                pass  # the connection is gone: the server rolled back already
            raise
        self.execute("COMMIT")

    def create_schema(self, statements: Sequence[str], columns: Sequence[tuple[str, str, str]] = ()) -> None:
        # Under one lock: concurrent CREATE ... IF NOT EXISTS can still collide in PostgreSQL's catalog.
        with self.write("schema"):
            self.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
            for statement in statements:
                self.execute(statement)
            for table, column, kind in columns:
                self.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {kind}")

    def table_exists(self, table: str) -> bool:
        return self.query("SELECT to_regclass(?) IS NOT NULL", (f"{SCHEMA}.{table}",))[0][0]

    def try_lock(self, name: str) -> bool:
        if name in self._held:
            return True  # session locks stack in PostgreSQL: take each once
        if self.query("SELECT pg_try_advisory_lock(?)", (_lock_key(name),))[0][0]:
            self._held.add(name)
            return True
        return False

    def unlock(self, name: str) -> None:
        if name in self._held:
            self._held.discard(name)
            self.execute("SELECT pg_advisory_unlock(?)", (_lock_key(name),))

    def close(self) -> None:
        try:
            for name in list(self._held):
                self.unlock(name)
        except self._psycopg2.Error:
            pass  # the server releases a closed session's locks anyway
        finally:
            self._db.close()


class PostgresState(StateStore):
    """Both stores in the ``social_enrich`` schema of the database the URL names."""

    def __init__(self, url: str) -> None:
        if urlsplit(url).scheme not in SCHEMES:
            raise StateStoreError(f"not a PostgreSQL URL: {redact_url(url)} (expected postgresql://user:password@host:5432/database)")
        self._url = url

    @property
    def url(self) -> str:
        """The URL without its password: for logs and messages."""
        return redact_url(self._url)

    def batch_store_exists(self) -> bool:
        connection = PostgresConnection(self._url)
        try:
            return connection.table_exists("days")
        finally:
            connection.close()

    def _connect(self, which: str) -> PostgresConnection:
        return PostgresConnection(self._url)

    def shared_locks(self) -> PostgresConnection:
        return PostgresConnection(self._url)

    def __repr__(self) -> str:
        return f"PostgresState({self.url!r})"
