"""Pick the provider a job asks for: Azure OpenAI, or the local model when no endpoint is configured."""

from __future__ import annotations

from social_enrich.config import JobConfig, JobConfigError
from social_enrich.errors import SocialEnrichError
from social_enrich.inference.azure_openai import AzureOpenAISettings
from social_enrich.inference.local_sentiment import LocalProvider
from social_enrich.inference.provider import Provider
from social_enrich.plugins import resolve_local_model


class LocalModelMissingError(JobConfigError, SocialEnrichError):
    """A job that runs locally names no inference.local_model: a job problem, not an Azure one."""


def provider_kind(job: JobConfig, azure: AzureOpenAISettings) -> str:
    kind = job.inference.provider
    if kind == "auto":
        return "azure_openai" if azure.is_configured() else "local"
    return kind


def build_provider(job: JobConfig, azure: AzureOpenAISettings) -> Provider:
    inference = job.inference
    if provider_kind(job, azure) == "azure_openai":
        return azure.build_provider(inference, job.response_model)
    if inference.local_model is None:
        why = "provider local" if inference.provider == "local" else "provider auto and no Azure OpenAI endpoint configured"
        raise LocalModelMissingError(
            f"{job.path}: job '{job.name}' runs the local model ({why}) but sets no inference.local_model: "
            "set inference.local_model (e.g. vader), or configure Azure OpenAI (AZURE_OPENAI_ENDPOINT)"
        )
    return LocalProvider(resolve_local_model(inference.local_model)(), job.response_model)
