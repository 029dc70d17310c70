"""Any SQL catalog the user already has: opened by its own name, chosen by the environment as a Dagster
resource, and errors that say what is there."""

from __future__ import annotations

import socket
from pathlib import Path

import pyarrow as pa
import pytest
from pyiceberg.catalog.sql import SqlCatalog

import dagster as dg

from social_enrich.definitions import build_definitions
from social_enrich.resources import IcebergCatalogResource
from social_enrich.environment import EnvironmentConfigError
from social_enrich.errors import SocialEnrichError
from social_enrich.lakehouse.catalog import CatalogUnavailableError, TableNotFoundError, load_table, open_catalog

POSTS = pa.schema([pa.field("post_key", pa.int64()), pa.field("post_text", pa.string())])


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
    catalog = open_catalog(({"type": "sql", "uri": lake, "name": "lake"}))
    assert catalog.name == "lake"
    assert load_table(catalog, "gold.posts").schema().column_names == ["post_key", "post_text"]


def test_without_its_name_the_error_names_the_catalog_and_where_the_table_is(lake):
    catalog = open_catalog(({"type": "sql", "uri": lake}))
    with pytest.raises(TableNotFoundError) as raised:
        load_table(catalog, "gold.posts")
    message = str(raised.value)
    assert f"table gold.posts does not exist in the sql catalog at {lake} named 'social_enrich'" in message
    assert "namespace gold does not exist; its namespaces are (none)" in message
    assert "holds gold.posts under the catalog name lake: set the catalog's name in $SOCIAL_ENRICH_CATALOG" in message
    assert isinstance(raised.value, SocialEnrichError) and isinstance(raised.value, LookupError)


def test_a_missing_table_lists_the_tables_of_its_namespace(lake):
    catalog = open_catalog(({"type": "sql", "uri": lake, "name": "lake"}))
    with pytest.raises(TableNotFoundError) as raised:
        load_table(catalog, "gold.comments")
    message = str(raised.value)
    assert f"sql catalog at {lake} named 'lake'" in message
    assert "namespace gold holds gold.posts, gold.reactions" in message
    assert "under the catalog name" not in message  # no other catalog in the file has it


def test_a_missing_namespace_lists_the_namespaces(lake):
    catalog = open_catalog(({"type": "sql", "uri": lake, "name": "lake"}))
    with pytest.raises(TableNotFoundError, match="namespace silver does not exist; its namespaces are gold"):
        load_table(catalog, "silver.posts")


def test_a_sqlite_file_that_does_not_exist_is_an_error_not_a_new_catalog(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CatalogUnavailableError) as raised:
        open_catalog(({"type": "sql", "uri": "sqlite:///missing.db"}))
    message = str(raised.value)
    assert f"no file {tmp_path / 'missing.db'}" in message  # relative to the working directory, as SQLite reads it
    assert "catalog's uri" in message and "init_catalog_tables" in message and "$SOCIAL_ENRICH_CATALOG" in message
    assert not (tmp_path / "missing.db").exists()
    assert isinstance(raised.value, SocialEnrichError) and isinstance(raised.value, RuntimeError)


def test_a_new_sqlite_catalog_is_created_when_asked(tmp_path):
    path = tmp_path / "new.db"
    catalog = open_catalog(({"type": "sql", "uri": f"sqlite:///{path}", "init_catalog_tables": "true"}))
    assert path.exists() and catalog.list_namespaces() == []


@pytest.mark.parametrize("chosen", ["", "embedded"])
def test_the_embedded_default_is_created_on_first_use(state_home, monkeypatch, chosen):
    monkeypatch.setenv("SOCIAL_ENRICH_CATALOG", chosen)
    assert not (state_home / "catalog.db").exists()
    catalog = build_definitions().resources["catalog"].open()
    assert catalog.name == "social_enrich" and (state_home / "catalog.db").exists()


def test_a_password_in_the_uri_never_appears_in_an_error():
    with socket.socket() as sock:  # a loopback port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    uri = f"postgresql+psycopg2://social:hunter2-Xq9@127.0.0.1:{port}/lake"  # psycopg2 comes with dagster-postgres
    with pytest.raises(CatalogUnavailableError) as raised:
        open_catalog(({"type": "sql", "uri": uri, "name": "lake"}))
    message = str(raised.value)
    assert f"cannot reach the sql catalog at postgresql+psycopg2://***@127.0.0.1:{port}/lake named 'lake'" in message
    assert "hunter2-Xq9" not in message and "hunter2-Xq9" not in repr(raised.value)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_the_environment_chooses_the_catalog_a_job_reads_with_its_secret_read_at_run_time(lake, monkeypatch, tmp_path):
    """$SOCIAL_ENRICH_CATALOG names the user's catalog (JSON pyiceberg properties); a property given as
    {"env": VAR} becomes a dg.EnvVar of the catalog resource, so its value is in no Dagster config."""
    monkeypatch.setenv("LAKE_URI", lake)
    monkeypatch.setenv("SOCIAL_ENRICH_CATALOG", '{"name": "lake", "type": "sql", "uri": {"env": "LAKE_URI"}}')
    defs = build_definitions()
    resource = defs.resources["catalog"]
    assert resource.properties["uri"] == dg.EnvVar("LAKE_URI") and lake not in repr(resource.properties)

    posts = dg.AssetSpec(dg.AssetKey(["gold", "posts"]))

    @dg.asset(deps=[posts])
    def downstream(catalog: IcebergCatalogResource) -> dg.MaterializeResult:  # a user's asset reads through the resource
        return dg.MaterializeResult(metadata={"columns": load_table(catalog.open(), "gold.posts").schema().column_names})

    with dg.instance_for_test() as instance:
        result = dg.materialize([downstream], resources={"catalog": resource}, instance=instance)
    (event,) = result.asset_materializations_for_node("downstream")
    assert event.metadata["columns"].value == ["post_key", "post_text"]


def test_a_catalog_named_the_pyiceberg_way_is_read_from_its_variables(lake, monkeypatch):
    monkeypatch.setenv("SOCIAL_ENRICH_CATALOG", "lake")
    monkeypatch.setenv("PYICEBERG_CATALOG__LAKE__TYPE", "sql")
    monkeypatch.setenv("PYICEBERG_CATALOG__LAKE__URI", lake)  # set after pyiceberg was imported: still read
    from social_enrich.lakehouse.catalog import environment_catalog

    assert load_table(environment_catalog(), "gold.reactions").schema().column_names == ["post_key", "post_text"]


def test_production_without_a_catalog_fails_the_load_naming_the_variable(monkeypatch):
    monkeypatch.delenv("SOCIAL_ENRICH_CATALOG")
    monkeypatch.setenv("SOCIAL_ENRICH_ENV", "production")
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(EnvironmentConfigError, match=r"production needs a catalog: set \$SOCIAL_ENRICH_CATALOG"):
        build_definitions()


@pytest.mark.parametrize("raw, named", [("{type: sql}", "not JSON"), ('{"uri": ["a"]}', "property 'uri'")])
def test_a_catalog_variable_that_cannot_be_read_names_the_variable(monkeypatch, raw, named):
    monkeypatch.setenv("SOCIAL_ENRICH_CATALOG", raw)
    with pytest.raises(EnvironmentConfigError) as error:
        build_definitions()
    assert "$SOCIAL_ENRICH_CATALOG" in str(error.value) and named in str(error.value)
