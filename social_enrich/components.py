"""An enrichment job as a Dagster Component: one folder per job under the package's ``defs/``, its
``defs.yaml`` naming this type and the job's settings under ``attributes`` (config.JobAttributes).

    social_enrich/defs/sentiment/defs.yaml   type: social_enrich.components.EnrichmentComponent

``dg check yaml`` checks the attributes against JobAttributes (line-precise errors), ``dg scaffold
defs social_enrich.components.EnrichmentComponent <job>`` writes a new job's folder, and ``dg list
defs`` shows what each job builds: its asset, its sensors and its maintenance job and schedule.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import BaseModel

from social_enrich.assets import build_enrichment_asset, gold_source_assets
from social_enrich.config import DEFS_FILE, JobAttributes, JobConfig
from social_enrich.environment import extra_jobs_dirs
from social_enrich.maintenance_job import build_maintenance_schedule
from social_enrich.sensors.batch_sensor import build_batch_sensor
from social_enrich.sensors.snapshot_sensor import build_snapshot_sensor


def enrichment_definitions(job: JobConfig) -> dg.Definitions:
    """What one job builds: its gold source assets, enrichment asset, snapshot and batch sensors, and
    its target's maintenance schedule (which carries its job)."""
    asset = build_enrichment_asset(job)
    maintenance = build_maintenance_schedule(job)
    return dg.Definitions(
        assets=[*gold_source_assets([job]), asset],
        sensors=[build_snapshot_sensor(job, asset), build_batch_sensor(job, asset)],
        jobs=[maintenance.job],
        schedules=[maintenance],
    )


def replaced_job_names() -> set[str]:
    """Jobs that a folder in $SOCIAL_ENRICH_JOBS_DIR redefines: there, that folder's job builds instead."""
    from social_enrich.config import discover_job_configs  # read when the definitions load

    return {job.name for job in discover_job_configs(extra_jobs_dirs())}


class EnrichmentScaffolder(dg.Scaffolder):
    """``dg scaffold defs social_enrich.components.EnrichmentComponent <job>``: a job to fill in."""

    def scaffold(self, request: dg.ScaffoldRequest) -> None:
        name = request.target_path.name
        template = (Path(__file__).parent / "defs" / "sentiment" / DEFS_FILE).read_text(encoding="utf-8")
        text = template.replace("table: social_media_sentiment", f"table: {name}").replace("sentiment-v1", f"{name}-v1")
        header = f"# The {name} enrichment, scaffolded from the sentiment job: set its response_format, prompt and fields.\n"
        request.target_path.mkdir(parents=True, exist_ok=True)
        (request.target_path / DEFS_FILE).write_text(header + text.split("\n", 1)[1], encoding="utf-8")


@dg.scaffold_with(EnrichmentScaffolder)
class EnrichmentComponent(dg.Component):
    """An enrichment job: gold Iceberg tables in, model answers in an Iceberg target, per day."""

    def __init__(self, job: JobConfig) -> None:
        self.job = job

    @classmethod
    def get_model_cls(cls) -> type[BaseModel]:
        return JobAttributes

    @classmethod
    def load(cls, attributes: BaseModel | None, context: dg.ComponentLoadContext) -> EnrichmentComponent:
        values: dict[str, Any] = attributes.model_dump(by_alias=True) if attributes is not None else {}
        return cls(JobConfig.model_validate({**values, "name": context.path.name, "path": context.path / DEFS_FILE}))

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        if self.job.name in replaced_job_names():
            return dg.Definitions()
        return enrichment_definitions(self.job)
