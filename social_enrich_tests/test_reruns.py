"""Re-runs and runs at once, against the Azure OpenAI emulator over loopback and a real catalog:
a failed attempt never replaces a good answer, and two runs of one cold day pay for it once."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator

import pyarrow as pa
import pytest
from pyiceberg.catalog import Catalog
from pyiceberg.expressions import EqualTo

from social_enrich.config import JobConfig
from social_enrich.devtools.azure_openai_emulator import AzureOpenAIEmulator, EmulatorSettings
from social_enrich.enrichment import EnrichmentReport, enrich_partition
from social_enrich_tests.emulated_azure import API_KEY, DAY, DEPLOYMENT, provider_for, read_target

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


def test_gold_updated_in_place_moves_a_post_without_a_second_row_or_losing_its_answer(emulator, job, seeded, catalog: Catalog, monkeypatch):
    """A gold table maintained by MERGE keeps only a post's latest row, so the day of its earlier
    version is gone from the sources. The write still finds the post's old row, and with the model
    down, the failed attempt does not replace the good answer to the same input."""
    enrich_partition(job, DAY, catalog, provider(emulator, monkeypatch))
    before = {r["post_key"]: r for r in read_target(catalog).to_pylist()}
    post = next(k for k, r in sorted(before.items()) if r["status"] == "ok")
    later = DAY + dt.timedelta(days=10)  # a day with no other post: only this post's versions say where to look
    for name in ("gold.fact_social_media_reaction_post", "gold.dim_post_details"):  # MERGE: the row is replaced
        table = catalog.load_table(name)
        rows = table.scan(row_filter=EqualTo("post_key", post)).to_arrow()
        latest = rows.sort_by([("last_update_time", "descending")]).slice(0, 1)
        row = {**latest.to_pylist()[0], "last_update_time": dt.datetime.combine(later, dt.time(6), tzinfo=dt.timezone.utc)}
        table.overwrite(pa.Table.from_pylist([row], schema=table.schema().as_arrow()), overwrite_filter=EqualTo("post_key", post))

    emulator.settings.share_http_503 = 1.0  # the model is down
    enrich_partition(job, later, catalog, provider(emulator, monkeypatch))

    rows = read_target(catalog)
    keys = rows["post_key"].to_pylist()
    assert len(keys) == len(set(keys))  # one row per post, though its old day is nowhere in gold any more
    (row,) = [r for r in rows.to_pylist() if r["post_key"] == post]
    assert row["partition_date"] == later
    assert (row["status"], row["label"], row["input_hash"]) == ("ok", before[post]["label"], before[post]["input_hash"])


@pytest.fixture(params=["sqlite", "postgres"])
def state_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each backend of the state store: the day locks are file locks with SQLite, advisory locks with PostgreSQL."""
    if request.param == "postgres":
        monkeypatch.setenv("SOCIAL_ENRICH_STATE_URL", request.getfixturevalue("postgres_url"))
    return request.param


def test_two_runs_of_one_cold_day_pay_for_it_once(emulator, job, seeded, catalog: Catalog, monkeypatch, state_backend):
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
