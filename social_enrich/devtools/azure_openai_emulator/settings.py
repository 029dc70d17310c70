"""The emulator's knobs: one dataclass, validated on creation and on every later assignment."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, NamedTuple

from .faults import RANDOM_FAULTS, share_field


class SettingsError(ValueError):
    """A bad setting.  ``fields`` names the settings involved (the CLI maps them to its flags)."""

    def __init__(self, fields: tuple[str, ...], problem: str):
        self.fields = fields
        self.problem = problem
        super().__init__(f"{' and '.join(fields)} {problem}")


class DeploymentLimits(NamedTuple):
    """One deployment's own rate limits, replacing the server-wide pair (None: unlimited).

    A tuple ``(rpm, tpm)`` is taken for one wherever settings are given."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None


@dataclass
class EmulatorSettings:
    """Server-wide knobs.  Read on every request, so a test may change fields of a running emulator;
    an assignment is validated like the constructor's arguments (a bad one raises and is undone)."""

    api_key: str = "test-key"
    deployments: tuple[str, ...] = ("gpt-4o-mini",)
    # When set, every chat request fails with this HTTP status (after routing, before auth).
    fail_all_with: int | None = None

    # -- rate limits, per deployment (None: unlimited) ------------------------------------------
    # Like Azure, the per-minute figures are enforced over a sliding window of rate_window_seconds:
    # at most rpm * window / 60 requests and tpm * window / 60 tokens in any such window.
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    rate_window_seconds: float = 10.0
    # Deployment name -> its own (rpm, tpm), replacing the two above for that deployment only, as
    # each Azure deployment has its own quota.  Stored read-only: assign a new mapping to change it.
    deployment_limits: Mapping[str, DeploymentLimits] = field(default_factory=dict)

    # -- latency model (see reply_delay) -------------------------------------------------------
    latency_seconds: float = 0.0  # base delay of every successful answer
    latency_per_output_token_seconds: float = 0.0  # plus this per completion token
    latency_jitter: float = 0.0  # both multiplied by a factor uniform in [1 - jitter, 1 + jitter]
    # Extra delay for a request carrying EMULATOR_FAULT:slow, on top of the latency model.
    slow_seconds: float = 2.0

    # -- random faults: the share (0..1) of admitted chat requests getting each; sum <= 1 -------
    share_http_500: float = 0.0
    share_http_503: float = 0.0
    share_drop: float = 0.0
    share_timeout: float = 0.0
    share_malformed_json: float = 0.0
    share_content_filter: float = 0.0
    share_missing_post: float = 0.0
    # How long a "timeout" fault holds the request before dropping it (cut short by stop()).
    timeout_hold_seconds: float = 30.0
    # Seeds the emulator's RNG (faults, jitter); None: a fresh seed.  Changing it re-seeds.
    seed: int | None = None

    # -- Azure Global Batch (the Files and Batches APIs; see batches.py) -----------------------
    # A batch validates for the first tenth of this, is in progress until it has passed, then
    # finalizes for another tenth and completes.  Every batch_* setting is read when a batch is created.
    batch_completion_seconds: float = 2.0
    # The share (0..1) of batch lines answered as 500 error lines, each line drawn on its own.
    batch_share_error_lines: float = 0.0
    # The shares (0..1) of batches that expire and that fail validation, one draw per batch; sum <= 1.
    batch_share_expired: float = 0.0
    batch_share_failed: float = 0.0
    # The share of its lines an expired (or cancelled) batch answers; the rest are never answered.
    batch_expired_completed_share: float = 0.5
    # Azure's enqueued-token quota: the tokens of a deployment's batches not yet final may not pass
    # it; a batch that would fails validation (token_limit_exceeded).  None: unlimited.  Azure's
    # default for gpt-4o-mini Global Batch is 1,000,000,000.
    batch_enqueued_token_limit: int | None = None
    # Deployment name -> its own enqueued-token limit (None: unlimited), replacing the one above.
    deployment_batch_limits: Mapping[str, int | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, coerce in _COERCED.items():
            object.__setattr__(self, name, coerce(getattr(self, name)))
        for name in _FIELD_NAMES:
            _check_field(self, name)
        _check_combinations(self)
        object.__setattr__(self, "_ready", True)

    def __setattr__(self, name: str, value: Any) -> None:
        if not self.__dict__.get("_ready") or name not in _FIELD_NAMES:
            object.__setattr__(self, name, value)
            return
        if name in _COERCED:
            value = _COERCED[name](value)
        old = getattr(self, name)
        object.__setattr__(self, name, value)
        try:
            _check_field(self, name)
            _check_combinations(self)
        except SettingsError:
            object.__setattr__(self, name, old)
            raise

    def rate_limits_of(self, deployment: str) -> DeploymentLimits:
        """The (rpm, tpm) in force for ``deployment``: its own, else the server-wide pair."""
        own = self.deployment_limits.get(deployment)
        return own if own is not None else DeploymentLimits(self.requests_per_minute, self.tokens_per_minute)

    def batch_limit_of(self, deployment: str) -> int | None:
        """The enqueued-token limit in force for ``deployment``: its own, else the server-wide one."""
        if deployment in self.deployment_batch_limits:
            return self.deployment_batch_limits[deployment]
        return self.batch_enqueued_token_limit


_FIELD_NAMES = frozenset(f.name for f in fields(EmulatorSettings))
_NON_NEGATIVE = (
    "latency_seconds", "latency_per_output_token_seconds", "slow_seconds", "timeout_hold_seconds",
    "batch_completion_seconds",
)  # fmt: skip
_BATCH_OUTCOME_SHARES = ("batch_share_expired", "batch_share_failed")
_FRACTIONS = (
    ("latency_jitter",) + tuple(share_field(kind) for kind in RANDOM_FAULTS)
    + _BATCH_OUTCOME_SHARES + ("batch_share_error_lines", "batch_expired_completed_share")
)  # fmt: skip
_POSITIVE_INTS = ("requests_per_minute", "tokens_per_minute", "batch_enqueued_token_limit")
_PER_MINUTE = ("requests_per_minute", "tokens_per_minute")
# Float sums like 0.1 + 0.2 + 0.7 land a hair above 1.
_SHARE_SUM_SLACK = 1e-9


def _deployments(value: Any) -> Any:
    # Lists are welcome (CLI, YAML); stored as a tuple so the settings can't be mutated in place.
    return tuple(value) if isinstance(value, list) else value


def _read_only(value: Any, coerce_value: Any = None) -> Any:
    # A copy behind a read-only view: a change in place would skip validation.
    if not isinstance(value, Mapping):
        return value
    items = {k: coerce_value(v) if coerce_value else v for k, v in value.items()}
    return MappingProxyType(items)


def _limits(value: Any) -> Any:
    # (rpm, tpm) tuples and lists (CLI, YAML) become DeploymentLimits; anything else is checked as it is.
    if isinstance(value, (tuple, list)) and not isinstance(value, DeploymentLimits) and len(value) == 2:
        return DeploymentLimits(*value)
    return value


_COERCED = {
    "deployments": _deployments,
    "deployment_limits": lambda value: _read_only(value, _limits),
    "deployment_batch_limits": _read_only,
}


def _is_positive_int_or_none(value: Any) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool) and value > 0)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_field(settings: EmulatorSettings, name: str) -> None:
    value = getattr(settings, name)
    if name == "api_key":
        if not isinstance(value, str):
            raise SettingsError((name,), f"must be a string, got {value!r}")
    elif name == "deployments":
        if not (isinstance(value, tuple) and value and all(isinstance(d, str) and d for d in value)):
            raise SettingsError((name,), f"must be a non-empty tuple of non-empty strings, got {value!r}")
    elif name == "fail_all_with":
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and 400 <= value <= 599):
            raise SettingsError((name,), f"must be None or an HTTP error status 400-599, got {value!r}")
    elif name in _POSITIVE_INTS:
        if not _is_positive_int_or_none(value):
            raise SettingsError((name,), f"must be None (unlimited) or an integer > 0, got {value!r}")
    elif name == "deployment_limits":
        if not isinstance(value, Mapping):
            raise SettingsError((name,), f"must map deployment names to (rpm, tpm), got {value!r}")
        for deployment, limits in value.items():
            if not (isinstance(limits, DeploymentLimits) and all(map(_is_positive_int_or_none, limits))):
                problem = f"of {deployment!r} must be (rpm, tpm), each None (unlimited) or an int > 0, got {limits!r}"
                raise SettingsError((name,), problem)
    elif name == "deployment_batch_limits":
        if not isinstance(value, Mapping):
            raise SettingsError((name,), f"must map deployment names to enqueued-token limits, got {value!r}")
        for deployment, limit in value.items():
            if not _is_positive_int_or_none(limit):
                problem = f"of {deployment!r} must be None (unlimited) or an integer > 0, got {limit!r}"
                raise SettingsError((name,), problem)
    elif name == "rate_window_seconds":
        if not (_is_number(value) and 0 < value < math.inf):
            raise SettingsError((name,), f"must be a finite number > 0, got {value!r}")
    elif name in _NON_NEGATIVE:
        if not (_is_number(value) and 0 <= value < math.inf):
            raise SettingsError((name,), f"must be a finite number >= 0, got {value!r}")
    elif name in _FRACTIONS:
        if not (_is_number(value) and 0 <= value <= 1):
            raise SettingsError((name,), f"must be a number from 0 to 1, got {value!r}")
    elif name == "seed":
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool)):
            raise SettingsError((name,), f"must be None or an integer, got {value!r}")


def _check_combinations(settings: EmulatorSettings) -> None:
    _check_share_sum(settings, tuple(share_field(kind) for kind in RANDOM_FAULTS), "one fault per request")
    _check_share_sum(settings, _BATCH_OUTCOME_SHARES, "one outcome per batch")
    # A window must hold at least one request and one token, or nothing would ever be admitted.
    window = settings.rate_window_seconds
    for name in _PER_MINUTE:
        _check_per_window(getattr(settings, name), window, (name, "rate_window_seconds"), "allow")
    for limits_field in ("deployment_limits", "deployment_batch_limits"):
        unknown = [d for d in getattr(settings, limits_field) if d not in settings.deployments]
        if unknown:
            problem = f"name deployments that are not configured: {', '.join(map(repr, unknown))}"
            raise SettingsError((limits_field, "deployments"), problem)
    for deployment, limits in settings.deployment_limits.items():
        for kind, per_minute in zip(("rpm", "tpm"), limits):
            names = ("deployment_limits", "rate_window_seconds")
            _check_per_window(per_minute, window, names, f"of {deployment!r}: its {kind} allows")


def _check_per_window(per_minute: int | None, window: float, names: tuple[str, ...], what: str) -> None:
    if per_minute is not None and per_minute * window / 60 < 1:
        raise SettingsError(
            names,
            f"{what} less than 1 per window ({per_minute} * {window:g} s / 60 = {per_minute * window / 60:g}); "
            "raise the limit or the window",
        )


def _check_share_sum(settings: EmulatorSettings, names: tuple[str, ...], why: str) -> None:
    shares = {name: getattr(settings, name) for name in names}
    total = sum(shares.values())
    if total > 1 + _SHARE_SUM_SLACK:
        involved = tuple(name for name, share in shares.items() if share > 0)
        raise SettingsError(involved, f"must sum to at most 1 ({why}), got {total:g}")
