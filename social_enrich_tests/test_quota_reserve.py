"""One deployment's quota goes further: max_tokens from the answers seen, the token estimate calibrated
against the server, a window ledger in the pacer, compact requests. Emulator over loopback."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import openai
import pytest

from social_enrich.devtools.azure_openai_emulator import AzureOpenAIEmulator, EmulatorSettings
from social_enrich.inference.output_budget import WARM_UP, OutputBudget
from social_enrich.inference.rate_limiter import RequestPacer
from social_enrich.inference.response_models import Sentiment
from social_enrich.inference.token_budget import PromptCalibration
from social_enrich_tests.emulated_azure import API_KEY, DEPLOYMENT, NEGATIVE, POSITIVE, post, provider_for

TEXTS = [POSITIVE, NEGATIVE, "The train leaves at 5 from platform 2.", "Not bad at all, quite good actually!",
         "meh. it works I guess", "Worst customer service I have ever had, never again!!!"]
CEILING = 32  # the job's max_output_tokens_per_post by default


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[AzureOpenAIEmulator]:
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", API_KEY)
    with AzureOpenAIEmulator(EmulatorSettings(api_key=API_KEY, deployments=(DEPLOYMENT,), seed=5)) as emu:
        yield emu


def posts(n: int):
    return [post(f"{TEXTS[i % len(TEXTS)]} #{i}", i) for i in range(n)]


def test_the_budget_follows_the_answers_under_the_ceiling():
    budget = OutputBudget(ceiling_per_post=CEILING, overhead=8)
    assert budget.max_tokens(20) == 8 + 20 * CEILING  # nothing seen yet: the ceiling
    for tokens_per_post in [15] * (WARM_UP - 1) + [17]:
        budget.observe(8 + 20 * tokens_per_post, 20)
    assert budget.per_post() == pytest.approx(17 * 1.1)  # the high quantile, plus the margin
    assert budget.max_tokens(20) == 8 + 374
    assert budget.max_tokens(1) == 8 + CEILING  # a lone post is a retry: never cut off twice
    budget.on_cut_off()
    assert budget.per_post() == pytest.approx(17 * 1.1 * 1.25)
    for _ in range(5):
        budget.on_cut_off()
    assert budget.per_post() == CEILING  # never above the job's setting


def test_the_calibration_learns_the_servers_count():
    calibration = PromptCalibration()
    assert calibration.charge(1000) == 1000
    for _ in range(30):
        calibration.observe(1000, 1100)  # this server counts 10% more than the estimate
    assert calibration.charge(1000) == pytest.approx(1100, abs=2)
    calibration.observe(1000, 0)  # an answer without usage changes nothing
    assert calibration.charge(1000) == pytest.approx(1100, abs=2)


def test_the_window_ledger_holds_back_what_steady_pacing_would_land_in_a_full_window():
    # 100 tokens per 1 s window, 6,000 a minute: steady pacing alone would start a second 60-token
    # request 0.6 s after the first, in the first one's window, and earn a 429.
    pacer = RequestPacer(None, 6_000, headroom=1.0, window_seconds=1.0)

    async def two_starts() -> tuple[float, float]:
        began = time.monotonic()
        await pacer.wait_turn(60)
        first = time.monotonic()
        await pacer.wait_turn(60)
        return first - began, time.monotonic() - began

    first, second = asyncio.run(two_starts())
    assert first < 0.1
    assert second >= 1.0 + RequestPacer.ARRIVAL_SLACK - 0.02  # out of the first one's window, as the server counts it


def test_requests_reserve_what_answers_take(emulator: AzureOpenAIEmulator):
    provider = provider_for(emulator.endpoint, posts_per_request=10, workers=2)

    results = provider.score(posts(400))

    assert [r.status for r in results] == ["ok"] * 400
    reserved = [body["max_tokens"] for body in emulator.requests_log]
    assert reserved[0] == 8 + 10 * CEILING  # before any answer: the ceiling
    assert max(reserved[-10:]) < 8 + 10 * CEILING * 0.75  # then what answers take, plus the margin
    stats = emulator.stats
    charged, billed = stats["rate_limit_tokens"], stats["prompt_tokens"] + stats["completion_tokens"]
    assert charged <= 1.3 * billed, (charged, billed)
    assert provider.usage.answers_cut_off == 0


def test_an_answer_cut_off_is_split_asked_again_and_raises_the_budget(emulator: AzureOpenAIEmulator):
    provider = provider_for(emulator.endpoint, posts_per_request=10, workers=2)
    for _ in range(WARM_UP):  # a run so far of answers far shorter than these will be
        provider.output_budget.observe(8 + 10 * 3, 10)
    before = provider.output_budget.per_post()

    results = provider.score(posts(40))

    assert [r.status for r in results] == ["ok"] * 40  # no post lost to the short budget
    assert provider.usage.answers_cut_off > 0
    assert provider.output_budget.per_post() > before
    assert emulator.stats["posts_answered"] == 40


def test_the_compact_request_gives_the_labels_of_one_verbose_request_per_post(emulator: AzureOpenAIEmulator):
    sample = posts(30)
    packed = provider_for(emulator.endpoint, posts_per_request=10).score(sample)
    client = openai.AzureOpenAI(azure_endpoint=emulator.endpoint, api_key=API_KEY, api_version="2024-10-21")
    verbose = []
    for p in sample:  # the original design: one post per request, its fields as a JSON object
        answer = client.chat.completions.parse(
            model=DEPLOYMENT, response_format=Sentiment,
            messages=[{"role": "system", "content": "Label the post."}, {"role": "user", "content": json.dumps(p.fields)}])
        verbose.append(answer.choices[0].message.parsed.label)
    assert [r.response.label for r in packed] == verbose
    assert len(set(verbose)) >= 3  # a sample of several labels, not one
