"""Where social_enrich keeps its state, resolved lazily from the environment.

Pure functions, called at run time and never at import time, so tests can point
them elsewhere with ``monkeypatch.setenv`` alone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from social_enrich.state import StateStore

STATE_DIR_VAR = "SOCIAL_ENRICH_HOME"
JOBS_DIR_VAR = "SOCIAL_ENRICH_JOBS_DIR"
STATE_URL_VAR = "SOCIAL_ENRICH_STATE_URL"
DEFAULT_STATE_DIR = ".social_enrich"

BUILTIN_JOBS_DIR = Path(__file__).parent / "jobs"


def state_dir() -> Path:
    """The one folder that holds the embedded catalog, warehouse and Dagster home."""
    return Path(os.environ.get(STATE_DIR_VAR) or DEFAULT_STATE_DIR).expanduser().resolve()


def embedded_catalog_properties() -> dict[str, str]:
    """pyiceberg properties of the embedded default: a SQL catalog on SQLite."""
    root = state_dir()
    return {
        "type": "sql",
        "uri": f"sqlite:///{root / 'catalog.db'}",
        "warehouse": (root / "warehouse").as_uri(),
    }


def response_cache_path() -> Path:
    """The SQLite file that keeps every paid model answer, on the SQLite backend (see state/response_cache.py)."""
    return state_dir() / "response_cache.sqlite3"


def batch_store_path() -> Path:
    """The SQLite file that records Batch API work in flight, on the SQLite backend (see state/batch_store.py)."""
    return state_dir() / "batches.sqlite3"


def jobs_dirs() -> list[Path]:
    """Folders of job YAML files: the built-in jobs, then any listed in SOCIAL_ENRICH_JOBS_DIR."""
    extra = [Path(p) for p in os.environ.get(JOBS_DIR_VAR, "").split(os.pathsep) if p]
    return [BUILTIN_JOBS_DIR, *extra]


def state_url() -> str:
    """Where the response cache and batch store live: ``$SOCIAL_ENRICH_STATE_URL``; empty means
    SQLite files in the state folder (one host), ``postgresql://...`` a shared server (see social_enrich/state)."""
    return os.environ.get(STATE_URL_VAR, "").strip()


def default_state_store() -> StateStore:
    """The state store of this environment; cheap: it connects only when a store is opened."""
    from social_enrich.state import open_state_store  # at run time: importing this module stays light

    return open_state_store(state_url())
