"""Dagster assets: observable gold tables, and one daily-partitioned enrichment asset per job YAML."""


import datetime as dt
import functools
import json
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
from dagster import (
    AssetExecutionContext,
    AssetMaterialization,
    AssetKey,
    AssetsDefinition,
    BackfillPolicy,
    Config,
    DailyPartitionsDefinition,
    DataVersion,
    Failure,
    MaterializeResult,
    MetadataValue,
    ObserveResult,
    asset,
    observable_source_asset,
)
from dagster_aws.pipes import PipesLambdaClient, PipesS3MessageReader
from pydantic import Field
from pyiceberg.catalog import Catalog

from social_enrich.config import JobConfig, TableRef
from social_enrich.batch_enrichment import collect_days, forget_written_days, submit_days
from social_enrich.enrichment import PER_DAY, PartitionFailedError, RunFigures, days_between, enrich_days, report_summary, run_figures
from social_enrich.errors import SocialEnrichError
from social_enrich.graceful_stop import stop_between_chunks
from social_enrich.resources import AwsLambdaResource, IcebergCatalogResource, ModelProviderResource
from social_enrich.inference.azure_batch import AzureBatchClient
from social_enrich.lakehouse.partition_scan import days_text
from social_enrich.lakehouse.catalog import load_table
from social_enrich.lakehouse.snapshots import SnapshotInfo, current_snapshot_info


class EnrichmentRunConfig(Config):
    drop: bool = Field(default=False, description="Drop and rebuild the target table before writing.")
    batch: bool | None = Field(
        default=None,
        description="Send the work through the Azure OpenAI Batch API (true) or realtime (false); "
        "empty: the job's inference.batch.enabled. Batch-served days are materialized by the collect runs the batch poller requests.",
    )
    collect: bool = Field(
        default=False,
        description="Collect the job's finished Azure OpenAI batches and write the run's days whose answers are all in "
        "(what the batch poller sensor requests).",
    )


def observation_metadata(info: SnapshotInfo) -> dict[str, Any]:
    """What an observation of a gold table records, whoever observes it (the asset or the sensor)."""
    metadata: dict[str, Any] = {
        "dagster/row_count": info.total_records,
        "snapshot_id": str(info.snapshot_id),
        "total-data-files": info.total_data_files,
    }
    if info.committed_at:
        metadata["snapshot_committed_at"] = MetadataValue.timestamp(info.committed_at)
    return metadata


def batch_sensor_name(job: JobConfig) -> str:
    return f"{job.name}_batch_poller"


def source_asset_key(ref: TableRef) -> AssetKey:
    """[database, table]: one catalog per deployment, so a table name is its asset."""
    return AssetKey([ref.database, ref.table])


@functools.cache
def build_gold_source_asset(database: str, table_name: str) -> AssetsDefinition:
    # One object per table, however many jobs (components) read it: Dagster merges the same object once.
    identifier = f"{database}.{table_name}"

    @observable_source_asset(
        key=AssetKey([database, table_name]),
        group_name=database,
        description=f"Iceberg table {identifier}; its data version is the current snapshot id.",
        metadata={"dagster/table_name": identifier},
    )
    def _observe(catalog: IcebergCatalogResource) -> ObserveResult:
        table = load_table(catalog.open(), identifier)
        info = current_snapshot_info(table)
        metadata = observation_metadata(info)
        return ObserveResult(data_version=DataVersion(str(info.snapshot_id)), metadata=metadata)

    return _observe


def gold_source_assets(jobs: list[JobConfig]) -> list[AssetsDefinition]:
    """One observable asset per distinct source table across all jobs."""
    refs = {source_asset_key(ref): ref for job in jobs for ref in job.connector.source.tables}
    return [build_gold_source_asset(ref.database, ref.table) for ref in refs.values()]


def _metadata(summary: dict[str, Any]) -> dict[str, Any]:
    # The summary's counts (sentiment's "labels") are dicts: JSON metadata.
    return {k: MetadataValue.json(v) if isinstance(v, dict) else v for k, v in summary.items()}


def day_materializations(context: AssetExecutionContext, job: JobConfig, figures: RunFigures) -> Iterator[AssetMaterialization]:
    """One materialization per day of the run, each with that day's own figures (a run of 30 days
    reports 30 different sets, so per-partition plots and sums over partitions are right), after the
    run's totals in the run log. Realtime and batch-collected days alike."""
    if figures.days:
        context.log.info(f"{figures.run['days']}: run totals {json.dumps(figures.run, default=str)}")
    for day, summary in figures.days.items():
        yield AssetMaterialization(asset_key=AssetKey(job.asset_name), partition=day.isoformat(), metadata=_metadata(summary))


@contextmanager
def one_line_failures(context: AssetExecutionContext, job: JobConfig) -> Iterator[None]:
    """An error that is the user's to fix fails the run with its message alone; the traceback goes to the debug log."""
    try:
        yield
    except SocialEnrichError as e:
        context.log.debug("".join(traceback.format_exception(e)))
        metadata = _metadata(report_summary(job, e.report, 0.0, None)) if isinstance(e, PartitionFailedError) else None
        raise Failure(description=f"{type(e).__name__}: {e}", metadata=metadata, allow_retries=False) from None


def _submit_batch(
    context: AssetExecutionContext, job: JobConfig, first: dt.date, last: dt.date, catalog: Catalog, model_provider: ModelProviderResource
) -> None:
    provider = model_provider.build_for_batch(job)
    report = submit_days(job, first, last, catalog, AzureBatchClient.for_provider(provider), context.log)
    context.log.info(
        f"{days_text(first, last)}: {report.posts} posts queued for the Batch API: {report.from_cache} from the cache, "
        f"{report.not_sendable} with nothing to send, {report.requests} requests in batches {report.batches}. "
        f"Sensor {batch_sensor_name(job)} requests a run that writes each day when its answers land."
    )


def _collect_batches(
    context: AssetExecutionContext, job: JobConfig, first: dt.date, last: dt.date, catalog: Catalog,
    model_provider: ModelProviderResource, started: float,
) -> Iterator[AssetMaterialization]:
    """A run the batch poller requested: collect the finished batches, write the days whose answers are all in,
    and materialize each with the figures a realtime run reports."""
    provider = model_provider.build_for_batch(job)
    report = collect_days(job, first, last, catalog, AzureBatchClient.for_provider(provider), context.log)
    context.log.info(report.summary())
    for day in report.days:
        yield from day_materializations(context, job, run_figures(job, day, catalog, started))
    waiting = [d.isoformat() for d in days_between(first, last) if d not in {r.first for r in report.days}]
    if waiting:
        context.log.info(f"{', '.join(waiting)}: not every answer is in yet; sensor {batch_sensor_name(job)} "
                         "requests another collect run when they are")


def _run_in_lambda(
    context: AssetExecutionContext, job: JobConfig, config: EnrichmentRunConfig, aws_lambda: AwsLambdaResource
) -> Iterator[MaterializeResult | AssetMaterialization]:
    """Invoke the job's Lambda through Dagster Pipes: it reports its logs, metadata and materialization back."""
    settings = job.execution.aws_lambda
    reader = None
    if settings.messages_bucket:  # S3 has no 4 KB limit, unlike the log tail of the invocation
        reader = PipesS3MessageReader(bucket=settings.messages_bucket, client=boto3.client("s3"), interval=2)
    pipes = PipesLambdaClient(client=aws_lambda.client(), message_reader=reader)
    context.log.info(f"job '{job.name}': invoking Lambda {settings.function_name} through Dagster Pipes")
    days = context.partition_key_range
    if days.start != days.end and not settings.messages_bucket:
        raise Failure(description=(
            f"job '{job.name}': a run of several days ({days.start}..{days.end}) in Lambda reports each day's figures, more "
            "than the 4 KB log tail Lambda returns can carry; set execution.aws_lambda.messages_bucket (Pipes messages "
            "through S3), or run one day per run"), allow_retries=False)
    # The range goes in the event too: Dagster 1.13 puts it in the Pipes context only for a run of one day.
    event = {"job": job.name, "drop": config.drop, "first": days.start, "last": days.end}
    invocation = pipes.run(function_name=str(settings.function_name), event=event, context=context)
    for result in invocation.get_results():
        per_day = (result.metadata or {}).get(PER_DAY)
        if per_day is None:  # one day: its figures are the run's
            yield result  # type: ignore[misc]
            continue
        # A Pipes step must yield its result, and a result counts for every day of the range; so it
        # says only which days the run covered, and each day's own materialization follows it.
        yield MaterializeResult(asset_key=result.asset_key, metadata={"run_days": f"{days.start}..{days.end}"})
        for day, summary in per_day.value.items():
            yield AssetMaterialization(asset_key=AssetKey(job.asset_name), partition=day, metadata=_metadata(summary))


def _materialize(
    context: AssetExecutionContext, job: JobConfig, config: EnrichmentRunConfig, catalog_resource: IcebergCatalogResource,
    model_provider: ModelProviderResource, aws_lambda: AwsLambdaResource,
) -> Iterator[MaterializeResult | AssetMaterialization]:
    started = time.perf_counter()
    days = context.partition_key_range
    first, last = dt.date.fromisoformat(days.start), dt.date.fromisoformat(days.end)
    # A collect run (the batch poller requests it) submits nothing and runs here, not in Lambda: it reads the store.
    batch = not config.collect and (job.inference.batch.enabled if config.batch is None else config.batch)
    if job.execution.mode == "lambda" and not batch and not config.collect:
        yield from _run_in_lambda(context, job, config, aws_lambda)  # the function opens the catalog, not this run
        forget_written_days(job, days_between(first, last))
        return
    catalog = catalog_resource.open()
    if batch:
        _submit_batch(context, job, first, last, catalog, model_provider)
        return
    if config.collect:
        yield from _collect_batches(context, job, first, last, catalog, model_provider, started)
        return
    provider = model_provider.build(job)
    context.log.info(f"job '{job.name}': model {provider.model_id}, prompt {job.inference.prompt_version}")
    # The whole range in one scan and one commit: a backfill run of many days costs one of each.
    report = enrich_days(job, first, last, catalog, provider, drop=config.drop, log=context.log, should_stop=stop_between_chunks())
    if not report.complete:  # stopped between chunks: what was scored is written, the days are not done
        raise Failure(description=report.incomplete_message, allow_retries=False)
    forget_written_days(job, days_between(first, last))  # batch work queued for these days is obsolete
    yield from day_materializations(context, job, run_figures(job, report, catalog, started))


def daily_partitions(job: JobConfig) -> DailyPartitionsDefinition:
    """The job's daily partitions: a downstream asset with these lines up with it day by day."""
    return DailyPartitionsDefinition(start_date=job.connector.source.start_date.isoformat())


def build_enrichment_asset(job: JobConfig) -> AssetsDefinition:
    partitions = daily_partitions(job)

    @asset(
        name=job.asset_name,
        group_name=job.name,
        partitions_def=partitions,
        deps=[source_asset_key(ref) for ref in job.connector.source.tables],
        # A backfill groups up to max_partitions_per_run days into one run: one scan and one commit each.
        backfill_policy=BackfillPolicy.multi_run(max_partitions_per_run=job.automation.max_partitions_per_run),
        # Runs calling the model share one pool, so its limit caps them however many runs start.
        pool=job.automation.pool,
        description=job.description or f"Enrichment job '{job.name}' into Iceberg table {job.connector.target.identifier}.",
        kinds={"iceberg", "python"},
        metadata={"job_config": str(job.path), "dagster/table_name": job.connector.target.identifier},
        # A batch run only submits: its days are materialized later, by the collect runs the batch poller requests.
        output_required=False,
    )
    def _enrich(
        context: AssetExecutionContext, config: EnrichmentRunConfig, catalog: IcebergCatalogResource,
        model_provider: ModelProviderResource, aws_lambda: AwsLambdaResource,
    ) -> Iterator[MaterializeResult]:
        with one_line_failures(context, job):
            yield from _materialize(context, job, config, catalog, model_provider, aws_lambda)

    return _enrich
