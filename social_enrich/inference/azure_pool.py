"""Azure OpenAI pool provider: one model deployed several times (regions, resources, quotas), one run.

Every attempt (retries included) asks :meth:`AzureOpenAIPoolProvider.choose_deployment` where to go:
among the deployments whose circuit breaker lets a request through and that have a free concurrency
slot, the one whose pacer could start the request soonest, ties broken by the most quota left in
the current window. A deployment with twice the quota has its pacer free twice as often, so it
takes about twice the share.

Each deployment has a circuit breaker fed by what its attempts came to (``heard``):

* ``failures_to_open`` failures in a row (5xx, dropped or refused connection, timeout), or
  ``throttles_to_open`` 429s in a row (a storm its own quota does not explain: the pacer keeps
  under it), open it: no request goes there for ``cool_down_seconds``;
* then it is half-open: ONE probe request is let through; an answer closes it, a failure opens it
  again for twice as long (at most ``max_cool_down_seconds``);
* a rejection (401, 403, 404: this deployment's key, rights or name) opens it for the longest
  cool-down at once. The run stops (:class:`EndpointRejectedError`) only when every deployment
  rejects it.

A failed attempt is retried through ``choose_deployment`` again, so the work of a deployment that
went out moves to the others by itself. When every deployment is out, a request waits for the
soonest cool-down to end (and for a probe in flight to come back) rather than fail; it fails only
once its retry budget is spent, with a message naming every deployment and why it is out.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from social_enrich.config import InferenceConfig
from social_enrich.inference.azure_deployment import (
    DEFAULT_ENQUEUED_TOKEN_LIMIT,
    ENDPOINT_VAR,
    AzureDeployment,
    SettingNames,
)
from social_enrich.inference.azure_openai import (
    AzureOpenAIConfigError,
    AzureOpenAIProvider,
    AzureOpenAISettings,
    Heard,
    _Transient,
    deployed_quota,
)
from social_enrich.inference.credentials import CredentialsError
from social_enrich.inference.provider import PostToScore, ResultCallback, ScoreResult
from social_enrich.inference.rate_limiter import AdaptiveConcurrency
from social_enrich.inference.usage import answered_shares

log = logging.getLogger(__name__)

FAILURES = frozenset({"server_error", "connection_error", "timeout"})


class PoolDeployment(BaseModel):
    """One deployment of the pool: where it is, where its key comes from, its own quota."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="The deployment's name.")
    endpoint: str | None = Field(default=None, description=f"https://<name>.openai.azure.com; default ${ENDPOINT_VAR}.")
    api_key_env_var: str = Field(default="AZURE_OPENAI_API_KEY", description="Environment variable holding its key.")
    requests_per_minute: int | None = Field(default=None, gt=0, description="Its RPM; default: the job's rate_limit.")
    tokens_per_minute: int | None = Field(default=None, gt=0, description="Its TPM; default: the job's rate_limit.")
    batch: bool = Field(default=False, description="A Global Batch deployment (used by the batch path).")
    enqueued_token_limit: int = Field(default=DEFAULT_ENQUEUED_TOKEN_LIMIT, gt=0, description="Its Batch enqueued-token quota.")


class AzureOpenAIPoolSettings(BaseModel):
    """The azure_openai_pool provider's config ($SOCIAL_ENRICH_PROVIDER_CONFIG): the deployments, and
    what they share (API version, timeout, model version, circuit breaker)."""

    model_config = ConfigDict(extra="forbid")

    deployments: list[PoolDeployment] = Field(min_length=1, description="The deployments of the job's model.")
    api_version: str = Field(default="2024-10-21", description="Azure OpenAI API version with structured outputs.")
    timeout_seconds: float = Field(default=60.0, gt=0, description="Per-request timeout.")
    model_version: str | None = Field(
        default=None, description="The deployed model's version: part of the cache identity, with the model."
    )
    failures_to_open: int = Field(default=3, ge=1, description="Failures in a row that take a deployment out.")
    throttles_to_open: int = Field(default=5, ge=1, description="429s in a row that take a deployment out.")
    cool_down_seconds: float = Field(default=5.0, gt=0, description="How long a deployment stays out at first.")
    max_cool_down_seconds: float = Field(default=60.0, gt=0, description="Longest cool-down (doubled per failed probe).")

    @field_validator("deployments")
    @classmethod
    def _unique_names(cls, deployments: list[PoolDeployment]) -> list[PoolDeployment]:
        names = Counter(d.name for d in deployments)
        repeated = sorted(name for name, n in names.items() if n > 1)
        if repeated:
            raise ValueError(f"deployment names must be unique: {', '.join(repeated)} given more than once")
        return deployments

    @model_validator(mode="after")
    def _cool_downs(self) -> AzureOpenAIPoolSettings:
        if self.max_cool_down_seconds < self.cool_down_seconds:
            raise ValueError("max_cool_down_seconds must be at least cool_down_seconds")
        return self

    def build_provider(self, inference: InferenceConfig, response_model: type[BaseModel]) -> AzureOpenAIPoolProvider:
        members = [self._member(i, entry, inference) for i, entry in enumerate(self.deployments)]
        return AzureOpenAIPoolProvider(members, inference, response_model, self.model_version, breaker=self)

    def _member(self, i: int, entry: PoolDeployment, inference: InferenceConfig) -> PoolMember:
        # The single deployment's connection logic (key from its variable or the secret, endpoint), reused.
        single = AzureOpenAISettings(endpoint=entry.endpoint, api_version=self.api_version,
                                     api_key_env_var=entry.api_key_env_var, timeout_seconds=self.timeout_seconds)
        try:
            args, names = single._connection()
        except AzureOpenAIConfigError as e:
            raise AzureOpenAIConfigError(
                str(e).replace("provider azure_openai needs", f"deployment {entry.name} of provider azure_openai_pool needs")
            ) from None
        except CredentialsError as e:  # its message names the variable, never a key
            raise CredentialsError(f"deployment {entry.name} of provider azure_openai_pool: {e}") from None
        if entry.endpoint:
            names = SettingNames(key=names.key, endpoint=f"deployments[{i}].endpoint of provider azure_openai_pool")
        quota = deployed_quota(inference, entry.requests_per_minute, entry.tokens_per_minute)
        return PoolMember(entry.name, args, quota, inference.workers, names,
                          batch=entry.batch, enqueued_token_limit=entry.enqueued_token_limit)


class _NotifyingConcurrency(AdaptiveConcurrency):
    """The deployment's concurrency limit, telling the pool when a slot is given back."""

    def __init__(self, ceiling: int, start: int, released: Callable[[], None]) -> None:
        super().__init__(ceiling, start=start)
        self._released = released

    @property
    def room(self) -> int:
        return self.limit - self._in_flight

    async def __aexit__(self, *exc: object) -> None:
        await super().__aexit__(*exc)
        self._released()


class PoolMember(AzureDeployment):
    """A deployment of a pool: a plain deployment whose concurrency slots the pool's routing sees."""

    def __init__(self, *args: Any, batch: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batch = batch
        self.released: Callable[[], None] = lambda: None

    @asynccontextmanager
    async def session(self) -> AsyncIterator[None]:
        async with super().session():
            self.concurrency = _NotifyingConcurrency(self.workers, self.concurrency_start, lambda: self.released())
            yield

    @property
    def room(self) -> int:
        concurrency = self.concurrency
        return concurrency.room if isinstance(concurrency, _NotifyingConcurrency) else 1

    def free_tokens(self) -> float:
        """Tokens the pacer's current window has left (infinite when not paced by tokens)."""
        pacer = self.pacer
        window = getattr(pacer, "_window_tokens", None)
        return math.inf if window is None else window - getattr(pacer, "_started_tokens", 0)


@dataclass
class Breaker:
    """One deployment's circuit breaker: closed, open (until ``reopens_at``) or half-open (one probe)."""

    name: str
    failures_to_open: int
    throttles_to_open: int
    first_cool_down: float
    max_cool_down: float
    probe_timeout: float
    state: str = "closed"
    failures: int = 0  # in a row
    throttles: int = 0  # in a row
    cool_down: float = 0.0  # the next opening's
    reopens_at: float = 0.0
    probe_since: float | None = None
    why: str = ""
    rejection: str | None = None  # the deployment's last answer rejected the run
    openings: int = 0

    def __post_init__(self) -> None:
        self.cool_down = self.first_cool_down

    def admits(self, now: float) -> bool:
        if self.state == "open" and now >= self.reopens_at:
            self.state, self.probe_since = "half_open", None
            log.info("deployment %s of the pool is half-open: one probe request goes", self.name)
        if self.state == "closed":
            return True
        if self.state == "half_open":
            return self.probe_since is None or now - self.probe_since > self.probe_timeout
        return False

    def chosen(self, now: float) -> None:
        if self.state == "half_open":
            self.probe_since = now

    def heard(self, what: Heard, now: float) -> bool:
        """Take in an attempt's outcome; True when the state changed."""
        if what == "answered":
            self.failures = self.throttles = 0
            self.rejection = None
            if self.state == "half_open":
                self.state, self.cool_down, self.probe_since = "closed", self.first_cool_down, None
                log.info("deployment %s of the pool is back: its probe was answered", self.name)
                return True
            return False
        if what == "rejected":
            self.failures += 1
            return self._open(now, "it rejects the run", self.max_cool_down)
        if what == "throttled":
            self.throttles += 1
            why, tripped = f"{self.throttles} HTTP 429 in a row", self.throttles >= self.throttles_to_open
        elif what in FAILURES:
            self.failures += 1
            self.throttles = 0
            why, tripped = f"{self.failures} failures in a row, the last a {what.replace('_', ' ')}", (
                self.failures >= self.failures_to_open)
        else:
            return False
        if self.state == "half_open":
            return self._open(now, f"its probe failed ({what.replace('_', ' ')})")
        if self.state == "closed" and tripped:
            return self._open(now, why)
        return False  # open already: requests sent before it opened are still coming back

    def _open(self, now: float, why: str, cool_down: float | None = None) -> bool:
        if self.state == "open":  # requests sent before it opened are still coming back
            return False
        seconds = cool_down if cool_down is not None else self.cool_down
        self.state, self.reopens_at, self.probe_since, self.why = "open", now + seconds, None, why
        self.cool_down = min(self.max_cool_down, self.cool_down * 2)
        self.openings += 1
        log.warning("deployment %s of the pool is out for %.1f s: %s", self.name, seconds, why)
        return True

    def describe(self, now: float) -> str:
        if self.state == "open":
            return f"{self.name} (out for {max(0.0, self.reopens_at - now):.1f} s more: {self.why})"
        if self.state == "half_open":
            return f"{self.name} (half-open, its probe in flight: {self.why})"
        return f"{self.name} (up)"


class AzureOpenAIPoolProvider(AzureOpenAIProvider):
    """Scores posts through several deployments of one model: routed by who can start soonest,
    each behind a circuit breaker (see the module docstring)."""

    Config = AzureOpenAIPoolSettings
    deployments: list[PoolMember]  # type: ignore[assignment]

    # Defaults when built without a config (the config's fields override them).
    FAILURES_TO_OPEN = 3
    THROTTLES_TO_OPEN = 5
    COOL_DOWN_SECONDS = 5.0
    MAX_COOL_DOWN_SECONDS = 60.0
    ROOM_CHECK_SECONDS = 2.0  # a waiter looks again at least this often, whatever it was told

    @classmethod
    def from_config(cls, config: AzureOpenAIPoolSettings, job: Any) -> AzureOpenAIPoolProvider:  # type: ignore[override]
        return config.build_provider(job.inference, job.response_model)

    def __init__(self, deployments: Sequence[PoolMember], inference: InferenceConfig, response_model: type[BaseModel],
                 model_version: str | None = None, breaker: AzureOpenAIPoolSettings | None = None) -> None:
        super().__init__(list(deployments), inference, response_model, model_version)
        names = [d.name for d in self.deployments]
        if len(set(names)) != len(names):
            raise ValueError(f"deployment names must be unique: {names}")
        timeout = max(float(d.client_args.get("timeout") or 60.0) for d in self.deployments)
        self.breakers = {d.name: Breaker(
            d.name,
            breaker.failures_to_open if breaker else self.FAILURES_TO_OPEN,
            breaker.throttles_to_open if breaker else self.THROTTLES_TO_OPEN,
            breaker.cool_down_seconds if breaker else self.COOL_DOWN_SECONDS,
            breaker.max_cool_down_seconds if breaker else self.MAX_COOL_DOWN_SECONDS,
            probe_timeout=timeout + 5.0,
        ) for d in self.deployments}
        self._waiters: deque[asyncio.Future[None]] = deque()
        for d in self.deployments:
            d.released = self._wake

    def batch_deployments(self) -> list[AzureDeployment]:
        """The pool's Global Batch deployments (``batch: true``): the Batch path spreads its files over them."""
        chosen = [d for d in self.deployments if d.batch]
        if not chosen:
            raise AzureOpenAIConfigError(
                "provider azure_openai_pool has no Global Batch deployment: set batch: true on the deployments "
                f"the Batch path may use (of {', '.join(d.name for d in self.deployments)})")
        return list(chosen)

    # -- figures -----------------------------------------------------------------------------

    def deployment_shares(self) -> dict[str, float]:
        """Each deployment's share of the answered requests (0..1; all 0 before any answer)."""
        return answered_shares(self.usage_by_deployment())

    def deployment_states(self) -> dict[str, str]:
        """Each deployment's breaker: closed, open or half_open."""
        return {name: b.state for name, b in self.breakers.items()}

    # -- routing -----------------------------------------------------------------------------

    async def _score_all(self, posts: Sequence[PostToScore], on_result: ResultCallback | None) -> list[ScoreResult]:
        self._waiters = deque()  # futures of this call's event loop
        return await super()._score_all(posts, on_result)

    async def choose_deployment(self, prompt_tokens: int, max_tokens: int) -> AzureDeployment:
        tokens = prompt_tokens + max_tokens
        deadline: float | None = None
        while True:
            now = time.monotonic()
            usable = [d for d in self.deployments if self.breakers[d.name].admits(now)]
            if usable:
                deadline = None
                with_room = [d for d in usable if d.room > 0]
                if with_room:
                    # The slot is taken right after this returns, with no await in between.
                    chosen = min(with_room, key=lambda d: (d.pacer.ready_at(tokens), -d.free_tokens()))
                    self.breakers[chosen.name].chosen(now)
                    return chosen
                await self._wait(self.ROOM_CHECK_SECONDS)
                continue
            # Every deployment is out: wait for the soonest cool-down (or a probe in flight), then give up.
            openings = [b.reopens_at for b in self.breakers.values() if b.state == "open"]
            probing = any(b.state == "half_open" for b in self.breakers.values())
            if deadline is None:
                deadline = min(openings) if openings else now + self.ROOM_CHECK_SECONDS
            elif now >= deadline and not probing:
                states = "; ".join(b.describe(now) for b in self.breakers.values())
                raise _Transient(f"every deployment of the pool is out: {states}")
            await self._wait(max(0.01, min(deadline - now, self.ROOM_CHECK_SECONDS)) if not probing
                             else self.ROOM_CHECK_SECONDS)

    async def _wait(self, timeout: float) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            pass

    def _wake(self, everyone: bool = False) -> None:
        """Wake as many waiters as there are free slots (at least one), or all of them."""
        now = time.monotonic()
        wanted = len(self._waiters) if everyone else max(1, sum(
            max(0, d.room) for d in self.deployments if self.breakers[d.name].admits(now)))
        while wanted and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                wanted -= 1

    # -- circuit breakers --------------------------------------------------------------------

    def heard(self, deployment: AzureDeployment, what: Heard) -> None:
        breaker = self.breakers[deployment.name]
        if breaker.heard(what, time.monotonic()):
            self._wake(everyone=True)
            if breaker.state == "open":
                loop = asyncio.get_running_loop()
                loop.call_later(max(0.0, breaker.reopens_at - time.monotonic()) + 0.001, self._wake, True)

    def stop_after_rejection(self, deployment: AzureDeployment, message: str, rejections: Counter[str]) -> str | None:
        """The run stops only when every deployment of the pool rejects it."""
        self.breakers[deployment.name].rejection = message
        if all(b.rejection for b in self.breakers.values()):
            return "every deployment of the pool rejects the run: " + "; ".join(
                f"{b.name}: {b.rejection}" for b in self.breakers.values())
        return None
