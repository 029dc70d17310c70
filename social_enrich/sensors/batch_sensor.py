"""The batch poller: notices finished Azure OpenAI batches and requests the runs that collect them.

A tick makes only cheap calls (the batch store, Azure's batch statuses, a cancel for a stuck batch):
it downloads nothing and writes no table. For each day with work to collect (a final batch not yet
read, every answer in, or posts to send again) it requests a run of the enrichment asset for that
day with ``collect: true``; that run downloads, settles, writes and materializes the day, in the
asset's pool and with a run log. All state is in the batch store (and at Azure), not in the cursor,
so a restarted daemon, a failed tick or a crashed collect run simply carries on.

Azure is needed only while batches are in flight: a tick with nothing queued skips at once, and one
whose work needs Azure while it is not configured skips with the missing setting, not a traceback.
"""

from __future__ import annotations

import hashlib
from functools import cached_property

import dagster as dg

from social_enrich.assets import batch_sensor_name
from social_enrich.batch_enrichment import check_batches
from social_enrich.config import JobConfig
from social_enrich.dead_runs import sweep_dead_runs
from social_enrich.environment import default_state_store
from social_enrich.inference.azure_batch import AzureBatchClient, BatchLane
from social_enrich.inference.azure_openai import AzureOpenAIConfigError, AzureOpenAIProvider
from social_enrich.inference.credentials import CredentialsError
from social_enrich.resources import ModelProviderResource

TRIGGER_TAG, DAY_TAG = "social_enrich/trigger", "social_enrich/batch_day"
COLLECT = "batch_collect"
IN_FLIGHT = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
             dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]
ENDED_BADLY = [dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]


class _AzureWhenNeeded(AzureBatchClient):
    """Builds the provider and its SDK client on first use, so a tick that calls no Azure API needs no Azure settings."""

    def __init__(self, job: JobConfig, model_provider: ModelProviderResource) -> None:  # no super().__init__: built later
        self._job, self._model_provider = job, model_provider

    @cached_property
    def _provider(self) -> AzureOpenAIProvider:
        return self._model_provider.build_for_batch(self._job)

    @cached_property
    def lanes(self) -> list[BatchLane]:  # type: ignore[override]
        return AzureBatchClient.for_provider(self._provider).lanes

    @property
    def model_id(self) -> str:  # type: ignore[override]
        return self._provider.model_id

    @property
    def cache_identity(self) -> str:  # type: ignore[override]
        return self._provider.cache_identity


def _work_queued(job: JobConfig) -> bool:
    return default_state_store().has_batch_work(job.name)  # creates no store just to look


def collect_tags(day: str) -> dict[str, str]:
    return {TRIGGER_TAG: COLLECT, DAY_TAG: day}


def _collect_runs(instance: dg.DagsterInstance, day: str, statuses: list[dg.DagsterRunStatus]) -> int:
    return len(instance.get_run_records(dg.RunsFilter(tags=collect_tags(day), statuses=statuses)))


def collect_request(instance: dg.DagsterInstance, job: JobConfig, day: str, queued_at: str, work: list[str]) -> dg.RunRequest | None:
    """The run that collects the day's work, or None while one is queued or running. Its run key names the
    day's queueing, its work (the finished batches, ...) and how many collect runs of the day failed, so
    repeated ticks ask once, and a failed or crashed collect run is followed by a new one."""
    if _collect_runs(instance, day, IN_FLIGHT):
        sweep_dead_runs(instance)  # a run whose worker on this machine died is failed (run monitoring does it elsewhere)
        if _collect_runs(instance, day, IN_FLIGHT):
            return None  # it collects everything finished, this day's work too
    failed = _collect_runs(instance, day, ENDED_BADLY)
    digest = hashlib.sha256("\n".join(sorted(work)).encode()).hexdigest()[:16]
    return dg.RunRequest(
        run_key=f"{COLLECT}:{day}:{queued_at}:{digest}:{failed}",
        partition_key=day,
        run_config={"ops": {job.asset_name: {"config": {"collect": True}}}},
        tags=collect_tags(day),
    )


def build_batch_sensor(job: JobConfig, asset: dg.AssetsDefinition) -> dg.SensorDefinition:
    settings = job.inference.batch

    @dg.sensor(
        name=batch_sensor_name(job),
        minimum_interval_seconds=settings.poll_interval_seconds,  # Azure asks for no faster than 60 s
        asset_selection=dg.AssetSelection.assets(asset.key),
        default_status=dg.DefaultSensorStatus.RUNNING if settings.enabled else dg.DefaultSensorStatus.STOPPED,
        description=f"Polls the Azure OpenAI batches of job '{job.name}' and requests a run that collects and writes each day they complete.",
    )
    def _poll(context: dg.SensorEvaluationContext, model_provider: ModelProviderResource) -> dg.SensorResult:
        if not _work_queued(job):
            return dg.SensorResult(skip_reason=dg.SkipReason(f"no Batch API work queued for job '{job.name}'"))
        try:
            check = check_batches(job, _AzureWhenNeeded(job, model_provider), context.log)
        except (AzureOpenAIConfigError, CredentialsError) as e:
            # The work stays queued; the next tick after the setting is fixed carries on.
            return dg.SensorResult(skip_reason=dg.SkipReason(f"job '{job.name}' has Batch API work queued, but Azure OpenAI is not configured: {e}"))
        context.log.info(check.summary())
        collects = [collect_request(context.instance, job, day.isoformat(), check.queued_at.get(day, ""), work)
                    for day, work in check.ready.items()]
        # Days whose items expired or failed, with on_expired: realtime, are re-run realtime; the
        # answers that did land are in the response cache and are not paid again.
        fallbacks = [
            dg.RunRequest(
                run_key=f"batch_fallback:{day}:{queued_at}",  # one run per hand-over, however many ticks see it
                partition_key=day.isoformat(),
                run_config={"ops": {job.asset_name: {"config": {"batch": False}}}},
                tags={TRIGGER_TAG: "batch_fallback"},
            )
            for day, queued_at in check.days_for_realtime
        ]
        return dg.SensorResult(run_requests=[r for r in collects if r is not None] + fallbacks)

    return _poll
