"""Post text lookup, usage (prompt caching included), stats and reset, and the command-line flags."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import openai
import pytest

from social_enrich.devtools.azure_openai_emulator import (
    FAULT_MARKER,
    AzureOpenAIEmulator,
    EmulatorSettings,
    fill_schema,
    prompt_tokens_estimate,
    rate_limit_tokens,
)
from social_enrich.devtools.azure_openai_emulator.cli import main
from social_enrich_tests.emulator_sdk import API_VERSION, DEPLOYMENT, NEGATIVE, NEUTRAL, POSITIVE, BatchSentiment, Sentiment

API_KEY = "answers-test-key"


BATCH_SCHEMA = openai.pydantic_function_tool(BatchSentiment)["function"]["parameters"]


@pytest.fixture
def emulator() -> Iterator[AzureOpenAIEmulator]:
    with AzureOpenAIEmulator(EmulatorSettings(api_key=API_KEY, deployments=(DEPLOYMENT, "gpt-4o"))) as emu:
        yield emu


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def _labels(value: dict) -> list[tuple[str, str]]:
    return [(item["id"], item["sentiment"]["label"]) for item in value["items"]]


# ------------------------------------------------------------------------------------------
# Which text a post's sentiment comes from
# ------------------------------------------------------------------------------------------


def test_engine_shaped_posts_are_judged_by_post_text(client: openai.AzureOpenAI):
    # What our engine sends: ids, post_text and metadata.  Metadata strings must not sway the label.
    posts = [
        {"id": "0", "post_text": NEGATIVE, "platform": "x", "author": "Happy Sunshine Lover", "lang": "en"},
        {"id": "1", "post_text": POSITIVE, "platform": "reddit", "subreddit": "awful_terrible_things"},
        {"id": "2", "post_text": NEUTRAL, "platform": "x", "reaction_like": 12},
    ]
    completion = client.chat.completions.parse(
        model=DEPLOYMENT,
        messages=[{"role": "system", "content": "Classify."}, *_user(json.dumps({"posts": posts}))],
        response_format=BatchSentiment,
    )
    items = completion.choices[0].message.parsed.items
    assert [(i.id, i.sentiment.label) for i in items] == [("0", "negative"), ("1", "positive"), ("2", "neutral")]


def test_compact_posts_are_judged_by_post_text(client: openai.AzureOpenAI):
    """The engine's compact form: field names once, each post a row of values, the first its id."""
    compact = {"fields": ["id", "post_text", "author"],
               "posts": [[0, NEGATIVE, "Happy Sunshine Lover"], [1, POSITIVE, "awful"], [2, NEUTRAL, "x"]]}
    completion = client.chat.completions.parse(
        model=DEPLOYMENT, messages=[{"role": "system", "content": "Classify."}, *_user(json.dumps(compact))],
        response_format=BatchSentiment,
    )
    items = completion.choices[0].message.parsed.items
    assert [(i.id, i.sentiment.label) for i in items] == [("0", "negative"), ("1", "positive"), ("2", "neutral")]


def test_an_answer_stops_at_max_tokens(emulator: AzureOpenAIEmulator, client: openai.AzureOpenAI):
    """As a model does: the content is cut at max_tokens and finish_reason says length; it answers no post."""
    posts = json.dumps({"posts": [{"id": str(i), "post_text": POSITIVE} for i in range(4)]})
    whole = client.chat.completions.create(model=DEPLOYMENT, messages=_user(posts), response_format=_schema_of(BatchSentiment))
    cut = client.chat.completions.create(model=DEPLOYMENT, messages=_user(posts), response_format=_schema_of(BatchSentiment),
                                         max_tokens=whole.usage.completion_tokens // 2)
    assert whole.choices[0].finish_reason == "stop" and json.loads(whole.choices[0].message.content)
    assert cut.choices[0].finish_reason == "length"
    assert cut.usage.completion_tokens <= whole.usage.completion_tokens // 2
    assert whole.choices[0].message.content.startswith(cut.choices[0].message.content)
    with pytest.raises(ValueError):
        json.loads(cut.choices[0].message.content)
    assert emulator.stats["posts_answered"] == 4  # the whole answer's posts only


def _schema_of(model: type) -> dict:
    return {"type": "json_schema", "json_schema": {"name": model.__name__, "schema": model.model_json_schema()}}


@pytest.mark.parametrize(
    "post",
    [
        {"id": "a", "text": NEGATIVE, "post_text": POSITIVE},  # a well-known key comes first
        {"id": "a", "caption_text": NEGATIVE, "author": "Loving Happy Wonderful Best Friend Ever!!!"},  # *text key
        {"id": "a", "caption": NEGATIVE, "lang": "en"},  # else the longest string
        {"id": "I love it, best ever, wonderful!!!", "caption": NEGATIVE},  # never the id
    ],
)
def test_post_text_lookup(post: dict):
    assert _labels(fill_schema(BATCH_SCHEMA, json.dumps({"posts": [post]}))) == [(post["id"], "negative")]


def test_a_single_post_object_is_judged_by_its_text():
    message = json.dumps({"post_text": NEGATIVE, "author": "Best Happy Love", "platform": "x"})
    assert fill_schema(Sentiment.model_json_schema(), message)["label"] == "negative"


# ------------------------------------------------------------------------------------------
# Usage and prompt caching
# ------------------------------------------------------------------------------------------


def test_usage_reports_the_prompt_estimate_and_details(emulator: AzureOpenAIEmulator, client: openai.AzureOpenAI):
    completion = client.chat.completions.parse(
        model=DEPLOYMENT, messages=_user(POSITIVE), response_format=Sentiment
    )
    usage = completion.usage
    assert usage.prompt_tokens == prompt_tokens_estimate(emulator.requests_log[0])  # the schema counts too
    assert usage.prompt_tokens > len(POSITIVE) / 4
    assert usage.prompt_tokens_details.cached_tokens == 0
    assert usage.completion_tokens_details.reasoning_tokens == 0


def test_a_long_repeated_prefix_is_cached(emulator: AzureOpenAIEmulator, client: openai.AzureOpenAI):
    system = "You classify social-media posts. " * 160  # ~5300 characters: over 1024 tokens

    def ask(text: str, model: str = DEPLOYMENT, prompt: str = system) -> openai.types.CompletionUsage:
        messages = [{"role": "system", "content": prompt}, {"role": "user", "content": text}]
        return client.chat.completions.parse(model=model, messages=messages, response_format=Sentiment).usage

    first, second, third = ask(POSITIVE), ask(NEGATIVE), ask(NEUTRAL)
    other_deployment = ask(POSITIVE, model="gpt-4o")
    short = [ask(POSITIVE, prompt="Classify."), ask(POSITIVE, prompt="Classify.")]

    schema_chars = len(json.dumps(emulator.requests_log[0]["response_format"]["json_schema"], separators=(",", ":")))
    prefix_tokens = -(-(len(system) + schema_chars) // 4)
    assert prefix_tokens >= 1024
    assert first.prompt_tokens_details.cached_tokens == 0  # first sight
    cached = prefix_tokens // 128 * 128
    assert second.prompt_tokens_details.cached_tokens == cached == third.prompt_tokens_details.cached_tokens
    assert second.prompt_tokens_details.cached_tokens <= second.prompt_tokens
    assert other_deployment.prompt_tokens_details.cached_tokens == 0  # caches are per deployment
    assert [u.prompt_tokens_details.cached_tokens for u in short] == [0, 0]  # under 1024 tokens: never cached
    assert emulator.stats["cached_tokens"] == 2 * second.prompt_tokens_details.cached_tokens


# ------------------------------------------------------------------------------------------
# Stats
# ------------------------------------------------------------------------------------------


def test_stats_fields_and_reset(emulator: AzureOpenAIEmulator, client: openai.AzureOpenAI):
    posts = json.dumps({"posts": [{"id": str(i), "post_text": t} for i, t in enumerate((POSITIVE, NEGATIVE, NEUTRAL))]})
    batch = client.chat.completions.parse(model=DEPLOYMENT, messages=_user(posts), response_format=BatchSentiment)
    single = client.chat.completions.create(model=DEPLOYMENT, messages=_user(POSITIVE), max_tokens=40)
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model=DEPLOYMENT, messages=_user(f"{FAULT_MARKER}drop"))
    emulator.settings.requests_per_minute = 60
    emulator.settings.rate_window_seconds = 1.0
    limited = client.chat.completions.create(model="gpt-4o", messages=_user(NEUTRAL), max_tokens=40)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="gpt-4o", messages=_user(NEUTRAL), max_tokens=40)

    stats = emulator.stats
    answers = (batch, single, limited)
    assert stats["requests"] == 5
    assert stats["by_status"] == {200: 3, 429: 1}  # the drop has no status
    assert stats["throttled"] == 1
    assert stats["faults"] == {"drop": 1}
    assert stats["posts_answered"] == 3 + 1 + 1
    assert stats["prompt_tokens"] == sum(a.usage.prompt_tokens for a in answers)
    assert stats["completion_tokens"] == sum(a.usage.completion_tokens for a in answers)
    assert stats["cached_tokens"] == 0
    # Every admitted request is charged (the drop too), the 429 is not; max_tokens stands in for
    # the answer's size where it is given.
    logged = emulator.requests_log
    assert len(logged) == 5
    charged = rate_limit_tokens(logged[0], batch.usage.completion_tokens) + sum(map(rate_limit_tokens, logged[1:4]))
    assert stats["rate_limit_tokens"] == charged
    assert stats["in_flight"] == 0 and stats["max_in_flight"] == 1
    assert 0 < stats["uptime_seconds"] < 30 and abs(stats["started_at"] + stats["uptime_seconds"] - time.time()) < 5

    with urllib.request.urlopen(emulator.endpoint + "/stats", timeout=5) as response:
        served = json.load(response)
    assert set(served) == set(stats)
    assert served["by_status"] == {"200": 3, "429": 1} and served["faults"] == {"drop": 1}

    before = stats["started_at"]
    emulator.reset_stats()
    reset = emulator.stats
    assert reset["started_at"] >= before and reset["uptime_seconds"] < 1
    per_deployment = ("by_deployment", "enqueued_tokens")  # see test_emulator_deployments and _batch_quota
    zeroed = {k: v for k, v in reset.items() if k not in ("started_at", "uptime_seconds", *per_deployment)}
    assert zeroed == {
        "requests": 0, "by_status": {}, "prompt_tokens": 0, "completion_tokens": 0, "cached_tokens": 0,
        "rate_limit_tokens": 0, "throttled": 0, "faults": {}, "posts_answered": 0, "in_flight": 0, "max_in_flight": 0,
        "files_uploaded": 0, "batches_created": 0, "batches_by_status": {}, "batch_lines_answered": 0,
        "batch_error_lines": 0, "batch_lines_unanswered": 0, "batch_prompt_tokens": 0, "batch_completion_tokens": 0,
        "batch_posts_answered": 0,
    }  # fmt: skip
    assert emulator.requests_log == []


# ------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------


def test_command_line_flags_reach_the_running_emulator():
    command = [
        sys.executable, "-m", "social_enrich.devtools.azure_openai_emulator", "--port", "0", "--api-key", API_KEY,
        "--rpm", "120", "--tpm", "600000", "--rate-window-seconds", "1", "--latency-seconds", "0.01",
        "--latency-per-output-token-seconds", "0.0001", "--latency-jitter", "0.1", "--seed", "4",
        "--share-http-500", "0", "--share-http-503", "0", "--share-drop", "0", "--share-timeout", "0",
        "--share-malformed-json", "0", "--share-content-filter", "0", "--share-missing-post", "0",
        "--timeout-hold-seconds", "1",
    ]  # fmt: skip
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as proc:
        try:
            endpoint = proc.stdout.readline().strip()
            assert endpoint.startswith("http://127.0.0.1:")
            client = openai.AzureOpenAI(
                azure_endpoint=endpoint, api_key=API_KEY, api_version=API_VERSION, max_retries=0
            )
            statuses = []
            try:
                for _ in range(3):  # --rpm 120 over a 1 s window: 2 per window
                    try:
                        client.chat.completions.create(model=DEPLOYMENT, messages=_user(POSITIVE))
                        statuses.append(200)
                    except openai.RateLimitError as exc:
                        statuses.append(429)
                        assert 1 <= int(exc.response.headers["retry-after-ms"]) <= 1000
            finally:
                client.close()
            with urllib.request.urlopen(endpoint + "/stats", timeout=5) as response:
                stats = json.load(response)
            assert statuses == [200, 200, 429]
            assert stats["throttled"] == 1 and stats["by_status"] == {"200": 2, "429": 1}
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0


@pytest.mark.parametrize(
    ("argv", "flags"),
    [
        (["--share-drop", "2"], "--share-drop"),
        (["--share-drop", "0.6", "--share-timeout", "0.6"], "--share-drop, --share-timeout"),
        (["--rpm", "0"], "--rpm"),
        (["--rpm", "many"], "--rpm"),  # argparse's own type check
        (["--rpm", "30", "--rate-window-seconds", "1"], "--rpm, --rate-window-seconds"),
        (["--latency-jitter", "1.5"], "--latency-jitter"),
        (["--timeout-hold-seconds", "-1"], "--timeout-hold-seconds"),
        (["--seed", "1.5"], "--seed"),
    ],
)
def test_bad_flag_values_exit_naming_the_flag(argv: list[str], flags: str, capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as excinfo:
        main(argv)
    assert excinfo.value.code == 2
    assert f"argument {flags}" in capsys.readouterr().err


def test_every_setting_has_a_flag(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit):
        main(["--help"])
    usage = capsys.readouterr().out
    flags = (
        "--rpm", "--tpm", "--rate-window-seconds", "--latency-seconds", "--latency-per-output-token-seconds",
        "--latency-jitter", "--seed", "--share-http-500", "--share-http-503", "--share-drop", "--share-timeout",
        "--share-malformed-json", "--share-content-filter", "--share-missing-post", "--timeout-hold-seconds",
        "--slow-seconds", "--fail-all-with", "--api-key", "--deployment", "--host", "--port",
    )  # fmt: skip
    for flag in flags:
        assert flag in usage
