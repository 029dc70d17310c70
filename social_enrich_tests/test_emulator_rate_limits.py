"""The emulator's per-deployment rate limits: sliding windows, 429s with retry-after, remaining quota.

Through the real ``openai`` SDK over loopback (max_retries=0, so every 429 is seen), plus the
limiter itself on a fake clock for exact retry-after arithmetic.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import openai
import pytest

from social_enrich.devtools.azure_openai_emulator import (
    AzureOpenAIEmulator,
    EmulatorSettings,
    SettingsError,
    prompt_tokens_estimate,
    rate_limit_tokens,
)
from social_enrich.devtools.azure_openai_emulator.rate_limits import UNLIMITED_REQUESTS, UNLIMITED_TOKENS, RateLimiter
from social_enrich_tests.emulator_sdk import API_VERSION, DEPLOYMENT

API_KEY = "rate-limit-test-key"
OTHER = "gpt-4o"
# 40 characters: a prompt estimate of exactly 10 tokens.
PROMPT_40 = "Rate this: I love the new camera a lot!!"


def _messages(text: str = PROMPT_40) -> list[dict]:
    return [{"role": "user", "content": text}]


@pytest.fixture
def emulator() -> Iterator[AzureOpenAIEmulator]:
    settings = EmulatorSettings(api_key=API_KEY, deployments=(DEPLOYMENT, OTHER), rate_window_seconds=1.0)
    with AzureOpenAIEmulator(settings) as emu:
        yield emu


def _send(client: openai.AzureOpenAI, model: str = DEPLOYMENT, **kwargs) -> tuple[int, dict[str, str]]:
    """Status and headers of one chat request, 429s included."""
    try:
        raw = client.chat.completions.with_raw_response.create(model=model, messages=_messages(), **kwargs)
        return raw.status_code, dict(raw.headers)
    except openai.RateLimitError as exc:
        assert exc.code == "429"  # Azure's error body
        return 429, dict(exc.response.headers)


# ------------------------------------------------------------------------------------------
# Requests per minute
# ------------------------------------------------------------------------------------------


def test_burst_above_the_window_allowance_gets_429s(emulator: AzureOpenAIEmulator, client: openai.AzureOpenAI):
    emulator.settings.requests_per_minute = 300  # 5 per 1-second window: a burst hits 429 well below 300

    answers = [_send(client) for _ in range(8)]

    assert [status for status, _ in answers] == [200] * 5 + [429] * 3
    assert [h["x-ratelimit-remaining-requests"] for _, h in answers] == ["4", "3", "2", "1", "0", "0", "0", "0"]
    for _, headers in answers[5:]:
        retry_ms = int(headers["retry-after-ms"])
        assert 1 <= retry_ms <= 1000  # until the first admitted request leaves the window
        assert headers["retry-after"] == "1"  # whole seconds, rounded up
    assert "x-ratelimit-limit-requests" not in answers[0][1]  # Azure sends no limit headers
    assert "x-ratelimit-limit-tokens" not in answers[0][1]
    stats = emulator.stats
    assert stats["throttled"] == 3 and stats["by_status"] == {200: 5, 429: 3}


def test_after_retry_after_ms_the_request_is_admitted(emulator: AzureOpenAIEmulator, client: openai.AzureOpenAI):
    # A 3 s window, so the six requests below land in one window even on a loaded machine.
    emulator.settings.rate_window_seconds = 3.0
    emulator.settings.requests_per_minute = 60  # 3 per window
    # The oldest admission a second before the others, so it leaves the window well before them.
    statuses = [_send(client)[0]]
    time.sleep(1.0)
    statuses += [_send(client)[0] for _ in range(2)]
    rejected: list[dict[str, str]] = []
    for _ in range(3):  # three rejections, all inside the window
        status, headers = _send(client)
        assert status == 429
        rejected.append(headers)

    time.sleep(int(rejected[-1]["retry-after-ms"]) / 1000)
    status, headers = _send(client)

    # Admitted: the oldest admission left the window.  Had the three 429s (newer than every
    # admission) consumed quota they would still fill it, so a rejected request costs nothing.
    assert statuses == [200, 200, 200] and status == 200
    # The window slides rather than resets: the two younger admissions are still in it.
    assert int(headers["x-ratelimit-remaining-requests"]) == 0


def test_windows_are_per_deployment(emulator: AzureOpenAIEmulator, client: openai.AzureOpenAI):
    emulator.settings.requests_per_minute = 120  # 2 per window
    assert [_send(client)[0] for _ in range(3)] == [200, 200, 429]
    assert [_send(client, model=OTHER)[0] for _ in range(3)] == [200, 200, 429]


def test_faulted_requests_consume_quota(emulator: AzureOpenAIEmulator, client: openai.AzureOpenAI):
    emulator.settings.requests_per_minute = 120
    emulator.settings.share_http_500 = 1.0  # admitted, then failed: still counted against the window
    assert [_send(client)[0] if i == 2 else _status_of_500(client) for i in range(3)] == [500, 500, 429]


def _status_of_500(client: openai.AzureOpenAI) -> int:
    with pytest.raises(openai.InternalServerError) as excinfo:
        client.chat.completions.create(model=DEPLOYMENT, messages=_messages())
    return excinfo.value.status_code


def test_errors_before_admission_consume_nothing_and_show_the_window(emulator: AzureOpenAIEmulator, client):
    emulator.settings.requests_per_minute = 300
    assert _send(client)[0] == 200
    wrong = openai.AzureOpenAI(
        azure_endpoint=emulator.endpoint, api_key="wrong", api_version=API_VERSION, max_retries=0
    )
    try:
        with pytest.raises(openai.AuthenticationError) as excinfo:
            wrong.chat.completions.create(model=DEPLOYMENT, messages=_messages())
    finally:
        wrong.close()

    assert excinfo.value.response.headers["x-ratelimit-remaining-requests"] == "4"  # what remains, untouched
    assert _send(client)[1]["x-ratelimit-remaining-requests"] == "3"  # the 401 took no slot


# ------------------------------------------------------------------------------------------
# Tokens per minute
# ------------------------------------------------------------------------------------------


def test_tpm_counts_prompt_estimate_plus_max_tokens(emulator: AzureOpenAIEmulator, client: openai.AzureOpenAI):
    emulator.settings.tokens_per_minute = 6000  # 100 rate-limit tokens per 1-second window

    answers = [_send(client, max_tokens=30) for _ in range(3)]

    body = emulator.requests_log[0]
    assert prompt_tokens_estimate(body) == 10
    assert rate_limit_tokens(body) == 40  # prompt estimate + max_tokens: what the client can budget
    assert [status for status, _ in answers] == [200, 200, 429]
    assert [h["x-ratelimit-remaining-tokens"] for _, h in answers] == ["60", "20", "20"]
    assert 1 <= int(answers[2][1]["retry-after-ms"]) <= 1000
    assert emulator.stats["rate_limit_tokens"] == 80  # only the admitted two were charged


def test_max_completion_tokens_counts_too(emulator: AzureOpenAIEmulator, client: openai.AzureOpenAI):
    emulator.settings.tokens_per_minute = 6000
    status, headers = _send(client, max_completion_tokens=50)
    assert status == 200 and headers["x-ratelimit-remaining-tokens"] == str(100 - 10 - 50)


def test_without_max_tokens_the_answer_is_charged(emulator: AzureOpenAIEmulator, client: openai.AzureOpenAI):
    emulator.settings.tokens_per_minute = 6000
    raw = client.chat.completions.with_raw_response.create(model=DEPLOYMENT, messages=_messages())
    usage = raw.parse().usage

    charged = usage.prompt_tokens + usage.completion_tokens
    assert int(raw.headers["x-ratelimit-remaining-tokens"]) == 100 - charged
    assert rate_limit_tokens(emulator.requests_log[0], completion_tokens=usage.completion_tokens) == charged
    # max_tokens, when given, replaces the answer's size: asking for more costs more.
    status, headers = _send(client, model=OTHER, max_tokens=60)
    assert status == 200 and headers["x-ratelimit-remaining-tokens"] == "30"


def test_remaining_headers_decrease(emulator: AzureOpenAIEmulator, client: openai.AzureOpenAI):
    emulator.settings.requests_per_minute = 600
    emulator.settings.tokens_per_minute = 60_000  # 10 requests, 1000 tokens per window
    answers = [_send(client, max_tokens=90)[1] for _ in range(4)]
    assert [int(h["x-ratelimit-remaining-requests"]) for h in answers] == [9, 8, 7, 6]
    assert [int(h["x-ratelimit-remaining-tokens"]) for h in answers] == [900, 800, 700, 600]


def test_a_request_bigger_than_the_window_is_rejected_for_a_window(emulator, client: openai.AzureOpenAI):
    emulator.settings.tokens_per_minute = 6000
    status, headers = _send(client, max_tokens=500)  # 510 > 100: never fits

    assert status == 429
    assert headers["retry-after-ms"] == "1000" and headers["retry-after"] == "1"
    assert headers["x-ratelimit-remaining-tokens"] == "100"  # nothing consumed
    assert _send(client, max_tokens=30)[1]["x-ratelimit-remaining-tokens"] == "60"


def test_no_limit_sends_large_constants(client: openai.AzureOpenAI):
    headers = [_send(client, max_tokens=100)[1] for _ in range(2)]
    assert all(h["x-ratelimit-remaining-requests"] == str(UNLIMITED_REQUESTS) for h in headers)
    assert all(h["x-ratelimit-remaining-tokens"] == str(UNLIMITED_TOKENS) for h in headers)


def test_rate_limit_tokens_is_pure_and_counts_the_schema():
    schema = {"name": "S", "schema": {"type": "object", "properties": {"label": {"type": "string"}}}, "strict": True}
    plain = {"messages": _messages()}
    with_schema = {**plain, "response_format": {"type": "json_schema", "json_schema": schema}}
    schema_chars = len('{"name":"S","schema":{"type":"object","properties":{"label":{"type":"string"}}},"strict":true}')

    assert prompt_tokens_estimate(plain) == 10
    assert prompt_tokens_estimate(with_schema) == -(-(40 + schema_chars) // 4)
    assert rate_limit_tokens(plain) == 10  # no max_tokens, no answer size given
    assert rate_limit_tokens(plain, completion_tokens=7) == 17
    assert rate_limit_tokens({**plain, "max_tokens": 20}, completion_tokens=7) == 30
    assert rate_limit_tokens({**plain, "max_tokens": 20, "n": 2}) == 50  # room for every choice
    assert rate_limit_tokens({"messages": []}) == 1


# ------------------------------------------------------------------------------------------
# The limiter on a fake clock
# ------------------------------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_limiter_retry_after_is_when_the_oldest_admission_expires():
    clock = _Clock()
    limiter = RateLimiter(clock)
    settings = EmulatorSettings(requests_per_minute=120, rate_window_seconds=1.0)  # 2 per window

    # Binary fractions keep the fake clock exact.
    assert limiter.admit("d", 1, settings).admitted
    clock.now += 0.25
    assert limiter.admit("d", 1, settings).admitted
    clock.now += 0.125
    rejected = limiter.admit("d", 1, settings)
    assert not rejected.admitted and rejected.limit == "call"
    assert rejected.retry_after_seconds == 0.625
    clock.now += 0.625 - 2**-20
    assert not limiter.admit("d", 1, settings).admitted  # a hair early: still full
    clock.now += 2**-20
    admitted = limiter.admit("d", 1, settings)
    assert admitted.admitted and admitted.remaining_requests == 0


def test_limiter_walks_expiries_until_the_tokens_fit():
    clock = _Clock()
    limiter = RateLimiter(clock)
    settings = EmulatorSettings(tokens_per_minute=6000, rate_window_seconds=1.0)  # 100 tokens
    for cost in (50, 30, 20):
        assert limiter.admit("d", cost, settings).admitted
        clock.now += 0.25
    # 100 used at t=0.75; 60 more fits once 50 and 30 have left, at 0.25 + 1.0.
    rejected = limiter.admit("d", 60, settings)
    assert (rejected.admitted, rejected.limit, rejected.remaining_tokens) == (False, "token", 0)
    assert rejected.retry_after_seconds == 0.5
    too_big = limiter.admit("d", 101, settings)
    assert too_big.retry_after_seconds == 1.0 and too_big.limit == "token"


def test_limiter_follows_settings_changed_while_running():
    clock = _Clock()
    limiter = RateLimiter(clock)
    settings = EmulatorSettings(rate_window_seconds=1.0)
    assert limiter.admit("d", 5, settings).remaining_requests == UNLIMITED_REQUESTS  # unlimited: untracked
    settings.requests_per_minute = 60  # 1 per window, from now on
    assert limiter.admit("d", 5, settings).admitted
    assert not limiter.admit("d", 5, settings).admitted
    settings.requests_per_minute = None
    assert limiter.admit("d", 5, settings).admitted


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"requests_per_minute": 0}, "requests_per_minute"),
        ({"tokens_per_minute": -5}, "tokens_per_minute"),
        ({"requests_per_minute": 1.5}, "requests_per_minute"),
        ({"requests_per_minute": True}, "requests_per_minute"),
        ({"rate_window_seconds": 0}, "rate_window_seconds"),
        ({"rate_window_seconds": float("inf")}, "rate_window_seconds"),
        ({"requests_per_minute": 30, "rate_window_seconds": 1.0}, "requests_per_minute and rate_window_seconds"),
    ],
)
def test_rate_limit_settings_are_validated(changes: dict, named: str):
    with pytest.raises(SettingsError, match=named):
        EmulatorSettings(**changes)


def test_a_bad_assignment_raises_and_is_undone():
    settings = EmulatorSettings(requests_per_minute=600, rate_window_seconds=1.0)
    with pytest.raises(ValueError, match="requests_per_minute"):
        settings.requests_per_minute = 0
    with pytest.raises(ValueError, match="rate_window_seconds"):
        settings.rate_window_seconds = 0.05  # 600 * 0.05 / 60 = 0.5 requests per window
    assert (settings.requests_per_minute, settings.rate_window_seconds) == (600, 1.0)
