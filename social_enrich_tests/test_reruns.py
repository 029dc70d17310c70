"""Re-runs and runs at once, against the Azure OpenAI emulator over loopback and a real catalog:
a failed attempt never replaces a good answer, and two runs of one cold day pay for it once."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pyarrow.compute as pc
import pytest
from pyiceberg.catalog import Catalog

from social_enrich.config import JobConfig
from social_enrich.devtools.azure_openai_emulator import AzureOpenAIEmulator, EmulatorSettings
from social_enrich.enrichment import EnrichmentReport, enrich_partition
from social_enrich_tests.emulated_azure import API_KEY, DAY, DEPLOYMENT, comparable, provider_for, read_target

RUN_SECONDS = 120


@pytest.fixture
def emulator() -> Iterator[AzureOpenAIEmulator]:
    with AzureOpenAIEmulator(EmulatorSettings(api_key=API_KEY, deployments=(DEPLOYMENT,))) as emu:
        yield emu


@pytest.fixture
def job(sentiment_job: JobConfig) -> JobConfig:
    raw = sentiment_job.model_dump()
    raw["inference"].update(model=DEPLOYMENT, max_failed_share=1.0, retry={"max_attempts": 2, "backoff_seconds": 0.01, "max_seconds": 10})
    return JobConfig.model_validate(raw)


def provider(emulator: AzureOpenAIEmulator, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", API_KEY)
    return provider_for(emulator.endpoint, retry={"max_attempts": 2, "backoff_seconds": 0.01, "max_seconds": 10})


def test_a_failed_attempt_keeps_the_earlier_good_answer(emulator, job, seeded, catalog: Catalog, monkeypatch):
    raw = job.model_dump()
    raw["inference"]["cache"] = False  # every run asks the model again
    uncached = JobConfig.model_validate(raw)
    first = enrich_partition(uncached, DAY, catalog, provider(emulator, monkeypatch))
    good = read_target(catalog)
    assert first.statuses["ok"] > 0

    emulator.settings.share_http_503 = 1.0  # the model is down: every attempt of the re-run fails
    second = enrich_partition(uncached, DAY, catalog, provider(emulator, monkeypatch))

    assert second.statuses["failed"] == first.posts  # counted as failures of this run...
    assert second.write.kept_good == first.statuses["ok"]  # ...but the good rows stay
    after = read_target(catalog)
    assert comparable(after) == comparable(good)
    assert pc.sum(pc.equal(after["status"], "ok")).as_py() == first.statuses["ok"]


def test_two_runs_of_one_cold_day_pay_for_it_once(emulator, job, seeded, catalog: Catalog, monkeypatch):
    emulator.settings.latency_seconds = 0.05  # long enough for the runs to overlap
    reports: list[EnrichmentReport] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            reports.append(enrich_partition(job, DAY, catalog, provider(emulator, monkeypatch)))
        except BaseException as e:  # re-raised below, in the test's thread
            errors.append(e)

    runs = [threading.Thread(target=run) for _ in range(2)]
    for thread in runs:
        thread.start()
    for thread in runs:
        thread.join(RUN_SECONDS)
    assert not errors and len(reports) == 2
    sent = [sum(d.sent for d in r.days.values()) for r in reports]
    assert sorted(sent)[0] == 0  # the second run waited, then found every answer in the cache
    assert sum(r.usage.requests for r in reports) == emulator.stats["requests"] == max(r.usage.requests for r in reports)
    assert read_target(catalog).num_rows == reports[0].posts
