"""Shared fixtures: every test gets its own state folder, so catalogs and warehouses live in tmp_path."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import openai
import pytest
from pyiceberg.catalog import Catalog

from social_enrich import demo
from social_enrich.config import JobConfig, load_job_config
from social_enrich.devtools.azure_openai_emulator import AzureOpenAIEmulator
from social_enrich.environment import BUILTIN_JOBS_DIR
from social_enrich.lakehouse.catalog import open_catalog
from social_enrich_tests.emulator_sdk import sdk_client
from social_enrich_tests.postgres_server import PostgresServer, running_postgres

SAMPLE_START = dt.date(2026, 11, 1)


@pytest.fixture(autouse=True)
def state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh embedded default per test, and no Azure settings leaking in from the shell."""
    home = tmp_path / "state"
    monkeypatch.setenv("SOCIAL_ENRICH_HOME", str(home))
    for name in ("AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_API_KEY", "AZURE_OPENAI_DEPLOYMENT", "SOCIAL_ENRICH_JOBS_DIR",
                 "SOCIAL_ENRICH_WAREHOUSE", "SOCIAL_ENRICH_START_DATE", "DAGSTER_HOME", "OPENAI_SECRET_NAME",
                 "AZURE_OPENAI_RPM", "AZURE_OPENAI_TPM", "SOCIAL_ENRICH_ENV", "SOCIAL_ENRICH_PROVIDER",
                 "SOCIAL_ENRICH_PROVIDER_CONFIG", "SOCIAL_ENRICH_LAMBDA_LOCAL",
                 "SOCIAL_ENRICH_STATE_URL"):
        monkeypatch.delenv(name, raising=False)
    # The tests' production runs keep the embedded catalog, chosen by name as a single-host deployment
    # would (production never falls back to it); locally it is the default anyway.
    monkeypatch.setenv("SOCIAL_ENRICH_CATALOG", "embedded")
    return home


@pytest.fixture
def sentiment_job() -> JobConfig:
    return load_job_config(BUILTIN_JOBS_DIR / "sentiment" / "defs.yaml")


@pytest.fixture
def catalog(sentiment_job: JobConfig) -> Catalog:
    return open_catalog()


@pytest.fixture
def seeded(catalog: Catalog) -> demo.DemoSummary:
    """A small sample: 600 posts over 3 days, with updates and special posts."""
    return demo.seed_gold_tables(catalog, posts=600, days=3, start=SAMPLE_START)


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    """A real, throwaway Dagster instance."""
    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture
def client(emulator: AzureOpenAIEmulator) -> Iterator[openai.AzureOpenAI]:
    """An SDK client of the test module's own ``emulator`` fixture, with that emulator's key."""
    with sdk_client(emulator, emulator.settings.api_key) as client:
        yield client


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session (skips, naming the package, when it is not installed)."""
    with running_postgres() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh database of the session's server, password included (the tests' own, throwaway)."""
    with postgres_server.new_database() as url:
        yield url
