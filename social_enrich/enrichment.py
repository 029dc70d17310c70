"""Enrich one daily partition: read the gold posts, score them, write the target. No Dagster here."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from pyiceberg.catalog import Catalog

from social_enrich.config import JobConfig
from social_enrich.inference.provider import PostToScore, Provider, ScoreResult
from social_enrich.lakehouse.partition_scan import PartitionPosts, SourceSchemaError, read_partition
from social_enrich.lakehouse.target_table import PARTITION_DATE, WriteStats, open_target, write_day

PROGRESS_EVERY_SECONDS = 10.0
CHUNK_POSTS = 10_000  # posts held as Python objects at once


class PartitionFailedError(RuntimeError):
    """Too many posts failed; their rows are written (as failed) before this is raised."""

    def __init__(self, message: str, report: EnrichmentReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class EnrichmentReport:
    day: dt.date
    model: str
    rows_read: dict[str, int]  # per source: rows touched on the day + versions read for those posts
    null_keys: dict[str, int]
    posts: int = 0  # distinct posts touched on the day (after max_records)
    versions_collapsed: int = 0
    capped: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    labels: Counter[str] = field(default_factory=Counter)
    seconds: dict[str, float] = field(default_factory=dict)  # scan / score / write
    write: WriteStats | None = None

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
    """A stable hash of exactly what is sent, so a later cache can tell when a post changed."""
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
    return None


def score_posts(
    job: JobConfig, provider: Provider, posts: pa.Table, send: list[str], progress: _ProgressLog, log: logging.Logger
) -> tuple[list[str], list[ScoreResult]]:
    """Hash what is sent per post, score the valid posts, and return hashes and results in post order."""
    keys = posts[job.index_field].to_pylist()
    text_field = job.inference.text_field
    texts = posts[text_field].to_pylist() if text_field else [None] * len(keys)
    hashes: list[str] = []
    results: list[ScoreResult | None] = []
    to_score: list[PostToScore] = []
    for key, fields, text in zip(keys, posts.select(send).to_pylist(), texts):
        hashes.append(input_hash(fields))
        problem = _row_problem(job, text)
        if problem:
            log.warning("post %s=%r not scored: %s", job.index_field, key, problem)
        else:
            to_score.append(PostToScore(key=key, fields=fields, text=text))
        results.append(ScoreResult.failed(problem) if problem else None)
    progress(len(keys) - len(to_score))
    scored = iter(provider.score(to_score, progress=progress))
    return hashes, [result or next(scored) for result in results]


def result_rows(
    job: JobConfig, day: dt.date, model: str, keys: pa.Array, updated: pa.Array, hashes: list[str], results: list[ScoreResult]
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
            "input_hash": hashes,
            "status": [r.status for r in results],
            "error": [r.error for r in results],
            "source_update_time": updated,
            PARTITION_DATE: pa.array([day] * n, pa.date32()),
            job.connector.target.datetime_field: pa.array([written_at] * n, pa.timestamp("us", tz="UTC")),
        }
    )


def score_partition(
    job: JobConfig, provider: Provider, day: dt.date, posts: PartitionPosts, report: EnrichmentReport, log: logging.Logger
) -> pa.Table:
    """Score the posts chunk by chunk, so only one chunk is ever held as Python objects; return the target rows."""
    send = fields_to_send(job, posts.posts.column_names)
    progress = _ProgressLog(log, posts.posts.num_rows)
    counts_labels = "label" in job.response_model.model_fields
    chunks = []
    for start in range(0, max(posts.posts.num_rows, 1), CHUNK_POSTS):
        chunk = posts.posts.slice(start, CHUNK_POSTS)
        hashes, results = score_posts(job, provider, chunk, send, progress, log)
        report.statuses.update(r.status for r in results)
        if counts_labels:
            report.labels.update(r.response.label for r in results if r.response is not None)  # type: ignore[attr-defined]
        updated = posts.source_update_time.slice(start, CHUNK_POSTS)
        chunks.append(result_rows(job, day, provider.model_id, chunk[job.index_field], updated, hashes, results))
    return pa.concat_tables(chunks)


def enrich_partition(
    job: JobConfig, day: dt.date, catalog: Catalog, provider: Provider, *, drop: bool = False, log: logging.Logger | None = None
) -> EnrichmentReport:
    log = log or logging.getLogger(__name__)
    started = time.perf_counter()
    posts = read_partition(catalog, job, day, log)
    scanned = time.perf_counter()
    report = EnrichmentReport(
        day=day,
        model=provider.model_id,
        rows_read={s: st.touched_rows + st.version_rows for s, st in posts.sources.items()},
        null_keys={s: st.null_keys for s, st in posts.sources.items()},
        posts=posts.posts.num_rows,
        versions_collapsed=sum(st.versions_collapsed for st in posts.sources.values()),
        capped=posts.capped,
    )
    log.info("%s: %d posts touched on %s", job.name, report.posts, day)
    rows = score_partition(job, provider, day, posts, report, log)
    scored = time.perf_counter()
    target = open_target(catalog, job, posts.index_type, drop=drop)
    report.write = write_day(target, job, day, rows)
    report.seconds = {
        "scan": scanned - started,
        "score": scored - scanned,
        "write": time.perf_counter() - scored,
    }
    if report.failed_share > job.inference.max_failed_share:
        raise PartitionFailedError(
            f"{report.statuses['failed']} of {report.posts} posts failed on {day} "
            f"(share {report.failed_share:.0%} > inference.max_failed_share {job.inference.max_failed_share:.0%}); "
            "their rows are stored with status failed and are retried on the next materialization",
            report,
        )
    return report
