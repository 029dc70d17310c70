"""One Azure OpenAI deployment a provider sends to: where it is, how its key was found, the pacer and
concurrency of its own quota, the calibration of its token count, and what it has used.

A provider holds one (``azure_openai``) or several (``azure_openai_pool``); the request loop in
``azure_openai`` is the same for both.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import openai

from social_enrich.config import RateLimitConfig
from social_enrich.inference.rate_limiter import AdaptiveConcurrency, RequestPacer
from social_enrich.inference.token_budget import PromptCalibration
from social_enrich.inference.usage import Usage

ENDPOINT_VAR = "AZURE_OPENAI_ENDPOINT"
DEFAULT_ENQUEUED_TOKEN_LIMIT = 1_000_000_000  # gpt-4o-mini Global Batch, per deployment


@dataclass(frozen=True)
class SettingNames:
    """Where the user sets the key and the endpoint, as error messages name them."""

    key: str = "the Azure OpenAI key"
    endpoint: str = f"${ENDPOINT_VAR}"


class AzureDeployment:
    def __init__(self, name: str, client_args: dict[str, Any], quota: RateLimitConfig, workers: int,
                 setting_names: SettingNames = SettingNames(), enqueued_token_limit: int = DEFAULT_ENQUEUED_TOKEN_LIMIT) -> None:
        self.name, self.client_args, self.setting_names, self.workers = name, client_args, setting_names, workers
        self.enqueued_token_limit = enqueued_token_limit  # its Global Batch quota of tokens not yet final
        self.quota = quota
        self.paced = bool(quota.requests_per_minute or quota.tokens_per_minute)
        self.pacer = RequestPacer(quota.requests_per_minute, quota.tokens_per_minute, quota.headroom, quota.window_seconds)
        self.calibration = PromptCalibration()
        self.usage = Usage()  # over the provider's life; callers take differences
        self.concurrency_start = min(4, workers)
        self.peak_concurrency = 0
        # Set for the length of one score call (they belong to its event loop).
        self.client: openai.AsyncAzureOpenAI | None = None
        self.concurrency = AdaptiveConcurrency(workers, start=self.concurrency_start)

    @property
    def endpoint(self) -> str:
        return str(self.client_args["azure_endpoint"])

    def __repr__(self) -> str:  # never show the key
        return f"AzureDeployment({self.name!r}, endpoint={self.endpoint!r})"

    @asynccontextmanager
    async def session(self) -> AsyncIterator[None]:
        """A client and a concurrency limit for one score call; the limit it reached carries over to the next."""
        self.concurrency = AdaptiveConcurrency(self.workers, start=self.concurrency_start)
        async with openai.AsyncAzureOpenAI(**self.client_args) as client:
            self.client = client
            try:
                yield
            finally:
                self.client = None
                self.concurrency_start = self.concurrency.limit
                self.peak_concurrency = max(self.peak_concurrency, self.concurrency.peak)

    def batch_client(self) -> openai.AzureOpenAI:
        """A client for the Files and Batches APIs; the SDK's own retries suit these few calls."""
        return openai.AzureOpenAI(**{**self.client_args, "max_retries": 2})

    def rejection(self, status: int, code: str | None, server_message: str) -> str:
        """The cause and the remedy of an HTTP status that rejects the run itself, in one line."""
        endpoint, deployment, names = self.endpoint, self.name, self.setting_names
        if status == 404 and code == "DeploymentNotFound":
            return f"HTTP 404: no deployment named {deployment} at {endpoint}: check inference.model / $AZURE_OPENAI_DEPLOYMENT"
        if status == 404:
            return (f"HTTP 404 from {endpoint} for deployment {deployment} ({server_message}): check the endpoint "
                    f"in {names.endpoint} and api_version {self.client_args['api_version']}")
        if status == 403:
            return (f"HTTP 403 from {endpoint} for deployment {deployment} ({server_message}): check that the key in "
                    f"{names.key} may use this resource, and that its network rules admit this host")
        return f"HTTP {status} from {endpoint} for deployment {deployment}: check the key in {names.key}"

    def cannot_connect(self, reason: str) -> str:
        return f"cannot connect to {self.endpoint} ({reason}): check {self.setting_names.endpoint}"

    def without_key(self, text: str) -> str:
        """``text`` on one line, at most 200 characters, and never the key (should a server echo it)."""
        key = self.client_args["api_key"]
        if len(key) >= 8:  # a real key is 32 characters; a one-letter test key would garble the text
            text = text.replace(key, "<key>")
        return " ".join(text.split())[:200]
