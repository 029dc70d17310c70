"""Any SQL catalog the user already has: opened by its own name, and errors that say what is there."""

from __future__ import annotations

import socket
from pathlib import Path

import pyarrow as pa
import pytest
from pyiceberg.catalog.sql import SqlCatalog

from social_enrich.config import ConnectorConfig, load_job_config
from social_enrich.environment import BUILTIN_JOBS_DIR
from social_enrich.errors import SocialEnrichError
from social_enrich.lakehouse.catalog import CatalogUnavailableError, TableNotFoundError, load_table, open_catalog

POSTS = pa.schema([pa.field("post_key", pa.int64()), pa.field("post_text", pa.string())])


def connector(catalog: dict[str, str]) -> ConnectorConfig:
    """The built-in job's connector with these catalog properties, validated as a job YAML's would be."""
    raw = load_job_config(BUILTIN_JOBS_DIR / "sentiment.yaml").connector.model_dump()
    return ConnectorConfig.model_validate({**raw, "catalog": catalog})


@pytest.fixture
def lake(tmp_path: Path) -> str:
    """A SQLite catalog made by another tool under the name "lake": gold.posts and gold.reactions. Its URI."""
    uri = f"sqlite:///{tmp_path / 'lake.db'}"
    made = SqlCatalog("lake", uri=uri, warehouse=(tmp_path / "warehouse").as_uri())
    made.create_namespace("gold")
    for table in ("posts", "reactions"):
        made.create_table(f"gold.{table}", POSTS)
    made.engine.dispose()
    return uri


def test_a_catalog_made_under_another_name_is_opened_by_that_name(lake):
    catalog = open_catalog(connector({"type": "sql", "uri": lake, "name": "lake"}))
    assert catalog.name == "lake"
    assert load_table(catalog, "gold.posts").schema().column_names == ["post_key", "post_text"]


def test_without_its_name_the_error_names_the_catalog_and_where_the_table_is(lake):
    catalog = open_catalog(connector({"type": "sql", "uri": lake}))
    with pytest.raises(TableNotFoundError) as raised:
        load_table(catalog, "gold.posts")
    message = str(raised.value)
    assert f"table gold.posts does not exist in the sql catalog at {lake} named 'social_enrich'" in message
    assert "namespace gold does not exist; its namespaces are (none)" in message
    assert "holds gold.posts under the catalog name lake: set connector.catalog.name" in message
    assert isinstance(raised.value, SocialEnrichError) and isinstance(raised.value, LookupError)


def test_a_missing_table_lists_the_tables_of_its_namespace(lake):
    catalog = open_catalog(connector({"type": "sql", "uri": lake, "name": "lake"}))
    with pytest.raises(TableNotFoundError) as raised:
        load_table(catalog, "gold.comments")
    message = str(raised.value)
    assert f"sql catalog at {lake} named 'lake'" in message
    assert "namespace gold holds gold.posts, gold.reactions" in message
    assert "under the catalog name" not in message  # no other catalog in the file has it


def test_a_missing_namespace_lists_the_namespaces(lake):
    catalog = open_catalog(connector({"type": "sql", "uri": lake, "name": "lake"}))
    with pytest.raises(TableNotFoundError, match="namespace silver does not exist; its namespaces are gold"):
        load_table(catalog, "silver.posts")


def test_a_sqlite_file_that_does_not_exist_is_an_error_not_a_new_catalog(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CatalogUnavailableError) as raised:
        open_catalog(connector({"type": "sql", "uri": "sqlite:///missing.db"}))
    message = str(raised.value)
    assert f"no file {tmp_path / 'missing.db'}" in message  # relative to the working directory, as SQLite reads it
    assert "connector.catalog.uri" in message and "init_catalog_tables: true" in message
    assert not (tmp_path / "missing.db").exists()
    assert isinstance(raised.value, SocialEnrichError) and isinstance(raised.value, RuntimeError)


def test_a_new_sqlite_catalog_is_created_when_asked(tmp_path):
    path = tmp_path / "new.db"
    catalog = open_catalog(connector({"type": "sql", "uri": f"sqlite:///{path}", "init_catalog_tables": "true"}))
    assert path.exists() and catalog.list_namespaces() == []


def test_the_embedded_default_is_created_on_first_use(state_home):
    assert not (state_home / "catalog.db").exists()
    catalog = open_catalog(connector({}))
    assert catalog.name == "social_enrich" and (state_home / "catalog.db").exists()


def test_a_password_in_the_uri_never_appears_in_an_error():
    with socket.socket() as sock:  # a loopback port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    uri = f"postgresql+psycopg2://social:hunter2-Xq9@127.0.0.1:{port}/lake"  # psycopg2 comes with dagster-postgres
    with pytest.raises(CatalogUnavailableError) as raised:
        open_catalog(connector({"type": "sql", "uri": uri, "name": "lake"}))
    message = str(raised.value)
    assert f"cannot reach the sql catalog at postgresql+psycopg2://***@127.0.0.1:{port}/lake named 'lake'" in message
    assert "hunter2-Xq9" not in message and "hunter2-Xq9" not in repr(raised.value)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
