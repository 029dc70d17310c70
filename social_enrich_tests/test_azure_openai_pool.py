"""The azure_openai_pool provider: several deployments of one model, routed by quota, each behind a
circuit breaker. Real parts: the emulator over loopback, each deployment on its own endpoint."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import fields

import pytest

from social_enrich.devtools.azure_openai_emulator import AzureOpenAIEmulator, EmulatorSettings
from social_enrich.inference.azure_openai import EndpointRejectedError
from social_enrich.inference.azure_pool import AzureOpenAIPoolProvider, AzureOpenAIPoolSettings
from social_enrich.inference.credentials import CredentialsError
from social_enrich.inference.response_models import Sentiment
from social_enrich.inference.selection import ProviderConfigError, environment_provider, provider_config
from social_enrich.inference.usage import Usage
from social_enrich_tests.emulated_azure import API_KEY, NEGATIVE, POSITIVE, inference, post

NAMES = ("pool-a", "pool-b", "pool-c")
RPM = 6_000  # never the bound here: tokens are
TPM = 240_000  # per deployment: about 9 requests of 5 posts a second, over 1 s windows
POSTS = 600
WORKERS = 8


def emulator_for(limits: dict[str, int]) -> AzureOpenAIEmulator:
    settings = EmulatorSettings(api_key=API_KEY, deployments=NAMES, latency_seconds=0.05, rate_window_seconds=1,
                                deployment_limits={name: (RPM, tpm) for name, tpm in limits.items()})
    return AzureOpenAIEmulator(settings)


@pytest.fixture
def emulator() -> Iterator[AzureOpenAIEmulator]:
    with emulator_for(dict.fromkeys(NAMES, TPM)) as emu:
        yield emu


def pool_config(emu: AzureOpenAIEmulator, tpm: dict[str, int] | None = None, **shared: object) -> dict:
    tpm = tpm or dict.fromkeys(NAMES, TPM)
    deployments = [{"name": name, "endpoint": emu.endpoint_of(name), "api_key_env_var": f"KEY_{name[-1].upper()}",
                    "requests_per_minute": RPM, "tokens_per_minute": tpm[name]} for name in NAMES]
    return {"deployments": deployments, "timeout_seconds": 5, "cool_down_seconds": 0.3, "max_cool_down_seconds": 1.0,
            **shared}


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in NAMES:  # each deployment its own key source
        monkeypatch.setenv(f"KEY_{name[-1].upper()}", API_KEY)


def pool(config: dict, **settings: object) -> AzureOpenAIPoolProvider:
    base = {"posts_per_request": 5, "workers": WORKERS, "rate_limit": {"window_seconds": 1},
            "retry": {"max_attempts": 4, "max_seconds": 30}}
    return AzureOpenAIPoolSettings.model_validate(config).build_provider(inference(**{**base, **settings}), Sentiment)


def posts(n: int = POSTS) -> list:
    return [post(POSITIVE if i % 2 else NEGATIVE, key=i) for i in range(n)]


def answered(emu: AzureOpenAIEmulator, name: str) -> int:
    return emu.stats["by_deployment"][name]["by_status"].get("200", 0)


def posts_answered(emu: AzureOpenAIEmulator) -> int:
    return sum(d["posts_answered"] for d in emu.stats["by_deployment"].values())


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


@pytest.mark.parametrize("mode", ["http_503", "refuse", "throttle"])
def test_a_deployment_down_mid_run_loses_no_post_and_serves_again_once_back(emulator, mode):
    provider = pool(pool_config(emulator))
    seen: dict[str, int] = {}

    def outage() -> None:
        wait_until(lambda: answered(emulator, "pool-a") >= 3 and posts_answered(emulator) >= 100)
        emulator.fail_deployment("pool-a", mode)
        seen["down"], seen["others_down"] = answered(emulator, "pool-a"), posts_answered(emulator)
        wait_until(lambda: posts_answered(emulator) >= seen["others_down"] + 150)
        seen["restored"] = answered(emulator, "pool-a")
        emulator.restore_deployment("pool-a")

    thread = threading.Thread(target=outage, daemon=True)
    thread.start()
    results = provider.score(posts())
    thread.join(timeout=30)

    assert len(results) == POSTS and Counter(r.status for r in results) == {"ok": POSTS}
    assert sum(emulator.stats["by_deployment"][n]["posts_answered"] for n in NAMES) == POSTS  # once per post
    # While down, pool-a answered at most what was already in flight; the others took its share.
    assert seen["restored"] - seen["down"] <= WORKERS
    # Once back, it serves again.
    assert answered(emulator, "pool-a") > seen["restored"]
    assert provider.deployment_states() == dict.fromkeys(NAMES, "closed")
    by_deployment = provider.usage_by_deployment()
    total = sum(by_deployment.values(), Usage())
    assert all(getattr(total, f.name) == getattr(provider.usage, f.name) for f in fields(Usage))
    assert by_deployment["pool-a"].requests > 0
    assert sum(provider.deployment_shares().values()) == pytest.approx(1.0)


def test_a_deployment_with_twice_the_quota_serves_about_twice_the_posts():
    tpm = {"pool-a": TPM, "pool-b": TPM, "pool-c": 2 * TPM}
    with emulator_for(tpm) as emu:
        provider = pool(pool_config(emu, tpm))
        results = provider.score(posts())
        served = {name: emu.stats["by_deployment"][name]["posts_answered"] for name in NAMES}

    assert Counter(r.status for r in results) == {"ok": POSTS}
    ratio = served["pool-c"] / ((served["pool-a"] + served["pool-b"]) / 2)
    assert 1.5 <= ratio <= 2.6, served
    shares = provider.deployment_shares()
    assert shares["pool-c"] == pytest.approx(0.5, abs=0.1)


def test_when_every_deployment_is_down_posts_fail_after_the_retry_budget_naming_the_deployments(emulator):
    provider = pool(pool_config(emulator), retry={"max_attempts": 6, "max_seconds": 2})
    for name in NAMES:
        emulator.fail_deployment(name, "refuse")

    started = time.monotonic()
    results = provider.score(posts(100))

    assert time.monotonic() - started < 15
    assert all(r.status == "failed" for r in results)
    # Each failure names the deployments it was sent to; one that waited for the pool says why each is out.
    assert all(r.error.startswith("gave up after") and any(name in r.error for name in NAMES) for r in results)
    waited = [r.error for r in results if "every deployment of the pool is out" in r.error]
    assert waited and all(f"{name} (out for" in error for error in waited for name in NAMES)


def test_a_deployment_that_rejects_the_key_is_taken_out_and_the_others_score_everything(emulator, monkeypatch):
    monkeypatch.setenv("KEY_B", "sk-wrong-key-0123456789abcdef")
    provider = pool(pool_config(emulator))

    results = provider.score(posts(100))

    assert Counter(r.status for r in results) == {"ok": 100}
    assert provider.deployment_states()["pool-b"] != "closed"  # out (or being probed) still
    assert emulator.stats["by_deployment"]["pool-b"]["posts_answered"] == 0


def test_the_run_stops_when_every_deployment_rejects_it_naming_each(emulator, monkeypatch):
    for name in NAMES:
        monkeypatch.setenv(f"KEY_{name[-1].upper()}", "sk-wrong-key-0123456789abcdef")
    provider = pool(pool_config(emulator))

    with pytest.raises(EndpointRejectedError, match="every deployment of the pool rejects the run") as error:
        provider.score(posts(100))
    assert all(name in str(error.value) for name in NAMES)
    assert "sk-wrong-key" not in str(error.value)


@pytest.mark.parametrize(("config", "named"), [
    ({"deployments": [{"name": "a"}, {"name": "b"}, {"name": "a"}]}, "deployment names must be unique: a given more than once"),
    ({"deployments": [{"name": "a", "region": "eastus"}]}, "deployments.0.region: Extra inputs are not permitted"),
    ({"deployments": [{"name": "a"}], "deployment": "a"}, "deployment: Extra inputs are not permitted"),
    ({"deployments": []}, "deployments: List should have at least 1 item"),
    ({"deployments": [{"name": "a", "tokens_per_minute": 0}]}, "deployments.0.tokens_per_minute: Input should be greater than 0"),
])
def test_a_bad_pool_config_fails_naming_the_field(config, named):
    with pytest.raises(ProviderConfigError, match="provider 'azure_openai_pool': invalid config") as error:
        provider_config("azure_openai_pool", config)
    assert named in str(error.value)


def test_the_pool_is_chosen_by_name_from_the_environment_with_a_key_per_deployment(emulator, monkeypatch, sentiment_job):
    monkeypatch.setenv("KEY_A", API_KEY)
    monkeypatch.setenv("KEY_B", API_KEY + "-b")
    monkeypatch.setenv("SOCIAL_ENRICH_ENV", "production")
    monkeypatch.setenv("SOCIAL_ENRICH_PROVIDER", "azure_openai_pool")
    config = {"deployments": [
        {"name": "pool-a", "endpoint": emulator.endpoint_of("pool-a"), "api_key_env_var": "KEY_A", "batch": True},
        {"name": "pool-b", "endpoint": emulator.endpoint_of("pool-b"), "api_key_env_var": "KEY_B",
         "tokens_per_minute": 100_000, "enqueued_token_limit": 5_000_000},
    ], "model_version": "2024-07-18"}
    monkeypatch.setenv("SOCIAL_ENRICH_PROVIDER_CONFIG", json.dumps(config))

    provider = environment_provider(sentiment_job)

    assert isinstance(provider, AzureOpenAIPoolProvider)
    a, b = provider.deployments
    assert (a.name, a.client_args["api_key"], a.batch) == ("pool-a", API_KEY, True)
    assert (b.client_args["api_key"], b.quota.tokens_per_minute, b.enqueued_token_limit) == (API_KEY + "-b", 100_000, 5_000_000)
    assert provider.cache_identity == f"{sentiment_job.inference.model}@2024-07-18"  # never a deployment name
    assert API_KEY not in repr(provider) and API_KEY not in repr(a)

    monkeypatch.delenv("KEY_B")
    with pytest.raises(CredentialsError, match=r"deployment pool-b of provider azure_openai_pool: no Azure OpenAI key: set \$KEY_B") as error:
        environment_provider(sentiment_job)
    assert API_KEY not in str(error.value)


def test_a_runs_figures_show_each_deployments_requests_tokens_and_share(emulator, monkeypatch, sentiment_job, catalog, seeded):
    """Through the run core: a day enriched by the pool reports every deployment, and they add up to the run."""
    from social_enrich.enrichment import enrich_partition, report_summary

    monkeypatch.setenv("SOCIAL_ENRICH_ENV", "production")
    monkeypatch.setenv("SOCIAL_ENRICH_PROVIDER", "azure_openai_pool")
    monkeypatch.setenv("SOCIAL_ENRICH_PROVIDER_CONFIG", json.dumps(pool_config(emulator)))
    day = seeded.days[0]

    report = enrich_partition(sentiment_job, day, catalog, environment_provider(sentiment_job))
    figures = report_summary(sentiment_job, report, 1.0, None)

    per = {name: {k.rsplit("/", 1)[1]: v for k, v in figures.items() if k.startswith(f"llm/deployment/{name}/")} for name in NAMES}
    assert all(set(f) == {"requests", "tokens", "throttled", "errors", "share"} for f in per.values()), per
    assert sum(f["requests"] for f in per.values()) == figures["llm/requests"] > 0
    assert sum(f["tokens"] for f in per.values()) == figures["llm/prompt_tokens"] + figures["llm/completion_tokens"]
    assert sum(f["share"] for f in per.values()) == pytest.approx(1.0, abs=0.01)
    assert all(f["requests"] > 0 for f in per.values())  # the work was shared
    assert figures["posts_failed"] == sum(report.not_sendable.values())  # only the sample's empty posts: none lost to the pool
