"""The local environment's Lambda resource: the handler in a child process (local_lambda.py), not AWS.

Its own module, so the child process that runs the handler never imports Dagster."""

from __future__ import annotations

from typing import Any

from social_enrich.devtools.local_lambda import LocalLambdaClient
from social_enrich.resources import AwsLambdaResource


class LocalLambdaResource(AwsLambdaResource):
    """Invokes the handler in a child process, killed at the function's timeout."""

    def client(self) -> Any:
        return LocalLambdaClient(timeout_seconds=self.timeout_seconds)
