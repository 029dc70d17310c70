"""The one interface to social_enrich's shared state: the response cache and the batch store.

A :class:`StateStore` is a plain object, cheap to build: it opens nothing until a cache or a batch
store is asked for, and each of those holds its own connection (close it, or use ``with``). The two
backends (``sqlite.py``, ``postgres.py``) differ only in their :class:`Connection`; the SQL of the
cache and the store is written once, with ``?`` placeholders.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from social_enrich.errors import SocialEnrichError
from social_enrich.inference.provider import ScoreResult
from social_enrich.state.batch_store import BatchStore
from social_enrich.state.response_cache import ResponseCache


class StateStoreError(SocialEnrichError):
    """The state store cannot be used (a bad $SOCIAL_ENRICH_STATE_URL, an unreachable server)."""


class Connection(Protocol):
    """What the cache and the batch store need from a database; ``?`` placeholders in every statement."""

    float_type: str  # the DDL type of a double-precision column

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None: ...

    def execute_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...

    def write(self, lock: str) -> AbstractContextManager[None]:
        """One write transaction, serialized with every other write under the same ``lock`` name."""
        ...

    def create_schema(self, statements: Sequence[str], columns: Sequence[tuple[str, str, str]] = ()) -> None:
        """Run ``CREATE ... IF NOT EXISTS`` statements, then add (table, column, type) where missing."""
        ...

    def try_lock(self, name: str) -> bool:
        """Take a lock held until :meth:`unlock` or until this process or connection ends; False if held elsewhere."""
        ...

    def unlock(self, name: str) -> None: ...

    def close(self) -> None: ...


class StateStore(abc.ABC):
    """Where the response cache and the batch store live; see :func:`social_enrich.state.open_state_store`."""

    def response_cache(self, fill_on_miss: Callable[[], Iterable[tuple[str, ScoreResult]]] | None = None) -> ResponseCache:
        return ResponseCache(self._connect("cache"), fill_on_miss)

    def batch_store(self) -> BatchStore:
        return BatchStore(self._connect("batches"))

    @abc.abstractmethod
    def batch_store_exists(self) -> bool:
        """Whether a batch store was ever created here; looking creates nothing."""

    def has_batch_work(self, job: str) -> bool:
        """Days queued or batches open for ``job``; a store that does not exist is not created to look."""
        if not self.batch_store_exists():
            return False
        with self.batch_store() as store:
            return bool(store.open_days(job) or store.open_batches(job) or store.unrecorded_intents(job))

    def shared_locks(self) -> Connection | None:
        """A session whose ``try_lock`` locks hold on every host that shares this store (closing it
        releases them), or None when the store is one host's (SQLite) and file locks do."""
        return None

    @abc.abstractmethod
    def _connect(self, which: str) -> Connection:
        """A new connection to the database of ``which``: "cache" or "batches"."""

    @abc.abstractmethod
    def __repr__(self) -> str:
        """Where the state lives, never with a password."""

