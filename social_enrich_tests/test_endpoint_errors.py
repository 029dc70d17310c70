"""An endpoint that rejects the run itself (wrong key, unknown deployment, nothing listening) stops the
run after a few identical answers with EndpointRejectedError, against the emulator over real HTTP."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from social_enrich.devtools.azure_openai_emulator import AzureOpenAIEmulator, EmulatorSettings
from social_enrich.errors import SocialEnrichError
from social_enrich.inference.azure_openai import STOP_AFTER_REJECTIONS, AzureOpenAIProvider, EndpointRejectedError
from social_enrich.inference.provider import ScoreResult
from social_enrich.inference.response_models import Sentiment
from social_enrich.inference.azure_openai import AzureOpenAISettings
from social_enrich_tests.emulated_azure import API_KEY, DEPLOYMENT, NEGATIVE, POSITIVE, inference, post, provider_for

WRONG_KEY = "sk-wrong-key-5e4d3c2b1a09f8e7d6c5"
WORKERS = 4
# The stop, plus what was already in flight when it came (at most one request per other worker).
MOST_REQUESTS = STOP_AFTER_REJECTIONS + WORKERS - 1
# Plenty of retries, fast: without the stop, every post would be sent, and sent again.
RETRIES = {"max_attempts": 8, "max_seconds": 60, "backoff_seconds": 0.01, "max_backoff_seconds": 0.05}


@pytest.fixture
def emulator() -> Iterator[AzureOpenAIEmulator]:
    with AzureOpenAIEmulator(EmulatorSettings(api_key=API_KEY, deployments=(DEPLOYMENT,))) as emu:
        yield emu


def many_posts(n: int = 200) -> list:
    return [post(POSITIVE if i % 2 else NEGATIVE, i) for i in range(n)]


def score_until_rejected(provider: AzureOpenAIProvider, heard: list[tuple[int, ScoreResult]] | None = None) -> str:
    """The message of the EndpointRejectedError that scoring 200 posts in packs of 5 raises."""
    on_result = (lambda i, r: heard.append((i, r))) if heard is not None else None
    with pytest.raises(EndpointRejectedError) as raised:
        provider.score(many_posts(), on_result=on_result)
    error = raised.value
    assert isinstance(error, SocialEnrichError)
    assert error.__cause__ is None and error.__context__ is None  # no SDK error, with its request headers, attached
    message = str(error)
    assert "\n" not in message
    for key in (API_KEY, WRONG_KEY):
        assert key not in message and key not in repr(error)
    return message


def closed_port() -> int:
    """A loopback port nothing listens on: bound by the kernel, then released."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_wrong_key_stops_after_a_few_401s_naming_the_key_variable(emulator, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", WRONG_KEY)
    provider = provider_for(emulator.endpoint, posts_per_request=5, workers=WORKERS, retry=RETRIES)

    message = score_until_rejected(provider)

    assert message == f"HTTP 401 from {emulator.endpoint} for deployment {DEPLOYMENT}: check the key in $AZURE_OPENAI_API_KEY"
    assert STOP_AFTER_REJECTIONS <= emulator.stats["requests"] <= MOST_REQUESTS  # not the 40 packs
    assert emulator.stats["by_status"] == {401: emulator.stats["requests"]}


def test_the_message_names_the_variable_the_resource_reads_the_key_from(emulator, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TEAM_OPENAI_KEY", WRONG_KEY)
    resource = AzureOpenAISettings(endpoint=emulator.endpoint, api_key_env_var="TEAM_OPENAI_KEY")
    provider = resource.build_provider(inference(posts_per_request=5, workers=WORKERS, retry=RETRIES), Sentiment)

    message = score_until_rejected(provider)

    assert message.endswith("check the key in $TEAM_OPENAI_KEY")
    assert emulator.stats["requests"] <= MOST_REQUESTS


def test_a_forbidden_key_stops_with_403_and_the_servers_reason(emulator, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", API_KEY)
    emulator.settings.fail_all_with = 403
    provider = provider_for(emulator.endpoint, posts_per_request=5, workers=WORKERS, retry=RETRIES)

    message = score_until_rejected(provider)

    assert message.startswith(f"HTTP 403 from {emulator.endpoint} for deployment {DEPLOYMENT} (Access denied")
    assert "$AZURE_OPENAI_API_KEY" in message and "network rules" in message
    assert emulator.stats["requests"] <= MOST_REQUESTS


def test_an_unknown_deployment_stops_with_404_naming_it(emulator, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", API_KEY)
    provider = provider_for(emulator.endpoint, model="no-such-deployment", posts_per_request=5, workers=WORKERS, retry=RETRIES)

    message = score_until_rejected(provider)

    assert message == (f"HTTP 404: no deployment named no-such-deployment at {emulator.endpoint}: "
                       "check inference.model / $AZURE_OPENAI_DEPLOYMENT")
    assert emulator.stats["requests"] <= MOST_REQUESTS


def test_a_wrong_endpoint_path_stops_with_404_naming_the_endpoint_setting(emulator, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", API_KEY)
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", f"{emulator.endpoint}/not-here")
    provider = AzureOpenAISettings().build_provider(inference(posts_per_request=5, workers=WORKERS, retry=RETRIES), Sentiment)

    message = score_until_rejected(provider)

    assert message.startswith(f"HTTP 404 from {emulator.endpoint}/not-here for deployment {DEPLOYMENT} (Resource not found)")
    assert "check the endpoint in $AZURE_OPENAI_ENDPOINT and api_version" in message
    assert emulator.stats["requests"] <= MOST_REQUESTS


def test_a_closed_port_stops_after_a_few_refused_connections(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", API_KEY)
    endpoint = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", endpoint)
    provider = AzureOpenAISettings().build_provider(inference(posts_per_request=5, workers=WORKERS, retry=RETRIES), Sentiment)

    message = score_until_rejected(provider)

    assert message == f"cannot connect to {endpoint} (connection refused): check $AZURE_OPENAI_ENDPOINT"
    # Each attempt is counted as a request; 40 packs with 8 attempts each would be 320.
    assert provider.usage.requests <= MOST_REQUESTS


def test_answers_received_before_the_stop_are_delivered(emulator, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", API_KEY)
    provider = provider_for(emulator.endpoint, posts_per_request=5, workers=WORKERS, retry=RETRIES)
    heard: list[tuple[int, ScoreResult]] = []

    def on_result(i: int, result: ScoreResult) -> None:
        heard.append((i, result))
        emulator.settings.api_key = "rotated-away"  # from the first answer on, the run's key is refused

    with pytest.raises(EndpointRejectedError, match=r"^HTTP 401 "):
        provider.score(many_posts(), on_result=on_result)

    answered = [i for i, r in heard if r.status == "ok"]
    assert len(answered) >= 5 and len(answered) % 5 == 0  # whole packs, each post heard of once
    assert len(set(answered)) == len(answered)
    assert all(r.status == "ok" or "HTTP 401" in (r.error or "") for _, r in heard)
    by_status = emulator.stats["by_status"]
    assert set(by_status) == {200, 401}
    assert len(answered) <= 5 * by_status[200]  # an answer in flight at the stop may be cancelled
    assert by_status[401] <= MOST_REQUESTS
