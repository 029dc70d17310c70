"""AWS Lambda entry point: enrich days of a job inside Lambda.

Two ways in, one piece of work (``enrich_days`` on the job's catalog and model):
- **Dagster Pipes**: the enrichment asset, with ``execution.mode: lambda``, invokes the function
  through ``PipesLambdaClient``. The event carries the job name and the Pipes parameters; the
  partition range comes from the Pipes context, and logs, metadata and the materialization go back
  to Dagster (in the log tail of the invocation, or through S3 when the job sets a messages bucket).
- **API Gateway**, as the original system was called: ``POST /{job}?drop=false[&date=D | &from=A&to=B]``
  (default: yesterday, UTC), answered with JSON counts and 200; 400 for a bad request or job config,
  404 for an unknown job, 502 when the model failed too many posts, 500 otherwise. 503 says the
  function stopped before its deadline (or on SIGTERM): what was scored is written, the body says
  how many posts are left, and calling again finishes them.

The provider is the function's environment's (``$SOCIAL_ENRICH_ENV=production`` on AWS: Azure OpenAI,
see environment.py); the model key comes from ``$AZURE_OPENAI_API_KEY`` or the Secrets Manager secret
named by ``$OPENAI_SECRET_NAME`` (see inference/credentials.py). Only ``dagster-pipes`` is imported from
Dagster, so the bundle stays small (bench/bench_lambda.py measures it).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import boto3
import openai
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, APIGatewayRestResolver, Response, content_types
from dagster_pipes import (
    DAGSTER_PIPES_CONTEXT_ENV_VAR,
    DAGSTER_PIPES_MESSAGES_ENV_VAR,
    PipesContext,
    PipesDefaultContextLoader,
    PipesDefaultMessageWriter,
    PipesMappingParamsLoader,
    PipesMessageWriter,
    PipesS3MessageWriter,
    decode_param,
)

from social_enrich.config import JobConfig, JobConfigError, discover_job_configs
from social_enrich.enrichment import PER_DAY, EnrichmentReport, PartitionFailedError, enrich_days, run_figures
from social_enrich.environment import EnvironmentConfigError
from social_enrich.inference.azure_openai import AzureOpenAIConfigError, EndpointRejectedError
from social_enrich.inference.credentials import CredentialsError
from social_enrich.inference.local_sentiment import LocalModelMissingError
from social_enrich.inference.selection import ProviderConfigError, environment_provider
from social_enrich.lakehouse.catalog import CatalogUnavailableError, environment_catalog
from social_enrich.lakehouse.partition_scan import SourceSchemaError
from social_enrich.lakehouse.target_table import TargetSchemaError

RESERVE_SECONDS = 30.0  # kept back from the Lambda timeout to write what is done and answer

log = logging.getLogger("social_enrich.lambda")
log.setLevel(logging.INFO)  # Lambda's runtime leaves the root logger at WARNING


class LambdaContext(Protocol):
    aws_request_id: str

    def get_remaining_time_in_millis(self) -> int: ...


class BadRequestError(ValueError):
    """The request cannot be run as asked; the message names the parameter."""


class UnknownJobError(LookupError):
    """No job of that name is configured."""


class IncompleteRunError(RuntimeError):
    """The function stopped before every post was scored; what was scored is written."""


@dataclass
class Budget:
    """Whether to start another chunk: not after SIGTERM, and not when it might not finish before the deadline."""

    context: LambdaContext
    reserve_seconds: float = RESERVE_SECONDS
    signalled: str | None = None
    _last_check: float = field(default_factory=time.monotonic)
    _slowest_chunk: float = 0.0

    def should_stop(self) -> str | None:
        now = time.monotonic()
        self._slowest_chunk = max(self._slowest_chunk, now - self._last_check)
        self._last_check = now
        if self.signalled:
            return f"{self.signalled} received"
        left = self.context.get_remaining_time_in_millis() / 1000
        if left < self.reserve_seconds + self._slowest_chunk:
            return (f"{left:.0f}s left before the Lambda timeout: less than a chunk ({self._slowest_chunk:.0f}s) "
                    f"plus {self.reserve_seconds:.0f}s for writing")
        return None


@contextmanager
def stop_on_sigterm(budget: Budget) -> Iterator[None]:
    """SIGTERM (Lambda shutting down, ECS stopping a task) lets the current chunk finish, then stops cleanly."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def on_sigterm(signum: int, frame: Any) -> None:
        budget.signalled = "SIGTERM"
        log.warning("SIGTERM received: finishing the current chunk, then writing what is done")

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def find_job(name: str) -> JobConfig:
    jobs = {job.name: job for job in discover_job_configs()}
    if name not in jobs:
        raise UnknownJobError(f"no job named {name!r}; configured jobs: {sorted(jobs)}")
    return jobs[name]


def run_job(job: JobConfig, first: dt.date, last: dt.date, drop: bool, budget: Budget) -> tuple[EnrichmentReport, dict[str, Any]]:
    """Enrich first..last; the report and its summary (counts, tokens, cost, timings)."""
    started = time.perf_counter()
    catalog = environment_catalog()
    provider = environment_provider(job)  # the function's environment: production on AWS
    log.info("job %s: %s..%s with model %s", job.name, first, last, provider.model_id)
    with stop_on_sigterm(budget):
        report = enrich_days(
            job, first, last, catalog, provider, drop=drop, log=log, should_stop=budget.should_stop,
            chunk_posts=job.execution.aws_lambda.chunk_posts,
        )
    figures = run_figures(job, report, catalog, started)  # the figures the asset reports on every path
    if first == last:  # the run's figures, and what only a day has (labels/<label>, dagster/row_count)
        return report, {**figures.days[first], **figures.run}
    # Each day's own figures too, for the asset to record one materialization per day (Pipes reports one).
    return report, {**figures.run, PER_DAY: {day.isoformat(): summary for day, summary in figures.days.items()}}


# Dagster Pipes


def _message_writer(event: Mapping[str, Any]) -> PipesMessageWriter:
    """S3 when the asset's reader asked for a bucket (no 4 KB limit), else the log tail."""
    params = decode_param(event[DAGSTER_PIPES_MESSAGES_ENV_VAR])
    return PipesS3MessageWriter(client=boto3.client("s3")) if "bucket" in params else PipesDefaultMessageWriter()


def run_for_pipes(event: Mapping[str, Any], context: LambdaContext) -> dict[str, Any]:
    # open_dagster_pipes keeps one context per process, and a warm Lambda serves many invocations:
    # each gets a context of its own, not the previous one, already closed.
    pipes = PipesContext(PipesMappingParamsLoader(event), PipesDefaultContextLoader(), _message_writer(event))
    PipesContext.set(pipes)
    with pipes:
        # The asset sends the range in the event: Pipes carries it only for a run of one day.
        keys = {"start": event["first"], "end": event["last"]} if "first" in event else pipes.partition_key_range
        first, last = dt.date.fromisoformat(keys["start"]), dt.date.fromisoformat(keys["end"])
        job = find_job(str(event.get("job", "")))
        pipes.log.info(f"Lambda {context.aws_request_id}: job {job.name}, {first}..{last}")
        report, summary = run_job(job, first, last, bool(event.get("drop", False)), Budget(context))
        if not report.complete:
            raise IncompleteRunError(report.incomplete_message)
        # Pipes takes a dict value only with its type spelled out.
        pipes.report_asset_materialization(
            metadata={k: {"raw_value": v, "type": "json"} if isinstance(v, dict) else v for k, v in summary.items()}
        )
        pipes.log.info(f"{summary['posts_touched']} posts, {summary['posts_scored']} scored, {summary['posts_failed']} failed")
    return summary


# API Gateway


def _json(status: int, body: Mapping[str, Any]) -> Response:
    return Response(status_code=status, content_type=content_types.APPLICATION_JSON, body=json.dumps(body, default=str))


def _bool_param(params: Mapping[str, str], name: str) -> bool:
    value = params.get(name, "false").strip().lower()
    if value not in ("true", "false"):
        raise BadRequestError(f"query parameter {name} must be true or false, got {params[name]!r}")
    return value == "true"


def _date_param(params: Mapping[str, str], name: str) -> dt.date | None:
    if name not in params:
        return None
    try:
        return dt.date.fromisoformat(params[name])
    except ValueError:
        raise BadRequestError(f"query parameter {name} must be a date YYYY-MM-DD, got {params[name]!r}") from None


def requested_days(job: JobConfig, params: Mapping[str, str], today: dt.date) -> tuple[dt.date, dt.date]:
    """?date=D, or ?from=A&to=B, or yesterday: checked against the job's partitions."""
    day, first, last = (_date_param(params, n) for n in ("date", "from", "to"))
    if day and (first or last):
        raise BadRequestError("give either date, or from and to, not both")
    if (first is None) != (last is None):
        raise BadRequestError("from and to go together")
    first, last = (day, day) if day else (first, last) if first else (today - dt.timedelta(days=1),) * 2
    start, most = job.connector.source.start_date, job.automation.max_partitions_per_run
    if first > last:
        raise BadRequestError(f"from {first} is after to {last}")
    if (last - first).days + 1 > most:
        raise BadRequestError(f"at most {most} days per call (automation.max_partitions_per_run); use a Dagster backfill for more")
    if first < start or last >= today:
        raise BadRequestError(f"days must be complete partitions of job {job.name}: from {start} to {today - dt.timedelta(days=1)}")
    return first, last


def post_job(app: APIGatewayRestResolver | APIGatewayHttpResolver, job: str) -> Response:
    params = app.current_event.query_string_parameters or {}
    drop = _bool_param(params, "drop")
    config = find_job(job)
    first, last = requested_days(config, params, dt.datetime.now(dt.timezone.utc).date())
    report, summary = run_job(config, first, last, drop, Budget(app.lambda_context))
    body = {"job": config.name, "complete": report.complete, **summary}
    if not report.complete:
        return _json(503, {**body, "error": report.incomplete_message})
    return _json(200, body)


def _error(status: int, e: Exception) -> Response:
    body: dict[str, Any] = {"error": type(e).__name__, "message": str(e)}
    if isinstance(e, PartitionFailedError):
        body["counts"] = {"posts": e.report.posts, **e.report.statuses}
    return _json(status, body)


def _internal_error(e: Exception) -> Response:
    # The message of an unexpected error may quote anything: it goes to the logs, not to the caller.
    log.exception("request failed")
    return _json(500, {"error": type(e).__name__, "message": "internal error; see the function's logs"})


def _api(resolver: type[APIGatewayRestResolver] | type[APIGatewayHttpResolver]) -> APIGatewayRestResolver | APIGatewayHttpResolver:
    app = resolver()
    app.post("/<job>")(lambda job: post_job(app, job))
    for errors, status in (
        ((BadRequestError, JobConfigError, SourceSchemaError, TargetSchemaError, LocalModelMissingError), 400),
        ((UnknownJobError,), 404),
        ((PartitionFailedError, EndpointRejectedError, openai.OpenAIError), 502),
        # Deployment problems whose messages are written to name the setting and never a secret.
        ((CatalogUnavailableError, CredentialsError, AzureOpenAIConfigError, EnvironmentConfigError, ProviderConfigError), 500),
    ):
        app.exception_handler(list(errors))(lambda e, status=status: _error(status, e))
    app.not_found(lambda e: _json(404, {"error": "NotFound", "message": f"no route {app.current_event.http_method} "
                                                                        f"{app.current_event.path}; call POST /{{job}}"}))
    app.exception_handler(Exception)(_internal_error)
    return app


rest_api = _api(APIGatewayRestResolver)  # API Gateway REST API (payload 1.0), as in deploy/lambda/template.yaml
http_api = _api(APIGatewayHttpResolver)  # API Gateway HTTP API (payload 2.0)


def handler(event: Mapping[str, Any], context: LambdaContext) -> dict[str, Any]:
    if DAGSTER_PIPES_CONTEXT_ENV_VAR in event:
        return run_for_pipes(event, context)
    if "requestContext" in event:
        app = http_api if event.get("version") == "2.0" else rest_api
        return app.resolve(event, context)
    raise BadRequestError(
        "unknown event: expected a Dagster Pipes invocation (from the enrichment asset with execution.mode lambda) "
        "or an API Gateway request POST /{job}"
    )
