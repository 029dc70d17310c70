"""Azure OpenAI realtime provider: packed requests, paced under the quota, retried, matched back by id.

One request carries ``posts_per_request`` posts (see ``packing``). Requests start only when the
pacer says the quota has room, with adaptive concurrency on top (see ``rate_limiter``). A request
that fails in passing (429, 5xx, dropped connection, timeout) is retried with tenacity: the wait is
the server's ``retry-after-ms`` / ``retry-after`` when it sends one, else jittered exponential
backoff, bounded in attempts and in time (a 429 is the server saying "later", so it counts
against the time only). The SDK's own retries are off: they would be invisible
to the pacer, the concurrency limit and the cost figures. Within an answer, a post whose item is
missing or invalid is asked again alone; an answer that cannot be read at all, or a pack that the
content filter stopped, is split in halves until the culprit is alone.

An endpoint that rejects the run itself (wrong key, unknown deployment, nothing listening) would
fail every request the same way; after a few such answers ``score`` stops and raises
:class:`EndpointRejectedError` with the cause and the remedy, instead of sending them all.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import openai
from pydantic import BaseModel, Field
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_random_exponential

from social_enrich.config import InferenceConfig, RetryConfig
from social_enrich.errors import SocialEnrichError
from social_enrich.inference.credentials import SECRET_ENDPOINT_FIELD, SECRET_NAME_VAR, resolve_credentials
from social_enrich.inference.azure_deployment import DEFAULT_ENQUEUED_TOKEN_LIMIT, ENDPOINT_VAR, AzureDeployment, SettingNames
from social_enrich.inference.output_budget import OutputBudget
from social_enrich.inference.packing import MatchedAnswer, UnreadableAnswer, build_messages, match_answer, response_format
from social_enrich.inference.provider import PostToScore, ResultCallback, ScoreResult
from social_enrich.inference.token_budget import estimate_request_tokens
from social_enrich.inference.usage import Usage

THROTTLED = "HTTP 429"
ANSWER_OVERHEAD_TOKENS = 8  # {"results":[...]} around the items
RETRYABLE_STATUSES = frozenset({408, 409, 500, 502, 503, 504})
FILTERED_PROMPT = "content_filter: the prompt was filtered by Azure OpenAI's content policy"
FILTERED_ANSWER = "content_filter: the answer was filtered by Azure OpenAI's content policy"
# Statuses that say the endpoint rejects the run itself, not this request: the key, its rights, the deployment.
REJECTING_STATUSES = frozenset({401, 403, 404})
# A score call stops at the third identical rejection: one or two may be a blip (a key being rotated,
# a deployment minutes old), thirty are not. Requests already in flight are cancelled.
STOP_AFTER_REJECTIONS = 3


class AzureOpenAIConfigError(SocialEnrichError, RuntimeError):
    """Azure OpenAI is selected but not configured; the message says which setting is missing."""


class EndpointRejectedError(SocialEnrichError):
    """The endpoint rejects every request the same way (wrong key, no such deployment, nothing listening):
    scoring stopped early; the message names the cause and the setting to fix, never the key."""


class AzureOpenAISettings(BaseModel):
    """Connection to an Azure OpenAI resource. The key is read at run time from an environment
    variable or from the AWS Secrets Manager secret named by $OPENAI_SECRET_NAME.

    The azure_openai provider's config: plain pydantic, so the Lambda handler needs no Dagster. The
    production environment fills it from $AZURE_OPENAI_DEPLOYMENT, $AZURE_OPENAI_RPM and $AZURE_OPENAI_TPM
    and $SOCIAL_ENRICH_PROVIDER_CONFIG (see environment.py)."""

    endpoint: str | None = Field(default=None, description=f"https://<name>.openai.azure.com; default ${ENDPOINT_VAR}.")
    api_version: str = Field(default="2024-10-21", description="Azure OpenAI API version with structured outputs.")
    api_key_env_var: str = Field(default="AZURE_OPENAI_API_KEY", description="Environment variable holding the key.")
    timeout_seconds: float = Field(default=60.0, gt=0, description="Per-request timeout.")
    deployment: str | None = Field(default=None, description="The deployment that serves the job's model; default: the model's name.")
    model_version: str | None = Field(
        default=None, description="The deployed model's version (e.g. 2024-07-18): part of the cache identity, with the model."
    )
    requests_per_minute: int | None = Field(default=None, gt=0, description="The deployment's RPM; default: the job's rate_limit.")
    tokens_per_minute: int | None = Field(default=None, gt=0, description="The deployment's TPM; default: the job's rate_limit.")
    enqueued_token_limit: int = Field(
        default=DEFAULT_ENQUEUED_TOKEN_LIMIT, gt=0,
        description="Its Global Batch enqueued-token quota: batches wait rather than pass it (gpt-4o-mini: 1B).",
    )

    def _connection(self) -> tuple[dict[str, Any], SettingNames]:
        """The SDK client's arguments, and where the key and endpoint were set (for error messages)."""
        credentials = resolve_credentials(self.api_key_env_var)
        if self.endpoint:
            endpoint, endpoint_setting = self.endpoint, "the endpoint of the azure_openai resource"
        elif os.environ.get(ENDPOINT_VAR):
            endpoint, endpoint_setting = os.environ[ENDPOINT_VAR], f"${ENDPOINT_VAR}"
        elif credentials.endpoint:
            endpoint, endpoint_setting = credentials.endpoint, f"{SECRET_ENDPOINT_FIELD} in {credentials.source}"
        else:
            raise AzureOpenAIConfigError(
                f"provider azure_openai needs an endpoint: set ${ENDPOINT_VAR}, the resource's endpoint, "
                f"or OPENAI_API_BASE in the secret named by ${SECRET_NAME_VAR}"
            )
        args = dict(
            azure_endpoint=endpoint,
            api_key=credentials.api_key,
            api_version=self.api_version,
            timeout=self.timeout_seconds,
            max_retries=0,  # retries are ours: see the module docstring
        )
        return args, SettingNames(key=credentials.setting, endpoint=endpoint_setting)

    def build_provider(self, inference: InferenceConfig, response_model: type[BaseModel]) -> AzureOpenAIProvider:
        args, settings = self._connection()
        quota = deployed_quota(inference, self.requests_per_minute, self.tokens_per_minute)
        deployment = AzureDeployment(self.deployment or inference.model, args, quota, inference.workers, settings,
                                     self.enqueued_token_limit)
        return AzureOpenAIProvider([deployment], inference, response_model, self.model_version)


def deployed_quota(inference: InferenceConfig, requests_per_minute: int | None, tokens_per_minute: int | None) -> Any:
    """The job's rate limit with a deployment's own quota, where the deployment states one."""
    limits = inference.rate_limit
    return limits.model_copy(update={
        "requests_per_minute": requests_per_minute or limits.requests_per_minute,
        "tokens_per_minute": tokens_per_minute or limits.tokens_per_minute,
    })


# What a deployment's attempt came to, as a pool's circuit breaker hears it.
Heard = Literal["answered", "throttled", "server_error", "connection_error", "timeout", "rejected"]


class _Transient(Exception):
    """A failure worth another attempt; ``retry_after`` is the server's wait, when it gave one."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason, self.retry_after = reason, retry_after


@dataclass
class _Outcome:
    kind: str  # answered | filtered | unreadable | failed
    error: str | None = None
    matched: MatchedAnswer = field(default_factory=MatchedAnswer)


def _retry_after(headers: Any) -> float | None:
    """The server's wait in seconds: ``retry-after-ms`` first (Azure's precise one), then ``retry-after``."""
    for name, scale in (("retry-after-ms", 1000), ("retry-after", 1)):
        try:
            return max(0.0, float(headers.get(name)) / scale)
        except (TypeError, ValueError):
            continue
    return None


def _server_message(error: openai.APIStatusError) -> str:
    body = error.body if isinstance(error.body, dict) else {}
    return str(body.get("message") or error.message)


def _connect_failure(error: openai.APIConnectionError) -> str | None:
    """Why the connection could not be made, or None when the error is of another kind (e.g. dropped)."""
    # httpx's and httpx2's ConnectError alike: the SDK may use either.
    if type(error.__cause__).__name__ != "ConnectError":
        return None
    root: BaseException = error.__cause__
    while root.__cause__ is not None or root.__context__ is not None:
        root = root.__cause__ or root.__context__  # type: ignore[assignment]
    return "connection refused" if isinstance(root, ConnectionRefusedError) else str(root) or type(root).__name__


def _header_int(headers: Any, name: str) -> int | None:
    try:
        return int(headers.get(name))
    except (TypeError, ValueError):
        return None


def _waiter(retry: RetryConfig) -> Callable[[RetryCallState], float]:
    backoff = wait_random_exponential(multiplier=retry.backoff_seconds, max=retry.max_backoff_seconds)

    def wait(state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, _Transient) and error.retry_after is not None:
            return error.retry_after + random.uniform(0, 0.25)  # a little jitter, so waiters don't return as one
        return backoff(state)

    return wait


class AzureOpenAIProvider:
    """Scores posts through one deployment; a subclass (the pool) routes among several by overriding
    :meth:`choose_deployment` and :meth:`heard`."""

    caches_responses = True
    Config = AzureOpenAISettings

    @classmethod
    def from_config(cls, config: AzureOpenAISettings, job: Any) -> AzureOpenAIProvider:
        return config.build_provider(job.inference, job.response_model)

    def __init__(self, deployments: list[AzureDeployment], inference: InferenceConfig, response_model: type[BaseModel],
                 model_version: str | None = None) -> None:
        self.model_id = inference.model
        self.deployments = deployments
        # The model and its version, not the deployment: two deployments of one model share answers.
        self.cache_identity = f"{inference.model}@{model_version}" if model_version else inference.model
        self.inference = inference
        self.response_model = response_model
        self.response_format = response_format(response_model)
        self.output_budget = OutputBudget(inference.max_output_tokens_per_post, ANSWER_OVERHEAD_TOKENS)
        self.usage = Usage()  # over the provider's life, all deployments; callers take differences

    @property
    def deployment(self) -> str:
        """The (first) deployment's name: the one a Batch run of this provider submits to."""
        return self.deployments[0].name

    @property
    def pacer(self) -> Any:
        return self.deployments[0].pacer

    @property
    def peak_concurrency(self) -> int:
        return max(d.peak_concurrency for d in self.deployments)

    def usage_by_deployment(self) -> dict[str, Usage]:
        return {d.name: replace(d.usage) for d in self.deployments}

    def __repr__(self) -> str:  # never show the key
        return f"{type(self).__name__}({', '.join(map(repr, self.deployments))})"

    def batch_client(self) -> openai.AzureOpenAI:
        return self.deployments[0].batch_client()

    def batch_deployments(self) -> list[AzureDeployment]:
        """The deployments the Batch path spreads its files over: a single provider's one."""
        return self.deployments[:1]

    async def choose_deployment(self, prompt_tokens: int, max_tokens: int) -> AzureDeployment:
        """The deployment the next attempt goes to."""
        return self.deployments[0]

    def heard(self, deployment: AzureDeployment, what: Heard) -> None:
        """What an attempt on ``deployment`` came to; one deployment has nothing to decide from it."""

    def stop_after_rejection(self, deployment: AzureDeployment, message: str, rejections: Counter[str]) -> str | None:
        """What a run stops with after ``deployment`` rejected it with ``message`` (``rejections``: every
        rejection of the run so far, this one included), or None to go on."""
        return message if rejections[message] >= STOP_AFTER_REJECTIONS else None

    def count(self, deployment: AzureDeployment, **figures: int) -> None:
        """Add to the usage of the provider and of the deployment alike."""
        for usage in (self.usage, deployment.usage):
            for name, value in figures.items():
                setattr(usage, name, getattr(usage, name) + value)

    def score(self, posts: Sequence[PostToScore], on_result: ResultCallback | None = None) -> list[ScoreResult]:
        """One result per post; raises :class:`EndpointRejectedError` when the endpoint rejects the run
        itself (the answers received before the stop have been passed to ``on_result``)."""
        if not posts:
            return []
        return asyncio.run(self._score_all(posts, on_result))

    async def _score_all(self, posts: Sequence[PostToScore], on_result: ResultCallback | None) -> list[ScoreResult]:
        results: list[ScoreResult | None] = [None] * len(posts)

        def settle(position: int, result: ScoreResult) -> None:
            results[position] = result
            if on_result:
                on_result(position, result)

        size = self.inference.posts_per_request
        async with AsyncExitStack() as sessions:
            for deployment in self.deployments:
                await sessions.enter_async_context(deployment.session())
            run = _PackRun(self, posts, settle)
            packs = [list(range(start, min(start + size, len(posts)))) for start in range(0, len(posts), size)]
            try:
                await asyncio.gather(*(run.settle_pack(pack) for pack in packs))
            except EndpointRejectedError:
                # Nothing more starts (see _attempt); what is in flight or waiting to retry is cancelled.
                others = asyncio.all_tasks() - {asyncio.current_task()}
                for task in others:
                    task.cancel()
                await asyncio.gather(*others, return_exceptions=True)
                raise
        if run.rejections and not run.answered:
            # Too few requests to reach the stop, and each was rejected: the run is no better off.
            raise EndpointRejectedError(run.rejections.most_common(1)[0][0])
        return [r if r is not None else ScoreResult.failed("no answer was recorded") for r in results]


class _PackRun:
    """One ``score`` call: sends packs, splits and retries them, and settles every post exactly once."""

    def __init__(self, provider: AzureOpenAIProvider, posts: Sequence[PostToScore], settle: Callable[[int, ScoreResult], None]) -> None:
        self.p, self.posts, self.settle = provider, posts, settle
        self.rejections: Counter[str] = Counter()  # message -> times: the endpoint rejecting the run itself
        self.answered = False  # an answer (HTTP 200) came back
        self.stop: EndpointRejectedError | None = None

    def _rejected(self, d: AzureDeployment, message: str) -> None:
        """Count a rejection; stop the run when the provider says so (one deployment: at the
        STOP_AFTER_REJECTIONS-th identical one)."""
        self.rejections[message] += 1
        stop = self.p.stop_after_rejection(d, message, self.rejections)
        if stop is not None:
            self.stop = self.stop or EndpointRejectedError(stop)
            raise self.stop

    async def settle_pack(self, pack: list[int]) -> None:
        outcome = await self._send([self.posts[i] for i in pack])
        if outcome.kind == "failed":
            for i in pack:
                self.settle(i, ScoreResult.failed(outcome.error or "failed"))
        elif outcome.kind in ("filtered", "unreadable") and len(pack) > 1:
            middle = len(pack) // 2
            await asyncio.gather(self.settle_pack(pack[:middle]), self.settle_pack(pack[middle:]))
        elif outcome.kind == "filtered":
            self.settle(pack[0], ScoreResult("filtered", error=outcome.error))
        elif outcome.kind == "unreadable":
            self.settle(pack[0], ScoreResult.failed(outcome.error or "unreadable answer"))
        else:
            for position, answer in outcome.matched.answers.items():
                self.settle(pack[position], ScoreResult("ok", answer))
            # Only a pack of several has problems here: a lone post's are retried inside _send.
            await asyncio.gather(*(self.settle_pack([pack[position]]) for position in outcome.matched.problems))

    async def _send(self, posts: list[PostToScore]) -> _Outcome:
        """One request, retried while it fails in passing; a final failure sums up every attempt."""
        retry = self.p.inference.retry
        errors: list[str] = []
        started = time.monotonic()

        def give_up(state: RetryCallState) -> bool:
            failures = sum(reason != THROTTLED for reason in errors)
            return failures >= retry.max_attempts or time.monotonic() - started >= retry.max_seconds

        retrying = AsyncRetrying(
            stop=give_up,
            wait=_waiter(retry),
            retry=retry_if_exception_type(_Transient),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    try:
                        return await self._attempt(posts, retry=bool(errors))
                    except _Transient as e:
                        errors.append(e.reason)
                        raise
        except _Transient:
            summary = ", ".join(f"{reason} x{n}" for reason, n in Counter(errors).items())
            return _Outcome("failed", f"gave up after {len(errors)} attempts: {summary}")
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def _attempt(self, posts: list[PostToScore], retry: bool) -> _Outcome:
        p = self.p
        messages = build_messages(p.inference.prompt, posts)
        prompt_tokens = estimate_request_tokens(messages, p.response_format, 0)
        d = await p.choose_deployment(prompt_tokens, p.output_budget.max_tokens(len(posts)))
        assert d.client is not None, "a deployment is used inside its session"
        at = f" at {d.name}" if len(p.deployments) > 1 else ""  # a pool's failures name the deployment
        async with d.concurrency:
            # Reserved once a request may start, not when it was queued: by then more answers are known.
            max_tokens = p.output_budget.max_tokens(len(posts))
            cost = d.calibration.charge(prompt_tokens) + max_tokens
            await d.pacer.wait_turn(cost)
            if self.stop is not None:
                raise self.stop  # the endpoint rejected the run: start nothing more
            p.count(d, requests=1, retries=int(retry))
            rejection, connect_failed = None, False
            try:
                raw = await d.client.chat.completions.with_raw_response.create(
                    model=d.name, messages=messages, response_format=p.response_format, max_tokens=max_tokens  # type: ignore[arg-type]
                )
            except openai.RateLimitError as e:
                p.count(d, throttled=1)
                p.heard(d, "throttled")
                wait = _retry_after(e.response.headers) or 1.0
                d.pacer.on_throttled(wait)
                d.concurrency.on_throttled()
                raise _Transient(THROTTLED, wait) from None
            except openai.APIStatusError as e:
                if e.status_code == 400 and e.code == "content_filter":
                    return _Outcome("filtered", FILTERED_PROMPT)
                if e.status_code in RETRYABLE_STATUSES:
                    p.count(d, errors=1)
                    p.heard(d, "server_error")
                    raise _Transient(f"HTTP {e.status_code}{at}", _retry_after(e.response.headers)) from None
                if e.status_code not in REJECTING_STATUSES:
                    # The message is the server's; the SDK never puts the key in it.
                    return _Outcome("failed", f"HTTP {e.status_code} from Azure OpenAI: {e.message}")
                rejection = d.rejection(e.status_code, e.code, d.without_key(_server_message(e)))
            except openai.APITimeoutError:
                p.count(d, errors=1)
                p.heard(d, "timeout")
                raise _Transient(f"timeout{at}") from None
            except openai.APIConnectionError as e:
                # A failed connect before any answer is a wrong endpoint (host, port, name), not a blip:
                # it counts towards the stop like a 401, while each request still gets its retries until then.
                # Once something has answered, the endpoint exists, and a failed connect is only retried.
                p.count(d, errors=1)
                p.heard(d, "connection_error")
                reason = _connect_failure(e)
                if reason is None or self.answered or len(p.deployments) > 1:
                    raise _Transient(f"connection error{at}") from None
                rejection, connect_failed = d.cannot_connect(reason), True
            if rejection is not None:
                # Counted outside the except blocks, so an EndpointRejectedError chains to no SDK error.
                p.heard(d, "rejected")
                self._rejected(d, rejection)
                if connect_failed:
                    raise _Transient("connection error")
                if len(p.deployments) > 1:  # a pool: another deployment may take it
                    raise _Transient(rejection)
                return _Outcome("failed", rejection)
            self.answered = True
            p.heard(d, "answered")
            d.pacer.on_answer()
            # A paced deployment's pacer keeps it under its quota, and leaves the server little room on
            # purpose: that room must not shrink the concurrency, or the pace could not be kept.
            room = (None, None) if d.paced else (
                _header_int(raw.headers, "x-ratelimit-remaining-requests"),
                _header_int(raw.headers, "x-ratelimit-remaining-tokens"),
            )
            d.concurrency.on_answer(*room, cost)
        try:
            completion = raw.parse()
        except (ValueError, openai.APIResponseValidationError) as e:  # a 200 whose body is not a chat completion
            raise _Transient(f"unreadable response body: {type(e).__name__}") from None
        return self._read(d, completion.model_dump(), len(posts), prompt_tokens)

    def _read(self, d: AzureDeployment, completion: dict[str, Any], size: int, prompt_estimate: int) -> _Outcome:
        p = self.p
        answer = read_completion(completion, size, p.response_model)
        # In place: the provider's usage is read while its requests run.
        p.count(d, prompt_tokens=answer.usage.prompt_tokens, completion_tokens=answer.usage.completion_tokens,
                cached_tokens=answer.usage.cached_tokens, answers_cut_off=answer.usage.answers_cut_off)
        d.calibration.observe(prompt_estimate, answer.usage.prompt_tokens)
        if answer.usage.answers_cut_off:
            p.output_budget.on_cut_off()
        elif answer.kind == "answered" and not answer.matched.problems:
            p.output_budget.observe(answer.usage.completion_tokens, size)
        if answer.kind == "filtered":
            return _Outcome("filtered", answer.reason)
        if answer.kind == "refused":
            return _Outcome("unreadable" if size > 1 else "failed", answer.reason)
        if answer.kind == "unreadable":
            if size == 1:
                raise _Transient(answer.reason or "unreadable answer")
            return _Outcome("unreadable", answer.reason)
        if size == 1 and answer.matched.problems:
            raise _Transient(answer.matched.problems[0])
        return _Outcome("answered", matched=answer.matched)


@dataclass
class CompletionAnswer:
    """What one chat completion says for a pack of posts: its tokens, and its answers or why it has none."""

    kind: str  # answered | filtered | refused | unreadable
    usage: Usage
    reason: str | None = None
    matched: MatchedAnswer = field(default_factory=MatchedAnswer)


def read_completion(body: dict[str, Any], size: int, response_model: type[BaseModel]) -> CompletionAnswer:
    """The one reader of a chat completion (a JSON body, as the API sends it), for realtime answers
    and for the lines of a batch's output file alike."""
    tokens = body.get("usage") or {}
    usage = Usage(
        prompt_tokens=tokens.get("prompt_tokens") or 0,
        completion_tokens=tokens.get("completion_tokens") or 0,
        cached_tokens=(tokens.get("prompt_tokens_details") or {}).get("cached_tokens") or 0,
    )
    choice = (body.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    if choice.get("finish_reason") == "content_filter":
        return CompletionAnswer("filtered", usage, FILTERED_ANSWER)
    if message.get("refusal"):
        return CompletionAnswer("refused", usage, f"the model refused: {message['refusal']}")
    try:
        matched = match_answer(message.get("content"), size, response_model)
    except UnreadableAnswer as e:
        if choice.get("finish_reason") == "length":
            usage.answers_cut_off = 1
            return CompletionAnswer("unreadable", usage, "the answer was cut off at max_tokens")
        return CompletionAnswer("unreadable", usage, str(e))
    return CompletionAnswer("answered", usage, matched=matched)
