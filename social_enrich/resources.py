"""Dagster resources, and the resources of each environment profile: chosen once, in the definitions.

The Iceberg catalog is a resource of pyiceberg properties; the model provider is a resource naming a
provider (a built-in name or module:Class) and its own config. ``environment_resources`` picks both
from the environment (see environment.py). The resources wrap plain settings that the Lambda handler
uses without Dagster.
"""

from __future__ import annotations

import os
from typing import Any

import boto3
from botocore.config import Config
import dagster as dg
from dagster import ConfigurableResource
from pydantic import Field
from pyiceberg.catalog import Catalog

from social_enrich.config import JobConfig
from social_enrich.environment import ENVIRONMENT_VAR, LAMBDA_LOCAL_VAR, catalog_choice, environment_name, provider_choice
from social_enrich.inference.azure_openai import AzureOpenAIConfigError, AzureOpenAIProvider
from social_enrich.inference.provider import Provider
from social_enrich.inference.selection import build_provider, provider_config
from social_enrich.lakehouse.catalog import open_catalog


class IcebergCatalogResource(ConfigurableResource):
    """The Iceberg catalog of this deployment: pyiceberg properties (``name`` is the catalog's name),
    or none for the embedded SQLite default. A downstream asset takes it as a resource and reads the
    tables the enrichments write: ``catalog.open().load_table("enriched.social_media_sentiment")``."""

    properties: dict[str, str] = Field(
        default_factory=dict, description="pyiceberg catalog properties; empty: the embedded SQLite catalog."
    )


    def open(self) -> Catalog:
        return open_catalog(self.properties)


class ModelProviderResource(ConfigurableResource):
    """The model provider of this deployment: ``local`` (each job's local model), ``azure_openai``, or a
    provider class ``module:Class``, with that provider's own config (its pydantic ``Config``)."""

    provider: str = Field(description="A built-in provider name (local, azure_openai) or 'module:Class'.")
    config: dict[str, Any] = Field(default_factory=dict, description="The provider's own settings.")

    def check(self) -> None:
        """Resolve the class and validate its config: a wrong name or field fails the definitions' load."""
        provider_config(self.provider, self.config)

    def build(self, job: JobConfig) -> Provider:
        return build_provider(self.provider, self.config, job)

    def build_for_batch(self, job: JobConfig) -> AzureOpenAIProvider:
        """The provider of a Batch API run or poll, which only Azure OpenAI serves."""
        provider = self.build(job)
        if not isinstance(provider, AzureOpenAIProvider):
            raise AzureOpenAIConfigError(
                f"job '{job.name}': the Batch API needs Azure OpenAI (the azure_openai provider), and this environment's "
                f"provider is {self.provider} (set {ENVIRONMENT_VAR}=production, or run with batch: false)"
            )
        return provider


class AwsLambdaResource(ConfigurableResource):
    """The Lambda client of jobs with execution.mode lambda: boto3's."""

    timeout_seconds: float = Field(default=900.0, gt=0, le=900, description="The function's timeout (Lambda's most: 900).")

    def client(self) -> Any:
        # An invocation lasts up to Lambda's 900 s; boto3's defaults (read timeout 60 s, then retry)
        # would give up on it and invoke again, paying the model twice.
        return boto3.client("lambda", config=Config(read_timeout=self.timeout_seconds + 60, retries={"total_max_attempts": 1}))


def environment_resources() -> dict[str, ConfigurableResource]:
    """The resources of this environment's profile, checked now: a provider that cannot be built for
    any job fails the load with its reason, rather than a run later."""
    name, config = provider_choice()
    provider = ModelProviderResource(provider=name, config=config)
    provider.check()
    return {"catalog": environment_catalog_resource(), "model_provider": provider, "aws_lambda": _lambda_resource()}


def environment_catalog_resource() -> IcebergCatalogResource:
    # A secret property ({"env": VAR}) is a dg.EnvVar: Dagster reads it at run time and never shows its value.
    properties = {key: dg.EnvVar(value["env"]) if isinstance(value, dict) else value for key, value in catalog_choice().items()}
    return IcebergCatalogResource(properties=properties)


def _lambda_resource() -> AwsLambdaResource:
    if environment_name() == "local" or os.environ.get(LAMBDA_LOCAL_VAR) == "1":
        # Development only: the handler in a child process. Imported here, so production never loads devtools.
        from social_enrich.devtools.local_lambda_resource import LocalLambdaResource

        return LocalLambdaResource()
    return AwsLambdaResource()
