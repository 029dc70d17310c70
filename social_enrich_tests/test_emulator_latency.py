"""The emulator's latency model: base + per output token, times a seeded jitter; errors are fast."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

import openai
import pytest

from social_enrich.devtools.azure_openai_emulator import (
    FAULT_MARKER,
    AzureOpenAIEmulator,
    EmulatorSettings,
    Reply,
    jitter_factor,
    reply_delay,
)
from social_enrich_tests.emulator_sdk import DEPLOYMENT, POSITIVE

API_KEY = "latency-test-key"
TEXT = POSITIVE


@pytest.fixture
def emulator() -> Iterator[AzureOpenAIEmulator]:
    with AzureOpenAIEmulator(EmulatorSettings(api_key=API_KEY, seed=3)) as emu:
        yield emu


def _timed(client: openai.AzureOpenAI, text: str = TEXT) -> tuple[float, int]:
    """Seconds one request took, and its completion tokens."""
    started = time.monotonic()
    completion = client.chat.completions.create(model=DEPLOYMENT, messages=[{"role": "user", "content": text}])
    return time.monotonic() - started, completion.usage.completion_tokens


# ------------------------------------------------------------------------------------------
# The pure model
# ------------------------------------------------------------------------------------------


def test_reply_delay_is_base_plus_per_token_times_jitter():
    settings = EmulatorSettings(latency_seconds=0.2, latency_per_output_token_seconds=0.01, slow_seconds=1.0)
    answer = Reply(200, {}, completion_tokens=30)

    assert reply_delay(settings, answer) == pytest.approx(0.5)
    assert reply_delay(settings, answer, jitter=1.5) == pytest.approx(0.75)
    assert reply_delay(settings, answer, jitter=0.5) == pytest.approx(0.25)
    slow = Reply(200, {}, completion_tokens=30, slow=True)
    assert reply_delay(settings, slow, jitter=0.5) == pytest.approx(1.25)  # slow_seconds is not jittered


@pytest.mark.parametrize("status", [400, 401, 404, 429, 500, 503])
def test_errors_get_no_generation_latency(status: int):
    settings = EmulatorSettings(latency_seconds=0.2, latency_per_output_token_seconds=0.01, slow_seconds=1.0)
    assert reply_delay(settings, Reply(status, {}, completion_tokens=30)) == 0.0
    assert reply_delay(settings, Reply(status, {}, slow=True)) == 1.0  # EMULATOR_FAULT:slow still holds it


def test_jitter_factor_is_uniform_within_bounds_and_seeded():
    settings = EmulatorSettings(latency_jitter=0.5)
    factors = [jitter_factor(settings, random.Random(i)) for i in range(400)]

    assert all(0.5 <= f <= 1.5 for f in factors)
    assert min(factors) < 0.6 and max(factors) > 1.4  # the whole range is used
    assert 0.9 < sum(factors) / len(factors) < 1.1
    assert jitter_factor(settings, random.Random(7)) == jitter_factor(settings, random.Random(7))
    rng = random.Random(7)
    state = rng.getstate()
    assert jitter_factor(EmulatorSettings(), rng) == 1.0 and rng.getstate() == state  # no jitter, no draw


@pytest.mark.parametrize("field", ["latency_seconds", "latency_per_output_token_seconds"])
def test_latency_fields_are_validated(field: str):
    with pytest.raises(ValueError, match=field):
        EmulatorSettings(**{field: -1})


# ------------------------------------------------------------------------------------------
# Over HTTP
# ------------------------------------------------------------------------------------------


def test_answers_take_base_plus_per_token(emulator: AzureOpenAIEmulator, client: openai.AzureOpenAI):
    emulator.settings.latency_seconds = 0.05
    emulator.settings.latency_per_output_token_seconds = 0.004
    elapsed, tokens = _timed(client)

    expected = 0.05 + 0.004 * tokens
    assert tokens > 5
    assert expected <= elapsed < expected + 0.4  # generous: the client's own overhead


def test_jitter_keeps_answers_within_bounds(emulator: AzureOpenAIEmulator, client: openai.AzureOpenAI):
    emulator.settings.latency_seconds = 0.1
    emulator.settings.latency_jitter = 0.5
    timings = [_timed(client)[0] for _ in range(6)]

    assert all(0.05 <= t < 0.15 + 0.3 for t in timings)
    assert max(timings) - min(timings) > 0.01  # jittered, not constant


def test_error_answers_are_not_delayed(emulator: AzureOpenAIEmulator, client: openai.AzureOpenAI):
    emulator.settings.latency_seconds = 1.0
    emulator.settings.latency_per_output_token_seconds = 0.05
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError):
        _timed(client, f"{FAULT_MARKER}http_503")
    assert time.monotonic() - started < 0.6
