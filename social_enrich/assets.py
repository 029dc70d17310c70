"""Dagster assets: observable gold tables, and one daily-partitioned enrichment asset per job YAML."""


import datetime as dt
import time
from collections import Counter
from dataclasses import asdict

from dagster import (
    AssetExecutionContext,
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
from pydantic import Field

from social_enrich.config import JobConfig, TableRef
from social_enrich.enrichment import EnrichmentReport, PartitionFailedError, enrich_partition
from social_enrich.inference.azure_openai import AzureOpenAIResource
from social_enrich.inference.selection import build_provider
from social_enrich.inference.usage import Usage
from social_enrich.lakehouse.catalog import load_table, open_catalog
from social_enrich.lakehouse.snapshots import current_snapshot_info


class EnrichmentRunConfig(Config):
    drop: bool = Field(default=False, description="Drop and rebuild the target table before writing.")


def source_asset_key(ref: TableRef) -> AssetKey:
    return AssetKey([ref.database, ref.table])


def build_gold_source_asset(job: JobConfig, ref: TableRef) -> AssetsDefinition:
    @observable_source_asset(
        key=source_asset_key(ref),
        group_name=ref.database,
        description=f"Iceberg table {ref.identifier}; its data version is the current snapshot id.",
        metadata={"dagster/table_name": ref.identifier},
    )
    def _observe() -> ObserveResult:
        table = load_table(open_catalog(job.connector), ref.identifier)
        info = current_snapshot_info(table)
        metadata = {
            "dagster/row_count": info.total_records,
            "snapshot_id": str(info.snapshot_id),
            "total-data-files": info.total_data_files,
        }
        if info.committed_at:
            metadata["snapshot_committed_at"] = MetadataValue.timestamp(info.committed_at)
        return ObserveResult(data_version=DataVersion(str(info.snapshot_id)), metadata=metadata)

    return _observe


def gold_source_assets(jobs: list[JobConfig]) -> list[AssetsDefinition]:
    """One observable asset per distinct source table across all jobs."""
    built: dict[AssetKey, AssetsDefinition] = {}
    for job in jobs:
        for ref in job.connector.source.tables:
            key = source_asset_key(ref)
            if key not in built:
                built[key] = build_gold_source_asset(job, ref)
    return list(built.values())


def _metadata(job: JobConfig, reports: list[EnrichmentReport], seconds: float, target_rows: int | None) -> dict:
    statuses: Counter[str] = sum((r.statuses for r in reports), Counter())
    labels: Counter[str] = sum((r.labels for r in reports), Counter())
    rows_read: Counter[str] = sum((Counter(r.rows_read) for r in reports), Counter())
    phase = {p: sum(r.seconds.get(p, 0.0) for r in reports) for p in ("scan", "score", "write")}
    skipped = sum(r.capped + sum(r.null_keys.values()) for r in reports)
    usage = sum((r.usage for r in reports), Usage())
    return {
        "dagster/table_name": job.connector.target.identifier,
        **({"dagster/row_count": target_rows} if target_rows is not None else {}),
        "dagster/partition_row_count": sum(r.write.rows_written for r in reports if r.write),
        "model": reports[0].model if reports else "",
        "prompt_version": job.inference.prompt_version,
        "posts_touched": sum(r.posts for r in reports),
        "posts_scored": statuses["ok"],
        "posts_failed": statuses["failed"],
        "posts_filtered": statuses["filtered"],
        "posts_skipped": skipped,
        "posts_from_cache": sum(r.cache_hits for r in reports),
        "posts_truncated": sum(r.posts_truncated for r in reports),
        "versions_collapsed": sum(r.versions_collapsed for r in reports),
        "moved_from_other_days": sum(r.write.moved_from_other_days for r in reports if r.write),
        "labels": MetadataValue.json(dict(sorted(labels.items()))),
        **{f"rows_read/{source}": count for source, count in sorted(rows_read.items())},
        **{f"llm/{name}": value for name, value in asdict(usage).items()},
        "llm/estimated_cost_usd": round(usage.cost_usd(job.inference.price_per_million_tokens), 6),
        **{f"seconds/{p}": round(s, 3) for p, s in phase.items()},
        "duration_seconds": round(seconds, 3),
    }


def build_enrichment_asset(job: JobConfig) -> AssetsDefinition:
    partitions = DailyPartitionsDefinition(start_date=job.connector.source.start_date.isoformat())

    @asset(
        name=job.asset_name,
        group_name=job.name,
        partitions_def=partitions,
        deps=[source_asset_key(ref) for ref in job.connector.source.tables],
        # A range of days runs as one run, so `dagster asset materialize --partition-range` works.
        backfill_policy=BackfillPolicy.single_run(),
        description=job.description or f"Enrichment job '{job.name}' into Iceberg table {job.connector.target.identifier}.",
        kinds={"iceberg", "python"},
        metadata={"job_config": str(job.path), "dagster/table_name": job.connector.target.identifier},
    )
    def _enrich(context: AssetExecutionContext, config: EnrichmentRunConfig, azure_openai: AzureOpenAIResource) -> MaterializeResult:
        started = time.perf_counter()
        catalog = open_catalog(job.connector)
        provider = build_provider(job, azure_openai)
        context.log.info(f"job '{job.name}': model {provider.model_id}, prompt {job.inference.prompt_version}")
        reports = []
        days = [dt.date.fromisoformat(k) for k in context.partition_keys]
        for n, day in enumerate(days):
            try:
                # drop rebuilds the table once, before the first day of the run.
                report = enrich_partition(job, day, catalog, provider, drop=config.drop and n == 0, log=context.log)
            except PartitionFailedError as e:
                reports.append(e.report)
                raise Failure(description=str(e), metadata=_metadata(job, reports, time.perf_counter() - started, None)) from e
            reports.append(report)
            context.log.info(
                f"{day}: {report.posts} posts, {dict(report.statuses)}, labels {dict(report.labels)} "
                f"in {sum(report.seconds.values()):.1f}s"
            )
        target_rows = current_snapshot_info(load_table(catalog, job.connector.target.identifier)).total_records
        return MaterializeResult(metadata=_metadata(job, reports, time.perf_counter() - started, target_rows))

    return _enrich
