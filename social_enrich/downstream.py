"""What a hand-written asset downstream of an enrichment uses: the enrichment's asset key, its daily
partitions and target table, and the catalog resource (the deployment's, from the environment).

    # social_enrich/defs/sentiment_by_language.py: loaded with the defs folder's components
    import dagster as dg
    from social_enrich.downstream import IcebergCatalogResource, enrichment

    sentiment = enrichment("sentiment")

    @dg.asset(deps=[sentiment.asset_key], partitions_def=sentiment.partitions)
    def sentiment_by_language(context, catalog: IcebergCatalogResource) -> dg.MaterializeResult:
        rows = catalog.open().load_table(sentiment.target_table).scan(...).to_arrow()
        ...
"""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from social_enrich.assets import daily_partitions
from social_enrich.config import JobConfigError, discover_job_configs
from social_enrich.resources import IcebergCatalogResource

__all__ = ["Enrichment", "IcebergCatalogResource", "enrichment"]


@dataclass(frozen=True)
class Enrichment:
    asset_key: dg.AssetKey
    partitions: dg.DailyPartitionsDefinition
    target_table: str  # database.table in the catalog resource's catalog


def enrichment(job_name: str) -> Enrichment:
    """The enrichment job ``job_name`` as a downstream asset sees it (read from its defs.yaml)."""
    jobs = {job.name: job for job in discover_job_configs()}
    if job_name not in jobs:
        raise JobConfigError(f"no enrichment job named '{job_name}': the jobs are {', '.join(sorted(jobs))}")
    job = jobs[job_name]
    return Enrichment(dg.AssetKey(job.asset_name), daily_partitions(job), job.connector.target.identifier)
