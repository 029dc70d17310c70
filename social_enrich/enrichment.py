"""Enrich daily partitions: read the gold posts, score them, write the target. No Dagster here."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import pyarrow as pa
from pydantic import ValidationError
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.expressions import And, EqualTo, In

from social_enrich.config import JobConfig
from social_enrich.environment import response_cache_path
from social_enrich.inference.provider import PostToScore, Provider, ScoreResult
from social_enrich.inference.response_cache import CACHED_STATUSES, Checkpoint, ResponseCache, cache_key
from social_enrich.inference.token_budget import truncate_to_tokens
from social_enrich.inference.usage import Usage
from social_enrich.lakehouse.partition_scan import PartitionPosts, SourceSchemaError, days_text, read_days
from social_enrich.lakehouse.target_table import PARTITION_DATE, WriteStats, json_text_fields, open_target, write_days

PROGRESS_EVERY_SECONDS = 10.0
CHUNK_POSTS = 10_000  # posts held as Python objects at once


class PartitionFailedError(RuntimeError):
    """Too many posts failed; their rows are written (as failed) before this is raised."""

    def __init__(self, message: str, report: EnrichmentReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class EnrichmentReport:
    first: dt.date  # the days first..last, enriched together
    last: dt.date
    model: str
    rows_read: dict[str, int]  # per source: rows touched on the day + versions read for those posts
    null_keys: dict[str, int]
    posts: int = 0  # distinct posts touched on the day (after max_records)
    versions_collapsed: int = 0
    capped: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    labels: Counter[str] = field(default_factory=Counter)
    cache_hits: int = 0  # posts answered from the response cache
    posts_truncated: int = 0
    usage: Usage = field(default_factory=Usage)
    seconds: dict[str, float] = field(default_factory=dict)  # scan / score / write
    write: WriteStats | None = None
    posts_left: int = 0  # not scored: the run was asked to stop (a deadline, SIGTERM) before their chunk
    stopped: str | None = None  # why, when posts_left

    @property
    def complete(self) -> bool:
        return self.posts_left == 0

    @property
    def days_text(self) -> str:
        return days_text(self.first, self.last)

    @property
    def failed_share(self) -> float:
        return self.statuses["failed"] / self.posts if self.posts else 0.0


def fields_to_send(job: JobConfig, columns: list[str]) -> list[str]:
    """The fields sent to the model, after checking that every configured field is in the joined sources."""
    inference = job.inference
    named = {"text_field": [inference.text_field] if inference.text_field else [], "include_fields": inference.include_fields or []}
    for setting, fields in named.items():
        missing = [f for f in fields if f not in columns]
        if missing:
            raise SourceSchemaError(f"{job.path}: inference.{setting} {missing} not in any source table; they have {columns}")
    chosen = inference.include_fields if inference.include_fields is not None else columns
    return [c for c in chosen if c not in set(inference.exclude_fields)]


def input_hash(fields: dict[str, Any]) -> str:
    """A stable hash of exactly what is sent, so the response cache can tell when a post changed."""
    text = json.dumps(fields, sort_keys=True, ensure_ascii=False, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class _ProgressLog:
    """Logs posts done / total, rate and ETA at most every PROGRESS_EVERY_SECONDS."""

    def __init__(self, log: logging.Logger, total: int) -> None:
        self.log, self.total, self.done = log, total, 0
        self.started = self.last = time.monotonic()

    def __call__(self, finished: int) -> None:
        if not finished:
            return
        self.done += finished
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY_SECONDS or self.done == self.total:
            rate = self.done / max(now - self.started, 1e-9)
            eta = (self.total - self.done) / rate if rate else float("inf")
            self.log.info("scored %d/%d posts (%.0f posts/s, ETA %.0fs)", self.done, self.total, rate, eta)
            self.last = now


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

    hashes: list[str]
    truncated: list[bool]
    results: list[ScoreResult | None]
    to_score: list[PostToScore] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)  # where each post to score sits in the chunk


def prepare_chunk(job: JobConfig, posts: pa.Table, send: list[str], log: logging.Logger) -> Chunk:
    """Pick the fields to send, cut over-long text, hash it, and fail the posts that cannot be sent."""
    keys = posts[job.index_field].to_pylist()
    text_field = job.inference.text_field
    texts = posts[text_field].to_pylist() if text_field else [None] * len(keys)
    chunk = Chunk(hashes=[], truncated=[], results=[])
    for key, fields, text in zip(keys, posts.select(send).to_pylist(), texts):
        problem = _row_problem(job, text)
        cut = False
        if problem is None and text is not None:
            text, cut = truncate_to_tokens(text, job.inference.max_input_tokens_per_post)
            if cut and text_field in fields:
                fields[text_field] = text
        chunk.hashes.append(input_hash(fields))
        chunk.truncated.append(cut)
        if problem:
            log.warning("post %s=%r not scored: %s", job.index_field, key, problem)
            chunk.results.append(ScoreResult.failed(problem))
        else:
            chunk.positions.append(len(chunk.results))
            chunk.to_score.append(PostToScore(key=key, fields=fields, text=text))
            chunk.results.append(None)
    return chunk


def score_chunk(
    job: JobConfig, provider: Provider, chunk: Chunk, cache: ResponseCache | None, progress: _ProgressLog, report: EnrichmentReport
) -> list[ScoreResult]:
    """Fill the chunk's results: from the cache where the same input was answered before, else from the model."""
    progress(len(chunk.results) - len(chunk.to_score))
    todo = list(range(len(chunk.to_score)))
    keys: list[str] = []
    if cache is not None:
        keys = [
            cache_key(provider.model_id, job.inference.prompt_version, job.response_model, chunk.hashes[position])
            for position in chunk.positions
        ]
        hits = cache.get_many(keys, job.response_model)
        for n, key in enumerate(keys):
            if key in hits:
                chunk.results[chunk.positions[n]] = hits[key]
        todo = [n for n, key in enumerate(keys) if key not in hits]
        report.cache_hits += len(keys) - len(todo)
        progress(len(keys) - len(todo))
    checkpoint = Checkpoint(cache, job.inference.checkpoint_posts) if cache is not None else None

    def on_result(n: int, result: ScoreResult) -> None:
        chunk.results[chunk.positions[todo[n]]] = result
        if checkpoint is not None:
            checkpoint.add(keys[todo[n]], result)
        progress(1)

    try:
        provider.score([chunk.to_score[n] for n in todo], on_result=on_result)
    finally:
        if checkpoint is not None:
            checkpoint.flush()  # answers already paid for are kept even if scoring failed
    return [r if r is not None else ScoreResult.failed("no result") for r in chunk.results]


def result_rows(
    job: JobConfig, days: pa.Array, model: str, keys: pa.Array, updated: pa.Array, chunk: Chunk, results: list[ScoreResult]
) -> pa.Table:
    response_names = list(job.response_model.model_fields)
    columns: dict[str, list[Any]] = {name: [] for name in response_names}
    for result in results:
        answer = result.response.model_dump(mode="json") if result.response is not None else {}
        for name in response_names:
            value = answer.get(name)
            columns[name].append(json.dumps(value) if isinstance(value, (dict, list)) else value)
    n = len(results)
    written_at = dt.datetime.now(dt.timezone.utc)
    return pa.table(
        {
            job.connector.target.index_field: keys,
            **columns,
            "model": [model] * n,
            "prompt_version": [job.inference.prompt_version] * n,
            "input_hash": chunk.hashes,
            "status": [r.status for r in results],
            "error": [r.error for r in results],
            "input_truncated": chunk.truncated,
            "source_update_time": updated,
            PARTITION_DATE: days,
            job.connector.target.datetime_field: pa.array([written_at] * n, pa.timestamp("us", tz="UTC")),
        }
    )


def answers_in_target(job: JobConfig, catalog: Catalog, first: dt.date, last: dt.date, model: str) -> list[tuple[str, ScoreResult]]:
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
    as_json = json_text_fields(job.response_model)
    found = []
    for row in rows.to_pylist():
        answer = {name: json.loads(row[name]) if name in as_json and row[name] is not None else row[name] for name in names}
        try:
            response = None if row["status"] == "filtered" else job.response_model.model_validate(answer)
        except ValidationError:
            continue  # written by another version of the response model: score again
        key = cache_key(model, job.inference.prompt_version, job.response_model, row["input_hash"])
        found.append((key, ScoreResult(row["status"], response, row["error"])))
    return found


def score_partition(
    job: JobConfig,
    provider: Provider,
    posts: PartitionPosts,
    report: EnrichmentReport,
    log: logging.Logger,
    cache: ResponseCache | None = None,
    should_stop: Callable[[], str | None] | None = None,
    chunk_posts: int = CHUNK_POSTS,
) -> pa.Table:
    """Score the posts chunk by chunk, so only one chunk is ever held as Python objects; return the target rows.

    Before each chunk after the first, ``should_stop`` may give a reason to stop: the posts left are
    counted in the report, not scored, and the rows returned cover the chunks done."""
    send = fields_to_send(job, posts.posts.column_names)
    progress = _ProgressLog(log, posts.posts.num_rows)
    counts_labels = "label" in job.response_model.model_fields
    tables = []
    for start in range(0, max(posts.posts.num_rows, 1), chunk_posts):
        reason = should_stop() if should_stop is not None and start else None
        if reason:
            report.posts_left, report.stopped = posts.posts.num_rows - start, reason
            log.warning("stopping before post %d of %d: %s", start + 1, posts.posts.num_rows, reason)
            break
        rows = posts.posts.slice(start, chunk_posts)
        chunk = prepare_chunk(job, rows, send, log)
        results = score_chunk(job, provider, chunk, cache, progress, report)
        report.statuses.update(r.status for r in results)
        report.posts_truncated += sum(chunk.truncated)
        if counts_labels:
            report.labels.update(r.response.label for r in results if r.response is not None)  # type: ignore[attr-defined]
        updated = posts.source_update_time.slice(start, chunk_posts)
        days = posts.partition_date.slice(start, chunk_posts)
        tables.append(result_rows(job, days, provider.model_id, rows[job.index_field], updated, chunk, results))
    # A chunk whose column is all null (no errors, say) has it as type null: promote, not fail.
    return pa.concat_tables(tables, promote_options="default")


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
    posts = read_days(catalog, job, first, last, log)
    scanned = time.perf_counter()
    report = EnrichmentReport(
        first=first,
        last=last,
        model=provider.model_id,
        rows_read={s: st.touched_rows + st.version_rows for s, st in posts.sources.items()},
        null_keys={s: st.null_keys for s, st in posts.sources.items()},
        posts=posts.posts.num_rows,
        versions_collapsed=sum(st.versions_collapsed for st in posts.sources.values()),
        capped=posts.capped,
    )
    log.info("%s: %d posts touched on %s", job.name, report.posts, report.days_text)
    usage_before = replace(provider.usage)
    cache = None
    if provider.caches_responses and job.inference.cache:
        # Answers the target holds for these days fill a cache that did not last (Lambda's /tmp).
        cache = ResponseCache(response_cache_path(), lambda: answers_in_target(job, catalog, first, last, provider.model_id))
    try:
        rows = score_partition(job, provider, posts, report, log, cache, should_stop, chunk_posts)
    finally:
        if cache is not None:
            cache.close()
        report.usage = provider.usage - usage_before
    scored = time.perf_counter()
    target = open_target(catalog, job, posts.index_type, drop=drop)
    report.write = write_days(target, job, days_between(first, last), rows, keep_other_posts=not report.complete)
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


def report_summary(job: JobConfig, report: EnrichmentReport, seconds: float, target_rows: int | None) -> dict[str, Any]:
    """The run's figures as plain JSON values: Dagster metadata, and the Lambda handler's answer."""
    write = report.write
    return {
        "dagster/table_name": job.connector.target.identifier,
        **({"dagster/row_count": target_rows} if target_rows is not None else {}),
        "dagster/partition_row_count": write.rows_written if write else 0,
        "model": report.model,
        "prompt_version": job.inference.prompt_version,
        "days": report.days_text,
        "posts_touched": report.posts,
        "posts_scored": report.statuses["ok"],
        "posts_failed": report.statuses["failed"],
        "posts_filtered": report.statuses["filtered"],
        "posts_skipped": report.capped + sum(report.null_keys.values()),
        "posts_from_cache": report.cache_hits,
        "posts_truncated": report.posts_truncated,
        "posts_left": report.posts_left,
        "versions_collapsed": report.versions_collapsed,
        "moved_from_other_days": write.moved_from_other_days if write else 0,
        "labels": dict(sorted(report.labels.items())),
        **{f"rows_read/{source}": count for source, count in sorted(report.rows_read.items())},
        **{f"llm/{name}": value for name, value in asdict(report.usage).items()},
        "llm/estimated_cost_usd": round(report.usage.cost_usd(job.inference.price_per_million_tokens), 6),
        **{f"seconds/{p}": round(report.seconds.get(p, 0.0), 3) for p in ("scan", "score", "write")},
        "duration_seconds": round(seconds, 3),
    }


def days_between(first: dt.date, last: dt.date) -> list[dt.date]:
    return [first + dt.timedelta(days=n) for n in range((last - first).days + 1)]
