"""The one Definitions object: gold source assets and an enrichment asset per job YAML."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from social_enrich.assets import build_enrichment_asset, gold_source_assets
from social_enrich.config import discover_job_configs
from social_enrich.inference.azure_openai import AzureOpenAIResource


def build_definitions(job_dirs: list[Path] | None = None) -> dg.Definitions:
    jobs = discover_job_configs(job_dirs)
    return dg.Definitions(
        assets=[*gold_source_assets(jobs), *(build_enrichment_asset(job) for job in jobs)],
        resources={"azure_openai": AzureOpenAIResource()},
    )


@dg.definitions
def defs() -> dg.Definitions:
    # Loaded lazily by Dagster, so job YAMLs and the environment are read at load time, not at import.
    return build_definitions()
