"""Open a pyiceberg catalog from its properties (the environment's, see environment.catalog_choice),
or the embedded default."""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from pathlib import Path

from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError
from pyiceberg.table import Table
from pyiceberg.utils.config import Config

from social_enrich.environment import (
    CATALOG_VAR,
    catalog_choice,
    embedded_catalog_properties,
    resolved_catalog_properties,
)
from social_enrich.errors import SocialEnrichError

DEFAULT_CATALOG_NAME = "social_enrich"
SECRET_WORDS = ("secret", "password", "token", "credential", "key")
_URI_USERINFO = re.compile(r"://[^/@\s]*@")
# pyiceberg hands these to botocore as given, and botocore wants an int; job config values are strings.
_INT_PROPERTIES = ("glue.max-retries",)


class CatalogUnavailableError(SocialEnrichError, RuntimeError):
    """The catalog cannot be opened or answered; the message names it (never its credentials)."""


class TableNotFoundError(SocialEnrichError, LookupError):
    """A configured table does not exist in the catalog; the message says what the catalog does hold."""


def catalog_properties(given: Mapping[str, str] | None) -> dict[str, str]:
    """The properties to open: the given ones, over those of a catalog of that name configured the
    pyiceberg way (read now, not when pyiceberg was imported); the embedded default when none are given."""
    if not given:
        return embedded_catalog_properties()
    configured = Config().get_catalog_config(given.get("name", DEFAULT_CATALOG_NAME)) or {}
    return {**{k: str(v) for k, v in configured.items() if not isinstance(v, dict)}, **given}


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
    """Name a catalog by type, location and name, without its secrets."""
    where = props.get("uri") or props.get("warehouse", "?")
    kind = props.get("type") or _inferred_type(where)
    return redact(f"{kind} catalog at {where} named '{props.get('name', DEFAULT_CATALOG_NAME)}'", props)


def _inferred_type(uri: str) -> str:
    # As pyiceberg's load_catalog infers a type the properties leave out.
    return "sql" if uri.startswith(("sqlite", "postgresql")) else "hive" if uri.startswith("thrift") else "rest"


def open_catalog(given: Mapping[str, str] | None = None) -> Catalog:
    """The catalog of these pyiceberg properties, or the embedded SQLite default when there are none.

    One key is not a pyiceberg property: ``name``, the catalog's name (default ``social_enrich``). A SQL
    catalog keys its tables by it, so a SQLite or Postgres catalog made by other tools under another name
    needs ``name`` set to that name to see its tables.

    A SQLite file that does not exist is an error, not a new empty catalog (a mistyped path would otherwise
    show every table missing), unless ``init_catalog_tables: true`` is set to create a catalog there.
    The embedded default is always created on first use.
    """
    props = catalog_properties(given)
    name = props.pop("name", DEFAULT_CATALOG_NAME)
    described = describe_catalog({**props, "name": name})
    if missing := _missing_sqlite_file(props):
        raise CatalogUnavailableError(
            f"the {described} does not exist: no file {missing}; point the catalog's uri at its SQLite file "
            f"(sqlite:///relative/path or sqlite:////absolute/path), or set its property init_catalog_tables "
            f"to true to create a new, empty catalog there (${CATALOG_VAR})"
        )
    try:
        catalog = load_catalog(name, **{k: int(v) if k in _INT_PROPERTIES else v for k, v in props.items()})
        catalog.list_namespaces()  # fail here, with a clear message, rather than mid-run
    except Exception as e:
        # Not chained: the original error may quote a secret; this message is redacted instead.
        message = redact(f"{type(e).__name__}: {e}", props)[:500]
        raise CatalogUnavailableError(f"cannot reach the {described}: {message}; check ${CATALOG_VAR}") from None
    return catalog


def environment_catalog() -> Catalog:
    """The catalog of this environment, outside Dagster (the Lambda handler, the CLI); in Dagster it is
    the ``catalog`` resource (resources.py)."""
    return open_catalog(resolved_catalog_properties(catalog_choice()))


def _missing_sqlite_file(props: dict[str, str]) -> Path | None:
    """The file of a SQLite catalog URI when it does not exist and nothing asked to create it (when
    asked, its folder is made, as the embedded default's is on first use)."""
    if not props.get("uri", "").startswith("sqlite"):
        return None
    # sqlite:///relative/path or sqlite:////absolute/path; "sqlite://" and ":memory:" are in memory.
    database = props["uri"].partition("://")[2].partition("?")[0].removeprefix("/")
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    path = Path(database).absolute()  # relative to the working directory, as SQLite reads it
    if props.get("init_catalog_tables", "").lower() == "true":
        path.parent.mkdir(parents=True, exist_ok=True)
        return None
    return None if path.exists() else path


def load_table(catalog: Catalog, identifier: str) -> Table:
    try:
        return catalog.load_table(identifier)
    except NoSuchTableError as e:
        described = describe_catalog({**catalog.properties, "name": catalog.name})
        raise TableNotFoundError(
            f"table {identifier} does not exist in the {described}: {_what_is_there(catalog, identifier)}; "
            f"check connector.source.tables in the job config and ${CATALOG_VAR}"
        ) from e


def _what_is_there(catalog: Catalog, identifier: str) -> str:
    """What the catalog holds where the table was looked for: the namespace's tables, or its namespaces."""
    namespace = Catalog.namespace_from(identifier)
    shown = ".".join(namespace)
    try:
        try:
            tables = sorted(".".join(t) for t in catalog.list_tables(namespace))
            found = f"namespace {shown} holds {', '.join(tables)}" if tables else f"namespace {shown} holds no tables"
        except NoSuchNamespaceError:
            namespaces = sorted(".".join(n) for n in catalog.list_namespaces())
            found = f"namespace {shown} does not exist; its namespaces are {', '.join(namespaces) or '(none)'}"
        if others := _other_sql_catalogs_holding(catalog, identifier):
            found += f"; its database holds {identifier} under the catalog name {', '.join(others)}: set the catalog's name in ${CATALOG_VAR}"
    except Exception:  # e.g. a role that may read tables but not list them: the missing table is still the news
        return f"the tables of namespace {shown} could not be listed"
    return found


def _other_sql_catalogs_holding(catalog: Catalog, identifier: str) -> list[str]:
    """A SQL catalog's database may hold several catalogs: the names of those that have the table."""
    sql = sys.modules.get("pyiceberg.catalog.sql")  # loaded when a SQL catalog was opened; SQLAlchemy may be absent
    if sql is None or not isinstance(catalog, sql.SqlCatalog):
        return []
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    tuple_id = Catalog.identifier_to_tuple(identifier)
    tables = sql.IcebergTables
    query = select(tables.catalog_name).where(
        tables.table_namespace == ".".join(tuple_id[:-1]), tables.table_name == tuple_id[-1], tables.catalog_name != catalog.name
    )
    with Session(catalog.engine) as session:
        return sorted(session.scalars(query))
