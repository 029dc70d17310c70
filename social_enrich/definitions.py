"""The one Definitions object: gold source assets, and per job YAML an enrichment asset and its sensors."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from social_enrich.assets import build_enrichment_asset, gold_source_assets
from social_enrich.config import discover_job_configs
from social_enrich.resources import default_resources
from social_enrich.sensors.batch_sensor import build_batch_sensor
from social_enrich.sensors.snapshot_sensor import build_snapshot_sensor


def build_definitions(job_dirs: list[Path] | None = None) -> dg.Definitions:
    jobs = discover_job_configs(job_dirs)
    enrichments = {job.name: build_enrichment_asset(job) for job in jobs}
    return dg.Definitions(
        assets=[*gold_source_assets(jobs), *enrichments.values()],
        sensors=[
            *(build_snapshot_sensor(job, enrichments[job.name]) for job in jobs),
            *(build_batch_sensor(job, enrichments[job.name]) for job in jobs),
        ],
        resources=default_resources(),
    )


@dg.definitions
def defs() -> dg.Definitions:
    # Loaded lazily by Dagster, so job YAMLs and the environment are read at load time, not at import.
    return build_definitions()
