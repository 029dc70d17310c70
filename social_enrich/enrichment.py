"""Enrich daily partitions: read the gold posts, score them, write the target. No Dagster here."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from dataclasses import fields as dataclass_fields
from typing import Any

import pyarrow as pa
from pydantic import ValidationError
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.table import Table
from pyiceberg.expressions import And, EqualTo, In
from pyiceberg.types import StringType

from social_enrich.config import JobConfig
from social_enrich.day_locks import scoring_days
from social_enrich.environment import default_state_store
from social_enrich.errors import SocialEnrichError
from social_enrich.inference.provider import PostToScore, Provider, ScoreResult
from social_enrich.inference.request_fields import request_rows
from social_enrich.inference.token_budget import truncate_to_tokens
from social_enrich.inference.usage import Usage, answered_shares
from social_enrich.state.response_cache import CACHED_STATUSES, Checkpoint, ResponseCache, cache_key
from social_enrich.lakehouse.catalog import load_table
from social_enrich.lakehouse.response_schema import arrow_columns
from social_enrich.lakehouse.snapshots import current_snapshot_info
from social_enrich.response_summary import Tally
from social_enrich.unchanged_posts import TargetAnswers
from social_enrich.lakehouse.partition_scan import (
    PartitionPosts,
    SourceColumn,
    SourceSchemaError,
    days_text,
    joined_columns,
    read_days,
    source_tables,
)
from social_enrich.lakehouse.target_table import (
    PARTITION_DATE,
    WriteStats,
    conform,
    open_target,
    partition_row_counts,
    write_days,
)

PROGRESS_EVERY_SECONDS = 10.0
CHUNK_POSTS = 10_000  # posts held as Python objects at once
NAMED_POSTS = 5  # posts named in a log line about many


class PartitionFailedError(SocialEnrichError, RuntimeError):
    """Too many posts failed; their rows are written (as failed) before this is raised."""

    def __init__(self, message: str, report: EnrichmentReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class DayFigures:
    """What one daily partition of a run got: its own figures, never the whole range's."""

    statuses: Counter[str] = field(default_factory=Counter)
    summary: Tally = field(default_factory=Tally)  # the job's summarised response fields (response_summary.py)
    cache_hits: int = 0  # answered from the response cache
    unchanged: int = 0  # kept the target's row for the same input (see unchanged_posts.py)
    shared: int = 0  # answered by another post of the run with identical fields
    sent: int = 0  # sent to the model: the day's share of the run's usage
    truncated: int = 0

    @property
    def posts(self) -> int:
        return sum(self.statuses.values())


@dataclass
class EnrichmentReport:
    first: dt.date  # the days first..last, enriched together
    last: dt.date
    model: str
    rows_read: dict[str, int]  # per source: rows touched on the day + versions read for those posts
    null_keys: dict[str, int]
    posts: int = 0  # distinct posts that live on the days (after max_records)
    versions_collapsed: int = 0
    capped: int = 0
    touched_later: int = 0  # touched on the days, but living on a later day (touched again there)
    days: dict[dt.date, DayFigures] = field(default_factory=dict)
    not_sendable: Counter[str] = field(default_factory=Counter)  # why posts were not sent ("post_text is empty")
    not_sendable_keys: dict[str, list[Any]] = field(default_factory=dict)  # a few of them per reason, for the log
    usage: Usage = field(default_factory=Usage)
    usage_by_deployment: dict[str, Usage] = field(default_factory=dict)  # a provider sending to several (a pool)
    seconds: dict[str, float] = field(default_factory=dict)  # scan / score / write
    write: WriteStats | None = None
    partition_rows: dict[dt.date, int] = field(default_factory=dict)  # rows each day's partition holds after the write
    posts_left: int = 0  # not scored: the run was asked to stop (a deadline, SIGTERM) before their chunk
    stopped: str | None = None  # why, when posts_left
    unchanged_in_place: int = 0  # unchanged posts whose row is already on their day, as of their latest touch
    served_by: str | None = None  # "azure_openai_batch" for a day collected from the Batch API
    price_share: float = 1.0  # of the realtime price: inference.batch.price_share for a batch-served day

    def day(self, day: dt.date) -> DayFigures:
        figures = self.days.get(day)
        if figures is None:  # not setdefault: that would build a DayFigures per post
            figures = self.days[day] = DayFigures()
        return figures

    @property
    def totals(self) -> DayFigures:
        """The figures of every day added up: the run's."""
        total = DayFigures()
        for day in self.days.values():
            for name in (f.name for f in dataclass_fields(DayFigures)):
                setattr(total, name, getattr(total, name) + getattr(day, name))
        return total

    @property
    def statuses(self) -> Counter[str]:
        return self.totals.statuses

    @property
    def cache_hits(self) -> int:
        return self.totals.cache_hits

    @property
    def posts_truncated(self) -> int:
        return self.totals.truncated

    @property
    def complete(self) -> bool:
        return self.posts_left == 0

    @property
    def days_text(self) -> str:
        return days_text(self.first, self.last)

    @property
    def incomplete_message(self) -> str:
        return (f"stopped on {self.days_text} ({self.stopped}): {self.posts_left} of {self.posts} posts left; "
                "the posts scored are written, run the same days again to finish")

    @property
    def failed_share(self) -> float:
        return self.statuses["failed"] / self.posts if self.posts else 0.0

    def usage_share(self, day: dt.date) -> Usage:
        """The run's usage shared out by the posts each day sent to the model."""
        sent = self.totals.sent
        share = self.days[day].sent / sent if sent and day in self.days else 0.0
        return Usage(**{name: round(value * share) for name, value in asdict(self.usage).items()})


def check_fields(job: JobConfig, columns: dict[str, SourceColumn]) -> list[str]:
    """The fields sent to the model, after checking every configured field against the joined sources'
    schema, names and types, before any post is read."""
    inference = job.inference
    where = job.path or f"job '{job.name}'"
    named = {"text_field": [inference.text_field] if inference.text_field else [], "include_fields": inference.include_fields or []}
    for setting, fields in named.items():
        missing = [f for f in fields if f not in columns]
        if missing:
            raise SourceSchemaError(f"{where}: inference.{setting} {missing} not in any source table; they have {list(columns)}")
    text = inference.text_field
    if text and not isinstance(columns[text].type, StringType):
        raise SourceSchemaError(
            f"{where}: inference.text_field '{text}' is a {columns[text].type} column of {columns[text].table}, "
            "not a string: name the column that holds the post's text"
        )
    chosen = inference.include_fields if inference.include_fields is not None else list(columns)
    return [c for c in chosen if c not in set(inference.exclude_fields)]


def read_posts_to_send(catalog: Catalog, job: JobConfig, first: dt.date, last: dt.date, log: logging.Logger) -> tuple[PartitionPosts, list[str]]:
    """The posts of the days, only the columns they send (and the text field), after every configured
    field was checked against the sources' schema: no post is read for a job that cannot run."""
    tables = source_tables(catalog, job)
    send = check_fields(job, joined_columns(job, tables))
    text = [job.inference.text_field] if job.inference.text_field else []
    columns = list(dict.fromkeys([job.index_field, *send, *text]))
    return read_days(catalog, job, first, last, log, columns=columns, tables=tables), send


# One encoder for every post: json.dumps with these options builds a new one per call, which is most of its cost.
_CANONICAL_JSON = json.JSONEncoder(sort_keys=True, ensure_ascii=False, default=str, separators=(",", ":"))


def input_hash(fields: dict[str, Any]) -> str:
    """A stable hash of exactly what is sent, so the response cache can tell when a post changed."""
    return hashlib.sha256(_CANONICAL_JSON.encode(fields).encode()).hexdigest()


class _ProgressLog:
    """Logs posts scored, failed and from the cache, with rate and ETA, at least every
    PROGRESS_EVERY_SECONDS: from a timer thread too, so a line comes while requests hang."""

    def __init__(self, log: logging.Logger, total: int) -> None:
        self.log, self.total = log, total
        self.counts: Counter[str] = Counter()
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="social_enrich-progress", daemon=True)

    def __enter__(self) -> _ProgressLog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.counts:
            self.line()

    def _beat(self) -> None:
        while not self._stop.wait(PROGRESS_EVERY_SECONDS):
            self.line()

    def __call__(self, result: ScoreResult | None, how: str = "scored", count: int = 1) -> None:
        with self._lock:
            self.counts["failed" if result is not None and result.status == "failed" else how] += count

    def line(self) -> None:
        with self._lock:
            counts = dict(self.counts)
        done = sum(counts.values())
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = done / elapsed
        eta = f"ETA {(self.total - done) / rate:.0f}s" if rate else "waiting for the first answers"
        parts = ", ".join(f"{counts.get(k, 0)} {k}" for k in ("scored", "failed", "from cache", "shared", "unchanged"))
        self.log.info("%d/%d posts done: %s (%.0f posts/s, %s)", done, self.total, parts, rate, eta)


def _row_problem(job: JobConfig, value: Any) -> str | None:
    """Why a post's text cannot be scored, or None. Only checked when the job names a text_field."""
    name = job.inference.text_field
    if name is None:
        return None
    if value is None:
        return f"{name} is null"
    if not isinstance(value, str):
        return f"{name} is not text ({type(value).__name__})"
    if not value.strip():
        return f"{name} is empty"
    return None


@dataclass
class Chunk:
    """One chunk of posts on its way to the model: what is sent, its hashes, and the results."""

    keys: list[Any]
    fields: list[dict[str, Any]]  # exactly what each post sends
    texts: list[str | None]  # the text field, cut to its budget, for local models
    hashes: list[str] = field(default_factory=list)
    truncated: list[bool] = field(default_factory=list)
    results: list[ScoreResult | None] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)  # the posts to score
    not_sendable: dict[str, list[Any]] = field(default_factory=dict)  # problem -> keys of the posts it stopped

    def post(self, position: int) -> PostToScore:
        return PostToScore(key=self.keys[position], fields=self.fields[position], text=self.texts[position])


def prepare_chunk(job: JobConfig, posts: pa.Table, send: list[str]) -> Chunk:
    """Pick the fields to send, cut over-long text, hash it, and fail the posts that cannot be sent."""
    keys = posts[job.index_field].to_pylist()
    text_field = job.inference.text_field
    texts = posts[text_field].to_pylist() if text_field else [None] * len(keys)
    chunk = Chunk(keys, request_rows(posts.select(send)), texts)
    for position, (key, fields, text) in enumerate(zip(keys, chunk.fields, texts)):
        problem = _row_problem(job, text)
        cut = False
        if problem is None and text is not None:
            text, cut = truncate_to_tokens(text, job.inference.max_input_tokens_per_post)
            if cut:
                texts[position] = text
                if text_field in fields:
                    fields[text_field] = text
        chunk.hashes.append(input_hash(fields))
        chunk.truncated.append(cut)
        if problem:
            chunk.not_sendable.setdefault(problem, []).append(key)
            chunk.results.append(ScoreResult.failed(problem))
        else:
            chunk.positions.append(position)
            chunk.results.append(None)
    return chunk


@dataclass
class PostChunk:
    """One slice of the posts read, prepared to send: the one chunk loop of the realtime and the batch paths."""

    start: int
    rows: pa.Table  # the posts' columns
    days: pa.Array  # the day each post lives on
    updated: pa.Array  # each post's source update time
    chunk: Chunk

    @property
    def day_list(self) -> list[dt.date]:
        return self.days.to_pylist()


def post_chunks(
    job: JobConfig, posts: PartitionPosts, send: list[str], report: EnrichmentReport, log: logging.Logger,
    chunk_posts: int = CHUNK_POSTS, should_stop: Callable[[], str | None] | None = None,
) -> Iterator[PostChunk]:
    """The posts, ``chunk_posts`` at a time (one chunk is ever held as Python objects), each prepared
    (:func:`prepare_chunk`) and its posts that cannot be sent counted in the report (logged once per
    reason at the end). Before each chunk after the first, ``should_stop`` may give a reason to stop:
    the posts left are counted in the report and no more chunks come."""
    total = posts.posts.num_rows
    for start in range(0, max(total, 1), chunk_posts):  # an empty day too: its (empty) rows
        reason = should_stop() if should_stop is not None and start else None
        if reason:
            report.posts_left, report.stopped = total - start, reason
            log.warning("stopping before post %d of %d: %s", start + 1, total, reason)
            break
        rows = posts.posts.slice(start, chunk_posts)
        chunk = prepare_chunk(job, rows, send)
        for problem, keys in chunk.not_sendable.items():
            report.not_sendable[problem] += len(keys)
            named = report.not_sendable_keys.setdefault(problem, [])
            named.extend(keys[: NAMED_POSTS - len(named)])
        yield PostChunk(start, rows, posts.partition_date.slice(start, chunk_posts), posts.source_update_time.slice(start, chunk_posts), chunk)
    for problem, count in report.not_sendable.items():  # one line per reason, not one per post
        named = report.not_sendable_keys[problem]
        log.warning("%d posts not scored: %s (%s=%s%s)", count, problem, job.index_field,
                    ", ".join(map(repr, named)), ", ..." if count > len(named) else "")


def answer_key(job: JobConfig, cache_identity: str, input_hash: str) -> str:
    """The response cache's key of a post's answer: the provider's ``cache_identity`` (realtime or batch alike),
    the job's prompt version and response model, and the hash of what the post sends."""
    return cache_key(cache_identity, job.inference.prompt_version, job.response_model, input_hash)


def cached_answers(job: JobConfig, cache_identity: str, chunk: Chunk, cache: ResponseCache | None) -> tuple[list[str], dict[str, ScoreResult]]:
    """The cache keys of the chunk's posts to score (``chunk.positions``), and the answers the cache has for them."""
    keys = [answer_key(job, cache_identity, chunk.hashes[p]) for p in chunk.positions]
    return keys, cache.get_many(list(dict.fromkeys(keys)), job.response_model) if cache is not None and keys else {}


def score_chunk(
    job: JobConfig, provider: Provider, chunk: Chunk, cache: ResponseCache | None, progress: _ProgressLog, days: list[dt.date],
    report: EnrichmentReport,
) -> list[ScoreResult | None]:
    """Fill the chunk's results: from the cache where the same input was answered before, else from the
    model, each distinct input once (posts with identical fields share one answer). None is left only
    where the caller kept a post's row."""
    for result in chunk.results:
        if result is not None:
            progress(result)
    keys, hits = cached_answers(job, provider.cache_identity, chunk, cache)
    sharing: dict[str, list[int]] = {}  # each input still to answer -> the positions (in chunk.positions) that sent it
    for n, key in enumerate(keys):
        position = chunk.positions[n]
        if key in hits:
            chunk.results[position] = hits[key]
            report.day(days[position]).cache_hits += 1
            progress(hits[key], "from cache")
        else:
            sharing.setdefault(key, []).append(n)
    todo = list(sharing)
    for key in todo:
        report.day(days[chunk.positions[sharing[key][0]]]).sent += 1
        for n in sharing[key][1:]:
            report.day(days[chunk.positions[n]]).shared += 1
    checkpoint = Checkpoint(cache, job.inference.checkpoint_posts) if cache is not None else None

    def on_result(m: int, result: ScoreResult) -> None:
        for i, n in enumerate(sharing[todo[m]]):
            chunk.results[chunk.positions[n]] = result
            progress(result, "scored" if i == 0 else "shared")
        if checkpoint is not None:
            checkpoint.add(todo[m], result)

    try:
        provider.score([chunk.post(chunk.positions[sharing[key][0]]) for key in todo], on_result=on_result)
    finally:
        if checkpoint is not None:
            checkpoint.flush()  # answers already paid for are kept even if scoring failed
    for position in chunk.positions:
        if chunk.results[position] is None:
            chunk.results[position] = ScoreResult.failed("no result")
    return chunk.results


@dataclass
class ScoredPosts:
    """Posts with their answers, as the target's rows are built from them (realtime or batch)."""

    keys: pa.Array
    days: pa.Array  # date32
    updated: pa.Array  # timestamp, UTC
    hashes: list[str]
    truncated: list[bool]
    results: list[ScoreResult]


def result_rows(job: JobConfig, model: str, scored: ScoredPosts) -> pa.Table:
    """The one row builder: the target rows of scored posts."""
    results = scored.results
    # Typed columns (lists, structs, numbers as they are: response_schema.py); no answer is null.
    columns = arrow_columns(job.response_model, [r.response.model_dump(mode="json") if r.response is not None else None for r in results])
    n = len(results)
    written_at = dt.datetime.now(dt.timezone.utc)
    return pa.table(
        {
            job.connector.target.index_field: scored.keys,
            **columns,
            "model": [model] * n,
            "prompt_version": [job.inference.prompt_version] * n,
            "input_hash": scored.hashes,
            "status": [r.status for r in results],
            "error": [r.error for r in results],
            "input_truncated": scored.truncated,
            "source_update_time": scored.updated,
            PARTITION_DATE: scored.days,
            job.connector.target.datetime_field: pa.array([written_at] * n, pa.timestamp("us", tz="UTC")),
        }
    )


def answers_in_target(
    job: JobConfig, catalog: Catalog, first: dt.date, last: dt.date, model: str, cache_identity: str
) -> list[tuple[str, ScoreResult]]:
    """The answers the target already holds for these days from this model and prompt, keyed as the
    response cache keys them: where the cache does not last (Lambda's /tmp), a run after a stopped one
    pays only for the posts that run did not reach."""
    try:
        table = catalog.load_table(job.connector.target.identifier)
    except NoSuchTableError:
        return []
    names = list(job.response_model.model_fields)
    rows = table.scan(
        row_filter=And(
            In(PARTITION_DATE, [d.isoformat() for d in days_between(first, last)]),
            EqualTo("model", model), EqualTo("prompt_version", job.inference.prompt_version), In("status", CACHED_STATUSES),
        ),
        selected_fields=(*names, "input_hash", "status", "error"),
    ).to_arrow()
    found = []
    for row in rows.to_pylist():
        answer = {name: row[name] for name in names}  # typed columns: lists, dicts (structs), numbers
        try:
            response = None if row["status"] == "filtered" else job.response_model.model_validate(answer)
        except ValidationError:
            continue  # written by another version of the response model: score again
        key = answer_key(job, cache_identity, row["input_hash"])
        found.append((key, ScoreResult(row["status"], response, row["error"])))
    return found


def score_partition(
    job: JobConfig,
    provider: Provider,
    posts: PartitionPosts,
    send: list[str],
    report: EnrichmentReport,
    log: logging.Logger,
    cache: ResponseCache | None = None,
    should_stop: Callable[[], str | None] | None = None,
    chunk_posts: int = CHUNK_POSTS,
    known: TargetAnswers | None = None,
) -> pa.Table:
    """Score the posts chunk by chunk (:func:`post_chunks`), so only one chunk is ever held as Python
    objects; return the target rows. Stopped early (``should_stop``), the rows returned cover the chunks done."""
    total = posts.posts.num_rows
    summary = job.summary
    tables = []
    with _ProgressLog(log, total) as progress:
        for part in post_chunks(job, posts, send, report, log, chunk_posts, should_stop):
            rows, days, updated, chunk = part.rows, part.days, part.updated, part.chunk
            day_list = part.day_list
            failures = [r.error if r is not None else None for r in chunk.results]  # the posts that cannot be sent
            found = known.find(rows[job.index_field].to_pylist(), chunk.hashes, failures) if known is not None else [None] * rows.num_rows
            reused = [n for n, at in enumerate(found) if at is not None]
            if reused and known is not None:  # unchanged posts keep their row: not scored, not looked up
                kept = set(reused)
                chunk.positions = [position for position in chunk.positions if position not in kept]
                for n in reused:
                    chunk.results[n] = None  # counted as unchanged, not as failed again
                taken = pa.array(reused, pa.int64())
                old_rows, in_place = known.rows_for([found[n] for n in reused], days.take(taken), updated.take(taken))
                report.unchanged_in_place += in_place
                tables.append(old_rows)
                statuses = old_rows["status"].to_pylist()
                for (day, status), count in Counter(zip((day_list[n] for n in reused), statuses)).items():
                    figures = report.day(day)
                    figures.unchanged += count
                    figures.statuses[status] += count
                values = {name: old_rows[name].to_pylist() for name in summary.fields}
                for at, (n, status) in enumerate(zip(reused, statuses)):
                    if status == "ok":  # failed and filtered rows have no answer
                        report.day(day_list[n]).summary.add(summary, {name: column[at] for name, column in values.items()})
                progress(None, "unchanged", len(reused))
            results = score_chunk(job, provider, chunk, cache, progress, day_list, report)
            fresh = [n for n, at in enumerate(found) if at is None]
            answered = []
            for n in fresh:
                result, figures = results[n], report.day(day_list[n])
                assert result is not None  # only a kept post has no result
                answered.append(result)
                count_result(job, figures, result, chunk.truncated[n])
            if len(fresh) < rows.num_rows:
                taken = pa.array(fresh, pa.int64())
                rows, days, updated = rows.take(taken), days.take(taken), updated.take(taken)
            scored = ScoredPosts(rows[job.index_field], days, updated, [chunk.hashes[n] for n in fresh], [chunk.truncated[n] for n in fresh], answered)
            tables.append(result_rows(job, provider.model_id, scored))
    # A chunk whose column is all null (no errors, say) has it as type null, and rows kept from the
    # target have its types: promote, not fail.
    return pa.concat_tables(tables, promote_options="permissive")


def count_result(job: JobConfig, figures: DayFigures, result: ScoreResult, truncated: bool) -> None:
    """A post's answer in its day's figures: its status, the job's summary, whether its text was cut."""
    figures.statuses[result.status] += 1
    figures.truncated += truncated
    if result.status == "ok" and result.response is not None:
        figures.summary.add_answer(job.summary, result.response)


def _write(
    job: JobConfig, target: Table, report: EnrichmentReport, rows: pa.Table, version_days: frozenset[dt.date] | None, log: logging.Logger
) -> None:
    days = days_between(report.first, report.last)
    rows = conform(rows, target)
    if report.complete and report.unchanged_in_place == rows.num_rows == report.posts:
        # Every post keeps the row it has, on its day: a commit would change nothing but add snapshots.
        log.info("%s: every post is unchanged and in place; nothing to commit", report.days_text)
        snapshot = target.current_snapshot()
        report.write = WriteStats(0, 0, snapshot.snapshot_id if snapshot else None, committed=False)
    else:
        report.write = write_days(target, job, days, rows, may_live_on=version_days)
    if report.write.kept_good:
        log.warning("%d posts failed this time but keep their earlier answer to the same input", report.write.kept_good)
    report.partition_rows = partition_row_counts(target, days)


def new_report(first: dt.date, last: dt.date, model: str, posts: PartitionPosts) -> EnrichmentReport:
    """The report of the days first..last as read: what the scan found, before any post is scored."""
    report = EnrichmentReport(
        first=first,
        last=last,
        model=model,
        rows_read={s: st.touched_rows + st.version_rows for s, st in posts.sources.items()},
        null_keys={s: st.null_keys for s, st in posts.sources.items()},
        posts=posts.posts.num_rows,
        versions_collapsed=sum(st.versions_collapsed for st in posts.sources.values()),
        capped=posts.capped,
        touched_later=posts.touched_later,
    )
    for day in days_between(first, last):
        report.day(day)  # a day with no post still gets its (zero) figures
    return report


def enrich_days(
    job: JobConfig,
    first: dt.date,
    last: dt.date,
    catalog: Catalog,
    provider: Provider,
    *,
    drop: bool = False,
    log: logging.Logger | None = None,
    should_stop: Callable[[], str | None] | None = None,
    chunk_posts: int = CHUNK_POSTS,
) -> EnrichmentReport:
    """Enrich the daily partitions first..last with one scan per source and one commit to the target.

    Stopped early (``should_stop``), it writes the posts scored so far and keeps the days' other rows
    as they were; ``report.posts_left`` says how many posts a later run still has to score."""
    log = log or logging.getLogger(__name__)
    started = time.perf_counter()
    posts, send = read_posts_to_send(catalog, job, first, last, log)
    scanned = time.perf_counter()
    report = new_report(first, last, provider.model_id, posts)
    log.info("%s: %d posts live on %s", job.name, report.posts, report.days_text)
    usage_before, deployments_before = replace(provider.usage), usage_by_deployment(provider)
    cache = None
    if provider.caches_responses and job.inference.cache:
        # Answers the target holds for these days fill a cache that did not last (Lambda's /tmp).
        cache = default_state_store().response_cache(
            lambda: answers_in_target(job, catalog, first, last, provider.model_id, provider.cache_identity)
        )
    # A paid model: one run at a time scores and writes a day, so a second run of a cold day reuses the
    # first's answers (from the target, or the cache if the first was stopped) instead of paying again.
    locks = scoring_days(job.name, days_between(first, last), log) if cache is not None else nullcontext()
    with locks:
        try:
            known = None if drop else TargetAnswers.load(catalog, job, {*days_between(first, last), *posts.version_days}, provider.model_id)
            rows = score_partition(job, provider, posts, send, report, log, cache, should_stop, chunk_posts, known)
        finally:
            if cache is not None:
                cache.close()
            report.usage = provider.usage - usage_before
            report.usage_by_deployment = {name: used - deployments_before.get(name, Usage())
                                          for name, used in usage_by_deployment(provider).items()}
        scored = time.perf_counter()
        index_type, version_days = posts.index_type, posts.version_days if posts.versions_complete else None
        if version_days is None:
            log.info("a source table was updated in place (overwrite, delete or MERGE snapshots): earlier versions of "
                     "its rows are gone, so the write looks for moved posts in every day of the target")
        del known, posts  # the posts' fields are not needed for the write: free them first
        target = open_target(catalog, job, index_type, drop=drop)
        _write(job, target, report, rows, version_days, log)
    report.seconds = {
        "scan": scanned - started,
        "score": scored - scanned,
        "write": time.perf_counter() - scored,
    }
    if report.failed_share > job.inference.max_failed_share:
        raise PartitionFailedError(
            f"{report.statuses['failed']} of {report.posts} posts failed on {report.days_text} "
            f"(share {report.failed_share:.0%} > inference.max_failed_share {job.inference.max_failed_share:.0%}); "
            "their rows are stored with status failed and are retried on the next materialization",
            report,
        )
    return report


def enrich_partition(
    job: JobConfig, day: dt.date, catalog: Catalog, provider: Provider, *, drop: bool = False, log: logging.Logger | None = None
) -> EnrichmentReport:
    """Enrich one daily partition."""
    return enrich_days(job, day, day, catalog, provider, drop=drop, log=log)


def usage_by_deployment(provider: Provider) -> dict[str, Usage]:
    """Each deployment's usage so far, for a provider that sends to several (a pool); else nothing."""
    by_deployment = getattr(provider, "usage_by_deployment", None)
    deployments = by_deployment() if by_deployment is not None else {}
    return deployments if len(deployments) > 1 else {}


def deployment_figures(usage_by_deployment: dict[str, Usage]) -> dict[str, Any]:
    """Requests, tokens, 429s and errors per deployment, and the share of the answers each served."""
    shares = answered_shares(usage_by_deployment)
    figures: dict[str, Any] = {}
    for name, u in sorted(usage_by_deployment.items()):
        figures |= {
            f"llm/deployment/{name}/requests": u.requests,
            f"llm/deployment/{name}/tokens": u.prompt_tokens + u.completion_tokens,
            f"llm/deployment/{name}/throttled": u.throttled,
            f"llm/deployment/{name}/errors": u.errors,
            f"llm/deployment/{name}/share": round(shares[name], 4),
        }
    return figures


def _figures(job: JobConfig, report: EnrichmentReport, figures: DayFigures, usage: Usage) -> dict[str, Any]:
    realtime = usage.cost_usd(job.inference.price_per_million_tokens)
    cost = realtime * report.price_share
    return {
        "posts_scored": figures.statuses["ok"],
        "posts_failed": figures.statuses["failed"],
        "posts_filtered": figures.statuses["filtered"],
        "posts_from_cache": figures.cache_hits,
        "posts_unchanged": figures.unchanged,
        "posts_shared": figures.shared,
        "posts_truncated": figures.truncated,
        # The job's summary (response_summary.py): sentiment's labels, labels/<label>, label_share/<label>, mean/score.
        **figures.summary.metadata(job.summary),
        **{f"llm/{name}": value for name, value in asdict(usage).items()},
        "llm/estimated_cost_usd": round(cost, 6),
        # A day served by the Batch API: who served it, and what realtime would have cost.
        **({"served_by": report.served_by, "llm/realtime_cost_usd": round(realtime, 6), "llm/batch_saving_usd": round(realtime - cost, 6)}
           if report.served_by else {}),
    }


def report_summary(job: JobConfig, report: EnrichmentReport, seconds: float, target_rows: int | None) -> dict[str, Any]:
    """The run's figures, over all its days, as plain JSON values: the run log, and the Lambda handler's answer."""
    write = report.write
    return {
        "dagster/table_name": job.connector.target.identifier,
        **({"table_row_count": target_rows} if target_rows is not None else {}),
        "dagster/partition_row_count": sum(report.partition_rows.values()),
        "model": report.model,
        "prompt_version": job.inference.prompt_version,
        "days": report.days_text,
        "posts_touched": report.posts,
        **_figures(job, report, report.totals, report.usage),
        **deployment_figures(report.usage_by_deployment),
        **({"target_snapshot_id": str(write.snapshot_id)} if write else {}),
        "posts_skipped": report.capped + sum(report.null_keys.values()),
        "posts_left": report.posts_left,
        "posts_on_later_days": report.touched_later,
        "posts_kept_earlier_answer": write.kept_good if write else 0,
        "versions_collapsed": report.versions_collapsed,
        "moved_from_other_days": write.moved_from_other_days if write else 0,
        **{f"rows_read/{source}": count for source, count in sorted(report.rows_read.items())},
        **{f"seconds/{p}": round(report.seconds.get(p, 0.0), 3) for p in ("scan", "score", "write")},
        "duration_seconds": round(seconds, 3),
    }


PER_DAY = "per_day"  # a summary's entry with each day's own figures (day_summary) by ISO day: the Lambda sends it


def day_summary(job: JobConfig, report: EnrichmentReport, day: dt.date, seconds: float, target_rows: int | None) -> dict[str, Any]:
    """One day's own figures: what its materialization reports (rows, statuses, labels, its share of the
    cost). Figures of the run as a whole (rows read, time, moves) come with it only when the run is that
    one day; a run of many days logs them once, as its totals."""
    figures = report.days.get(day, DayFigures())
    rows = report.partition_rows.get(day, 0)
    run = report_summary(job, report, seconds, target_rows) if report.first == report.last else {"run_days": report.days_text}
    return {
        "dagster/table_name": job.connector.target.identifier,
        "model": report.model,
        "prompt_version": job.inference.prompt_version,
        **run,
        "dagster/row_count": rows,  # the partition's rows; the table's total is table_row_count
        "dagster/partition_row_count": rows,
        **({"table_row_count": target_rows} if target_rows is not None else {}),
        "posts_touched": figures.posts,
        **_figures(job, report, figures, report.usage_share(day)),
    }


@dataclass
class RunFigures:
    """What a finished run reports: its totals (the run log, the Lambda's answer) and each day's own figures
    (one materialization per day). Built once, by :func:`run_figures`, whichever path enriched the days."""

    run: dict[str, Any]
    days: dict[dt.date, dict[str, Any]]


def run_figures(job: JobConfig, report: EnrichmentReport, catalog: Catalog, started: float) -> RunFigures:
    """The run's and each day's figures, after the write (``started``: the run's ``time.perf_counter()``)."""
    target_rows = current_snapshot_info(load_table(catalog, job.connector.target.identifier)).total_records
    seconds = time.perf_counter() - started
    days = {day: day_summary(job, report, day, seconds, target_rows) for day in days_between(report.first, report.last)}
    return RunFigures(report_summary(job, report, seconds, target_rows), days)


def days_between(first: dt.date, last: dt.date) -> list[dt.date]:
    return [first + dt.timedelta(days=n) for n in range((last - first).days + 1)]
