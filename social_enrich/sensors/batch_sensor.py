"""The batch poller: collects finished Azure OpenAI batches and materializes the days they complete.

All its state is in the batch store (and at Azure), not in the cursor, so a restarted daemon or a
failed tick simply polls again; a day leaves the store only after its rows are committed.

Azure is needed only while batches are in flight: a tick with nothing queued skips at once, and one
whose work needs Azure while it is not configured skips with the missing setting, not a traceback.
"""

from __future__ import annotations

from dataclasses import asdict
from functools import cached_property

import dagster as dg
import openai

from social_enrich.assets import batch_sensor_name
from social_enrich.batch_enrichment import DayWritten, collect_batches
from social_enrich.config import JobConfig
from social_enrich.environment import default_state_store
from social_enrich.inference.azure_batch import AzureBatchClient
from social_enrich.inference.azure_openai import AzureOpenAIConfigError, AzureOpenAIProvider
from social_enrich.inference.credentials import CredentialsError
from social_enrich.resources import IcebergCatalogResource, ModelProviderResource


class _AzureWhenNeeded(AzureBatchClient):
    """Builds the provider and its SDK client on first use, so a tick that calls no Azure API needs no Azure settings."""

    def __init__(self, job: JobConfig, model_provider: ModelProviderResource) -> None:  # no super().__init__: built later
        self._job, self._model_provider = job, model_provider

    @cached_property
    def _provider(self) -> AzureOpenAIProvider:
        return self._model_provider.build_for_batch(self._job)

    @cached_property
    def client(self) -> openai.AzureOpenAI:  # type: ignore[override]
        return self._provider.batch_client()

    @property
    def model_id(self) -> str:  # type: ignore[override]
        return self._provider.model_id

    @property
    def deployment(self) -> str:  # type: ignore[override]
        return self._provider.deployment

    @property
    def cache_identity(self) -> str:  # type: ignore[override]
        return self._provider.cache_identity


def _work_queued(job: JobConfig) -> bool:
    return default_state_store().has_batch_work(job.name)  # creates no store just to look


def day_metadata(job: JobConfig, written: DayWritten) -> dict:
    prices = job.inference.price_per_million_tokens
    realtime = written.usage.cost_usd(prices)
    batch = realtime * job.inference.batch.price_share
    return {
        "dagster/table_name": job.connector.target.identifier,
        "dagster/partition_row_count": sum(written.statuses.values()),
        "model": job.inference.model,
        "prompt_version": job.inference.prompt_version,
        "served_by": "azure_openai_batch",
        "posts_scored": written.statuses["ok"],
        "posts_failed": written.statuses["failed"],
        "posts_filtered": written.statuses["filtered"],
        # The job's summary (response_summary.py): sentiment's labels (JSON), labels/<label>, ...
        **{k: dg.MetadataValue.json(v) if isinstance(v, dict) else v for k, v in written.summary.metadata(job.summary).items()},
        **{f"llm/{name}": value for name, value in asdict(written.usage).items() if name.endswith("tokens")},
        "llm/estimated_cost_usd": round(batch, 6),
        "llm/realtime_cost_usd": round(realtime, 6),
        "llm/batch_saving_usd": round(realtime - batch, 6),
        "target_snapshot_id": str(written.snapshot_id),
    }


def build_batch_sensor(job: JobConfig, asset: dg.AssetsDefinition) -> dg.SensorDefinition:
    settings = job.inference.batch

    @dg.sensor(
        name=batch_sensor_name(job),
        minimum_interval_seconds=settings.poll_interval_seconds,  # Azure asks for no faster than 60 s
        asset_selection=dg.AssetSelection.assets(asset.key),
        default_status=dg.DefaultSensorStatus.RUNNING if settings.enabled else dg.DefaultSensorStatus.STOPPED,
        description=f"Polls the Azure OpenAI batches of job '{job.name}', writes and materializes the days they complete.",
    )
    def _poll(context: dg.SensorEvaluationContext, catalog: IcebergCatalogResource, model_provider: ModelProviderResource) -> dg.SensorResult:
        if not _work_queued(job):
            return dg.SensorResult(skip_reason=dg.SkipReason(f"no Batch API work queued for job '{job.name}'"))
        try:
            report = collect_batches(job, catalog.open(), _AzureWhenNeeded(job, model_provider), context.log)
        except (AzureOpenAIConfigError, CredentialsError) as e:
            # The work stays queued; the next tick after the setting is fixed carries on.
            return dg.SensorResult(skip_reason=dg.SkipReason(f"job '{job.name}' has Batch API work queued, but Azure OpenAI is not configured: {e}"))
        context.log.info(report.summary())
        events = [
            dg.AssetMaterialization(asset_key=asset.key, partition=w.day.isoformat(), metadata=day_metadata(job, w))
            for w in report.days_written
        ]
        # Days whose items expired or failed, with on_expired: realtime, are re-run realtime; the
        # answers that did land are in the response cache and are not paid again.
        runs = [
            dg.RunRequest(
                run_key=f"batch_fallback:{day}:{queued_at}",  # one run per hand-over, however many ticks see it
                partition_key=day.isoformat(),
                run_config={"ops": {job.asset_name: {"config": {"batch": False}}}},
                tags={"social_enrich/trigger": "batch_fallback"},
            )
            for day, queued_at in report.days_for_realtime
        ]
        return dg.SensorResult(run_requests=runs, asset_events=events)

    return _poll

