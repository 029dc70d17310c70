"""Pick the provider a job asks for: Azure OpenAI, or the local model when no endpoint is configured."""

from __future__ import annotations

from social_enrich.config import JobConfig
from social_enrich.inference.azure_openai import AzureOpenAIConfigError, AzureOpenAISettings
from social_enrich.inference.local_sentiment import LocalProvider
from social_enrich.inference.provider import Provider
from social_enrich.plugins import resolve_local_model


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
        raise AzureOpenAIConfigError(
            f"{job.path}: job '{job.name}' runs locally (no Azure OpenAI endpoint) but sets no inference.local_model"
        )
    return LocalProvider(resolve_local_model(inference.local_model)(), job.response_model)
