"""The response cache: nothing paid twice, changed posts scored again, a killed run resumed. Emulator over loopback."""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from pyiceberg.catalog import Catalog

from social_enrich.config import JobConfig, load_job_config
from social_enrich.devtools.azure_openai_emulator import AzureOpenAIEmulator, EmulatorSettings
from social_enrich.enrichment import enrich_partition
from social_enrich.environment import response_cache_path
from social_enrich.state.response_cache import cache_key
from social_enrich.inference.response_models import Sentiment
from social_enrich.inference.selection import environment_provider
from social_enrich_tests.dagster_helpers import (
    edited_sentiment_defs,
    edited_sentiment_yaml,
    materialization_metadata,
    materialize_day,
)
from social_enrich_tests.emulated_azure import API_KEY, DAY, DEPLOYMENT, append_posts, comparable, read_target, sent_posts

PACK = 5
CHECKPOINT = 20


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[AzureOpenAIEmulator]:
    with AzureOpenAIEmulator(EmulatorSettings(api_key=API_KEY, deployments=(DEPLOYMENT,))) as emu:
        monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", emu.endpoint)
        monkeypatch.setenv("AZURE_OPENAI_API_KEY", API_KEY)
        monkeypatch.setenv("AZURE_OPENAI_DEPLOYMENT", DEPLOYMENT)
        monkeypatch.setenv("SOCIAL_ENRICH_ENV", "production")
        yield emu


@pytest.fixture
def small_packs_job(tmp_path: Path) -> JobConfig:
    """The sentiment job with small packs and checkpoints, so a partition takes many requests."""
    settings = f"  posts_per_request: {PACK}\n  checkpoint_posts: {CHECKPOINT}\n  retry: {{backoff_seconds: 0.05}}"
    return load_job_config(edited_sentiment_yaml(tmp_path / "jobs", {"  posts_per_request: 20": settings}))


def cached_answers() -> int:
    """Answers in the cache; 0 while the run that creates it has not made its table yet."""
    if not response_cache_path().exists():
        return 0
    with sqlite3.connect(response_cache_path()) as db:
        try:
            return db.execute("SELECT count(*) FROM answers").fetchone()[0]
        except sqlite3.OperationalError:
            return 0


def test_a_second_materialization_asks_the_model_nothing(emulator: AzureOpenAIEmulator, seeded, catalog: Catalog, instance):
    first = materialization_metadata(materialize_day(instance, DAY.isoformat()))
    rows = read_target(catalog)
    requests = emulator.stats["requests"]
    assert requests > 0 and first["posts_from_cache"] == 0

    second = materialization_metadata(materialize_day(instance, DAY.isoformat()))

    assert emulator.stats["requests"] == requests  # not one more
    assert second["llm/requests"] == 0 and second["llm/estimated_cost_usd"] == 0
    # Unchanged posts (those with nothing to send too) keep their rows from the target itself.
    assert second["posts_unchanged"] == first["posts_touched"] and second["posts_from_cache"] == 0
    assert comparable(read_target(catalog)) == comparable(rows)


def test_a_lost_cache_is_refilled_from_the_target(emulator: AzureOpenAIEmulator, seeded, catalog: Catalog, instance):
    first = materialization_metadata(materialize_day(instance, DAY.isoformat()))
    rows = read_target(catalog)
    requests = emulator.stats["requests"]
    for path in response_cache_path().parent.glob(response_cache_path().name + "*"):
        path.unlink()  # fresh compute: Lambda after a cold start, a container without its volume

    second = materialization_metadata(materialize_day(instance, DAY.isoformat()))

    assert emulator.stats["requests"] == requests and second["llm/requests"] == 0
    assert second["posts_from_cache"] + second["posts_unchanged"] == first["posts_touched"]
    assert comparable(read_target(catalog)) == comparable(rows)


def test_a_changed_post_is_scored_again_alone(emulator: AzureOpenAIEmulator, seeded, catalog: Catalog, instance):
    materialize_day(instance, DAY.isoformat())
    key = read_target(catalog).filter(pa.compute.equal(read_target(catalog)["status"], "ok"))["post_key"][0].as_py()
    emulator.requests_log.clear()

    append_posts(catalog, {key: "Edited: this is now the worst thing I have ever bought."}, DAY)
    materialize_day(instance, DAY.isoformat())

    (body,) = emulator.requests_log
    (sent,) = sent_posts(body)
    assert sent["post_text"].startswith("Edited:")
    row = next(r for r in read_target(catalog).to_pylist() if r["post_key"] == key)
    assert row["status"] == "ok" and row["label"] == "negative"


def test_failed_posts_are_not_cached_and_are_tried_again(emulator: AzureOpenAIEmulator, seeded, catalog: Catalog, instance, tmp_path):
    emulator.settings.fail_all_with = 503
    edited = {"  posts_per_request: 20": "  posts_per_request: 20\n  retry: {max_attempts: 1}"}
    defs = edited_sentiment_defs(tmp_path, edited)
    failed = materialize_day(instance, DAY.isoformat(), defs=defs, raise_on_error=False)
    assert not failed.success
    assert set(read_target(catalog)["status"].to_pylist()) == {"failed"}
    assert cached_answers() == 0

    emulator.settings.fail_all_with = None
    again = materialization_metadata(materialize_day(instance, DAY.isoformat(), defs=defs))
    assert again["posts_from_cache"] == 0 and again["posts_scored"] > 150


def test_the_cache_key_changes_with_what_produced_the_answer():
    base = cache_key("gpt-4o-mini", "v1", Sentiment, "hash")
    assert cache_key("gpt-4o-mini", "v1", Sentiment, "hash") == base
    assert cache_key("gpt-4o", "v1", Sentiment, "hash") != base
    assert cache_key("gpt-4o-mini", "v2", Sentiment, "hash") != base
    assert cache_key("gpt-4o-mini", "v1", Sentiment, "other") != base

    class Narrower(Sentiment):
        pass

    Narrower.model_fields["score"].description = "changed"  # a schema change, however small
    Narrower.model_rebuild(force=True)
    assert cache_key("gpt-4o-mini", "v1", Narrower, "hash") != base


def test_a_long_post_is_truncated_and_says_so(emulator: AzureOpenAIEmulator, seeded, catalog: Catalog, instance):
    key = 9_000_001
    append_posts(catalog, {key: "Truncate me! I love this. " * 500}, DAY)  # 13,000 characters

    metadata = materialization_metadata(materialize_day(instance, DAY.isoformat()))

    row = next(r for r in read_target(catalog).to_pylist() if r["post_key"] == key)
    assert row["status"] == "ok" and row["label"] == "positive" and row["input_truncated"] is True
    truncated = read_target(catalog)["input_truncated"].to_pylist()
    assert metadata["posts_truncated"] == truncated.count(True) >= 1  # the sample has long posts too
    sent = [p for body in emulator.requests_log for p in sent_posts(body) if p["post_text"].startswith("Truncate me!")]
    assert [len(p["post_text"]) for p in sent] == [4000]  # max_input_tokens_per_post 1000 x 4 characters


RUN_ONE_PARTITION = """
import datetime as dt, sys
from social_enrich.config import load_job_config
from social_enrich.enrichment import enrich_partition
from social_enrich.inference.selection import environment_provider
from social_enrich.lakehouse.catalog import open_catalog
job = load_job_config(sys.argv[1])
enrich_partition(job, dt.date.fromisoformat(sys.argv[2]), open_catalog(), environment_provider(job))
"""


def test_a_run_killed_half_way_resumes_paying_only_for_what_is_missing(
    emulator: AzureOpenAIEmulator, small_packs_job: JobConfig, seeded, catalog: Catalog
):
    emulator.settings.latency_seconds = 0.2  # slow enough to be caught half-way
    run = subprocess.Popen(
        [sys.executable, "-c", RUN_ONE_PARTITION, str(small_packs_job.path), DAY.isoformat()],
        env={**os.environ}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and run.poll() is None:
            if cached_answers() >= 2 * CHECKPOINT:
                break
            time.sleep(0.02)
        assert run.poll() is None, f"the run ended before it could be killed: {run.stderr.read().decode()[-2000:]}"
        run.send_signal(signal.SIGKILL)
    finally:
        run.kill()
        run.wait(timeout=30)
        run.stderr.close()
    killed_at = emulator.stats
    cached = cached_answers()
    # What the killed run was told but had not saved is at most one checkpoint plus what was in flight.
    assert killed_at["posts_answered"] - cached <= CHECKPOINT + small_packs_job.inference.workers * PACK

    emulator.settings.latency_seconds = 0.0
    deadline = time.monotonic() + 10
    while emulator.stats["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.01)  # the killed run's last requests are still being answered
    emulator.reset_stats()
    provider = environment_provider(small_packs_job)
    report = enrich_partition(small_packs_job, DAY, catalog, provider)

    sent = report.statuses["ok"] + report.statuses["filtered"]
    assert report.cache_hits >= cached  # more when two posts send the same fields: one answer serves both
    assert emulator.stats["requests"] <= math.ceil((sent - report.cache_hits) / PACK)  # only the missing posts
    resumed = read_target(catalog)
    keys = resumed["post_key"].to_pylist()
    assert len(keys) == len(set(keys)) == report.posts  # none lost, none twice

    # The same partition from scratch, uninterrupted and without the cache: the same table.
    response_cache_path().unlink()
    enrich_partition(small_packs_job, DAY, catalog, environment_provider(small_packs_job), drop=True)
    assert comparable(read_target(catalog)) == comparable(resumed)


def test_empty_and_blank_posts_are_not_sent_and_emoji_only_ones_are(emulator: AzureOpenAIEmulator, seeded, catalog: Catalog, instance):
    texts = {9_000_101: "", 9_000_102: "   \n\t ", 9_000_103: "😍🔥🎉"}
    append_posts(catalog, texts, DAY)

    materialize_day(instance, DAY.isoformat())

    rows = {r["post_key"]: r for r in read_target(catalog).to_pylist() if r["post_key"] in texts}
    assert rows[9_000_101]["status"] == rows[9_000_102]["status"] == "failed"
    assert rows[9_000_101]["error"] == rows[9_000_102]["error"] == "post_text is empty"
    assert rows[9_000_103]["status"] == "ok" and rows[9_000_103]["label"] == "positive"
    sent = [p["post_text"] for body in emulator.requests_log for p in sent_posts(body)]
    assert "😍🔥🎉" in sent and not [t for t in sent if not t.strip()]
