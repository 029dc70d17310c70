"""The Azure OpenAI provider and resource, against the loopback emulator over real HTTP.

Provider-level tests call ``AzureOpenAISettings.build_provider(...).score(...)`` directly; the end-to-end
tests materialize the ``social_media_sentiment`` asset through Dagster into the embedded pyiceberg
catalog that ``conftest.state_home`` puts under tmp_path.
"""

from __future__ import annotations

import json

import datetime as dt
import socket
from collections import Counter
from collections.abc import Iterator

import pytest
from pyiceberg.catalog import Catalog

from social_enrich.config import InferenceConfig
from social_enrich.devtools.azure_openai_emulator import AzureOpenAIEmulator, EmulatorSettings
from social_enrich.environment import response_cache_path
from social_enrich.inference.azure_openai import (
    ANSWER_OVERHEAD_TOKENS,
    STOP_AFTER_REJECTIONS,
    AzureOpenAIConfigError,
    AzureOpenAIProvider,
    EndpointRejectedError,
)
from social_enrich.inference.azure_openai import AzureOpenAISettings
from social_enrich.inference.credentials import CredentialsError
from social_enrich.inference.provider import PostToScore
from social_enrich.inference.response_models import Sentiment
from social_enrich_tests.gold_tables import posts_living_on
from social_enrich_tests.dagster_helpers import drop_config, edited_sentiment_defs, materialization_metadata, materialize_day
from social_enrich_tests.emulated_azure import (
    API_KEY,
    DAY,
    DEPLOYMENT,
    NEGATIVE,
    POSITIVE,
    PROMPT,
    TARGET,
    append_posts,
    comparable,
    fault,
    inference,
    post,
    provider_for,
    read_target,
    sent_posts,
    slow,
)



def closed_port() -> int:
    """A loopback port nothing listens on: bound by the kernel, then released."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------------------------------
# Fixtures
# ------------------------------------------------------------------------------------------


@pytest.fixture
def emulator() -> Iterator[AzureOpenAIEmulator]:
    with AzureOpenAIEmulator(EmulatorSettings(api_key=API_KEY, deployments=(DEPLOYMENT,))) as emu:
        yield emu


@pytest.fixture
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", API_KEY)
    return API_KEY


@pytest.fixture
def provider(emulator: AzureOpenAIEmulator, api_key: str) -> AzureOpenAIProvider:
    return provider_for(emulator.endpoint)


# ------------------------------------------------------------------------------------------
# Provider: answers and failures
# ------------------------------------------------------------------------------------------


def test_structured_answers_carry_the_right_label(provider: AzureOpenAIProvider, emulator: AzureOpenAIEmulator):
    results = provider.score([post(POSITIVE, 1), post(NEGATIVE, 2)])

    assert [r.status for r in results] == ["ok", "ok"]
    assert all(isinstance(r.response, Sentiment) and r.error is None for r in results)
    positive, negative = (r.response for r in results)
    assert positive.label == "positive" and positive.score > 0.5
    assert negative.label == "negative" and negative.score < -0.5
    assert provider.model_id == DEPLOYMENT
    assert emulator.stats["by_status"] == {200: 1}  # both posts in one request
    # Structured output: a strict schema listing one result per post, each with its id.
    (body,) = emulator.requests_log
    schema_format = body["response_format"]
    assert schema_format["type"] == "json_schema" and schema_format["json_schema"]["strict"]
    schema = schema_format["json_schema"]["schema"]
    item = schema["properties"]["results"]["items"]  # inlined: no $defs, no $ref
    assert "$defs" not in schema and "$ref" not in json.dumps(schema)
    assert item["properties"]["id"] == {"type": "integer"}
    assert item["required"] == ["id", "label", "score", "confidence"] and item["additionalProperties"] is False
    assert body["max_tokens"] == ANSWER_OVERHEAD_TOKENS + 2 * InferenceConfig.model_fields["max_output_tokens_per_post"].default


def test_only_the_post_fields_are_sent(provider: AzureOpenAIProvider, emulator: AzureOpenAIEmulator):
    fields = {"post_text": POSITIVE, "language": "en", "reaction_like": 12, "hashtags": "#tech"}
    provider.score([PostToScore(key=99, fields=fields, text=POSITIVE)])

    (body,) = emulator.requests_log
    assert body["model"] == DEPLOYMENT
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert body["messages"][0]["content"].startswith(PROMPT)
    assert sent_posts(body) == [{"id": 0, **fields}]  # exactly these fields and an id: not the key


def test_posts_are_packed_and_matched_back_by_id(emulator: AzureOpenAIEmulator, api_key: str):
    texts = [POSITIVE if i % 3 else NEGATIVE for i in range(45)]
    results = provider_for(emulator.endpoint, posts_per_request=20).score([post(t, i) for i, t in enumerate(texts)])

    assert [r.response.label for r in results] == ["positive" if i % 3 else "negative" for i in range(45)]
    assert sorted(len(sent_posts(body)) for body in emulator.requests_log) == [5, 20, 20]
    assert emulator.stats["posts_answered"] == 45


def test_posts_per_request_one_sends_one_post_each(emulator: AzureOpenAIEmulator, api_key: str):
    results = provider_for(emulator.endpoint, posts_per_request=1).score([post(POSITIVE, i) for i in range(5)])
    assert [r.status for r in results] == ["ok"] * 5
    assert [len(sent_posts(body)) for body in emulator.requests_log] == [1] * 5


def test_unreadable_answer_splits_the_pack_and_the_lone_post_fails_after_its_retries(
    emulator: AzureOpenAIEmulator, api_key: str
):
    texts = [POSITIVE] * 3 + [fault("invalid_json")] + [NEGATIVE] * 4
    provider = provider_for(emulator.endpoint, posts_per_request=8, retry={"max_attempts": 2, "max_seconds": 30})

    results = provider.score([post(t, i) for i, t in enumerate(texts)])

    assert [r.status for r in results] == ["ok"] * 3 + ["failed"] + ["ok"] * 4
    assert "gave up after 2 attempts" in results[3].error and "not a JSON object" in results[3].error
    # 8 -> 4 + 4 -> 2 + 2 -> 1 + 1, then the lone bad post once more.
    sizes = sorted(len(sent_posts(body)) for body in emulator.requests_log)
    assert sizes == [1, 1, 1, 2, 2, 4, 4, 8]
    assert provider.usage.retries == 1


def test_missing_item_is_asked_again_alone(emulator: AzureOpenAIEmulator, api_key: str):
    emulator.settings.share_missing_post = 1.0  # every answer drops one of its posts
    provider = provider_for(emulator.endpoint, posts_per_request=6, retry={"max_attempts": 2, "max_seconds": 30})

    results = provider.score([post(POSITIVE, i) for i in range(6)])

    # Five posts answered in the pack; the sixth asked alone gets an empty list, twice.
    assert [r.status for r in results].count("ok") == 5
    (failed,) = [r for r in results if r.status == "failed"]
    assert "no result for this post" in failed.error
    assert sorted(len(sent_posts(body)) for body in emulator.requests_log) == [1, 1, 6]


@pytest.mark.parametrize("name,status", [("http_500", 500), ("http_503", 503)])
def test_server_error_is_retried_then_fails_the_post(emulator: AzureOpenAIEmulator, api_key: str, name: str, status: int):
    provider = provider_for(emulator.endpoint, retry={"max_attempts": 3, "max_seconds": 30})
    (result,) = provider.score([post(fault(name))])
    assert result.status == "failed"
    assert "gave up after 3 attempts" in result.error and f"HTTP {status} x3" in result.error
    assert emulator.stats["by_status"] == {status: 3}
    assert provider.usage.requests == 3 and provider.usage.retries == 2


def test_wrong_key_is_not_retried_and_raises_even_below_the_stop(emulator: AzureOpenAIEmulator, monkeypatch: pytest.MonkeyPatch):
    wrong = "sk-not-the-right-key-0123456789"
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", wrong)
    provider = provider_for(emulator.endpoint)
    heard: dict[int, str | None] = {}

    # One request, one 401: fewer than the stop needs, but nothing was answered, so the run raises all the same.
    with pytest.raises(EndpointRejectedError, match=r"^HTTP 401 .*\$AZURE_OPENAI_API_KEY$") as raised:
        provider.score([post(POSITIVE, 1), post(NEGATIVE, 2)], on_result=lambda i, r: heard.update({i: r.error}))

    assert heard == {0: str(raised.value), 1: str(raised.value)}  # the posts were settled before the raise
    assert wrong not in str(raised.value) and API_KEY not in str(raised.value)
    assert emulator.stats["by_status"] == {401: 1}


def test_content_filter_isolates_the_filtered_post(emulator: AzureOpenAIEmulator, api_key: str):
    texts = [POSITIVE, NEGATIVE, fault("content_filter"), POSITIVE, NEGATIVE]
    results = provider_for(emulator.endpoint, posts_per_request=5).score([post(t, i) for i, t in enumerate(texts)])

    assert [r.status for r in results] == ["ok", "ok", "filtered", "ok", "ok"]
    assert "content_filter" in results[2].error and "prompt" in results[2].error
    assert results[2].response is None


def test_answer_content_filter_is_filtered(provider: AzureOpenAIProvider):
    (result,) = provider.score([post(fault("finish_content_filter"))])
    assert result.status == "filtered"
    assert result.response is None
    assert "content_filter" in result.error and "answer" in result.error


def test_results_keep_input_order_and_are_reported_as_they_settle(emulator: AzureOpenAIEmulator, api_key: str):
    # The first post is held longest, so answers arrive out of input order.
    emulator.settings.slow_seconds = 0.4
    texts = [slow(POSITIVE), NEGATIVE, fault("http_500"), POSITIVE, fault("content_filter"), NEGATIVE]
    heard: list[tuple[int, str]] = []
    provider = provider_for(emulator.endpoint, posts_per_request=1, retry={"max_attempts": 1, "max_seconds": 30})

    results = provider.score([post(t, i) for i, t in enumerate(texts)], on_result=lambda i, r: heard.append((i, r.status)))

    assert [r.status for r in results] == ["ok", "ok", "failed", "ok", "filtered", "ok"]
    labels = [r.response.label if r.response else None for r in results]
    assert labels == ["positive", "negative", None, "positive", None, "negative"]
    assert sorted(heard) == [(i, r.status) for i, r in enumerate(results)]  # each post heard of exactly once
    assert heard[-1] == (0, "ok")  # the slow one last


def test_workers_bound_the_requests_in_flight(emulator: AzureOpenAIEmulator, api_key: str):
    emulator.settings.latency_seconds = 0.1
    provider = provider_for(emulator.endpoint, workers=3, posts_per_request=1)
    results = provider.score([post(POSITIVE if i % 2 else NEGATIVE, i) for i in range(30)])

    assert all(r.status == "ok" for r in results)
    assert emulator.stats["max_in_flight"] == 3  # the ceiling, reached and never passed
    assert emulator.stats["in_flight"] == 0


def test_connection_refused_is_retried_then_raises(api_key: str):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    provider = provider_for(endpoint, retry={"max_attempts": 2, "max_seconds": 30})
    heard: dict[int, str | None] = {}

    with pytest.raises(EndpointRejectedError) as raised:
        provider.score([post(POSITIVE, 1), post(NEGATIVE, 2)], on_result=lambda i, r: heard.update({i: r.error}))

    assert str(raised.value) == f"cannot connect to {endpoint} (connection refused): check the endpoint of the azure_openai resource"
    assert API_KEY not in str(raised.value)
    assert provider.usage.requests == 2  # one pack, both attempts: fewer than the stop needs
    assert all("connection error x2" in error for error in heard.values()) and len(heard) == 2


def test_slow_answer_times_out_and_fails_after_its_retries(emulator: AzureOpenAIEmulator, api_key: str):
    emulator.settings.slow_seconds = 1.0
    provider = provider_for(emulator.endpoint, timeout_seconds=0.3, posts_per_request=1, retry={"max_attempts": 2, "max_seconds": 30})
    results = provider.score([post(slow(POSITIVE), 1), post(NEGATIVE, 2)])
    assert results[0].status == "failed"
    assert "timeout x2" in results[0].error
    assert results[1].status == "ok" and results[1].response.label == "negative"


def test_empty_input_sends_nothing(provider: AzureOpenAIProvider, emulator: AzureOpenAIEmulator):
    assert provider.score([]) == []
    assert emulator.stats["requests"] == 0


def test_usage_counts_tokens_and_requests_as_the_server_reports_them(emulator: AzureOpenAIEmulator, api_key: str):
    provider = provider_for(emulator.endpoint, posts_per_request=10)
    provider.score([post(POSITIVE, i) for i in range(25)])
    stats = emulator.stats
    assert provider.usage.requests == stats["requests"] == 3
    assert provider.usage.prompt_tokens == stats["prompt_tokens"] > 0
    assert provider.usage.completion_tokens == stats["completion_tokens"] > 0
    assert provider.usage.throttled == provider.usage.retries == 0


# ------------------------------------------------------------------------------------------
# Secrets
# ------------------------------------------------------------------------------------------


def test_key_never_in_errors_or_repr(emulator: AzureOpenAIEmulator, api_key: str):
    texts = [fault(name) for name in ("http_500", "http_503", "invalid_json", "content_filter", "finish_content_filter")]
    provider = provider_for(emulator.endpoint, posts_per_request=1, retry={"max_attempts": 1, "max_seconds": 30})
    results = provider.score([post(t, i) for i, t in enumerate(texts)])

    assert [r.status for r in results] == ["failed", "failed", "failed", "filtered", "filtered"]
    assert all(r.error and API_KEY not in r.error for r in results)
    assert API_KEY not in repr(provider) and API_KEY not in str(provider)
    assert DEPLOYMENT in repr(provider) and emulator.endpoint in repr(provider)


def test_missing_endpoint_error_names_the_variable_not_the_key(api_key: str):
    with pytest.raises(AzureOpenAIConfigError) as raised:
        AzureOpenAISettings().build_provider(inference(), Sentiment)
    assert "AZURE_OPENAI_ENDPOINT" in str(raised.value)
    assert API_KEY not in str(raised.value) and API_KEY not in repr(raised.value)


@pytest.mark.parametrize("key_value", [None, ""])
def test_missing_key_error_names_the_variable(
    emulator: AzureOpenAIEmulator, monkeypatch: pytest.MonkeyPatch, key_value: str | None
):
    # The key sits in the default variable, but the resource is told to read another one.
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", API_KEY)
    if key_value is None:
        monkeypatch.delenv("TEAM_OPENAI_KEY", raising=False)
    else:
        monkeypatch.setenv("TEAM_OPENAI_KEY", key_value)
    resource = AzureOpenAISettings(endpoint=emulator.endpoint, api_key_env_var="TEAM_OPENAI_KEY")

    with pytest.raises(CredentialsError, match=r"TEAM_OPENAI_KEY") as raised:
        resource.build_provider(inference(), Sentiment)
    assert "OPENAI_SECRET_NAME" in str(raised.value)
    assert API_KEY not in str(raised.value)


def test_endpoint_comes_from_the_environment(emulator: AzureOpenAIEmulator, api_key: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", emulator.endpoint)
    provider = AzureOpenAISettings().build_provider(inference(), Sentiment)
    (result,) = provider.score([post(POSITIVE)])
    assert result.status == "ok" and result.response.label == "positive"


# ------------------------------------------------------------------------------------------
# End to end through Dagster
# ------------------------------------------------------------------------------------------

# Fields the sentiment job sends: its include_fields.
SENT_FIELDS = {"post_text", "hashtags", "language"}


@pytest.fixture
def azure_env(emulator: AzureOpenAIEmulator, api_key: str, monkeypatch: pytest.MonkeyPatch) -> AzureOpenAIEmulator:
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", emulator.endpoint)
    monkeypatch.setenv("AZURE_OPENAI_DEPLOYMENT", DEPLOYMENT)
    monkeypatch.setenv("SOCIAL_ENRICH_ENV", "production")
    return emulator


def touched_keys(catalog: Catalog, day: dt.date) -> set[int]:
    """Posts that live on the (UTC) day: their latest last_update_time in either gold table falls on it."""
    return posts_living_on(catalog, day)


def latest_texts(catalog: Catalog) -> dict[int, str | None]:
    """post_key -> post_text of its latest dim_post_details row."""
    rows = catalog.load_table(("gold", "dim_post_details")).scan().to_arrow().sort_by("last_update_time")
    return dict(zip(rows["post_key"].to_pylist(), rows["post_text"].to_pylist()))


# Small packs: about 45 requests a day, so a 20% fault share reliably hits some of them.
FAST_RETRIES = {"  posts_per_request: 20": "  posts_per_request: 5\n  retry: {max_attempts: 8, backoff_seconds: 0.05, max_backoff_seconds: 0.5}"}


def test_materialize_with_faults_ends_like_a_fault_free_run(
    azure_env: AzureOpenAIEmulator, seeded, catalog: Catalog, instance, tmp_path
):
    first_fault_key = max(touched_keys(catalog, DAY) | {0}) + 100_000
    faults = {
        first_fault_key: ("invalid_json", "failed", "not a JSON object"),
        first_fault_key + 1: ("content_filter", "filtered", "content_filter"),
        first_fault_key + 2: ("finish_content_filter", "filtered", "content_filter"),
    }
    append_posts(catalog, {key: fault(name) for key, (name, _, _) in faults.items()}, DAY)
    expected_keys = touched_keys(catalog, DAY)
    azure_env.settings.share_http_503 = 0.2  # every fifth request answered 503, at random
    azure_env.settings.seed = 7
    defs = edited_sentiment_defs(tmp_path, FAST_RETRIES)

    result = materialize_day(instance, DAY.isoformat(), defs=defs)

    rows = read_target(catalog)
    keys = rows["post_key"].to_pylist()
    assert len(keys) == len(set(keys)) == len(expected_keys)  # one row per touched post
    assert set(keys) == expected_keys
    assert set(rows["model"].to_pylist()) == {"gpt-4o-mini"}  # the job's model, whichever deployment served it
    by_key = {row["post_key"]: row for row in rows.to_pylist()}
    for key, (name, status, error) in faults.items():
        row = by_key.pop(key)
        assert row["status"] == status, name
        assert error in row["error"], name
        assert row["label"] is None, name
    # A post whose text is null, empty or blank is never sent; every other post is a normal one and scores ok.
    texts = latest_texts(catalog)
    no_text = [by_key.pop(key) for key in list(by_key) if not (texts[key] or "").strip()]
    for row in no_text:
        assert row["status"] == "failed" and row["error"] in ("post_text is null", "post_text is empty")
    normal = list(by_key.values())
    assert len(normal) > 150
    for row in normal:
        assert row["status"] == "ok", row
        assert row["error"] is None and row["label"] in {"positive", "negative", "neutral", "mixed"}

    metadata = materialization_metadata(result)
    assert metadata["posts_touched"] == len(expected_keys)
    assert metadata["posts_scored"] == len(normal)
    assert metadata["posts_failed"] == 1 + len(no_text) and metadata["posts_filtered"] == 2
    assert metadata["labels"] == dict(Counter(row["label"] for row in normal))
    stats = azure_env.stats
    assert metadata["llm/requests"] == stats["requests"] and metadata["llm/retries"] > 0
    assert stats["faults"].get("http_503", 0) > 0
    assert metadata["llm/prompt_tokens"] == stats["prompt_tokens"]
    assert metadata["llm/estimated_cost_usd"] > 0
    # What went over the wire: exactly the job's fields, never the index or excluded columns.
    sent = [fields for body in azure_env.requests_log for fields in sent_posts(body)]
    assert all(set(fields) == SENT_FIELDS | {"id"} for fields in sent)

    # The same partition again without faults and without the cache: the same table.
    faulty = comparable(rows)
    azure_env.settings.share_http_503 = 0.0
    response_cache_path().unlink()
    materialize_day(instance, DAY.isoformat(), defs=defs, run_config=drop_config())
    assert comparable(read_target(catalog)) == faulty


def test_a_wrong_key_fails_the_run_after_a_few_requests_and_writes_nothing(
    emulator: AzureOpenAIEmulator, seeded, catalog: Catalog, instance, monkeypatch: pytest.MonkeyPatch
):
    wrong_key = "sk-wrong-key-9d8c7b6a5f4e3d2c1b0a"
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", emulator.endpoint)
    monkeypatch.setenv("AZURE_OPENAI_DEPLOYMENT", DEPLOYMENT)
    monkeypatch.setenv("SOCIAL_ENRICH_ENV", "production")
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", wrong_key)
    assert len(touched_keys(catalog, DAY)) > 150  # some ten packs of 20

    result = materialize_day(instance, DAY.isoformat(), raise_on_error=False)

    assert not result.success
    (failure,) = result.get_step_failure_events()
    error = failure.step_failure_data.error.to_string()
    assert f"HTTP 401 from {emulator.endpoint} for deployment {DEPLOYMENT}: check the key in $AZURE_OPENAI_API_KEY" in error
    # The stop, plus what the other workers had in flight: not one request per pack.
    assert emulator.stats["by_status"] == {401: emulator.stats["requests"]}
    assert STOP_AFTER_REJECTIONS <= emulator.stats["requests"] <= STOP_AFTER_REJECTIONS + 3
    assert not catalog.table_exists(TARGET) or read_target(catalog).num_rows == 0

    records = instance.all_logs(result.run_id)
    assert records
    for record in records:
        assert wrong_key not in str(record)
