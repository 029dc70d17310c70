"""The Azure OpenAI emulator, exercised through the real ``openai`` SDK over loopback."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from enum import Enum
from typing import Iterator, Literal, Optional

import openai
import pydantic
import pytest
from pydantic import BaseModel, Field

from social_enrich.devtools.azure_openai_emulator import (
    AzureOpenAIEmulator,
    EmulatorSettings,
    Reply,
    build_chat_reply,
    fill_schema,
    reply_delay,
)
from social_enrich_tests.emulator_sdk import API_VERSION, DEPLOYMENT, NEGATIVE, NEUTRAL, POSITIVE

API_KEY = "secret-test-key"


class Sentiment(BaseModel):
    label: Literal["positive", "negative", "neutral", "mixed"]
    score: float = Field(ge=-1, le=1)
    confidence: float = Field(ge=0, le=1)


class PostSentiment(BaseModel):
    id: str
    sentiment: Sentiment
    rationale: Optional[str]


class BatchSentiment(BaseModel):
    items: list[PostSentiment]


class Topic(str, Enum):
    sports = "sports"
    politics = "politics"


class Everything(BaseModel):
    """Every schema shape the SDK emits for pydantic models we care about."""

    title: str
    count: int = Field(ge=3, le=9)
    ratio: float = Field(gt=0, lt=1)
    flag: bool
    topic: Topic  # enum behind a $ref into $defs
    tone: Literal["Positive", "Negative", "Neutral"]  # label-like enum, different case
    tags: list[str]
    maybe: Optional[Sentiment]  # anyOf [$ref, null]
    nested: list[Sentiment]


# ------------------------------------------------------------------------------------------
# Fixtures
# ------------------------------------------------------------------------------------------


@pytest.fixture
def emulator() -> Iterator[AzureOpenAIEmulator]:
    settings = EmulatorSettings(api_key=API_KEY, deployments=(DEPLOYMENT, "gpt-4o"))
    with AzureOpenAIEmulator(settings) as emu:
        yield emu


def _azure(emu: AzureOpenAIEmulator, api_key: str = API_KEY) -> openai.AzureOpenAI:
    # max_retries=0: error tests must see the first failure, not wait out back-off.
    return openai.AzureOpenAI(azure_endpoint=emu.endpoint, api_key=api_key, api_version=API_VERSION, max_retries=0)


@pytest.fixture
def azure(emulator: AzureOpenAIEmulator) -> Iterator[openai.AzureOpenAI]:
    client = _azure(emulator)
    yield client
    client.close()


@pytest.fixture
def v1(emulator: AzureOpenAIEmulator) -> Iterator[openai.OpenAI]:
    # The plain OpenAI client against Azure's /openai/v1 surface sends "Authorization: Bearer".
    client = openai.OpenAI(base_url=emulator.endpoint + "/openai/v1/", api_key=API_KEY, max_retries=0)
    yield client
    client.close()


def _user(text: str) -> list[dict]:
    return [
        {"role": "system", "content": "Classify the sentiment of the post."},
        {"role": "user", "content": text},
    ]


def _strict_schema(model: type[BaseModel]) -> dict:
    # The SDK's public pydantic_function_tool runs the same to_strict_json_schema transform that
    # chat.completions.parse(response_format=model) sends as json_schema.schema.
    return openai.pydantic_function_tool(model)["function"]["parameters"]


def _response_format(model: type[BaseModel]) -> dict:
    """The ``response_format`` that ``chat.completions.parse(response_format=model)`` sends."""
    json_schema = {"name": model.__name__, "schema": _strict_schema(model), "strict": True}
    return {"type": "json_schema", "json_schema": json_schema}


# ------------------------------------------------------------------------------------------
# Happy paths
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "label"), [(POSITIVE, "positive"), (NEGATIVE, "negative"), (NEUTRAL, "neutral")])
def test_parse_sentiment_with_azure_client(azure: openai.AzureOpenAI, text: str, label: str) -> None:
    completion = azure.chat.completions.parse(model=DEPLOYMENT, messages=_user(text), response_format=Sentiment)

    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.refusal is None
    parsed = choice.message.parsed
    assert isinstance(parsed, Sentiment)
    assert parsed.label == label
    expected_sign = {"positive": 1, "negative": -1, "neutral": 0}[label]
    assert (parsed.score > 0) - (parsed.score < 0) == expected_sign
    assert 0.5 <= parsed.confidence <= 1
    assert completion.model == DEPLOYMENT
    assert completion.object == "chat.completion"
    assert completion.usage is not None
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens > 0


def test_parse_with_v1_client_and_bearer_auth(emulator: AzureOpenAIEmulator, v1: openai.OpenAI) -> None:
    completion = v1.chat.completions.parse(model="gpt-4o", messages=_user(NEGATIVE), response_format=Sentiment)

    assert completion.choices[0].message.parsed == Sentiment.model_validate_json(completion.choices[0].message.content)
    assert completion.choices[0].message.parsed.label == "negative"
    assert completion.model == "gpt-4o"  # deployment came from the body's "model"
    assert emulator.stats["by_status"] == {200: 1}


def test_batch_of_posts_echoes_ids_in_order(emulator: AzureOpenAIEmulator, azure: openai.AzureOpenAI) -> None:
    posts = [{"id": "p-1", "text": POSITIVE}, {"id": "p-2", "text": NEGATIVE}, {"id": "p-3", "text": NEUTRAL}]

    completion = azure.chat.completions.parse(
        model=DEPLOYMENT, messages=_user(json.dumps({"posts": posts})), response_format=BatchSentiment
    )

    items = completion.choices[0].message.parsed.items
    assert [item.id for item in items] == ["p-1", "p-2", "p-3"]
    assert [item.sentiment.label for item in items] == ["positive", "negative", "neutral"]
    # The SDK sent a strict json_schema built from the pydantic model; the emulator saw it.
    response_format = emulator.requests_log[-1]["response_format"]
    assert response_format["type"] == "json_schema"
    assert response_format["json_schema"]["name"] == "BatchSentiment"
    assert response_format["json_schema"]["strict"] is True
    assert response_format == _response_format(BatchSentiment)  # what the pure-function tests below build


def test_generic_schema_walker_satisfies_every_shape(azure: openai.AzureOpenAI) -> None:
    completion = azure.chat.completions.parse(model=DEPLOYMENT, messages=_user(POSITIVE), response_format=Everything)

    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Everything)  # pydantic validated every constraint
    assert parsed.tone == "Positive"
    assert parsed.topic is Topic.sports  # other enums: first value
    assert parsed.maybe is not None and parsed.maybe.label == "positive"


def test_content_as_list_of_parts(azure: openai.AzureOpenAI) -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "Rate this:"}, {"type": "text", "text": NEGATIVE}]}]

    completion = azure.chat.completions.parse(model=DEPLOYMENT, messages=messages, response_format=Sentiment)

    assert completion.choices[0].message.parsed.label == "negative"


def test_plain_text_answer_and_headers(azure: openai.AzureOpenAI) -> None:
    raw = azure.chat.completions.with_raw_response.create(model=DEPLOYMENT, messages=_user(POSITIVE))
    completion = raw.parse()

    assert "positive" in completion.choices[0].message.content
    assert completion.choices[0].message.role == "assistant"
    assert int(raw.headers["x-ratelimit-remaining-requests"]) > 0
    assert int(raw.headers["x-ratelimit-remaining-tokens"]) > 0
    assert raw.headers["apim-request-id"]
    assert raw.headers["content-type"] == "application/json"


# ------------------------------------------------------------------------------------------
# Auth and routing errors
# ------------------------------------------------------------------------------------------


def test_wrong_key_is_401(emulator: AzureOpenAIEmulator) -> None:
    client = _azure(emulator, api_key="wrong")
    try:
        with pytest.raises(openai.AuthenticationError) as excinfo:
            client.chat.completions.create(model=DEPLOYMENT, messages=_user(POSITIVE))
    finally:
        client.close()

    assert excinfo.value.status_code == 401
    assert excinfo.value.code == "401"
    assert "Access denied" in excinfo.value.body["message"]
    assert emulator.stats["by_status"] == {401: 1}


def test_wrong_bearer_key_is_401(emulator: AzureOpenAIEmulator) -> None:
    client = openai.OpenAI(base_url=emulator.endpoint + "/openai/v1/", api_key="wrong", max_retries=0)
    try:
        with pytest.raises(openai.AuthenticationError):
            client.chat.completions.create(model=DEPLOYMENT, messages=_user(POSITIVE))
    finally:
        client.close()


def test_unknown_deployment_is_404(azure: openai.AzureOpenAI, v1: openai.OpenAI) -> None:
    for client in (azure, v1):
        with pytest.raises(openai.NotFoundError) as excinfo:
            client.chat.completions.create(model="no-such-deployment", messages=_user(POSITIVE))
        assert excinfo.value.code == "DeploymentNotFound"


def _raw_request(emu: AzureOpenAIEmulator, method: str, path: str, body: bytes | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(emu.host, emu.port, timeout=5)
    try:
        conn.request(method, path, body=body, headers={"api-key": API_KEY, "Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_unknown_route_bad_json_and_missing_api_version(emulator: AzureOpenAIEmulator) -> None:
    chat = f"/openai/deployments/{DEPLOYMENT}/chat/completions"

    assert _raw_request(emulator, "POST", "/openai/deployments/x/embeddings?api-version=1")[0] == 404
    assert _raw_request(emulator, "POST", chat, b'{"messages": [')[0] == 404  # no api-version
    status, body = _raw_request(emulator, "POST", chat + "?api-version=2024-10-21", b"not json")
    assert status == 400
    assert "parse the JSON" in body["error"]["message"]
    assert emulator.requests_log == []


# ------------------------------------------------------------------------------------------
# Fault injection
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 503])
def test_http_fault_markers(azure: openai.AzureOpenAI, status: int) -> None:
    with pytest.raises(openai.InternalServerError) as excinfo:
        azure.chat.completions.parse(
            model=DEPLOYMENT, messages=_user(f"hello EMULATOR_FAULT:http_{status} world"), response_format=Sentiment
        )
    assert excinfo.value.status_code == status


def test_invalid_json_fault(azure: openai.AzureOpenAI) -> None:
    messages = _user("EMULATOR_FAULT:invalid_json " + POSITIVE)

    # parse() surfaces undecodable content as pydantic's ValidationError, not an openai error.
    with pytest.raises(pydantic.ValidationError):
        azure.chat.completions.parse(model=DEPLOYMENT, messages=messages, response_format=Sentiment)

    completion = azure.chat.completions.create(model=DEPLOYMENT, messages=messages)
    assert completion.choices[0].finish_reason == "stop"
    with pytest.raises(ValueError):
        json.loads(completion.choices[0].message.content)


def test_content_filter_fault_is_400_with_azure_body(azure: openai.AzureOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as excinfo:
        azure.chat.completions.parse(
            model=DEPLOYMENT, messages=_user("EMULATOR_FAULT:content_filter"), response_format=Sentiment
        )

    error = excinfo.value
    assert error.status_code == 400
    assert error.code == "content_filter"
    assert error.param == "prompt"
    assert error.body["innererror"]["code"] == "ResponsibleAIPolicyViolation"
    assert error.body["innererror"]["content_filter_result"]["hate"] == {"filtered": True, "severity": "high"}


def test_finish_content_filter_fault(azure: openai.AzureOpenAI) -> None:
    messages = _user("EMULATOR_FAULT:finish_content_filter")

    # parse() refuses any choice that finished with content_filter.
    with pytest.raises(openai.ContentFilterFinishReasonError):
        azure.chat.completions.parse(model=DEPLOYMENT, messages=messages, response_format=Sentiment)

    completion = azure.chat.completions.create(model=DEPLOYMENT, messages=messages)
    assert completion.choices[0].finish_reason == "content_filter"
    assert completion.choices[0].message.content is None


def test_fail_all_with() -> None:
    settings = EmulatorSettings(api_key=API_KEY, fail_all_with=429)
    with AzureOpenAIEmulator(settings) as emu:
        client = _azure(emu)
        try:
            for _ in range(2):
                with pytest.raises(openai.RateLimitError):
                    client.chat.completions.create(model=DEPLOYMENT, messages=_user(POSITIVE))
        finally:
            client.close()
        assert emu.stats["by_status"] == {429: 2}


# ------------------------------------------------------------------------------------------
# Stats, the pure builder, the CLI
# ------------------------------------------------------------------------------------------


def test_stats_count_requests_statuses_and_tokens(emulator: AzureOpenAIEmulator, azure: openai.AzureOpenAI) -> None:
    first = azure.chat.completions.create(model=DEPLOYMENT, messages=_user(POSITIVE))
    second = azure.chat.completions.parse(model=DEPLOYMENT, messages=_user(NEGATIVE), response_format=Sentiment)
    with pytest.raises(openai.InternalServerError):
        azure.chat.completions.create(model=DEPLOYMENT, messages=_user("EMULATOR_FAULT:http_500"))

    stats = emulator.stats
    assert stats["requests"] == 3
    assert stats["by_status"] == {200: 2, 500: 1}
    assert stats["prompt_tokens"] == first.usage.prompt_tokens + second.usage.prompt_tokens
    assert stats["completion_tokens"] == first.usage.completion_tokens + second.usage.completion_tokens
    assert stats["in_flight"] == 0 and stats["max_in_flight"] == 1  # one at a time, errors included
    assert len(emulator.requests_log) == 3

    with urllib.request.urlopen(emulator.endpoint + "/stats", timeout=5) as response:
        served = json.load(response)
    # The same snapshot as JSON; only the uptime moved on between the two reads.
    assert served.pop("uptime_seconds") >= stats.pop("uptime_seconds")
    assert served == {**stats, "by_status": {"200": 2, "500": 1}}


# ------------------------------------------------------------------------------------------
# Latency, the slow fault and requests in flight
# ------------------------------------------------------------------------------------------


def _timed_create(client: openai.AzureOpenAI, text: str) -> float:
    start = time.monotonic()
    client.chat.completions.create(model=DEPLOYMENT, messages=_user(text))
    return time.monotonic() - start


def test_latency_delays_every_answer(emulator: AzureOpenAIEmulator, azure: openai.AzureOpenAI) -> None:
    fast = _timed_create(azure, POSITIVE)
    emulator.settings.latency_seconds = 0.3  # settings are read per request

    assert _timed_create(azure, POSITIVE) >= 0.3 > fast
    start = time.monotonic()
    with pytest.raises(openai.InternalServerError):  # errors come before any generation: no latency
        azure.chat.completions.create(model=DEPLOYMENT, messages=_user("EMULATOR_FAULT:http_500"))
    assert time.monotonic() - start < 0.3
    assert emulator.stats["by_status"] == {200: 2, 500: 1}


def test_slow_fault_holds_only_its_own_request(emulator: AzureOpenAIEmulator, azure: openai.AzureOpenAI) -> None:
    emulator.settings.slow_seconds = 0.5
    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(_timed_create, azure, f"{POSITIVE} EMULATOR_FAULT:slow")
        normal = pool.submit(_timed_create, azure, NEGATIVE)
        assert normal.result() < 0.5 <= slow.result()
    assert emulator.stats["by_status"] == {200: 2}  # slow answers normally, only late


def test_slow_combines_with_an_answer_fault(emulator: AzureOpenAIEmulator, azure: openai.AzureOpenAI) -> None:
    emulator.settings.slow_seconds = 0.3
    start = time.monotonic()
    with pytest.raises(openai.InternalServerError) as excinfo:
        azure.chat.completions.create(model=DEPLOYMENT, messages=_user("EMULATOR_FAULT:slow EMULATOR_FAULT:http_503"))
    assert time.monotonic() - start >= 0.3
    assert excinfo.value.status_code == 503


def test_max_in_flight_tracks_concurrent_requests(emulator: AzureOpenAIEmulator, azure: openai.AzureOpenAI) -> None:
    emulator.settings.latency_seconds = 0.5
    workers = 4
    start = threading.Barrier(workers)

    def call(_: int) -> None:
        start.wait()
        azure.chat.completions.create(model=DEPLOYMENT, messages=_user(POSITIVE))

    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(call, i) for i in range(workers)]
        deadline = time.monotonic() + 5
        while emulator.stats["in_flight"] < workers and time.monotonic() < deadline:
            time.sleep(0.01)
        assert emulator.stats["in_flight"] == workers  # all held at once: the current count, live
        for future in futures:
            future.result()

    stats = emulator.stats
    assert stats["in_flight"] == 0  # a client holding its answer finds it counted and out of flight
    assert stats["max_in_flight"] == workers
    assert stats["requests"] == workers

    azure.chat.completions.create(model=DEPLOYMENT, messages=_user(NEGATIVE))
    assert emulator.stats["max_in_flight"] == workers  # a peak since start, not the last burst


def test_stop_cuts_a_pending_delay_short() -> None:
    settings = EmulatorSettings(api_key=API_KEY, latency_seconds=30)
    emu = AzureOpenAIEmulator(settings).start()
    client = _azure(emu)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            client.chat.completions.create(model=DEPLOYMENT, messages=_user(POSITIVE))
        except BaseException as exc:  # whatever the client makes of an answer cut short
            errors.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    try:
        deadline = time.monotonic() + 5
        while emu.stats["in_flight"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert emu.stats["in_flight"] == 1
        started = time.monotonic()
        emu.stop()
        assert time.monotonic() - started < 5
        caller.join(timeout=5)
        assert not caller.is_alive()
        assert emu.stats["in_flight"] == 0
    finally:
        emu.stop()
        client.close()


def test_reply_delay_is_the_latency_model() -> None:
    reply = Reply(200, {})
    slow_reply = Reply(200, {}, slow=True)

    assert reply_delay(EmulatorSettings(), reply) == 0.0
    assert reply_delay(EmulatorSettings(), slow_reply) == 2.0
    assert reply_delay(EmulatorSettings(latency_seconds=0.25, slow_seconds=1.0), reply) == 0.25
    assert reply_delay(EmulatorSettings(latency_seconds=0.25, slow_seconds=1.0), slow_reply) == 1.25
    assert build_chat_reply({"messages": _user("x EMULATOR_FAULT:slow")}, DEPLOYMENT).slow is True
    assert build_chat_reply({"messages": _user(POSITIVE)}, DEPLOYMENT).slow is False


@pytest.mark.parametrize("field", ["latency_seconds", "slow_seconds"])
@pytest.mark.parametrize("value", [-0.1, float("nan"), float("inf")])
def test_delays_must_be_finite_and_non_negative(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        EmulatorSettings(**{field: value})


def test_build_chat_reply_is_deterministic() -> None:
    body = {"model": DEPLOYMENT, "messages": _user(POSITIVE), "response_format": _response_format(Sentiment)}

    first = build_chat_reply(body, DEPLOYMENT)
    assert first == build_chat_reply(body, DEPLOYMENT)
    assert first.status == 200
    assert Sentiment.model_validate_json(first.payload["choices"][0]["message"]["content"]).label == "positive"


def test_fill_schema_posts_with_integer_ids() -> None:
    schema = _strict_schema(BatchSentiment)
    posts = json.dumps([{"id": 1, "content": POSITIVE}, {"id": 2, "content": NEGATIVE}])

    batch = BatchSentiment.model_validate(fill_schema(schema, posts))

    assert [(item.id, item.sentiment.label) for item in batch.items] == [("1", "positive"), ("2", "negative")]


def test_command_line_serves_until_sigterm() -> None:
    command = [
        sys.executable, "-m", "social_enrich.devtools.azure_openai_emulator",
        "--host", "127.0.0.1", "--port", "0", "--api-key", API_KEY, "--deployment", "a", "--deployment", "b",
    ]  # fmt: skip
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as proc:
        try:
            endpoint = proc.stdout.readline().strip()
            assert endpoint.startswith("http://127.0.0.1:")
            client = openai.AzureOpenAI(
                azure_endpoint=endpoint, api_key=API_KEY, api_version=API_VERSION, max_retries=0
            )
            try:
                answer = client.chat.completions.parse(model="b", messages=_user(POSITIVE), response_format=Sentiment)
            finally:
                client.close()
            assert answer.choices[0].message.parsed.label == "positive"
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
