"""Azure OpenAI provider, first version: structured outputs, bounded concurrency, per-post failures.

The Dagster resource holds the connection (endpoint, API version, where the key comes from); the
provider it builds scores posts. A later engine (rate limits, packing, cache, batch) replaces the
provider's inside behind the same ``Provider.score`` call.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence
from typing import Any

import openai
from dagster import ConfigurableResource
from pydantic import BaseModel, Field, ValidationError

from social_enrich.inference.provider import PostToScore, ProgressCallback, ScoreResult

ENDPOINT_VAR = "AZURE_OPENAI_ENDPOINT"


class AzureOpenAIConfigError(RuntimeError):
    """Azure OpenAI is selected but not configured; the message says which setting is missing."""


class AzureOpenAIResource(ConfigurableResource):
    """Connection to an Azure OpenAI resource. The API key is read from an environment variable at run time."""

    endpoint: str | None = Field(default=None, description=f"https://<name>.openai.azure.com; default ${ENDPOINT_VAR}.")
    api_version: str = Field(default="2024-10-21", description="Azure OpenAI API version with structured outputs.")
    api_key_env_var: str = Field(default="AZURE_OPENAI_API_KEY", description="Environment variable holding the key.")
    timeout_seconds: float = Field(default=60.0, gt=0, description="Per-request timeout.")
    max_retries: int = Field(default=2, ge=0, le=10, description="SDK retries (it honours retry-after).")

    def resolved_endpoint(self) -> str | None:
        return self.endpoint or os.environ.get(ENDPOINT_VAR) or None

    def build_provider(self, *, deployment: str, response_model: type[BaseModel], prompt: str, workers: int) -> AzureOpenAIProvider:
        endpoint = self.resolved_endpoint()
        if not endpoint:
            raise AzureOpenAIConfigError(f"provider azure_openai needs an endpoint: set ${ENDPOINT_VAR} or the resource's endpoint")
        api_key = os.environ.get(self.api_key_env_var)
        if not api_key:
            raise AzureOpenAIConfigError(f"provider azure_openai needs an API key in ${self.api_key_env_var}")
        return AzureOpenAIProvider(
            endpoint=endpoint,
            api_key=api_key,
            api_version=self.api_version,
            deployment=deployment,
            response_model=response_model,
            prompt=prompt,
            workers=workers,
            timeout_seconds=self.timeout_seconds,
            max_retries=self.max_retries,
        )


def _status_error(e: openai.APIStatusError) -> ScoreResult:
    if e.status_code == 400 and e.code == "content_filter":
        return ScoreResult("filtered", error="content_filter: the prompt was filtered by Azure OpenAI's content policy")
    # The message is the server's; the SDK never puts the key in it.
    return ScoreResult.failed(f"HTTP {e.status_code} from Azure OpenAI: {e.message}")


class AzureOpenAIProvider:
    def __init__(
        self,
        *,
        endpoint: str,
        api_key: str,
        api_version: str,
        deployment: str,
        response_model: type[BaseModel],
        prompt: str,
        workers: int,
        timeout_seconds: float,
        max_retries: int,
    ) -> None:
        self.model_id = deployment
        self._client_args: dict[str, Any] = dict(
            azure_endpoint=endpoint,
            api_key=api_key,
            api_version=api_version,
            timeout=timeout_seconds,
            max_retries=max_retries,
        )
        self._response_model = response_model
        self._prompt = prompt
        self._workers = workers

    def __repr__(self) -> str:  # never show the key
        return f"AzureOpenAIProvider(deployment={self.model_id!r}, endpoint={self._client_args['azure_endpoint']!r})"

    def score(self, posts: Sequence[PostToScore], progress: ProgressCallback | None = None) -> list[ScoreResult]:
        return asyncio.run(self._score_all(posts, progress))

    async def _score_all(self, posts: Sequence[PostToScore], progress: ProgressCallback | None) -> list[ScoreResult]:
        limit = asyncio.Semaphore(self._workers)
        async with openai.AsyncAzureOpenAI(**self._client_args) as client:

            async def one(post: PostToScore) -> ScoreResult:
                async with limit:
                    result = await self._score_one(client, post)
                if progress:
                    progress(1)
                return result

            return list(await asyncio.gather(*(one(p) for p in posts)))

    async def _score_one(self, client: openai.AsyncAzureOpenAI, post: PostToScore) -> ScoreResult:
        messages = [
            {"role": "system", "content": self._prompt},
            {"role": "user", "content": json.dumps(post.fields, ensure_ascii=False, sort_keys=True, default=str)},
        ]
        try:
            completion = await client.chat.completions.parse(
                model=self.model_id, messages=messages, response_format=self._response_model
            )
        except openai.ContentFilterFinishReasonError:
            return ScoreResult("filtered", error="content_filter: the answer was filtered by Azure OpenAI's content policy")
        except openai.LengthFinishReasonError:
            return ScoreResult.failed("the answer was cut off at the token limit")
        except ValidationError as e:
            return ScoreResult.failed(f"invalid structured answer: {e.errors(include_url=False)[0]['msg']}")
        except openai.APIStatusError as e:
            return _status_error(e)
        except openai.APIConnectionError as e:
            return ScoreResult.failed(f"cannot reach Azure OpenAI: {type(e).__name__}: {e}")
        message = completion.choices[0].message
        if message.refusal:
            return ScoreResult.failed(f"the model refused: {message.refusal}")
        if message.parsed is None:
            return ScoreResult.failed("the answer had no structured content")
        return ScoreResult("ok", message.parsed)
