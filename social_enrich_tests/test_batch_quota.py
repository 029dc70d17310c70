"""The Batch path within Azure's enqueued-token quota, and spread over a pool's Global Batch deployments:
a submission that would pass a deployment's quota waits for batches to finish instead of failing with
token_limit_exceeded. The emulator enforces the quota; a real catalog and Dagster instance."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from social_enrich.devtools.azure_openai_emulator import AzureOpenAIEmulator, EmulatorSettings
from social_enrich_tests.dagster_helpers import materialize_day
from social_enrich_tests.emulated_azure import API_KEY, DEPLOYMENT, read_target
from social_enrich_tests.test_batch_path import BATCH, DAYS, defs_with, materialized_days, poll, use_in_production

OTHER, REALTIME_ONLY = "gpt-4o-mini-batch-2", "gpt-4o-mini-realtime"
FILE_REQUESTS = 2  # requests per batch file: a day is several files
LIMIT = 4_000  # tokens enqueued per deployment: room for one such file (about 3,000 tokens) at a time


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[AzureOpenAIEmulator]:
    settings = EmulatorSettings(api_key=API_KEY, deployments=(DEPLOYMENT, OTHER, REALTIME_ONLY), batch_completion_seconds=0.3,
                                seed=5, batch_enqueued_token_limit=LIMIT)
    with AzureOpenAIEmulator(settings) as emu:
        use_in_production(emu, monkeypatch)
        yield emu


def test_a_submission_past_the_enqueued_quota_waits_for_batches_to_finish(emulator, seeded, catalog, instance, tmp_path, monkeypatch):
    monkeypatch.setenv("SOCIAL_ENRICH_PROVIDER_CONFIG", json.dumps({"enqueued_token_limit": LIMIT}))
    defs = defs_with(tmp_path, requests_per_file=str(FILE_REQUESTS))

    assert materialize_day(instance, DAYS[0], defs=defs, run_config=BATCH).success
    assert emulator.stats["batches_created"] == 1  # the rest of the day waits for room
    assert 0 < emulator.enqueued_tokens(DEPLOYMENT) <= LIMIT

    runs = poll(defs, instance, until_days=1, max_ticks=120)

    assert materialized_days(runs) == DAYS[:1]
    stats = emulator.stats
    assert stats["batches_created"] > 2 and "failed" not in stats["batches_by_status"], stats["batches_by_status"]
    rows = read_target(catalog).to_pylist()
    assert rows and all(row["status"] != "failed" or row["error"].startswith("post_text is") for row in rows)


def test_the_pool_spreads_batches_over_its_global_batch_deployments(emulator, seeded, catalog, instance, tmp_path, monkeypatch):
    deployments = [{"name": name, "endpoint": emulator.endpoint, "batch": name != REALTIME_ONLY, "enqueued_token_limit": LIMIT}
                   for name in (DEPLOYMENT, OTHER, REALTIME_ONLY)]
    monkeypatch.setenv("SOCIAL_ENRICH_PROVIDER", "azure_openai_pool")
    monkeypatch.setenv("SOCIAL_ENRICH_PROVIDER_CONFIG", json.dumps({"deployments": deployments}))
    defs = defs_with(tmp_path, requests_per_file=str(FILE_REQUESTS))

    assert materialize_day(instance, DAYS[0], defs=defs, run_config=BATCH).success
    # One file on each Global Batch deployment at once, none on the realtime one.
    assert emulator.stats["batches_created"] == 2
    assert emulator.enqueued_tokens(DEPLOYMENT) > 0 and emulator.enqueued_tokens(OTHER) > 0
    assert emulator.enqueued_tokens(REALTIME_ONLY) == 0

    runs = poll(defs, instance, until_days=1, max_ticks=120)

    assert materialized_days(runs) == DAYS[:1]
    assert "failed" not in emulator.stats["batches_by_status"]
    assert emulator.enqueued_tokens(DEPLOYMENT) == emulator.enqueued_tokens(OTHER) == 0
    assert read_target(catalog).num_rows > 0


def test_a_file_over_every_deployments_quota_fails_naming_the_settings(emulator, seeded, catalog, instance, tmp_path, monkeypatch):
    monkeypatch.setenv("SOCIAL_ENRICH_PROVIDER_CONFIG", json.dumps({"enqueued_token_limit": 500}))
    defs = defs_with(tmp_path, requests_per_file=str(FILE_REQUESTS))

    result = materialize_day(instance, DAYS[0], defs=defs, run_config=BATCH, raise_on_error=False)

    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.message
    assert "over every Global Batch deployment's enqueued-token quota" in message
    assert "inference.batch.requests_per_file" in message and "enqueued_token_limit" in message
    assert emulator.stats["batches_created"] == 0  # nothing sent that Azure would fail
