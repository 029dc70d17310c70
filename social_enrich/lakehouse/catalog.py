"""Open the pyiceberg catalog a job's connector describes, or the embedded default."""

from __future__ import annotations

import re

from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.table import Table

from social_enrich.config import ConnectorConfig
from social_enrich.environment import embedded_catalog_properties, state_dir

SECRET_WORDS = ("secret", "password", "token", "credential", "key")
_URI_USERINFO = re.compile(r"://[^/@\s]*@")
# pyiceberg hands these to botocore as given, and botocore wants an int; job config values are strings.
_INT_PROPERTIES = ("glue.max-retries",)


class CatalogUnavailableError(RuntimeError):
    """The catalog cannot be opened or answered; the message names it (never its credentials)."""


class TableNotFoundError(LookupError):
    """A configured table does not exist in the catalog."""


def catalog_properties(connector: ConnectorConfig) -> dict[str, str]:
    if connector.catalog:
        props = dict(connector.catalog)
    else:
        props = embedded_catalog_properties()
        # The embedded SQLite file and warehouse live under one state folder.
        state_dir().mkdir(parents=True, exist_ok=True)
    if connector.warehouse:
        props["warehouse"] = connector.warehouse
    return props


def redact(text: str, props: dict[str, str]) -> str:
    """Remove secret property values and URI user:password parts from a message."""
    for key, value in props.items():
        if value and any(word in key.lower() for word in SECRET_WORDS):
            text = text.replace(value, "***")
            # An OAuth2 credential "client_id:client_secret" is sent, and may be quoted back, half by half.
            if ":" in value and (half := value.split(":", 1)[1]):
                text = text.replace(half, "***")
    return _URI_USERINFO.sub("://***@", text)


def describe_catalog(props: dict[str, str]) -> str:
    """Name a catalog by type and location, without its secrets."""
    return redact(f"{props.get('type', 'rest')} catalog at {props.get('uri') or props.get('warehouse', '?')}", props)


def open_catalog(connector: ConnectorConfig, name: str = "social_enrich") -> Catalog:
    props = catalog_properties(connector)
    try:
        catalog = load_catalog(name, **{k: int(v) if k in _INT_PROPERTIES else v for k, v in props.items()})
        catalog.list_namespaces()  # fail here, with a clear message, rather than mid-run
    except Exception as e:
        # Not chained: the original error may quote a secret; this message is redacted instead.
        message = redact(f"{type(e).__name__}: {e}", props)[:500]
        raise CatalogUnavailableError(
            f"cannot reach the {describe_catalog(props)}: {message}; check connector.catalog in the job config"
        ) from None
    return catalog


def load_table(catalog: Catalog, identifier: str) -> Table:
    try:
        return catalog.load_table(identifier)
    except NoSuchTableError as e:
        raise TableNotFoundError(f"table {identifier} does not exist in the catalog") from e
