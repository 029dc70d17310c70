"""Per enrichment job, a maintenance job for its target table and a schedule on ``maintenance.cron``.

A job rather than an asset: maintenance changes how the table is stored, not what it holds, so it
produces no new data. Its figures are recorded as an observation of the enrichment asset, so they
show on that asset's page next to its materializations.
"""

import datetime as dt

import dagster as dg
from pyiceberg.exceptions import NoSuchTableError

from social_enrich.config import JobConfig
from social_enrich.resources import IcebergCatalogResource
from social_enrich.lakehouse.maintenance import MaintenanceReport, run_maintenance


def maintenance_job_name(job: JobConfig) -> str:
    return f"{job.asset_name}_maintenance"


def maintenance_schedule_name(job: JobConfig) -> str:
    return f"{job.asset_name}_maintenance_schedule"


def describe(report: MaintenanceReport) -> str:
    c, m, e = report.compaction, report.manifests, report.expiry
    return (
        f"compacted {c.partitions_rewritten} partitions: {c.data_files_before} -> {c.data_files_after} data files "
        f"({c.files_rewritten} files, {c.rows_rewritten} rows, {c.bytes_rewritten} bytes rewritten); "
        f"manifests {m.manifests_before} -> {m.manifests_after}; "
        f"expired {e.snapshots_expired} of {e.snapshots_before} snapshots, deleted {e.files_deleted} files "
        f"({e.bytes_deleted} bytes); in {sum(report.seconds.values()):.2f}s"
    )


def build_maintenance_job(job: JobConfig) -> dg.JobDefinition:
    identifier = job.connector.target.identifier

    @dg.op(
        name=f"maintain_{job.asset_name}",
        description=f"Compact small files, merge manifests and expire old snapshots of {identifier}.",
        tags={"kind": "iceberg"},
        out={},  # what it did is an observation of the enrichment asset, not an output
    )
    def _maintain(context: dg.OpExecutionContext, catalog: IcebergCatalogResource):
        try:
            table = catalog.open().load_table(identifier)
        except NoSuchTableError:
            context.log.info(f"{identifier} does not exist yet (no partition materialized): nothing to maintain")
            return
        report = run_maintenance(table, job.maintenance, now=dt.datetime.now(dt.timezone.utc))
        context.log.info(f"{identifier}: {describe(report)}")
        if report.expiry.files_not_deleted:
            context.log.warning(f"{identifier}: {report.expiry.files_not_deleted} unreferenced files could not be deleted")
        yield dg.AssetObservation(asset_key=dg.AssetKey(job.asset_name), metadata={"maintenance": True, **report.metadata()})

    @dg.job(
        name=maintenance_job_name(job),
        description=f"Upkeep of {identifier}, the target of job '{job.name}'; settings under maintenance: in its YAML.",
        tags={"social_enrich/job": job.name},
    )
    def _job() -> None:
        _maintain()

    return _job


def build_maintenance_schedule(job: JobConfig) -> dg.ScheduleDefinition:
    """The schedule, carrying its job (so registering the schedule registers the job)."""
    settings = job.maintenance
    return dg.ScheduleDefinition(
        name=maintenance_schedule_name(job),
        job=build_maintenance_job(job),
        cron_schedule=settings.cron,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING if settings.enabled else dg.DefaultScheduleStatus.STOPPED,
        description=f"Maintenance of {job.connector.target.identifier} ({settings.cron} UTC).",
    )
