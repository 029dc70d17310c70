"""social_enrich's shared state: the response cache and the batch store, behind one interface.

``open_state_store(url)`` picks the backend from ``$SOCIAL_ENRICH_STATE_URL`` (see
``environment.state_url``): empty means SQLite files in the state folder, for one host (the
embedded default); ``postgresql://user:password@host:5432/database`` means PostgreSQL, for a
deployment whose runs and sensors are on several hosts (SQLite's WAL does not work over EFS or NFS).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from social_enrich.state.batch_store import BatchStore, QueuedPost
from social_enrich.state.response_cache import CACHED_STATUSES, Checkpoint, ResponseCache, cache_key
from social_enrich.state.store import StateStore, StateStoreError

__all__ = [
    "CACHED_STATUSES", "BatchStore", "Checkpoint", "QueuedPost", "ResponseCache", "StateStore", "StateStoreError",
    "cache_key", "open_state_store",
]  # fmt: skip


def open_state_store(url: str | None) -> StateStore:
    """The state store ``url`` names; None or "" is SQLite in ``environment.state_dir()``. Opens nothing yet."""
    from social_enrich.state.postgres import SCHEMES, PostgresState, redact_url
    from social_enrich.state.sqlite import SQLiteState

    if not url:
        from social_enrich.environment import batch_store_path, response_cache_path

        return SQLiteState(response_cache_path(), batch_store_path())
    if urlsplit(url).scheme in SCHEMES:
        return PostgresState(url)
    raise StateStoreError(
        f"unsupported state store URL {redact_url(url)} in $SOCIAL_ENRICH_STATE_URL: set it to "
        "postgresql://user:password@host:5432/database, or leave it empty for SQLite in the state folder"
    )
