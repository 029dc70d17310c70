"""Dagster resources: thin Dagster faces of settings that the Lambda handler uses without Dagster."""

from __future__ import annotations

from dagster import ConfigurableResource

from social_enrich.inference.azure_openai import AzureOpenAISettings


class AzureOpenAIResource(ConfigurableResource, AzureOpenAISettings):
    """Connection to an Azure OpenAI resource. The key is read at run time from an environment
    variable or from the AWS Secrets Manager secret named by $OPENAI_SECRET_NAME."""
