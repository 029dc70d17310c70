"""The deployment's environment, in one place: which profile runs, where state lives, which model provider.

Pure functions, called at load or run time and never at import time, so tests can point them
elsewhere with ``monkeypatch.setenv`` alone. No Dagster here: the Lambda handler uses them too;
``social_enrich/resources.py`` turns them into Dagster resources.

Two profiles, named by ``$SOCIAL_ENRICH_ENV``:
- ``local`` (the default): the embedded catalog (unless ``$SOCIAL_ENRICH_CATALOG`` names one) and each
  job's own local model; no network.
- ``production``: the catalog ``$SOCIAL_ENRICH_CATALOG`` names (required: never the embedded one) and
  Azure OpenAI (or ``$SOCIAL_ENRICH_PROVIDER``), configured from the environment; nothing falls back
  to a local model or catalog, so a missing setting fails the load or the run, naming it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from social_enrich.errors import SocialEnrichError

ENVIRONMENT_VAR = "SOCIAL_ENRICH_ENV"
PROFILES = ("local", "production")
PROVIDER_VAR = "SOCIAL_ENRICH_PROVIDER"  # production: a provider name or module:Class (default azure_openai)
PROVIDER_CONFIG_VAR = "SOCIAL_ENRICH_PROVIDER_CONFIG"  # production: the provider's config, as a JSON object
# Where runs execute, unless a job's execution section says: in_process or lambda, the function, the Pipes bucket.
EXECUTION_VAR = "SOCIAL_ENRICH_EXECUTION"
LAMBDA_FUNCTION_VAR = "SOCIAL_ENRICH_LAMBDA_FUNCTION"
PIPES_BUCKET_VAR = "SOCIAL_ENRICH_PIPES_BUCKET"
# Development: jobs with execution.mode lambda run the handler in a local child process, not AWS.
LAMBDA_LOCAL_VAR = "SOCIAL_ENRICH_LAMBDA_LOCAL"
# Azure OpenAI settings of a production deployment, read into the azure_openai provider's config.
AZURE_SETTINGS_VARS = {
    "deployment": "AZURE_OPENAI_DEPLOYMENT",
    "requests_per_minute": "AZURE_OPENAI_RPM",
    "tokens_per_minute": "AZURE_OPENAI_TPM",
}

if TYPE_CHECKING:
    from social_enrich.state import StateStore

# The Iceberg catalog: a JSON object of pyiceberg properties (``name`` is the catalog's name; a value
# {"env": "VAR"} is read from $VAR, so a secret stays out of it), or the name of a catalog configured
# the pyiceberg way (~/.pyiceberg.yaml or PYICEBERG_CATALOG__<NAME>__<PROPERTY> variables).
CATALOG_VAR = "SOCIAL_ENRICH_CATALOG"
WAREHOUSE_VAR = "SOCIAL_ENRICH_WAREHOUSE"  # the catalog's warehouse property, when set
STATE_DIR_VAR = "SOCIAL_ENRICH_HOME"
JOBS_DIR_VAR = "SOCIAL_ENRICH_JOBS_DIR"
STATE_URL_VAR = "SOCIAL_ENRICH_STATE_URL"
DEFAULT_STATE_DIR = ".social_enrich"

# The package's defs folder: one folder per built-in enrichment job (<job>/defs.yaml), and hand-written defs.
BUILTIN_JOBS_DIR = Path(__file__).parent / "defs"


def state_dir() -> Path:
    """The one folder that holds the embedded catalog, warehouse and Dagster home."""
    return Path(os.environ.get(STATE_DIR_VAR) or DEFAULT_STATE_DIR).expanduser().resolve()


def embedded_catalog_properties() -> dict[str, str]:
    """pyiceberg properties of the embedded default: a SQL catalog on SQLite, created on first use."""
    root = state_dir()
    return {
        "type": "sql",
        "uri": f"sqlite:///{root / 'catalog.db'}",
        "warehouse": (root / "warehouse").as_uri(),
        "init_catalog_tables": "true",
    }


def response_cache_path() -> Path:
    """The SQLite file that keeps every paid model answer, on the SQLite backend (see state/response_cache.py)."""
    return state_dir() / "response_cache.sqlite3"


def batch_store_path() -> Path:
    """The SQLite file that records Batch API work in flight, on the SQLite backend (see state/batch_store.py)."""
    return state_dir() / "batches.sqlite3"


def jobs_dirs() -> list[Path]:
    """Folders of jobs: the built-in defs folder, then any listed in SOCIAL_ENRICH_JOBS_DIR."""
    return [BUILTIN_JOBS_DIR, *extra_jobs_dirs()]


def extra_jobs_dirs() -> list[Path]:
    """The folders of job YAMLs (or component folders) in SOCIAL_ENRICH_JOBS_DIR, in order."""
    return [Path(p) for p in os.environ.get(JOBS_DIR_VAR, "").split(os.pathsep) if p]


class EnvironmentConfigError(SocialEnrichError, ValueError):
    """The environment names no profile, or a provider config that cannot be read; the message names the variable."""


def environment_name() -> str:
    """The profile this deployment runs: local or production."""
    name = os.environ.get(ENVIRONMENT_VAR, "").strip() or "local"
    if name not in PROFILES:
        raise EnvironmentConfigError(f"${ENVIRONMENT_VAR} is {name!r}: use one of {', '.join(PROFILES)}")
    return name


def catalog_choice() -> dict[str, Any]:
    """The catalog of this environment as pyiceberg properties (``name`` included, a secret as
    ``{"env": VAR}``). Unset, the local profile uses the embedded SQLite catalog; production must name
    one (``embedded`` chooses the embedded one explicitly, e.g. on a single host)."""
    raw = os.environ.get(CATALOG_VAR, "").strip()
    if not raw and environment_name() == "production":
        raise EnvironmentConfigError(
            f"${ENVIRONMENT_VAR}=production needs a catalog: set ${CATALOG_VAR} to its pyiceberg properties as JSON "
            '(e.g. {"type": "glue"} or {"type": "rest", "uri": "https://...", "credential": {"env": "REST_CREDENTIAL"}}), '
            "to the name of a catalog in ~/.pyiceberg.yaml or PYICEBERG_CATALOG__<NAME>__* variables, or to embedded"
        )
    if not raw or raw == "embedded":
        choice: dict[str, Any] = embedded_catalog_properties()
    elif raw.startswith("{"):
        try:
            choice = json.loads(raw)
        except ValueError as e:
            raise EnvironmentConfigError(f"${CATALOG_VAR} is not JSON: {e}") from None
        for key, value in choice.items():
            if not (isinstance(value, (str, int, float, bool)) or _is_env_reference(value)):
                raise EnvironmentConfigError(
                    f"${CATALOG_VAR}: property {key!r} must be a string or {{\"env\": \"VARIABLE\"}}, got {json.dumps(value)}"
                )
        choice = {k: v if _is_env_reference(v) else str(v).lower() if isinstance(v, bool) else str(v) for k, v in choice.items()}
    else:
        choice = {"name": raw}  # configured the pyiceberg way
    if warehouse := os.environ.get(WAREHOUSE_VAR, "").strip():
        choice["warehouse"] = warehouse
    return choice


def _is_env_reference(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"env"} and isinstance(value["env"], str)


def resolved_catalog_properties(choice: dict[str, Any]) -> dict[str, str]:
    """``catalog_choice()`` with each {"env": VAR} read from the environment (outside Dagster: Lambda, the CLI)."""
    resolved = {}
    for key, value in choice.items():
        if _is_env_reference(value):
            if value["env"] not in os.environ:
                raise EnvironmentConfigError(f"${CATALOG_VAR}: property {key!r} is read from ${value['env']}, which is not set")
            value = os.environ[value["env"]]
        resolved[key] = value
    return resolved


def provider_choice() -> tuple[str, dict[str, Any]]:
    """The model provider of this environment and its config: (name or module:Class, config)."""
    if environment_name() == "local":
        return "local", {}
    name = os.environ.get(PROVIDER_VAR, "").strip() or "azure_openai"
    raw = os.environ.get(PROVIDER_CONFIG_VAR, "").strip() or "{}"
    try:
        config = json.loads(raw)
    except ValueError as e:
        raise EnvironmentConfigError(f"${PROVIDER_CONFIG_VAR} is not JSON: {e}") from None
    if not isinstance(config, dict):
        raise EnvironmentConfigError(f"${PROVIDER_CONFIG_VAR} must be a JSON object, got {type(config).__name__}")
    if name == "azure_openai":
        from_env = {field: os.environ[var] for field, var in AZURE_SETTINGS_VARS.items() if os.environ.get(var)}
        config = {**from_env, **config}
    return name, config


def state_url() -> str:
    """Where the response cache and batch store live: ``$SOCIAL_ENRICH_STATE_URL``; empty means
    SQLite files in the state folder (one host), ``postgresql://...`` a shared server (see social_enrich/state)."""
    return os.environ.get(STATE_URL_VAR, "").strip()


def default_state_store() -> StateStore:
    """The state store of this environment; cheap: it connects only when a store is opened."""
    from social_enrich.state import open_state_store  # at run time: importing this module stays light

    return open_state_store(state_url())
