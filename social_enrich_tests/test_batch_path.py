"""The Batch API path end to end: a run submits, the poller sensor notices finished batches and requests
collect runs, which write and materialize the days, against the emulator's Files and Batches endpoints
on loopback, with a real catalog and Dagster instance."""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pyarrow.compute as pc
import pytest

from social_enrich import batch_enrichment
from social_enrich.definitions import build_definitions
from social_enrich.devtools.azure_openai_emulator import AzureOpenAIEmulator, EmulatorSettings
from social_enrich.environment import batch_store_path, default_state_store, response_cache_path
from social_enrich.inference.azure_batch import request_files
from social_enrich.state.sqlite import SQLiteState
from social_enrich.lakehouse.partition_scan import read_partition
from social_enrich.sensors.batch_sensor import COLLECT, TRIGGER_TAG
from social_enrich_tests.state_workers import CRASH_CODE
from social_enrich_tests.dagster_helpers import edited_sentiment_yaml, materialize_day
from social_enrich_tests.emulated_azure import API_KEY, DEPLOYMENT, comparable, read_target
from social_enrich_tests.gold_tables import append_rows, latest_touch_days

DAYS = ["2026-11-01", "2026-11-02"]
ASSET = "social_media_sentiment"
SENSOR = "sentiment_batch_poller"
BATCH = {"ops": {ASSET: {"config": {"batch": True}}}}
RUN_KEY_TAG = "dagster/run_key"


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[AzureOpenAIEmulator]:
    settings = EmulatorSettings(api_key=API_KEY, deployments=(DEPLOYMENT,), batch_completion_seconds=0.3, seed=5)
    with AzureOpenAIEmulator(settings) as emu:
        use_in_production(emu, monkeypatch)
        yield emu


def use_in_production(emu: AzureOpenAIEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """The production environment, with the emulator as its Azure OpenAI endpoint and DEPLOYMENT its deployment."""
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", emu.endpoint)
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", API_KEY)
    monkeypatch.setenv("AZURE_OPENAI_DEPLOYMENT", DEPLOYMENT)
    monkeypatch.setenv("SOCIAL_ENRICH_ENV", "production")


def defs_with(tmp_path: Path, **batch: str) -> dg.Definitions:
    """The real Definitions, from a sentiment YAML whose batch settings are edited."""
    lines = "".join(f"\n    {name}: {value}" for name, value in batch.items())
    folder = edited_sentiment_yaml(tmp_path / "jobs", {"    enabled: false": f"    enabled: false{lines}"}).parent
    return build_definitions([folder])


def run_request(defs: dg.Definitions, instance: dg.DagsterInstance, request: dg.RunRequest, raise_on_error: bool = True
                ) -> dg.ExecuteInProcessResult | None:
    """What the daemon does with a request: a run against the same instance, once per run key (None: one had it)."""
    if instance.get_runs(filters=dg.RunsFilter(tags={RUN_KEY_TAG: request.run_key})):
        return None
    return defs.resolve_implicit_global_asset_job_def().execute_in_process(
        partition_key=request.partition_key, run_config=request.run_config, tags={**request.tags, RUN_KEY_TAG: request.run_key},
        instance=instance, asset_selection=[dg.AssetKey(ASSET)], raise_on_error=raise_on_error,
    )


def poll(defs: dg.Definitions, instance: dg.DagsterInstance, until_days: int, max_ticks: int = 40) -> list[dg.ExecuteInProcessResult]:
    """Tick the poller (as the daemon would, each tick a fresh evaluation) and run the collect runs it
    requests, until ``until_days`` days were written."""
    runs, written = [], 0
    for _ in range(max_ticks):
        for request in tick(defs, instance).run_requests:
            if request.tags[TRIGGER_TAG] == COLLECT and (run := run_request(defs, instance, request)) is not None:
                runs.append(run)
                written += len(run.asset_materializations_for_node(ASSET))
        if written >= until_days:
            return runs
        time.sleep(0.1)
    raise AssertionError(f"only {written} of {until_days} days written after {max_ticks} ticks")


def materializations(runs: list[dg.ExecuteInProcessResult]) -> list[dg.AssetMaterialization]:
    return [event for run in runs for event in run.asset_materializations_for_node(ASSET)]


def materialized_days(runs: list[dg.ExecuteInProcessResult]) -> list[str]:
    return sorted(event.partition for event in materializations(runs))


def realtime_target(tmp_path: Path, instance: dg.DagsterInstance, catalog, defs: dg.Definitions) -> list[dict]:
    for n, day in enumerate(DAYS):
        materialize_day(instance, day, defs=defs, run_config={"ops": {ASSET: {"config": {"drop": n == 0, "batch": False}}}})
    return comparable(read_target(catalog))


@pytest.fixture(params=["sqlite", "postgres"])
def state_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each backend of the state store, chosen as a deployment does: $SOCIAL_ENRICH_STATE_URL."""
    if request.param == "postgres":
        monkeypatch.setenv("SOCIAL_ENRICH_STATE_URL", request.getfixturevalue("postgres_url"))
    return request.param


def test_batch_run_submits_and_the_poller_writes_the_same_rows_as_realtime(emulator, seeded, catalog, instance, tmp_path, state_backend):
    defs = defs_with(tmp_path)
    for day in DAYS:
        result = materialize_day(instance, day, defs=defs, run_config=BATCH)
        assert result.success and result.asset_materializations_for_node(ASSET) == []  # not materialized yet
    assert emulator.stats["batches_created"] == 2
    with default_state_store().batch_store() as store:
        assert [b["status"] for b in store.batches("sentiment")] == ["validating", "validating"]

    results = poll(defs, instance, until_days=2)
    assert materialized_days(results) == DAYS
    assert sorted(instance.get_materialized_partitions(dg.AssetKey(ASSET))) == DAYS
    metadata = materializations(results)[-1].metadata
    assert metadata["served_by"].value == "azure_openai_batch"
    assert metadata["llm/batch_saving_usd"].value > 0
    assert metadata["llm/estimated_cost_usd"].value == pytest.approx(metadata["llm/realtime_cost_usd"].value / 2, rel=1e-3)
    batch_rows = comparable(read_target(catalog))
    keys = [row["post_key"] for row in batch_rows]
    assert len(keys) == len(set(keys))
    with default_state_store().batch_store() as store:
        assert store.open_days("sentiment") == [] and store.open_batches("sentiment") == []

    # The same days realtime: every answer now comes from the response cache the batches filled.
    before = emulator.stats["requests"]
    assert realtime_target(tmp_path, instance, catalog, defs) == batch_rows
    assert emulator.stats["requests"] == before
    # On PostgreSQL the state folder holds none of it.
    assert (state_backend == "sqlite") == batch_store_path().exists() == response_cache_path().exists()


def test_a_post_touched_again_while_its_batch_waits_stays_on_its_later_day(emulator, seeded, catalog, instance, tmp_path):
    defs = defs_with(tmp_path)
    first, second = (dt.date.fromisoformat(d) for d in DAYS)
    materialize_day(instance, DAYS[0], defs=defs, run_config=BATCH)  # queued: the answers are not in yet
    with default_state_store().batch_store() as store:
        assert first in store.day_may_live_on("sentiment", first)  # the days its posts' versions were written on
    # Meanwhile gold touches one of the day's posts again, on the next day, and that day is run realtime.
    fact = catalog.load_table("gold.fact_social_media_reaction_post")
    rows = fact.scan().to_arrow().to_pylist()
    moved = next(r["post_key"] for r in rows if latest_touch_days(catalog)[r["post_key"]] == first)
    latest = max((r for r in rows if r["post_key"] == moved), key=lambda r: r["last_update_time"])
    append_rows(fact, [{**latest, "last_update_time": dt.datetime(2026, 11, 2, 12, tzinfo=dt.timezone.utc)}])
    materialize_day(instance, DAYS[1], defs=defs, run_config={"ops": {ASSET: {"config": {"batch": False}}}})

    poll(defs, instance, until_days=1)  # the batch lands and its day is written

    target = read_target(catalog)
    keys = target["post_key"].to_pylist()
    assert len(keys) == len(set(keys))
    where = dict(zip(keys, target["partition_date"].to_pylist()))
    assert where[moved] == second  # its latest touch: the batch's answer for the day before did not pull it back
    assert where == {k: d for k, d in latest_touch_days(catalog).items() if d in (first, second)}


def test_a_store_from_before_may_live_on_opens_and_its_days_may_be_anywhere(tmp_path):
    path = tmp_path / "batches.db"
    with sqlite3.connect(path) as db:  # the days table as it was
        db.execute("CREATE TABLE days (job TEXT NOT NULL, day TEXT NOT NULL, posts INTEGER NOT NULL, queued_at TEXT NOT NULL,"
                   " realtime INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (job, day))")
        db.execute("INSERT INTO days VALUES ('sentiment', '2026-11-01', 3, '2026-11-02T00:00:00+00:00', 0)")
    with SQLiteState(tmp_path / "cache.db", path).batch_store() as store:
        assert store.open_days("sentiment") == [dt.date(2026, 11, 1)]
        assert store.day_may_live_on("sentiment", dt.date(2026, 11, 1)) is None  # unknown: the write looks everywhere
        store.queue_days("sentiment", [dt.date(2026, 11, 3)], [], may_live_on=[dt.date(2026, 11, 3), dt.date(2026, 10, 30)])
        assert store.day_may_live_on("sentiment", dt.date(2026, 11, 3)) == [dt.date(2026, 10, 30), dt.date(2026, 11, 3)]


@pytest.mark.parametrize("outcome", ["expired", "error_lines", "failed"])
def test_items_of_an_expired_failed_or_erroring_batch_are_requeued_and_nothing_is_lost_or_duplicated(
    emulator, seeded, catalog, sentiment_job, instance, tmp_path, outcome
):
    emulator.script_batches(outcome)
    defs = defs_with(tmp_path)
    materialize_day(instance, DAYS[0], defs=defs, run_config=BATCH)
    results = poll(defs, instance, until_days=1)
    assert materialized_days(results) == DAYS[:1]
    assert emulator.stats["batches_created"] == 2  # the first, then one for what it did not answer
    rows = read_target(catalog)
    keys = rows["post_key"].to_pylist()
    assert len(keys) == len(set(keys))
    assert len(keys) == read_partition(catalog, sentiment_job, dt.date.fromisoformat(DAYS[0])).posts.num_rows
    failed = rows.filter(pc.equal(rows["status"], "failed"))["error"].to_pylist()
    assert all(error.startswith("post_text is") for error in failed)  # only the posts with no text


def test_items_out_of_attempts_fail_with_a_reason(emulator, seeded, catalog, instance, tmp_path):
    emulator.script_batches("failed", "failed")
    defs = defs_with(tmp_path, max_attempts="2")
    materialize_day(instance, DAYS[0], defs=defs, run_config=BATCH)
    poll(defs, instance, until_days=1)
    errors = Counter(read_target(catalog)["error"].to_pylist())
    assert errors["no batch answer after 2 batches (inference.batch.max_attempts)"] > 0
    assert emulator.stats["batches_created"] == 2


def test_a_stuck_batch_is_cancelled_past_its_deadline_and_its_items_requeued(emulator, seeded, catalog, instance, tmp_path):
    emulator.script_batches("stuck")
    defs = defs_with(tmp_path, stuck_after_hours="0.0001")  # 0.36 s
    materialize_day(instance, DAYS[0], defs=defs, run_config=BATCH)
    time.sleep(0.5)
    results = poll(defs, instance, until_days=1)
    assert emulator.stats["batches_by_status"]["cancelled"] == 1
    assert materialized_days(results) == DAYS[:1]
    keys = read_target(catalog)["post_key"].to_pylist()
    assert len(keys) == len(set(keys))


def test_on_expired_realtime_hands_the_day_to_a_realtime_run(emulator, seeded, catalog, instance, tmp_path):
    emulator.script_batches("expired")
    defs = defs_with(tmp_path, on_expired="realtime")
    materialize_day(instance, DAYS[0], defs=defs, run_config=BATCH)
    sensor = defs.resolve_sensor_def(SENSOR)
    for _ in range(40):
        result = sensor(dg.build_sensor_context(instance=instance, definitions=defs, resources=defs.resources))
        collects = [r for r in result.run_requests if r.tags[TRIGGER_TAG] == COLLECT]
        for collect in collects:  # the expired batch is collected in a run, which hands the day over
            assert run_request(defs, instance, collect).asset_materializations_for_node(ASSET) == []
        if result.run_requests and not collects:
            break
        time.sleep(0.1)
    (request,) = result.run_requests
    assert request.partition_key == DAYS[0]
    assert request.run_config == {"ops": {ASSET: {"config": {"batch": False}}}}
    assert result.asset_events == []
    # Until the realtime run has written the day, every tick asks again under the same run key.
    context = dg.build_sensor_context(instance=instance, definitions=defs, resources=defs.resources)
    assert [r.run_key for r in sensor(context).run_requests] == [request.run_key]
    assert emulator.stats["batches_created"] == 1  # the day's leftovers were not sent in another batch
    # The realtime run pays only for the posts the expired batch did not answer.
    answered = emulator.stats["batch_posts_answered"]
    run = materialize_day(instance, DAYS[0], defs=defs, run_config=request.run_config)
    metadata = run.asset_materializations_for_node(ASSET)[0].metadata
    # (at least: two posts with the same fields share one cached answer)
    assert answered <= metadata["posts_from_cache"].value < metadata["posts_touched"].value
    assert metadata["llm/requests"].value > 0
    context = dg.build_sensor_context(instance=instance, definitions=defs, resources=defs.resources)
    assert sensor(context).run_requests == []  # the run wrote the day, so the hand-over is done
    with default_state_store().batch_store() as store:
        assert store.open_days("sentiment") == []


def test_the_poller_survives_a_failed_tick_and_a_restart(emulator, seeded, catalog, instance, tmp_path, monkeypatch):
    defs = defs_with(tmp_path)
    materialize_day(instance, DAYS[0], defs=defs, run_config=BATCH)
    time.sleep(0.5)
    real_write = batch_enrichment.write_days

    def crash(*args, **kwargs):
        raise OSError("warehouse unreachable")

    monkeypatch.setattr(batch_enrichment, "write_days", crash)
    with pytest.raises(Exception, match="warehouse unreachable"):
        poll(defs, instance, until_days=1, max_ticks=1)
    monkeypatch.setattr(batch_enrichment, "write_days", real_write)
    # A new process would build new Definitions; all state is in the batch store and at Azure.
    requests_before = emulator.stats["requests"]
    (tmp_path / "again").mkdir()
    results = poll(defs_with(tmp_path / "again"), instance, until_days=1)
    assert materialized_days(results) == DAYS[:1]
    assert emulator.stats["batches_created"] == 1 and emulator.stats["requests"] == requests_before
    keys = read_target(catalog)["post_key"].to_pylist()
    assert len(keys) == len(set(keys)) > 0


def test_batch_mode_without_an_endpoint_fails_clearly(seeded, instance, tmp_path):
    result = materialize_day(instance, DAYS[0], defs=defs_with(tmp_path), run_config=BATCH, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "the Batch API needs Azure OpenAI" in failure.step_failure_data.error.message


def test_request_files_split_at_the_request_and_byte_limits():
    lines = [(f"req-{n}", b"x" * 99 + b"\n") for n in range(10)]
    by_count = list(request_files(lines, max_requests=4, max_bytes=10_000))
    assert [f.custom_ids for f in by_count] == [["req-0", "req-1", "req-2", "req-3"], ["req-4", "req-5", "req-6", "req-7"], ["req-8", "req-9"]]
    by_bytes = list(request_files(lines, max_requests=100, max_bytes=350))
    assert [len(f.custom_ids) for f in by_bytes] == [3, 3, 3, 1] and all(len(f.content) <= 350 for f in by_bytes)
    assert b"".join(f.content for f in by_bytes) == b"".join(line for _, line in lines)
    with pytest.raises(ValueError, match="request req-0 alone is 100 bytes, over the file limit of 50"):
        list(request_files(lines, max_requests=100, max_bytes=50))


def test_a_day_too_big_for_one_file_goes_in_several_batches(emulator, seeded, catalog, sentiment_job, instance, tmp_path):
    defs = defs_with(tmp_path, requests_per_file="3")
    materialize_day(instance, DAYS[0], defs=defs, run_config=BATCH)
    created = emulator.stats["batches_created"]
    assert created >= 3  # about 200 posts, 20 per request, 3 requests per file
    with default_state_store().batch_store() as store:
        assert all(b["requests"] <= 3 for b in store.batches("sentiment"))
    poll(defs, instance, until_days=1)
    keys = read_target(catalog)["post_key"].to_pylist()
    assert len(keys) == len(set(keys)) == read_partition(catalog, sentiment_job, dt.date.fromisoformat(DAYS[0])).posts.num_rows


def tick(defs: dg.Definitions, instance: dg.DagsterInstance) -> dg.SensorResult:
    sensor = defs.resolve_sensor_def(SENSOR)
    return sensor(dg.build_sensor_context(instance=instance, definitions=defs, resources=defs.resources))


def test_the_poller_skips_when_nothing_is_queued_and_needs_no_azure(instance, tmp_path):
    # No emulator fixture: no Azure variable is set at all.
    result = tick(defs_with(tmp_path), instance)
    assert result.skip_reason.skip_message == "no Batch API work queued for job 'sentiment'"
    assert result.run_requests == [] and result.asset_events == []
    assert not batch_store_path().exists()


@pytest.mark.parametrize("unset", ["AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_API_KEY"])
def test_the_poller_skips_in_one_line_while_azure_is_not_configured(emulator, seeded, instance, tmp_path, monkeypatch, unset):
    defs = defs_with(tmp_path)
    materialize_day(instance, DAYS[0], defs=defs, run_config=BATCH)
    value = emulator.endpoint if unset == "AZURE_OPENAI_ENDPOINT" else API_KEY
    monkeypatch.delenv(unset)

    result = tick(defs, instance)

    message = result.skip_reason.skip_message
    assert message.startswith("job 'sentiment' has Batch API work queued, but Azure OpenAI is not configured: ")
    assert f"${unset}" in message and "\n" not in message and API_KEY not in message
    assert result.run_requests == [] and result.asset_events == []
    with default_state_store().batch_store() as store:
        assert store.open_days("sentiment") == [dt.date.fromisoformat(DAYS[0])]  # nothing lost
    # Once the setting is back, the next ticks carry on.
    monkeypatch.setenv(unset, value)
    assert materialized_days(poll(defs, instance, until_days=1)) == DAYS[:1]


def collect_requests(defs: dg.Definitions, instance: dg.DagsterInstance, max_ticks: int = 40) -> list[dg.RunRequest]:
    """Tick until the poller requests collect runs (the batches finished); the requests of that tick."""
    for _ in range(max_ticks):
        requests = [r for r in tick(defs, instance).run_requests if r.tags[TRIGGER_TAG] == COLLECT]
        if requests:
            return requests
        time.sleep(0.1)
    raise AssertionError(f"no collect run requested after {max_ticks} ticks")


def test_a_tick_writes_nothing_and_requests_one_collect_run_per_day_under_a_run_key(
    emulator, seeded, catalog, instance, tmp_path, monkeypatch
):
    defs = defs_with(tmp_path)
    materialize_day(instance, DAYS[1], defs=defs, run_config={"ops": {ASSET: {"config": {"batch": False}}}})  # the target exists
    snapshot = catalog.load_table("enriched.social_media_sentiment").current_snapshot().snapshot_id
    for day in DAYS:  # the second day's answers are all in the cache already: it is complete at once
        materialize_day(instance, day, defs=defs, run_config=BATCH)

    def no_download(*args, **kwargs):
        raise AssertionError("a tick downloaded a batch's file")

    with monkeypatch.context() as patched:
        patched.setattr(batch_enrichment.AzureBatchClient, "download", no_download)
        for _ in range(40):  # until the first day's batch finished
            requests = [r for r in tick(defs, instance).run_requests if r.tags[TRIGGER_TAG] == COLLECT]
            if len(requests) == 2:
                break
            time.sleep(0.1)
        again = [r for r in tick(defs, instance).run_requests if r.tags[TRIGGER_TAG] == COLLECT]

    assert sorted(r.partition_key for r in requests) == DAYS
    # A later tick before the runs asks under the same run keys: the daemon runs each once.
    assert [r.run_key for r in again] == [r.run_key for r in requests] and len({r.run_key for r in requests}) == 2
    for request in requests:
        assert request.run_config == {"ops": {ASSET: {"config": {"collect": True}}}}
        assert request.tags == {TRIGGER_TAG: COLLECT, "social_enrich/batch_day": request.partition_key}
    assert catalog.load_table("enriched.social_media_sentiment").current_snapshot().snapshot_id == snapshot  # nothing written
    with default_state_store().batch_store() as store:
        assert len(store.open_batches("sentiment")) == 1  # finished, not collected
        assert store.open_days("sentiment") == [dt.date.fromisoformat(d) for d in DAYS]

    by_day = {r.partition_key: r for r in requests}
    run = run_request(defs, instance, by_day[DAYS[0]])
    assert run.success and materialized_days([run]) == DAYS[:1]
    assert run.dagster_run.tags[TRIGGER_TAG] == COLLECT
    messages = [e.message for e in instance.all_logs(run.run_id)]
    assert any("partitions completed 1" in m for m in messages)  # the collect has a run log
    (other,) = [r for r in tick(defs, instance).run_requests if r.tags[TRIGGER_TAG] == COLLECT]
    assert other.run_key == by_day[DAYS[1]].run_key  # not run yet: still the same request
    assert materialized_days([run_request(defs, instance, other)]) == DAYS[1:]
    assert tick(defs, instance).run_requests == []
    keys = read_target(catalog)["post_key"].to_pylist()
    assert len(keys) == len(set(keys))


def test_a_batch_collected_day_reports_every_figure_a_realtime_day_does(emulator, seeded, catalog, instance, tmp_path):
    defs = defs_with(tmp_path)
    materialize_day(instance, DAYS[0], defs=defs, run_config=BATCH)
    (batch,) = materializations(poll(defs, instance, until_days=1))
    realtime = materialize_day(instance, DAYS[0], defs=defs, run_config={"ops": {ASSET: {"config": {"batch": False}}}})
    (day,) = realtime.asset_materializations_for_node(ASSET)

    assert set(day.metadata) <= set(batch.metadata)
    assert set(batch.metadata) - set(day.metadata) == {"served_by", "llm/realtime_cost_usd", "llm/batch_saving_usd"}
    figures = {k: v.value for k, v in batch.metadata.items()}
    assert figures["posts_touched"] == figures["dagster/partition_row_count"] == figures["dagster/row_count"] > 0
    assert figures["posts_touched"] == figures["posts_scored"] + figures["posts_failed"] + figures["posts_filtered"]
    assert figures["posts_failed"] > 0 and figures["posts_from_cache"] == 0  # the posts with no text
    assert figures["llm/requests"] > 0 and figures["llm/prompt_tokens"] > 0
    assert any(k.startswith("rows_read/") and v > 0 for k, v in figures.items())
    assert figures["labels"] == {k: v for k, v in day.metadata["labels"].value.items()}


@pytest.mark.parametrize("crash_after", ["download", "settle"])
def test_a_collect_run_killed_mid_collect_is_finished_by_the_next_one(emulator, seeded, catalog, tmp_path, crash_after):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    defs = defs_with(tmp_path)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        materialize_day(instance, DAYS[0], defs=defs, run_config=BATCH)
        (request,) = collect_requests(defs, instance)
        params = {"jobs_dir": str(tmp_path / "jobs"), "day": request.partition_key, "run_config": request.run_config,
                  "tags": request.tags, "asset": ASSET, "crash_after": crash_after}
        worker = subprocess.run([sys.executable, "-m", "social_enrich_tests.state_workers", "collect_run", json.dumps(params)],
                                capture_output=True, text=True, timeout=300, check=False, env={**os.environ, "DAGSTER_HOME": str(home)})
        assert worker.returncode == CRASH_CODE, worker.stderr[-3000:]
        (crashed,) = instance.get_runs(filters=dg.RunsFilter(tags=request.tags))
        assert crashed.status == dg.DagsterRunStatus.STARTED  # killed: nobody ended it
        with default_state_store().batch_store() as store:
            assert store.open_days("sentiment") == [dt.date.fromisoformat(DAYS[0])]
            assert bool(store.open_batches("sentiment")) == (crash_after == "download")  # read again, or already stored
        assert tick(defs, instance).run_requests == []  # while it counts as running, no second collect
        instance.report_run_failed(crashed)  # what run monitoring does with a run whose worker is gone

        (again,) = tick(defs, instance).run_requests
        assert again.run_key != request.run_key
        run = run_request(defs, instance, again)
        assert materialized_days([run]) == DAYS[:1]
        assert tick(defs, instance).run_requests == []
        batch_rows = comparable(read_target(catalog))
        keys = [row["post_key"] for row in batch_rows]
        assert len(keys) == len(set(keys)) > 0
        assert emulator.stats["batches_created"] == 1  # nothing paid twice

        before = emulator.stats["requests"]
        materialize_day(instance, DAYS[0], defs=defs, run_config={"ops": {ASSET: {"config": {"drop": True, "batch": False}}}})
        assert comparable(read_target(catalog)) == batch_rows
        assert emulator.stats["requests"] == before  # every answer was in the cache
