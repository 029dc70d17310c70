"""The one Definitions object: gold source assets, and per job YAML an enrichment asset, its sensors and
its target's maintenance schedule."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import dagster as dg

from social_enrich.assets import build_enrichment_asset, gold_source_assets
from social_enrich.config import discover_job_configs
from social_enrich.dead_runs import executor_freeing_dead_runs
from social_enrich.maintenance_job import build_maintenance_schedule
from social_enrich.resources import environment_resources
from social_enrich.sensors.batch_sensor import build_batch_sensor
from social_enrich.sensors.snapshot_sensor import build_snapshot_sensor

# Dagster marks two features this project relies on as beta: observable source assets (a gold table's
# snapshot is its data version) and backfill policies (a range of days in one run). Said for every
# asset by every Dagster CLI and run worker that loads this module, it buries the run's own lines.
# Other beta warnings still show.
for feature in ("Function `observable_source_asset`", "Parameter `backfill_policy` of function `asset`"):
    warnings.filterwarnings("ignore", message=f"{re.escape(feature)} is currently in beta", category=dg.BetaWarning)


def build_definitions(job_dirs: list[Path] | None = None) -> dg.Definitions:
    jobs = discover_job_configs(job_dirs)
    enrichments = {job.name: build_enrichment_asset(job) for job in jobs}
    maintenance = [build_maintenance_schedule(job) for job in jobs]  # each carries its target's maintenance job
    return dg.Definitions(
        assets=[*gold_source_assets(jobs), *enrichments.values()],
        sensors=[
            *(build_snapshot_sensor(job, enrichments[job.name]) for job in jobs),
            *(build_batch_sensor(job, enrichments[job.name]) for job in jobs),
        ],
        jobs=[schedule.job for schedule in maintenance],
        schedules=maintenance,
        resources=environment_resources(),  # the profile $SOCIAL_ENRICH_ENV names
        # Dagster's default executor, which first fails runs of this machine whose process died
        # (SIGKILL, OOM) and frees their pool slots: with no daemon, nothing else would.
        executor=executor_freeing_dead_runs,
    )


@dg.definitions
def defs() -> dg.Definitions:
    # Loaded lazily by Dagster, so job YAMLs and the environment are read at load time, not at import.
    return build_definitions()
