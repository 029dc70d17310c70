"""Enrichment through the Azure OpenAI Batch API: queue days, submit, collect, write. No Dagster here.

1. ``submit_days`` reads the days like a realtime run (the same chunk loop, :func:`enrichment.post_chunks`),
   answers what it can at once (the response cache, posts with nothing to send), queues every post in
   the batch store and submits the rest.
2. ``check_batches`` (the polling sensor's tick: cheap calls only) refreshes the open batches' statuses,
   cancels batches stuck past their deadline, and says which days have work to collect: a final batch
   not yet read, every answer in, or posts to send again. It downloads and writes nothing.
3. ``collect_days`` (a run of the enrichment asset the sensor requests, in its pool, with its run log)
   reads finished batches, stores their answers in the store and the response cache, sends again what
   got no answer (or hands its days to realtime), and writes each of its days whose posts are all
   answered, with the realtime path's row builder and figures (an :class:`EnrichmentReport` per day).
A crash anywhere leaves the store consistent: a batch's answers are stored, and it is closed, in one
transaction, answers are saved before a day is written, and a day leaves the store only after its
write committed; the next collect run carries on from there.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from pyiceberg.catalog import Catalog

from social_enrich.config import JobConfig
from social_enrich.enrichment import (
    EnrichmentReport, ScoredPosts, answer_key, cached_answers, count_result, days_between, new_report, post_chunks,
    read_posts_to_send, result_rows,
)  # fmt: skip
from social_enrich.environment import default_state_store
from social_enrich.errors import SocialEnrichError
from social_enrich.inference.azure_batch import (
    AzureBatchClient, BatchAnswers, RequestFile, new_custom_id, parse_jsonl, read_output_line, request_files, request_line,
    request_tokens,
)  # fmt: skip
from social_enrich.inference.provider import PostToScore, ScoreResult
from social_enrich.state import StateStore
from social_enrich.state.batch_store import OPEN_STATUSES, BatchRecord, BatchStore, Intent, QueuedPost
from social_enrich.state.response_cache import CACHED_STATUSES, ResponseCache
from social_enrich.inference.usage import Usage
from social_enrich.lakehouse.catalog import load_table
from social_enrich.lakehouse.target_table import open_target, partition_row_counts, write_days

INTENT_KEY, JOB_KEY = "social_enrich_intent", "social_enrich_job"  # the metadata a batch is created with
SUBMIT_LOCK_WAIT_SECONDS = 60.0  # how long a submitter waits for another of the same job before leaving it to the poller
COLLECT_LOCK_WAIT_SECONDS = 600.0  # how long a collect run waits for another of the same job (downloads, writes)
CLOCK_SLACK_SECONDS = 600.0  # Azure's clock may differ from ours: an intent's batch is looked for this much earlier
SERVED_BY = "azure_openai_batch"
COMPLETE, UNSENT = "complete", "unsent"  # work of a day besides its finished batches (see BatchCheck.ready)


@dataclass
class SubmitReport:
    posts: int = 0
    from_cache: int = 0
    not_sendable: int = 0
    requests: int = 0
    batches: list[str] = field(default_factory=list)


@dataclass
class BatchCheck:
    """One tick of the poller: what the batches' statuses say, and the days with work for a collect run."""

    batches_polled: int = 0
    batches_finished: Counter[str] = field(default_factory=Counter)
    batches_cancelled: int = 0
    ready: dict[dt.date, list[str]] = field(default_factory=dict)  # day -> its finished batches, COMPLETE, UNSENT
    queued_at: dict[dt.date, str] = field(default_factory=dict)
    days_for_realtime: list[tuple[dt.date, str]] = field(default_factory=list)  # (day, queued at)

    def summary(self) -> str:
        return (f"batches polled {self.batches_polled} (finished {dict(self.batches_finished)}, cancelled {self.batches_cancelled}), "
                f"days to collect {[d.isoformat() for d in self.ready]}, days for realtime {len(self.days_for_realtime)}")


@dataclass
class CollectReport:
    """One collect run, like the original poller's summary; ``days``: the report of each day written."""

    batches_polled: int = 0
    batches_finished: Counter[str] = field(default_factory=Counter)
    batches_cancelled: int = 0
    items_updated: int = 0
    items_requeued: int = 0
    errors: int = 0  # requests answered with an error line, or not at all
    days: list[EnrichmentReport] = field(default_factory=list)
    days_for_realtime: list[tuple[dt.date, str]] = field(default_factory=list)  # (day, queued at)
    batches_submitted: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"batches polled {self.batches_polled} (finished {dict(self.batches_finished)}, cancelled {self.batches_cancelled}), "
            f"items updated {self.items_updated}, requeued {self.items_requeued}, "
            f"partitions completed {len(self.days)}, errors {self.errors}, new batches {len(self.batches_submitted)}"
        )


def submit_days(
    job: JobConfig, first: dt.date, last: dt.date, catalog: Catalog, client: AzureBatchClient, log: logging.Logger,
    state: StateStore | None = None,
) -> SubmitReport:
    state = state or default_state_store()
    posts, send = read_posts_to_send(catalog, job, first, last, log)
    read = new_report(first, last, client.model_id, posts)  # what the scan found: reported when the days are written
    report = SubmitReport(posts=posts.posts.num_rows)
    queued: list[QueuedPost] = []
    cache = state.response_cache() if job.inference.cache else None
    try:
        for part in post_chunks(job, posts, send, read, log):
            chunk = part.chunk
            keys, hits = cached_answers(job, client.cache_identity, chunk, cache)
            key_of = dict(zip(chunk.positions, keys))
            days, updated = part.day_list, part.updated.to_pylist()
            for n, key in enumerate(chunk.keys):
                if n not in key_of:  # nothing to send: its result (failed) is known
                    result, fields = chunk.results[n], {}
                    report.not_sendable += 1
                else:
                    result, fields = hits.get(key_of[n]), chunk.fields[n]
                    report.from_cache += result is not None
                queued.append(QueuedPost(days[n], key, updated[n], chunk.hashes[n], chunk.truncated[n], fields, 0, result))
    finally:
        if cache is not None:
            cache.close()
    submitted = {"first": first.isoformat(), "last": last.isoformat(), "rows_read": read.rows_read, "null_keys": read.null_keys,
                 "versions_collapsed": read.versions_collapsed, "capped": read.capped, "touched_later": read.touched_later}
    with state.batch_store() as store:
        store.queue_days(job.name, days_between(first, last), queued, posts.version_days if posts.versions_complete else None, submitted)
        report.batches, report.requests = send_unsent(job, store, client, log)
    return report


def send_unsent(job: JobConfig, store: BatchStore, client: AzureBatchClient, log: logging.Logger,
                wait_seconds: float = SUBMIT_LOCK_WAIT_SECONDS) -> tuple[list[str], int]:
    """Submit every queued post without an answer or a request that the deployments' enqueued-token
    quotas have room for; fail those out of attempts.

    Under the job's submit lock: first what a submitter that died left (:func:`_resume_intents`), then
    the unsent posts, claimed as intents in the store before anything is uploaded. Each file goes to
    the Global Batch deployment with the most room; a file no deployment has room for stays unsent
    (Azure would fail it with token_limit_exceeded), and goes with a later collect run, once batches
    have finished."""
    settings = job.inference.batch
    with store.submitting(job.name, wait_seconds) as ours:
        if not ours:
            log.info("another process is submitting job '%s' (its submit lock stayed held for %.0f s); "
                     "what it leaves unsent goes with the next poll", job.name, wait_seconds)
            return [], 0
        room = client.room(store.enqueued_tokens())
        batch_ids, sent = _resume_intents(job, store, client, room, log)
        spent = [p for p in store.unsent(job.name) if p.attempts >= settings.max_attempts]
        if spent:
            error = f"no batch answer after {settings.max_attempts} batches (inference.batch.max_attempts)"
            store.settle(job.name, [(p, ScoreResult.failed(error), Usage()) for p in spent])
            log.warning("%d posts failed: %s", len(spent), error)
        size = job.inference.posts_per_request
        # Files are sized with the longest deployment name, so a file fits its limits on any of them.
        sizing = max((lane.deployment for lane in client.lanes), key=len)
        waiting_for_room: list[int] = []

        def plan(waiting: list[QueuedPost]) -> list[tuple[tuple[RequestFile, str, int], dict[str, list[QueuedPost]]]]:
            waiting = [p for p in waiting if p.attempts < settings.max_attempts]
            requests = {new_custom_id(): waiting[n : n + size] for n in range(0, len(waiting), size)}
            lines = [(cid, _request_line(job, sizing, cid, posts)) for cid, posts in requests.items()]
            planned = []
            for request_file in request_files(lines, settings.requests_per_file, settings.max_file_bytes):
                tokens = sum(request_tokens(line) for line in request_file.content.splitlines())
                deployment = max(room, key=room.__getitem__)
                if tokens > room[deployment]:
                    waiting_for_room.append(tokens)
                    break  # this file and the rest wait for batches to finish
                room[deployment] -= tokens
                planned.append(((request_file, deployment, tokens), {cid: requests[cid] for cid in request_file.custom_ids}))
            return planned

        for intent, (request_file, deployment, tokens) in store.claim(job.name, plan):
            batch_ids.append(_submit(job, store, client, intent, request_file, deployment, tokens, sizing, log))
            sent += len(request_file.custom_ids)
        if waiting_for_room:
            _too_large_for_any(client, waiting_for_room[0])
            log.info("posts of job '%s' wait to be sent: a batch of %d tokens would pass the enqueued-token quota of every "
                     "Global Batch deployment (tokens left: %s); they go once batches finish", job.name, waiting_for_room[0],
                     ", ".join(f"{name} {left:,}" for name, left in room.items()))
    return batch_ids, sent


def _too_large_for_any(client: AzureBatchClient, tokens: int) -> None:
    largest = max(lane.enqueued_token_limit for lane in client.lanes)
    if tokens > largest:
        raise BatchFileTooLargeError(
            f"a batch file of {tokens:,} tokens is over every Global Batch deployment's enqueued-token quota "
            f"(the largest is {largest:,}): lower inference.batch.requests_per_file, or raise the deployment's "
            "enqueued_token_limit to its real quota")


class BatchFileTooLargeError(SocialEnrichError):
    """One batch file would never fit a deployment's enqueued-token quota; the message names the settings."""


def _request_line(job: JobConfig, deployment: str, custom_id: str, posts: list[QueuedPost]) -> bytes:
    return request_line(custom_id, deployment, job.inference, job.response_model, [PostToScore(p.key, p.fields, None) for p in posts])


def _submit(job: JobConfig, store: BatchStore, client: AzureBatchClient, intent: Intent, request_file: RequestFile,
            deployment: str, tokens: int, built_for: str, log: logging.Logger) -> str:
    if deployment != built_for:  # each line names its deployment
        requests = store.intent_requests(job.name, intent.intent_id)
        request_file = RequestFile(b"".join(_request_line(job, deployment, cid, requests[cid]) for cid in request_file.custom_ids),
                                   request_file.custom_ids)
    batch_id, status, file_id = client.submit(request_file, {INTENT_KEY: intent.intent_id, JOB_KEY: job.name[:512]}, deployment)
    store.record_batch(job.name, intent.intent_id, batch_id, status, file_id, deployment, tokens)
    log.info("batch %s on %s: %d requests, %d bytes, %d tokens enqueued, status %s", batch_id, deployment,
             len(request_file.custom_ids), len(request_file.content), tokens, status)
    return batch_id


def _resume_intents(job: JobConfig, store: BatchStore, client: AzureBatchClient, room: dict[str, int],
                    log: logging.Logger) -> tuple[list[str], int]:
    """Intents whose submitter stopped between claiming and recording (a crash, Azure down): a batch
    Azure has for one (its metadata names the intent) is adopted, not paid again; else it is submitted
    now, where there is room (else it waits, like unsent posts)."""
    batch_ids, sent = [], 0
    for intent in store.unrecorded_intents(job.name):
        requests = store.intent_requests(job.name, intent.intent_id)
        found = client.find(INTENT_KEY, intent.intent_id, intent.created_at.timestamp() - CLOCK_SLACK_SECONDS)
        if found is not None:
            batch_id, status, file_id, deployment = found
            tokens = sum(request_tokens(_request_line(job, deployment, cid, posts)) for cid, posts in requests.items())
            store.record_batch(job.name, intent.intent_id, batch_id, status, file_id, deployment, tokens)
            room[deployment] -= tokens
            log.warning("batch %s of %s was created but never recorded (its submitter stopped): adopted, not submitted again",
                        batch_id, intent.intent_id)
            batch_ids.append(batch_id)
            continue
        if not requests:  # its days were written meanwhile
            store.drop_intent(job.name, intent.intent_id)
            continue
        deployment = max(room, key=room.__getitem__)
        lines = [_request_line(job, deployment, cid, posts) for cid, posts in requests.items()]
        tokens = sum(map(request_tokens, lines))
        if tokens > room[deployment]:
            log.info("%s waits to be sent: no Global Batch deployment has room for its %d tokens", intent.intent_id, tokens)
            continue
        room[deployment] -= tokens
        log.warning("%s was claimed but never reached Azure (its submitter stopped): submitting it now", intent.intent_id)
        batch_ids.append(_submit(job, store, client, intent, RequestFile(b"".join(lines), list(requests)), deployment, tokens,
                                 deployment, log))
        sent += len(requests)
    return batch_ids, sent


def _collect(job: JobConfig, store: BatchStore, client: AzureBatchClient, record: BatchRecord, status: str, output: str | None,
             errors_file: str | None, cache: ResponseCache | None, report: CollectReport, log: logging.Logger) -> list[QueuedPost]:
    """Read a finished batch's files: store answers, and return the posts to ask again."""
    batch_id = record.batch_id
    requests = store.batch_requests(job.name, batch_id)
    sizes = {cid: len(posts) for cid, posts in requests.items()}
    answers = BatchAnswers()
    for file_id in (output, errors_file):
        for line in parse_jsonl(client.download(file_id, record.deployment)):
            read_output_line(line, sizes, job.response_model, answers)
    answered: list[tuple[QueuedPost, ScoreResult]] = []
    again: list[QueuedPost] = []
    for cid, posts in requests.items():
        results = answers.answered.get(cid)
        if results is None:
            again.extend(posts)
            report.errors += 1
            continue
        for post, result in zip(posts, results):
            if result is None:
                again.append(post)
            else:
                answered.append((post, result))
    # Tokens are paid per request: each answered post carries an equal share of the batch's tokens.
    share = Usage(**{name: value / max(len(answered), 1) for name, value in vars(answers.usage).items()})
    settled = [(post, result, share) for post, result in answered]
    if cache is not None:
        cache.put_many((answer_key(job, client.cache_identity, p.input_hash), r) for p, r, _ in settled)
    note = f"{status}: {len(settled)} answered, {len(again)} asked again" + (
        f"; e.g. {next(iter(answers.errors.values()))}" if answers.errors else ""
    )
    store.collect(job.name, batch_id, settled, again, note)  # one transaction: a crash before it reads the batch again
    log.info("batch %s %s", batch_id, note)
    report.items_updated += len(settled)
    report.items_requeued += len(again)
    return again


def _refresh(job: JobConfig, store: BatchStore, client: AzureBatchClient, record: BatchRecord, now: dt.datetime,
             report: BatchCheck | CollectReport, log: logging.Logger) -> Any:
    """The batch as Azure has it now (one cheap call), recorded in the store; cancelled when stuck past its deadline."""
    settings = job.inference.batch
    batch = client.retrieve(record.batch_id, record.deployment)
    report.batches_polled += 1
    counts = batch.request_counts
    store.update_batch(record.batch_id, batch.status, batch.output_file_id, batch.error_file_id,
                       counts.completed if counts else 0, counts.failed if counts else 0)
    if batch.status in OPEN_STATUSES:
        overdue = now - record.submitted_at > dt.timedelta(hours=settings.stuck_after_hours)
        if overdue and batch.status != "cancelling":
            client.cancel(record.batch_id, record.deployment)
            report.batches_cancelled += 1
            log.warning("batch %s still %s after %.0f h (inference.batch.stuck_after_hours): cancelled; "
                        "its unanswered items are asked again", record.batch_id, batch.status, settings.stuck_after_hours)
    else:
        report.batches_finished[batch.status] += 1
    return batch


def check_batches(job: JobConfig, client: AzureBatchClient, log: logging.Logger, now: dt.datetime | None = None,
                  state: StateStore | None = None) -> BatchCheck:
    """What the poller does in a tick: statuses (cheap calls), stuck batches cancelled, and the days with
    work for a collect run. Nothing is downloaded, settled or written."""
    now = now or dt.datetime.now(dt.timezone.utc)
    state = state or default_state_store()
    check = BatchCheck()
    with state.batch_store() as store:
        realtime = {day for day, _ in store.realtime_days(job.name)}
        for record in store.open_batches(job.name):
            batch = _refresh(job, store, client, record, now, check, log)
            if batch.status in OPEN_STATUSES:
                continue
            waiting = store.batch_days(job.name, record.batch_id)
            if not waiting:  # its days were written meanwhile: nothing to read
                store.close_batch(record.batch_id, f"{batch.status}: no post waits for it any more")
            for day in waiting:
                if day not in realtime:  # a realtime run writes that day; its batch is read with another day's, if any
                    check.ready.setdefault(day, []).append(record.batch_id)
        for day in store.complete_days(job.name):
            check.ready.setdefault(day, []).append(COMPLETE)
        with store.submitting(job.name, 0) as free:  # while a submitter works, its posts are not left unsent
            if free:
                for day in store.unsent_days(job.name):
                    check.ready.setdefault(day, []).append(UNSENT)
        check.ready = dict(sorted(check.ready.items()))
        check.queued_at = store.queued_days(job.name)
        # Until their realtime run forgets them, these days are requested again (under the same run key).
        check.days_for_realtime = store.realtime_days(job.name)
    return check


def collect_days(job: JobConfig, first: dt.date, last: dt.date, catalog: Catalog, client: AzureBatchClient, log: logging.Logger,
                 now: dt.datetime | None = None, state: StateStore | None = None) -> CollectReport:
    """Collect every finished batch of the job, send again what got no answer, and write the days
    first..last whose posts are all answered (other days get their own collect runs)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    state = state or default_state_store()
    report = CollectReport()
    with state.batch_store() as store, store.collecting(job.name, COLLECT_LOCK_WAIT_SECONDS) as ours:
        if not ours:
            log.warning("another run is collecting job '%s' (its collect lock stayed held for %.0f s); the poller "
                        "requests this day again once that run is done", job.name, COLLECT_LOCK_WAIT_SECONDS)
            return report
        cache = state.response_cache() if job.inference.cache else None
        try:
            requeued: list[QueuedPost] = []
            for record in store.open_batches(job.name):
                batch = _refresh(job, store, client, record, now, report, log)
                if batch.status not in OPEN_STATUSES:
                    requeued += _collect(job, store, client, record, batch.status, batch.output_file_id,
                                         batch.error_file_id, cache, report, log)
        finally:
            if cache is not None:
                cache.close()
        if requeued and job.inference.batch.on_expired == "realtime":
            # The days go to a realtime run; answers already in the cache are not paid again.
            store.hand_to_realtime(job.name, {p.day for p in requeued})
        report.batches_submitted, _ = send_unsent(job, store, client, log)
        for day in store.complete_days(job.name):
            if first <= day <= last:
                report.days.append(_write_day(job, catalog, store, day, now.date(), client.model_id, log))
                store.forget_days(job.name, [day])  # only after the write committed
        report.days_for_realtime = store.realtime_days(job.name)
    return report


def forget_written_days(job: JobConfig, days: list[dt.date], state: StateStore | None = None) -> None:
    """A realtime run wrote these days: batch work queued for them is obsolete."""
    state = state or default_state_store()
    if state.batch_store_exists():
        with state.batch_store() as store:
            store.forget_days(job.name, days)


def _answer(post: QueuedPost) -> ScoreResult:
    if post.result is None:
        raise AssertionError(f"post {post.key!r} of {post.day} has no answer, but its day was complete")
    return post.result


def _day_report(job: JobConfig, store: BatchStore, day: dt.date, model: str, posts: list[QueuedPost]) -> EnrichmentReport:
    """The day's figures as a realtime run reports them, from what the store kept of its posts and of the run that submitted it."""
    submitted = store.day_submitted(job.name, day)
    own = submitted.get("first") == submitted.get("last") == day.isoformat()  # the submitting run's figures are this day's
    report = EnrichmentReport(
        first=day, last=day, model=model,
        rows_read=submitted.get("rows_read", {}) if own else {},
        null_keys=submitted.get("null_keys", {}) if own else {},
        posts=len(posts),
        versions_collapsed=submitted.get("versions_collapsed", 0) if own else 0,
        capped=submitted.get("capped", 0) if own else 0,
        touched_later=submitted.get("touched_later", 0) if own else 0,
        usage=store.day_usage(job.name, day),
        served_by=SERVED_BY,
        price_share=job.inference.batch.price_share,
    )
    figures = report.day(day)
    for post in posts:
        result = _answer(post)
        count_result(job, figures, result, post.truncated)
        if post.attempts:
            figures.sent += 1
        elif result.status in CACHED_STATUSES:
            figures.cache_hits += 1  # answered from the cache when it was submitted
        else:
            report.not_sendable[result.error or "not sendable"] += 1
    return report


def _write_day(job: JobConfig, catalog: Catalog, store: BatchStore, day: dt.date, today: dt.date, model: str,
               log: logging.Logger) -> EnrichmentReport:
    started = time.perf_counter()
    posts = store.day_posts(job.name, day, job.response_model)
    report = _day_report(job, store, day, model, posts)
    scored = ScoredPosts(
        keys=pa.array([p.key for p in posts]),
        days=pa.array([day] * len(posts), pa.date32()),
        updated=pa.array([p.update_time for p in posts], pa.timestamp("us", tz="UTC")),
        hashes=[p.input_hash for p in posts],
        truncated=[p.truncated for p in posts],
        results=[_answer(p) for p in posts],
    )
    rows = result_rows(job, model, scored)
    index_type = load_table(catalog, job.connector.source.tables[0].identifier).schema().find_field(job.index_field).field_type
    may_live_on = store.day_may_live_on(job.name, day)
    if may_live_on is not None:
        # While the batch ran, a post may have been touched again and written to a later day: look there too.
        may_live_on += days_between(day + dt.timedelta(days=1), today)
    target = open_target(catalog, job, index_type)
    report.write = write_days(target, job, [day], rows, may_live_on=may_live_on, later_rows_stay=True)
    if report.write.superseded:
        log.info("%s: %d posts were touched again since the batch was sent and live on a later day; their row there stays",
                 day, report.write.superseded)
    report.partition_rows = partition_row_counts(target, [day])
    report.seconds = {"write": time.perf_counter() - started}
    return report
