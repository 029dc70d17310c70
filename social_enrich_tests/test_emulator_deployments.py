"""A pool of Azure OpenAI deployments in the emulator: per-deployment quotas and stats, own endpoints,
and outages on command (503s, a 429 storm, refused connections), through the real openai SDK."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import openai
import pytest

from social_enrich.devtools.azure_openai_emulator import (
    AzureOpenAIEmulator,
    DeploymentLimits,
    EmulatorSettings,
    SettingsError,
    rate_limit_tokens,
)
from social_enrich.devtools.azure_openai_emulator.cli import main
from social_enrich.devtools.azure_openai_emulator.rate_limits import UNLIMITED_REQUESTS
from social_enrich_tests.emulator_sdk import API_VERSION, DEPLOYMENT

API_KEY = "deployments-test-key"
OTHER = "gpt-4o"
# 40 characters: a prompt estimate of exactly 10 tokens.
MESSAGES = [{"role": "user", "content": "Rate this: I love the new camera a lot!!"}]


@pytest.fixture
def emulator() -> Iterator[AzureOpenAIEmulator]:
    settings = EmulatorSettings(api_key=API_KEY, deployments=(DEPLOYMENT, OTHER), rate_window_seconds=1.0)
    with AzureOpenAIEmulator(settings) as emu:
        yield emu


def _client(endpoint: str, timeout: float = 5) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(
        azure_endpoint=endpoint, api_key=API_KEY, api_version=API_VERSION, max_retries=0, timeout=timeout
    )


def _send(client: openai.AzureOpenAI, model: str = DEPLOYMENT, **kwargs: Any) -> tuple[int, dict[str, str]]:
    """Status and headers of one chat request, error answers included."""
    try:
        raw = client.chat.completions.with_raw_response.create(model=model, messages=MESSAGES, **kwargs)
        return raw.status_code, dict(raw.headers)
    except openai.APIStatusError as exc:
        return exc.status_code, dict(exc.response.headers)


def _statuses(client: openai.AzureOpenAI, count: int, model: str = DEPLOYMENT, **kwargs: Any) -> list[int]:
    return [_send(client, model, **kwargs)[0] for _ in range(count)]


def _causes(exc: BaseException | None) -> list[BaseException]:
    """``exc`` and what it was raised from, outermost first (bounded: chains are short)."""
    chain: list[BaseException] = []
    while exc is not None and len(chain) < 20:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


def _assert_refused(client: openai.AzureOpenAI, model: str = DEPLOYMENT) -> None:
    with pytest.raises(openai.APIConnectionError) as excinfo:
        client.chat.completions.create(model=model, messages=MESSAGES)
    chain = _causes(excinfo.value)
    # The SDK's httpx (vendored under another module name in some versions) raises its ConnectError.
    assert any(type(e).__name__ == "ConnectError" for e in chain), chain
    assert any(isinstance(e, ConnectionRefusedError) for e in chain), chain


def _control(emulator: AzureOpenAIEmulator, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
    """Status and JSON of a control call (POST with a body, else GET); no api-key."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(emulator.endpoint + path, data=data, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.load(exc)


# ------------------------------------------------------------------------------------------
# Per-deployment quotas
# ------------------------------------------------------------------------------------------


def test_a_deployment_limit_throttles_that_deployment_while_another_answers(emulator, client):
    emulator.settings.deployment_limits = {DEPLOYMENT: (120, None)}  # 2 per 1-second window; OTHER unlimited

    assert _statuses(client, 3) == [200, 200, 429]
    others = [_send(client, OTHER) for _ in range(6)]
    assert [status for status, _ in others] == [200] * 6
    assert all(h["x-ratelimit-remaining-requests"] == str(UNLIMITED_REQUESTS) for _, h in others)


def test_a_deployment_limit_replaces_the_server_wide_one(emulator, client):
    emulator.settings.requests_per_minute = 60  # 1 per window for every deployment...
    emulator.settings.deployment_limits = {OTHER: DeploymentLimits(180, None)}  # ...but OTHER: 3

    assert _statuses(client, 2) == [200, 429]
    assert _statuses(client, 4, OTHER) == [200, 200, 200, 429]
    emulator.settings.deployment_limits = {OTHER: (None, None)}  # its own: unlimited, whatever the server-wide figure
    assert _statuses(client, 3, OTHER) == [200, 200, 200]


def test_a_deployment_token_limit_counts_its_own_window(emulator, client):
    emulator.settings.deployment_limits = {OTHER: (None, 6000)}  # 100 rate-limit tokens per window

    answers = [_send(client, OTHER, max_tokens=30) for _ in range(3)]  # 10 prompt + 30 each

    assert [status for status, _ in answers] == [200, 200, 429]
    assert [h["x-ratelimit-remaining-tokens"] for _, h in answers] == ["60", "20", "20"]
    assert _statuses(client, 3, max_tokens=30) == [200, 200, 200]  # DEPLOYMENT: no token limit


def test_stats_count_per_deployment(emulator: AzureOpenAIEmulator, client: openai.AzureOpenAI):
    emulator.settings.deployment_limits = {DEPLOYMENT: (60, None)}  # 1 per window
    answered = client.chat.completions.create(model=DEPLOYMENT, messages=MESSAGES, max_tokens=40)
    assert _send(client)[0] == 429
    other = client.chat.completions.create(model=OTHER, messages=MESSAGES)
    assert _send(client, "no-such-deployment")[0] == 404  # no deployment: counted server-wide only

    stats = emulator.stats
    mine, theirs = stats["by_deployment"][DEPLOYMENT], stats["by_deployment"][OTHER]
    assert set(stats["by_deployment"]) == {DEPLOYMENT, OTHER}
    assert mine["requests"] == 2 and mine["by_status"] == {"200": 1, "429": 1} and mine["throttled"] == 1
    assert mine["rate_limit_tokens"] == rate_limit_tokens(emulator.requests_log[0]) == 10 + 40
    assert (mine["prompt_tokens"], mine["completion_tokens"]) == (
        answered.usage.prompt_tokens, answered.usage.completion_tokens,
    )  # fmt: skip
    assert mine["posts_answered"] == 1 and mine["faults"] == {} and mine["cached_tokens"] == 0
    assert theirs["requests"] == 1 and theirs["by_status"] == {"200": 1}
    assert theirs["completion_tokens"] == other.usage.completion_tokens
    assert theirs["rate_limit_tokens"] == other.usage.prompt_tokens + other.usage.completion_tokens
    # The server-wide counters are as they were: every request, the 404 included.
    assert stats["requests"] == 4 and stats["by_status"] == {200: 2, 429: 1, 404: 1}
    assert stats["rate_limit_tokens"] == mine["rate_limit_tokens"] + theirs["rate_limit_tokens"]

    with urllib.request.urlopen(emulator.endpoint + "/stats", timeout=5) as response:
        served = json.load(response)
    assert served["by_deployment"] == stats["by_deployment"] and served["enqueued_tokens"] == stats["enqueued_tokens"]
    emulator.reset_stats()
    assert emulator.stats["by_deployment"][DEPLOYMENT]["requests"] == 0


# ------------------------------------------------------------------------------------------
# Outages: http_503 and throttle
# ------------------------------------------------------------------------------------------


def test_http_503_outage_answers_503_consuming_no_quota(emulator: AzureOpenAIEmulator, client):
    emulator.settings.deployment_limits = {DEPLOYMENT: (120, None)}  # 2 per window
    emulator.fail_deployment(DEPLOYMENT, "http_503")

    with pytest.raises(openai.InternalServerError) as excinfo:
        client.chat.completions.create(model=DEPLOYMENT, messages=MESSAGES)
    assert excinfo.value.status_code == 503 and excinfo.value.code == "ServiceUnavailable"
    assert _statuses(client, 3) == [503] * 3
    assert _send(client, OTHER)[0] == 200  # the rest of the pool answers

    emulator.restore_deployment(DEPLOYMENT)
    assert _statuses(client, 3) == [200, 200, 429]  # the 503s took no slot of the window
    mine = emulator.stats["by_deployment"][DEPLOYMENT]
    assert mine["by_status"] == {"200": 2, "429": 1, "503": 4} and mine["faults"] == {"outage_http_503": 4}
    assert emulator.stats["faults"] == {"outage_http_503": 4}


def test_throttle_outage_is_a_429_storm_whatever_the_quota(emulator: AzureOpenAIEmulator, client):
    emulator.fail_deployment(OTHER, "throttle")  # no limit configured at all

    for _ in range(3):
        with pytest.raises(openai.RateLimitError) as excinfo:
            client.chat.completions.create(model=OTHER, messages=MESSAGES)
        headers = excinfo.value.response.headers
        assert headers["retry-after-ms"] == "1000" and headers["retry-after"] == "1"
        assert headers["x-ratelimit-remaining-requests"] == "0"
    assert _send(client)[0] == 200

    emulator.fail_deployment(OTHER, None)  # None ends it too
    assert _send(client, OTHER)[0] == 200
    stats = emulator.stats
    assert stats["by_deployment"][OTHER]["by_status"] == {"200": 1, "429": 3}
    assert stats["by_deployment"][OTHER]["faults"] == {"outage_throttle": 3} and stats["throttled"] == 3


def test_an_outage_is_seen_on_the_v1_route_too(emulator: AzureOpenAIEmulator):
    emulator.fail_deployment(DEPLOYMENT, "http_503")
    v1 = openai.OpenAI(base_url=emulator.endpoint + "/openai/v1/", api_key=API_KEY, max_retries=0)
    with v1, pytest.raises(openai.APIStatusError) as excinfo:
        v1.chat.completions.create(model=DEPLOYMENT, messages=MESSAGES)
    assert excinfo.value.status_code == 503


def test_outage_calls_check_their_arguments(emulator: AzureOpenAIEmulator):
    with pytest.raises(ValueError, match="outage mode"):
        emulator.fail_deployment(DEPLOYMENT, "melt")
    with pytest.raises(LookupError, match="no-such"):
        emulator.fail_deployment("no-such", "http_503")
    with pytest.raises(LookupError):
        emulator.endpoint_of("no-such")
    assert emulator.deployment_state(DEPLOYMENT) == {"deployment": DEPLOYMENT, "mode": None, "endpoint": None}


# ------------------------------------------------------------------------------------------
# Own endpoints and refuse
# ------------------------------------------------------------------------------------------


def test_refuse_closes_the_own_endpoint_and_restore_reopens_it_on_the_same_port(emulator: AzureOpenAIEmulator):
    endpoint = emulator.endpoint_of(DEPLOYMENT)
    assert endpoint != emulator.endpoint and emulator.endpoint_of(DEPLOYMENT) == endpoint  # opened once
    host, port = urlsplit(endpoint).hostname, urlsplit(endpoint).port
    with _client(endpoint) as own, _client(emulator.endpoint) as shared:
        assert _send(own)[0] == 200  # a pooled keep-alive connection, cut by the refusal below

        emulator.fail_deployment(DEPLOYMENT, "refuse")
        _assert_refused(own)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((host, port), timeout=2).close()
        assert _send(shared, OTHER)[0] == 200  # the pool's other deployment still answers
        assert emulator.deployment_state(DEPLOYMENT) == {"deployment": DEPLOYMENT, "mode": "refuse", "endpoint": endpoint}

        emulator.restore_deployment(DEPLOYMENT)
        assert emulator.endpoint_of(DEPLOYMENT) == endpoint
        assert _statuses(own, 2) == [200, 200]  # the same client, the same port
        emulator.fail_deployment(DEPLOYMENT, "refuse")  # and again: the port rebinds right after a close
        _assert_refused(own)
        emulator.restore_deployment(DEPLOYMENT)
        assert _send(own)[0] == 200
    # Refused connects reach nothing: only the answered requests count.
    assert emulator.stats["by_deployment"][DEPLOYMENT]["by_status"] == {"200": 4}


def test_refuse_on_the_main_endpoint_closes_the_connection_without_an_answer(emulator, client):
    emulator.fail_deployment(DEPLOYMENT, "refuse")  # no own endpoint: requests still reach the main one

    with pytest.raises(openai.APIConnectionError) as excinfo:
        client.chat.completions.create(model=DEPLOYMENT, messages=MESSAGES)
    assert not any(isinstance(e, ConnectionRefusedError) for e in _causes(excinfo.value))  # a disconnect
    assert _send(client, OTHER)[0] == 200

    stats = emulator.stats
    assert stats["by_deployment"][DEPLOYMENT]["requests"] == 1
    assert stats["by_deployment"][DEPLOYMENT]["by_status"] == {}  # no answer, no status
    assert stats["faults"] == {"outage_refuse": 1} and stats["in_flight"] == 0


def test_an_own_endpoint_serves_its_deployment_only_and_shares_the_quota(emulator: AzureOpenAIEmulator, client):
    emulator.settings.deployment_limits = {DEPLOYMENT: (120, None)}  # 2 per window, whichever endpoint
    with _client(emulator.endpoint_of(DEPLOYMENT)) as own:
        assert _send(own)[0] == 200
        assert _send(client)[0] == 200
        assert _send(own)[0] == 429
        assert _send(own, OTHER)[0] == 404  # another resource's deployment
        # Files, batches and stats are the same state on every endpoint.
        file_id = own.files.create(file=("in.jsonl", b"{}\n"), purpose="batch").id
        assert client.files.retrieve(file_id).id == file_id
    assert emulator.stats["by_deployment"][DEPLOYMENT]["by_status"] == {"200": 2, "429": 1}


def test_refuse_cuts_off_a_request_in_flight(emulator: AzureOpenAIEmulator):
    emulator.settings.latency_seconds = 5.0  # held long enough to be in flight when the listener closes
    outcome: list[BaseException | None] = []
    with _client(emulator.endpoint_of(OTHER), timeout=10) as own:

        def call() -> None:
            try:
                own.chat.completions.create(model=OTHER, messages=MESSAGES)
                outcome.append(None)
            except openai.APIError as exc:
                outcome.append(exc)

        thread = threading.Thread(target=call)
        start = time.monotonic()
        thread.start()
        for _ in range(200):  # until the request is held (at most 2 s)
            if emulator.stats["in_flight"]:
                break
            time.sleep(0.01)
        emulator.fail_deployment(OTHER, "refuse")
        thread.join(timeout=5)
    assert not thread.is_alive() and time.monotonic() - start < 4
    assert isinstance(outcome[0], openai.APIConnectionError)  # cut off, not answered


def test_own_endpoints_open_at_start_and_stop_with_the_emulator():
    settings = EmulatorSettings(api_key=API_KEY, deployments=(DEPLOYMENT, OTHER))
    emulator = AzureOpenAIEmulator(settings, own_endpoints=True)
    with pytest.raises(RuntimeError):
        emulator.endpoint_of(DEPLOYMENT)  # not started
    with emulator:
        endpoints = {name: emulator.deployment_state(name)["endpoint"] for name in (DEPLOYMENT, OTHER)}
        assert None not in endpoints.values() and len(set(endpoints.values())) == 2
        emulator.fail_deployment(OTHER, "refuse")  # its port held, refusing, when stop() comes
        with _client(endpoints[DEPLOYMENT]) as own:
            assert _send(own)[0] == 200
    for endpoint in endpoints.values():
        address = (urlsplit(endpoint).hostname, urlsplit(endpoint).port)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(address, timeout=2).close()
        # Nothing holds the port any more: it binds again.
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)


# ------------------------------------------------------------------------------------------
# The HTTP control route
# ------------------------------------------------------------------------------------------


def test_control_route_puts_a_deployment_down_and_back(emulator: AzureOpenAIEmulator, client):
    status, state = _control(emulator, f"/control/deployments/{DEPLOYMENT}", {"mode": "http_503"})
    assert (status, state) == (200, {"deployment": DEPLOYMENT, "mode": "http_503", "endpoint": None})
    assert _send(client)[0] == 503

    status, state = _control(emulator, f"/control/deployments/{DEPLOYMENT}", {"mode": None})
    assert (status, state["mode"]) == (200, None)
    assert _send(client)[0] == 200

    endpoint = emulator.endpoint_of(OTHER)
    status, state = _control(emulator, f"/control/deployments/{OTHER}", {"mode": "refuse"})
    assert (status, state) == (200, {"deployment": OTHER, "mode": "refuse", "endpoint": endpoint})
    with _client(endpoint) as own:
        _assert_refused(own, OTHER)
        assert _control(emulator, f"/control/deployments/{OTHER}", {"mode": None})[0] == 200
        assert _send(own, OTHER)[0] == 200

    status, listed = _control(emulator, "/control/deployments")
    assert status == 200 and [s["deployment"] for s in listed["data"]] == [DEPLOYMENT, OTHER]
    assert listed["data"][1] == {"deployment": OTHER, "mode": None, "endpoint": endpoint}


@pytest.mark.parametrize(
    ("path", "body", "raw", "status"),
    [
        ("/control/deployments/no-such", {"mode": "http_503"}, None, 404),
        (f"/control/deployments/{DEPLOYMENT}", {"mode": "melt"}, None, 400),
        (f"/control/deployments/{DEPLOYMENT}", {}, None, 400),  # the mode is required, null included
        (f"/control/deployments/{DEPLOYMENT}", None, b"not json", 400),
        (f"/control/deployments/{DEPLOYMENT}", None, None, 404),  # GET of one deployment: no such route
    ],
)
def test_control_route_refuses_bad_calls(emulator: AzureOpenAIEmulator, path: str, body: Any, raw: Any, status: int):
    answered, payload = _control(emulator, path, body, raw)
    assert answered == status and "error" in payload
    assert emulator.deployment_state(DEPLOYMENT)["mode"] is None
    assert emulator.stats["requests"] == 0  # control calls are not chat requests


def test_control_route_is_not_served_on_own_endpoints(emulator: AzureOpenAIEmulator):
    request = urllib.request.Request(
        emulator.endpoint_of(DEPLOYMENT) + f"/control/deployments/{DEPLOYMENT}",
        data=json.dumps({"mode": "refuse"}).encode(), method="POST",
    )  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as excinfo:
        urllib.request.urlopen(request, timeout=5)
    excinfo.value.close()
    assert excinfo.value.code == 404 and emulator.deployment_state(DEPLOYMENT)["mode"] is None


# ------------------------------------------------------------------------------------------
# Settings
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limits", "named"),
    [
        ({"no-such": (600, None)}, "deployment_limits and deployments"),
        ({DEPLOYMENT: (0, None)}, "deployment_limits"),
        ({DEPLOYMENT: (None, -5)}, "deployment_limits"),
        ({DEPLOYMENT: (1.5, None)}, "deployment_limits"),
        ({DEPLOYMENT: (True, None)}, "deployment_limits"),
        ({DEPLOYMENT: (600, None, 5)}, "deployment_limits"),
        ({DEPLOYMENT: 600}, "deployment_limits"),
        ([(DEPLOYMENT, (600, None))], "deployment_limits"),
        ({DEPLOYMENT: (30, None)}, "deployment_limits and rate_window_seconds"),  # 0.5 per 1-second window
        ({DEPLOYMENT: (None, 30)}, "deployment_limits and rate_window_seconds"),
    ],
)
def test_deployment_limits_are_validated(limits: Any, named: str):
    with pytest.raises(SettingsError, match=named) as excinfo:
        EmulatorSettings(deployments=(DEPLOYMENT, OTHER), rate_window_seconds=1.0, deployment_limits=limits)
    assert excinfo.value.fields[0] == "deployment_limits"


def test_deployment_limits_are_read_only_and_a_bad_change_is_undone():
    settings = EmulatorSettings(deployments=(DEPLOYMENT, OTHER), deployment_limits={DEPLOYMENT: [600, None]})
    assert settings.deployment_limits == {DEPLOYMENT: DeploymentLimits(600, None)}  # a list taken for the pair
    assert settings.rate_limits_of(DEPLOYMENT) == (600, None) and settings.rate_limits_of(OTHER) == (None, None)
    with pytest.raises(TypeError):
        settings.deployment_limits[OTHER] = DeploymentLimits(600, None)  # type: ignore[index]
    with pytest.raises(SettingsError, match="deployment_limits and deployments"):
        settings.deployments = (OTHER,)  # would leave a limit for a deployment that is gone
    with pytest.raises(SettingsError, match="deployment_limits and rate_window_seconds"):
        settings.rate_window_seconds = 0.05  # 600 * 0.05 / 60 = 0.5 per window
    assert settings.deployments == (DEPLOYMENT, OTHER) and settings.rate_window_seconds == 10.0


# ------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------


def test_deployment_flags_reach_the_running_emulator():
    command = [
        sys.executable, "-m", "social_enrich.devtools.azure_openai_emulator", "--port", "0", "--api-key", API_KEY,
        "--deployment", DEPLOYMENT, "--deployment", OTHER, "--rpm", "60", "--rate-window-seconds", "1",
        "--deployment-limit", f"{DEPLOYMENT}:120:", "--deployment-limit", f"{OTHER}::", "--own-endpoints",
    ]  # fmt: skip
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as proc:
        try:
            endpoint = proc.stdout.readline().strip()
            assert endpoint.startswith("http://127.0.0.1:")
            with urllib.request.urlopen(endpoint + "/control/deployments", timeout=5) as response:
                states = {s["deployment"]: s for s in json.load(response)["data"]}
            own = states[DEPLOYMENT]["endpoint"]
            assert own and own != endpoint and states[OTHER]["endpoint"]
            with _client(own) as client:
                assert _statuses(client, 3) == [200, 200, 429]  # its own 120 rpm: 2 per window, not 1
            with _client(endpoint) as client:
                assert _statuses(client, 3, OTHER) == [200, 200, 200]  # "::": unlimited, not --rpm's 1
            with urllib.request.urlopen(endpoint + "/stats", timeout=5) as response:
                stats = json.load(response)
            assert stats["by_deployment"][DEPLOYMENT]["by_status"] == {"200": 2, "429": 1}
            assert stats["by_deployment"][OTHER]["requests"] == 3
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0


@pytest.mark.parametrize(
    ("argv", "flags"),
    [
        (["--deployment-limit", f"{DEPLOYMENT}:600"], "--deployment-limit"),  # one value short
        (["--deployment-limit", f"{DEPLOYMENT}:x:1"], "--deployment-limit"),
        (["--deployment-limit", ":600:1"], "--deployment-limit"),
        (["--deployment-limit", "no-such:600:"], "--deployment-limit, --deployment"),
        (["--deployment-limit", f"{DEPLOYMENT}:0:"], "--deployment-limit"),
        (["--deployment-limit", f"{DEPLOYMENT}:6:", "--rate-window-seconds", "1"],
         "--deployment-limit, --rate-window-seconds"),
        (["--deployment-limit", f"{DEPLOYMENT}:600:", "--deployment-limit", f"{DEPLOYMENT}::"], "--deployment-limit"),
    ],
)  # fmt: skip
def test_bad_deployment_flags_exit_naming_the_flag(argv: list[str], flags: str, capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as excinfo:
        main(argv)
    assert excinfo.value.code == 2
    assert f"argument {flags}:" in capsys.readouterr().err


def test_the_deployment_flags_are_listed(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit):
        main(["--help"])
    usage = capsys.readouterr().out
    for flag in ("--deployment-limit", "--own-endpoints", "--batch-enqueued-token-limit", "--deployment-batch-limit"):
        assert flag in usage
