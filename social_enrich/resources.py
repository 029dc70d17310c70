"""Dagster resources: thin Dagster faces of settings that the Lambda handler uses without Dagster."""

from __future__ import annotations

import os
from typing import Any

import boto3
from botocore.config import Config
from dagster import ConfigurableResource
from pydantic import Field

from social_enrich.devtools.local_lambda import LocalLambdaClient
from social_enrich.inference.azure_openai import AzureOpenAISettings

LAMBDA_LOCAL_VAR = "SOCIAL_ENRICH_LAMBDA_LOCAL"


class AzureOpenAIResource(ConfigurableResource, AzureOpenAISettings):
    """Connection to an Azure OpenAI resource. The key is read at run time from an environment
    variable or from the AWS Secrets Manager secret named by $OPENAI_SECRET_NAME."""


class AwsLambdaResource(ConfigurableResource):
    """The Lambda client of jobs with execution.mode lambda: boto3's, or a local child process for development."""

    local: bool = Field(
        default=False, description=f"Run the handler in a local child process instead of AWS (also ${LAMBDA_LOCAL_VAR}=1)."
    )
    timeout_seconds: float = Field(default=900.0, gt=0, le=900, description="The function's timeout (Lambda's most: 900).")

    def client(self) -> Any:
        if self.local or os.environ.get(LAMBDA_LOCAL_VAR) == "1":
            return LocalLambdaClient(timeout_seconds=self.timeout_seconds)
        # An invocation lasts up to Lambda's 900 s; boto3's defaults (read timeout 60 s, then retry)
        # would give up on it and invoke again, paying the model twice.
        return boto3.client("lambda", config=Config(read_timeout=self.timeout_seconds + 60, retries={"total_max_attempts": 1}))


def default_resources() -> dict[str, ConfigurableResource]:
    """The resources every enrichment asset needs, as the Definitions bind them."""
    return {"azure_openai": AzureOpenAIResource(), "aws_lambda": AwsLambdaResource()}
