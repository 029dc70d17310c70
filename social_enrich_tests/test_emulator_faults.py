"""Random faults by share, and the drop / timeout / missing_post markers, through the real SDK."""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Iterator

import openai
import pydantic
import pytest

from social_enrich.devtools.azure_openai_emulator import (
    FAULT_MARKER,
    AzureOpenAIEmulator,
    EmulatorSettings,
    SettingsError,
    build_chat_reply,
    pick_fault,
)
from social_enrich_tests.emulator_sdk import DEPLOYMENT, NEGATIVE, NEUTRAL, POSITIVE, BatchSentiment, sdk_client

API_KEY = "fault-test-key"


@pytest.fixture
def emulator() -> Iterator[AzureOpenAIEmulator]:
    with AzureOpenAIEmulator(EmulatorSettings(api_key=API_KEY, deployments=(DEPLOYMENT,), seed=11)) as emu:
        yield emu


def _client(emu: AzureOpenAIEmulator, timeout: float = 10) -> openai.AzureOpenAI:
    return sdk_client(emu, API_KEY, timeout)


def _user(text: str) -> list[dict]:
    return [{"role": "system", "content": "Classify each post."}, {"role": "user", "content": text}]


def _posts(*texts: str) -> str:
    # The shape our engine sends: ids next to post_text and metadata.
    return json.dumps({"posts": [{"id": str(i), "post_text": t, "platform": "x"} for i, t in enumerate(texts)]})


def _parse(client: openai.AzureOpenAI, text: str) -> BatchSentiment:
    completion = client.chat.completions.parse(model=DEPLOYMENT, messages=_user(text), response_format=BatchSentiment)
    return completion.choices[0].message.parsed


def _wait_idle(emu: AzureOpenAIEmulator, seconds: float = 5) -> None:
    deadline = time.monotonic() + seconds
    while emu.stats["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert emu.stats["in_flight"] == 0


# ------------------------------------------------------------------------------------------
# Each random fault at share 1.0
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("share", "status"), [("share_http_500", 500), ("share_http_503", 503)])
def test_http_error_shares(emulator: AzureOpenAIEmulator, client: openai.AzureOpenAI, share: str, status: int):
    setattr(emulator.settings, share, 1.0)
    with pytest.raises(openai.InternalServerError) as excinfo:
        client.chat.completions.create(model=DEPLOYMENT, messages=_user(POSITIVE))
    assert excinfo.value.status_code == status
    assert emulator.stats["faults"] == {f"http_{status}": 1}


def test_content_filter_share(emulator: AzureOpenAIEmulator, client: openai.AzureOpenAI):
    emulator.settings.share_content_filter = 1.0
    with pytest.raises(openai.BadRequestError) as excinfo:
        client.chat.completions.create(model=DEPLOYMENT, messages=_user(POSITIVE))
    assert excinfo.value.code == "content_filter" and excinfo.value.param == "prompt"


def test_malformed_json_share(emulator: AzureOpenAIEmulator, client: openai.AzureOpenAI):
    emulator.settings.share_malformed_json = 1.0
    with pytest.raises(pydantic.ValidationError):
        _parse(client, _posts(POSITIVE, NEGATIVE))

    completion = client.chat.completions.create(
        model=DEPLOYMENT, messages=_user(POSITIVE), response_format={"type": "json_object"}
    )
    assert completion.choices[0].finish_reason == "stop"
    with pytest.raises(ValueError):
        json.loads(completion.choices[0].message.content)
    stats = emulator.stats
    assert stats["by_status"] == {200: 2} and stats["faults"] == {"malformed_json": 2}
    assert stats["posts_answered"] == 0  # nothing usable came back


def test_missing_post_share_leaves_out_one_post(emulator: AzureOpenAIEmulator, client: openai.AzureOpenAI):
    emulator.settings.share_missing_post = 1.0
    texts = (POSITIVE, NEGATIVE, NEUTRAL, POSITIVE)
    left_out = set()
    for _ in range(8):  # the post left out is drawn at random
        ids = [item.id for item in _parse(client, _posts(*texts)).items]
        assert len(ids) == 3 and ids == sorted(ids) and set(ids) < {"0", "1", "2", "3"}
        left_out |= {"0", "1", "2", "3"} - set(ids)
    assert len(left_out) > 1  # not always the same one

    assert _parse(client, _posts(NEGATIVE)).items == []  # a one-post answer comes back empty
    assert emulator.stats["posts_answered"] == 8 * 3


def test_drop_share_is_a_connection_error_and_the_server_stays_clean(emulator: AzureOpenAIEmulator, client):
    emulator.settings.share_drop = 1.0
    for _ in range(3):
        with pytest.raises(openai.APIConnectionError) as excinfo:
            client.chat.completions.create(model=DEPLOYMENT, messages=_user(POSITIVE))
        assert not isinstance(excinfo.value, openai.APITimeoutError)

    emulator.settings.share_drop = 0.0
    assert client.chat.completions.create(model=DEPLOYMENT, messages=_user(POSITIVE)).choices  # still serving
    _wait_idle(emulator)
    stats = emulator.stats
    assert stats["requests"] == 4 and stats["faults"] == {"drop": 3}
    assert stats["by_status"] == {200: 1}  # a dropped request has no status
    started = time.monotonic()
    emulator.stop()  # no handler left stuck on a dropped connection
    assert time.monotonic() - started < 1.5


def test_timeout_share_holds_then_drops(emulator: AzureOpenAIEmulator):
    emulator.settings.share_timeout = 1.0
    emulator.settings.timeout_hold_seconds = 1.0
    client = _client(emulator, timeout=0.2)
    try:
        started = time.monotonic()
        with pytest.raises(openai.APITimeoutError):
            client.chat.completions.create(model=DEPLOYMENT, messages=_user(POSITIVE))
        assert time.monotonic() - started < 0.8  # the client's own timeout fired first
        assert emulator.stats["in_flight"] == 1  # the emulator is still holding it
        _wait_idle(emulator)
        stats = emulator.stats
        assert stats["faults"] == {"timeout": 1} and stats["requests"] == 1 and stats["by_status"] == {}
    finally:
        client.close()


def test_stop_cuts_a_timeout_hold_short():
    emu = AzureOpenAIEmulator(EmulatorSettings(api_key=API_KEY, share_timeout=1.0, timeout_hold_seconds=30)).start()
    client = _client(emu, timeout=0.2)
    try:
        with pytest.raises(openai.APITimeoutError):
            client.chat.completions.create(model=DEPLOYMENT, messages=_user(POSITIVE))
        started = time.monotonic()
        emu.stop()
        assert time.monotonic() - started < 3
        assert emu.stats["in_flight"] == 0
    finally:
        emu.stop()
        client.close()


# ------------------------------------------------------------------------------------------
# Shares: proportions, seeds, validation
# ------------------------------------------------------------------------------------------


def test_a_fifth_share_faults_about_a_fifth(emulator: AzureOpenAIEmulator, client: openai.AzureOpenAI):
    emulator.settings.share_http_500 = 0.2
    statuses = Counter()
    for _ in range(200):
        try:
            client.chat.completions.create(model=DEPLOYMENT, messages=_user(NEUTRAL))
            statuses[200] += 1
        except openai.InternalServerError as exc:
            statuses[exc.status_code] += 1

    assert set(statuses) == {200, 500}
    assert 20 <= statuses[500] <= 60  # 40 expected; loose, the draw is random (if seeded)
    assert emulator.stats["faults"] == {"http_500": statuses[500]}


def test_a_seed_replays_the_same_faults():
    def run() -> list[int]:
        settings = EmulatorSettings(api_key=API_KEY, share_http_503=0.3, share_content_filter=0.3, seed=5)
        with AzureOpenAIEmulator(settings) as emu, _client(emu) as client:
            statuses = []
            for _ in range(30):
                try:
                    client.chat.completions.create(model=DEPLOYMENT, messages=_user(NEUTRAL))
                    statuses.append(200)
                except openai.APIStatusError as exc:
                    statuses.append(exc.status_code)
            return statuses

    first = run()
    assert first == run()
    assert {200, 400, 503} == set(first)


def test_pick_fault_lays_shares_end_to_end():
    settings = EmulatorSettings(share_http_500=0.25, share_drop=0.25)
    assert pick_fault(settings, 0.0) == "http_500"
    assert pick_fault(settings, 0.2499) == "http_500"
    assert pick_fault(settings, 0.25) == "drop"
    assert pick_fault(settings, 0.5) is None
    assert pick_fault(EmulatorSettings(), 0.0) is None
    rng = random.Random(1)
    drawn = Counter(pick_fault(settings, rng.random()) for _ in range(4000))
    assert 850 <= drawn["http_500"] <= 1150 and 850 <= drawn["drop"] <= 1150


def test_shares_must_sum_to_at_most_one():
    with pytest.raises(SettingsError, match="share_http_500 and share_drop must sum to at most 1") as excinfo:
        EmulatorSettings(share_http_500=0.6, share_drop=0.5)
    assert excinfo.value.fields == ("share_http_500", "share_drop")
    EmulatorSettings(share_http_500=0.1, share_http_503=0.2, share_drop=0.7)  # float sums just above 1 are fine

    running = EmulatorSettings(share_timeout=1.0)
    with pytest.raises(SettingsError, match="share_drop"):
        running.share_drop = 0.1  # validated on assignment too, and undone
    assert running.share_drop == 0.0


@pytest.mark.parametrize("field", ["share_http_500", "share_missing_post", "share_timeout", "latency_jitter"])
@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan"), "0.5"])
def test_shares_are_fractions(field: str, value: object):
    with pytest.raises(ValueError, match=field):
        EmulatorSettings(**{field: value})


def test_timeout_hold_must_be_finite_and_non_negative():
    with pytest.raises(ValueError, match="timeout_hold_seconds"):
        EmulatorSettings(timeout_hold_seconds=-1)


# ------------------------------------------------------------------------------------------
# Markers
# ------------------------------------------------------------------------------------------


def test_drop_marker(emulator: AzureOpenAIEmulator, client: openai.AzureOpenAI):
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model=DEPLOYMENT, messages=_user(f"{POSITIVE} {FAULT_MARKER}drop"))
    assert client.chat.completions.create(model=DEPLOYMENT, messages=_user(POSITIVE)).choices
    assert emulator.stats["faults"] == {"drop": 1}


def test_timeout_marker(emulator: AzureOpenAIEmulator):
    emulator.settings.timeout_hold_seconds = 1.0
    client = _client(emulator, timeout=0.15)
    try:
        with pytest.raises(openai.APITimeoutError):
            client.chat.completions.create(model=DEPLOYMENT, messages=_user(f"{FAULT_MARKER}timeout"))
    finally:
        client.close()
    _wait_idle(emulator)
    assert emulator.stats["faults"] == {"timeout": 1}


def test_missing_post_marker_applies_to_the_whole_request(emulator: AzureOpenAIEmulator, client: openai.AzureOpenAI):
    # The marker sits in one post, yet the request is what is faulted: its last post goes missing.
    messages = _user(_posts(POSITIVE, f"{NEGATIVE} {FAULT_MARKER}missing_post", NEUTRAL))
    completion = client.chat.completions.parse(model=DEPLOYMENT, messages=messages, response_format=BatchSentiment)

    items = completion.choices[0].message.parsed.items
    assert [(i.id, i.sentiment.label) for i in items] == [("0", "positive"), ("1", "negative")]
    assert emulator.stats["faults"] == {"missing_post": 1} and emulator.stats["posts_answered"] == 2


def test_a_marker_wins_over_a_random_fault(emulator: AzureOpenAIEmulator, client: openai.AzureOpenAI):
    emulator.settings.share_http_500 = 1.0
    with pytest.raises(openai.InternalServerError) as excinfo:
        client.chat.completions.create(model=DEPLOYMENT, messages=_user(f"{FAULT_MARKER}http_503"))
    assert excinfo.value.status_code == 503
    assert emulator.stats["faults"] == {"http_503": 1}


def test_old_invalid_json_marker_counts_as_malformed_json(emulator: AzureOpenAIEmulator, client: openai.AzureOpenAI):
    completion = client.chat.completions.create(model=DEPLOYMENT, messages=_user(f"{FAULT_MARKER}invalid_json"))
    with pytest.raises(ValueError):
        json.loads(completion.choices[0].message.content)
    assert emulator.stats["faults"] == {"malformed_json": 1}


def test_build_chat_reply_applies_a_given_fault():
    body = {"messages": _user(_posts(POSITIVE, NEGATIVE, NEUTRAL)), "response_format": {
        "type": "json_schema", "json_schema": {"name": "B", "schema": BatchSentiment.model_json_schema()}}}
    first = build_chat_reply(body, DEPLOYMENT, fault="missing_post", omit_pick=0.0)
    items = json.loads(first.payload["choices"][0]["message"]["content"])["items"]
    assert [item["id"] for item in items] == ["1", "2"] and first.posts == 2
    assert build_chat_reply(body, DEPLOYMENT, fault="drop").no_answer == "drop"
    assert build_chat_reply(body, DEPLOYMENT, fault="http_503").status == 503
    with pytest.raises(ValueError, match="fault"):
        build_chat_reply(body, DEPLOYMENT, fault="slow")
