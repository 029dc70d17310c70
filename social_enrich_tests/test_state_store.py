"""The state store on both backends: SQLite in the state folder, and a real PostgreSQL server on loopback.

Every behaviour is proven on each: answers kept and replaced, nothing lost when two processes write
at once, no post claimed twice, no batch paid twice across a crash, nothing created just to look,
and never a password in a repr or an error.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import multiprocessing
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from social_enrich import batch_enrichment
from social_enrich.config import JobConfig
from social_enrich.devtools.azure_openai_emulator import AzureOpenAIEmulator, EmulatorSettings
from social_enrich.environment import default_state_store, state_url
from social_enrich.inference.azure_batch import AzureBatchClient
from social_enrich.inference.provider import ScoreResult
from social_enrich.inference.response_models import Sentiment
from social_enrich.inference.usage import Usage
from social_enrich.state import StateStore, StateStoreError, open_state_store
from social_enrich.state.batch_store import QueuedPost
from social_enrich.state.postgres import PostgresState
from social_enrich.state.sqlite import SQLiteConnection, SQLiteState
from social_enrich_tests.emulated_azure import API_KEY
from social_enrich_tests.state_workers import CRASH_CODE

JOB = "sentiment"
DAY = dt.date(2026, 11, 1)
WORKER_SECONDS = 120  # a worker's imports and work, on a busy 2-core machine
LOG = logging.getLogger("test_state_store")


@pytest.fixture(params=["sqlite", "postgres"])
def state_url_of(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The backend's URL ("" for SQLite in the test's state folder), set as $SOCIAL_ENRICH_STATE_URL too."""
    url = "" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    monkeypatch.setenv("SOCIAL_ENRICH_STATE_URL", url)
    return url


@pytest.fixture
def state(state_url_of: str) -> StateStore:
    return default_state_store()


@pytest.fixture
def emulator(sentiment_job: JobConfig) -> Iterator[AzureOpenAIEmulator]:
    settings = EmulatorSettings(api_key=API_KEY, deployments=(sentiment_job.inference.model,), batch_completion_seconds=30, seed=3)
    with AzureOpenAIEmulator(settings) as emu:
        yield emu


@pytest.fixture
def batch_client(emulator: AzureOpenAIEmulator, sentiment_job: JobConfig) -> Iterator[AzureBatchClient]:
    sdk = openai.AzureOpenAI(azure_endpoint=emulator.endpoint, api_key=API_KEY, api_version="2024-10-21", max_retries=0)
    try:
        yield AzureBatchClient(sdk, sentiment_job.inference.model)
    finally:
        sdk.close()


def answer(label: str = "positive") -> ScoreResult:
    return ScoreResult("ok", Sentiment(label=label, score=0.5, confidence=0.9))


def queued(n: int, day: dt.date = DAY) -> list[QueuedPost]:
    return [QueuedPost(day, 1000 + i, None, f"hash-{i}", False, {"post_text": f"post number {i}"}) for i in range(n)]


def workers(*calls: tuple[str, dict[str, Any]]) -> list[tuple[int, dict[str, Any] | None]]:
    """Run each (worker, params) in its own process at once; (exit code, its JSON line) each. Bounded;
    a worker still running at the deadline is killed by its PID."""
    start_at = time.time() + 4  # after every worker's imports
    processes = [
        subprocess.Popen([sys.executable, "-m", "social_enrich_tests.state_workers", name, json.dumps({"start_at": start_at, **params})],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
        for name, params in calls
    ]  # fmt: skip
    results = []
    deadline = time.monotonic() + WORKER_SECONDS
    for process in processes:
        try:
            out, err = process.communicate(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate(timeout=30)
            raise AssertionError(f"worker {process.pid} still running after {WORKER_SECONDS} s: {err[-2000:]}")
        if process.returncode not in (0, CRASH_CODE):
            raise AssertionError(f"worker {process.pid} failed ({process.returncode}): {err[-3000:]}")
        results.append((process.returncode, json.loads(out.splitlines()[-1]) if process.returncode == 0 else None))
    return results


# -- the response cache -------------------------------------------------------------------------


def test_answers_are_kept_replaced_and_failures_not_kept(state: StateStore):
    with state.response_cache() as cache:
        assert cache.put_many([("a", answer()), ("b", ScoreResult("filtered", None, "filtered")), ("c", ScoreResult.failed("x"))]) == 2
        assert cache.put_many([("a", answer("negative"))]) == 1  # a later answer replaces the earlier
    with state.response_cache() as cache:  # another connection sees what was committed
        found = cache.get_many(["a", "b", "c", "a"], Sentiment)
    assert set(found) == {"a", "b"} and found["a"].response.label == "negative" and found["b"].status == "filtered"


def test_a_miss_fills_the_cache_once(state: StateStore):
    fills = []

    def fill():
        fills.append(1)
        return [("from-target", answer())]

    with state.response_cache(fill) as cache:
        assert set(cache.get_many(["from-target", "unknown"], Sentiment)) == {"from-target"}
        assert set(cache.get_many(["unknown"], Sentiment)) == set()
    assert fills == [1]


def test_two_processes_writing_answers_at_once_lose_none(state: StateStore):
    # Overlapping ranges: 0-1500 and 1000-2500, in chunks of 50, both writing at the same moment.
    results = workers(("put_answers", {"first": 0, "last": 1500, "chunk": 50}),
                      ("put_answers", {"first": 1000, "last": 2500, "chunk": 50}))  # fmt: skip
    assert [r for _, r in results] == [{"written": 1500}, {"written": 1500}]
    with state.response_cache() as cache:
        assert len(cache.get_many([f"key-{n}" for n in range(2500)], Sentiment)) == 2500


# -- the batch store ----------------------------------------------------------------------------


def test_the_batch_store_queues_claims_records_settles_and_forgets(state: StateStore):
    with state.batch_store() as store:
        store.queue_days(JOB, [DAY, DAY + dt.timedelta(days=1)], queued(5), may_live_on=[DAY])
        assert store.open_days(JOB) == [DAY, DAY + dt.timedelta(days=1)] and store.day_may_live_on(JOB, DAY) == [DAY]
        assert store.complete_days(JOB) == [DAY + dt.timedelta(days=1)]  # no posts: complete
        assert [p.key for p in store.unsent(JOB)] == [1000, 1001, 1002, 1003, 1004]
        ((intent, payload),) = store.claim(JOB, lambda waiting: [("file", {"r1": waiting[:2], "r2": waiting[2:3]})])
        assert payload == "file" and [i.intent_id for i in store.unrecorded_intents(JOB)] == [intent.intent_id]
        assert {cid: [p.key for p in posts] for cid, posts in store.intent_requests(JOB, intent.intent_id).items()} == {
            "r1": [1000, 1001], "r2": [1002]}
        assert [p.key for p in store.unsent(JOB)] == [1003, 1004]  # claimed posts are not sent again

        store.record_batch(JOB, intent.intent_id, "batch-1", "validating", "file-1")
        assert store.unrecorded_intents(JOB) == []
        (record,) = store.open_batches(JOB)
        assert (record.batch_id, record.requests, record.input_file_id) == ("batch-1", 2, "file-1")
        requests = store.batch_requests(JOB, "batch-1")
        assert requests["r1"][0].attempts == 1  # the attempt counts once the batch is recorded

        store.settle(JOB, [(p, answer(), Usage(prompt_tokens=10.5)) for p in requests["r1"]])
        store.release(JOB, requests["r2"])
        store.close_batch("batch-1", "done")
        assert [p.key for p in store.unsent(JOB)] == [1002, 1003, 1004] and store.open_batches(JOB) == []
        assert store.day_usage(JOB, DAY).prompt_tokens == 21
        assert [p.result.status for p in store.day_posts(JOB, DAY, Sentiment) if p.result] == ["ok", "ok"]
        assert [b["note"] for b in store.batches(JOB)] == ["done"]

        store.hand_to_realtime(JOB, [DAY])
        assert store.unsent(JOB) == [] and [d for d, _ in store.realtime_days(JOB)] == [DAY]
        store.forget_days(JOB, [DAY])
        assert store.open_days(JOB) == [DAY + dt.timedelta(days=1)]


def test_looking_for_batch_work_creates_no_store(state: StateStore):
    assert not state.has_batch_work(JOB) and not state.batch_store_exists()
    with state.batch_store() as store:
        store.queue_days(JOB, [DAY], queued(1))
    assert state.batch_store_exists() and state.has_batch_work(JOB) and not state.has_batch_work("other")


def test_two_processes_claiming_at_once_never_claim_one_post_twice(state: StateStore):
    with state.batch_store() as store:
        store.queue_days(JOB, [DAY], queued(300))
    claim = {"job": JOB, "per_claim": 7, "max_claims": 100}
    results = workers(("claim_posts", claim), ("claim_posts", claim))
    claimed = [key for _, result in results for key in result["claimed"]]
    assert sorted(claimed) == [p.key for p in queued(300)]  # every post once: none twice, none lost
    with state.batch_store() as store:
        assert store.unsent(JOB) == [] and len(store.unrecorded_intents(JOB)) == -(-300 // 7)


def at_azure(client: AzureBatchClient) -> Counter[str]:
    """How many times each custom_id was sent to Azure, over every batch's input file."""
    sent: Counter[str] = Counter()
    for batch in client.client.batches.list(limit=100):
        content = client.download(batch.input_file_id)
        sent.update(json.loads(line)["custom_id"] for line in content.splitlines() if line.strip())
    return sent


def test_two_submitters_at_once_send_every_post_once(state: StateStore, emulator, batch_client, sentiment_job):
    with state.batch_store() as store:
        store.queue_days(JOB, [DAY], queued(95))
    send = {"endpoint": emulator.endpoint, "api_key": API_KEY}
    results = workers(("send_unsent", send), ("send_unsent", send))
    assert sorted(r["requests"] for _, r in results) == [0, 5]  # 95 posts, 20 a request: one submitter sent them all
    sent = at_azure(batch_client)
    assert set(sent.values()) == {1} and len(sent) == 5 == emulator.stats["batches_created"] * 5
    with state.batch_store() as store:
        assert store.unsent(JOB) == [] and store.unrecorded_intents(JOB) == []
        (batch,) = store.open_batches(JOB)
        assert sorted(store.batch_requests(JOB, batch.batch_id)) == sorted(sent)


def test_a_crash_after_azure_created_the_batch_adopts_it_instead_of_paying_again(state: StateStore, emulator, batch_client, sentiment_job):
    with state.batch_store() as store:
        store.queue_days(JOB, [DAY], queued(30))
    ((code, _),) = workers(("send_unsent", {"endpoint": emulator.endpoint, "api_key": API_KEY, "crash_after": "create"}))
    assert code == CRASH_CODE and emulator.stats["batches_created"] == 1
    (created,) = batch_client.client.batches.list()
    with state.batch_store() as store:
        (intent,) = store.unrecorded_intents(JOB)
        assert created.metadata["social_enrich_intent"] == intent.intent_id and store.open_batches(JOB) == []

        batch_ids, _ = batch_enrichment.send_unsent(sentiment_job, store, batch_client, LOG)

        assert batch_ids == [created.id] and emulator.stats["batches_created"] == 1  # adopted, not paid twice
        assert store.unrecorded_intents(JOB) == [] and [b.batch_id for b in store.open_batches(JOB)] == [created.id]
        assert sorted(store.batch_requests(JOB, created.id)) == sorted(at_azure(batch_client))
        assert store.unsent(JOB) == []


def test_a_crash_before_the_batch_was_created_submits_it_once(state: StateStore, emulator, batch_client, sentiment_job):
    with state.batch_store() as store:
        store.queue_days(JOB, [DAY], queued(30))
    ((code, _),) = workers(("send_unsent", {"endpoint": emulator.endpoint, "api_key": API_KEY, "crash_after": "claim"}))
    assert code == CRASH_CODE and emulator.stats["batches_created"] == 0
    with state.batch_store() as store:
        (intent,) = store.unrecorded_intents(JOB)
        claimed = store.intent_requests(JOB, intent.intent_id)

        batch_ids, requests = batch_enrichment.send_unsent(sentiment_job, store, batch_client, LOG)
        again, _ = batch_enrichment.send_unsent(sentiment_job, store, batch_client, LOG)

        assert requests == 2 and again == [] and emulator.stats["batches_created"] == 1
        (created,) = batch_client.client.batches.list()
        assert batch_ids == [created.id] and created.metadata["social_enrich_intent"] == intent.intent_id
        assert at_azure(batch_client) == Counter(dict.fromkeys(claimed, 1))  # the intent's own requests, once
        assert store.unrecorded_intents(JOB) == [] and store.unsent(JOB) == []


def test_a_submitter_that_cannot_get_the_lock_leaves_the_posts_to_the_poller(state: StateStore, batch_client, sentiment_job, caplog):
    with state.batch_store() as holder, state.batch_store() as other:
        holder.queue_days(JOB, [DAY], queued(3))
        with holder.submitting(JOB, wait_seconds=0) as held:
            assert held
            caplog.set_level(logging.INFO)
            assert batch_enrichment.send_unsent(sentiment_job, other, batch_client, LOG, wait_seconds=0.3) == ([], 0)
        assert "another process is submitting job 'sentiment'" in caplog.text
        assert len(other.unsent(JOB)) == 3
        with other.submitting(JOB, wait_seconds=0) as held:  # released when the holder's block ended
            assert held



def test_one_collector_at_a_time_and_a_late_collect_never_unclaims_posts_sent_again(state: StateStore):
    with state.batch_store() as first, state.batch_store() as second:
        first.queue_days(JOB, [DAY], queued(2))
        ((intent, _),) = first.claim(JOB, lambda waiting: [(None, {"req-1": waiting})])
        first.record_batch(JOB, intent.intent_id, "batch-1", "completed", "file-1")
        with first.collecting(JOB, wait_seconds=0) as held, second.collecting(JOB, wait_seconds=0.2) as also:
            assert held and not also  # the second waits, then leaves the batch to the holder
        posts = first.batch_requests(JOB, "batch-1")["req-1"]
        first.collect(JOB, "batch-1", [], posts, "completed: 0 answered, 2 asked again")
        ((again, _),) = first.claim(JOB, lambda waiting: [(None, {"req-2": waiting})])
        first.record_batch(JOB, again.intent_id, "batch-2", "validating", "file-2")
        # A collect of batch-1 that read it before (and stores late) must not take the posts out of batch-2.
        second.collect(JOB, "batch-1", [], posts, "completed: 0 answered, 2 asked again")
        assert [p.key for p in first.batch_requests(JOB, "batch-2")["req-2"]] == [1000, 1001]
        assert first.unsent(JOB) == [] and [b.batch_id for b in first.open_batches(JOB)] == ["batch-2"]
        assert first.batch_days(JOB, "batch-2") == [DAY] and first.unsent_days(JOB) == []

# -- choosing the backend, and secrets ----------------------------------------------------------


def test_the_state_url_picks_the_backend(monkeypatch: pytest.MonkeyPatch, state_home: Path):
    monkeypatch.delenv("SOCIAL_ENRICH_STATE_URL", raising=False)
    assert state_url() == "" and isinstance(default_state_store(), SQLiteState)
    assert default_state_store().batch_store_exists() is False and not state_home.exists()  # cheap: nothing made
    monkeypatch.setenv("SOCIAL_ENRICH_STATE_URL", " postgresql://u:hunter2@db.internal:5432/dagster ")
    store = default_state_store()
    assert isinstance(store, PostgresState) and repr(store) == "PostgresState('postgresql://u:***@db.internal:5432/dagster')"
    with pytest.raises(StateStoreError, match=r"unsupported state store URL mysql://u:\*\*\*@h/db in \$SOCIAL_ENRICH_STATE_URL") as e:
        open_state_store("mysql://u:hunter2@h/db")
    assert "hunter2" not in str(e.value)


def test_a_wrong_password_fails_clearly_without_showing_it(postgres_url: str):
    wrong = postgres_url.replace("@127.0.0.1", "x9Secret@127.0.0.1").replace("//social_enrich_test:", "//social_enrich_test:w")
    store = open_state_store(wrong)
    assert "x9Secret" not in repr(store)
    with pytest.raises(StateStoreError) as e:
        store.batch_store()
    message = str(e.value)
    assert message.startswith("cannot connect to the state store postgresql://social_enrich_test:***@127.0.0.1:")
    assert "password authentication failed" in message and "$SOCIAL_ENRICH_STATE_URL" in message
    assert "x9Secret" not in message and e.value.__cause__ is None and e.value.__suppress_context__


def test_a_sqlite_store_from_before_intents_opens_with_its_batch_in_flight(state_home: Path):
    # The tables as the store wrote them before intents existed, with one batch in flight.
    state = open_state_store("")
    state.batches_path.parent.mkdir(parents=True)
    with sqlite3.connect(state.batches_path) as db:
        db.executescript(OLD_SCHEMA)
        db.execute("INSERT INTO days VALUES ('sentiment', '2026-11-01', 2, '2026-11-01T00:00:00+00:00', 0, NULL)")
        db.executemany("INSERT INTO posts (job, day, post_key, input_hash, truncated, fields, attempts, custom_id, batch_id, pack_position)"
                       " VALUES ('sentiment', '2026-11-01', ?, 'h', 0, '{}', ?, ?, ?, 0)",
                       [("1", 1, "req-old", "batch-old"), ("2", 0, None, None)])
        db.execute("INSERT INTO batches (batch_id, job, status, input_file_id, requests, submitted_at)"
                   " VALUES ('batch-old', 'sentiment', 'in_progress', 'file-old', 1, '2026-11-01T00:00:00+00:00')")
    db.close()
    with state.batch_store() as store:
        assert [b.batch_id for b in store.open_batches(JOB)] == ["batch-old"]
        assert [p.key for p in store.batch_requests(JOB, "batch-old")["req-old"]] == [1]
        ((intent, _),) = store.claim(JOB, lambda waiting: [(None, {"req-new": waiting})])
        store.record_batch(JOB, intent.intent_id, "batch-new", "validating", "file-new")
        assert [p.key for p in store.batch_requests(JOB, "batch-new")["req-new"]] == [2]


OLD_SCHEMA = """
CREATE TABLE days (job TEXT NOT NULL, day TEXT NOT NULL, posts INTEGER NOT NULL, queued_at TEXT NOT NULL,
    realtime INTEGER NOT NULL DEFAULT 0, may_live_on TEXT, PRIMARY KEY (job, day));
CREATE TABLE posts (job TEXT NOT NULL, day TEXT NOT NULL, post_key TEXT NOT NULL, update_time TEXT, input_hash TEXT NOT NULL,
    truncated INTEGER NOT NULL, fields TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    custom_id TEXT, batch_id TEXT, pack_position INTEGER, status TEXT, response TEXT, error TEXT,
    prompt_tokens REAL NOT NULL DEFAULT 0, completion_tokens REAL NOT NULL DEFAULT 0, cached_tokens REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (job, day, post_key));
CREATE INDEX posts_by_request ON posts (custom_id);
CREATE TABLE batches (batch_id TEXT PRIMARY KEY, job TEXT NOT NULL, status TEXT NOT NULL, input_file_id TEXT NOT NULL,
    output_file_id TEXT, error_file_id TEXT, requests INTEGER NOT NULL, completed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0, submitted_at TEXT NOT NULL, closed_at TEXT, note TEXT);
"""



ROUNDS, WORKERS = 200, 6


def _open_stores(folder: str, barrier: Any, results: Any) -> None:
    """One worker: in each round, open that round's new store together with the others."""
    for attempt in range(ROUNDS):
        try:
            barrier.wait()
        except threading.BrokenBarrierError:  # a worker is gone or too slow: the test reports it
            results.put("the others stopped waiting")
            return
        try:
            SQLiteConnection(Path(folder) / f"store{attempt}.sqlite3").query("SELECT 1")
            results.put("ok")
        except sqlite3.OperationalError as e:
            results.put(f"{e}")


def test_processes_opening_a_new_sqlite_store_at_once_all_open_it(tmp_path):
    """Each turns the new file to WAL; SQLite answers the losers "database is locked" without waiting
    (deadlock avoidance), so opening must try again; without that, 200 rounds here saw it fail."""
    # Spawned processes, not forked (a fork of this many-threaded test process may inherit a held lock
    # and hang) and not a Pool (which waits forever for a task whose worker died); every wait is bounded.
    spawn = multiprocessing.get_context("spawn")
    barrier, results = spawn.Barrier(WORKERS, timeout=30), spawn.Queue()
    workers = [spawn.Process(target=_open_stores, args=(str(tmp_path), barrier, results)) for _ in range(WORKERS)]
    for worker in workers:
        worker.start()
    try:
        outcomes = Counter(results.get(timeout=60) for _ in range(ROUNDS * WORKERS))
    finally:
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                os.kill(worker.pid, 9)
                worker.join(timeout=10)
    assert outcomes == {"ok": ROUNDS * WORKERS}, outcomes