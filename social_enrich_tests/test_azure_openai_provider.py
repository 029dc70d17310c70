"""The Azure OpenAI provider and resource, against the loopback emulator over real HTTP.

Provider-level tests call ``AzureOpenAIResource.build_provider(...).score(...)`` directly; the end-to-end
tests materialize the ``social_media_sentiment`` asset through Dagster into the embedded pyiceberg
catalog that ``conftest.state_home`` puts under tmp_path.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
from collections import Counter
from collections.abc import Iterator

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pyiceberg.catalog import Catalog

from social_enrich.definitions import build_definitions
from social_enrich.devtools.azure_openai_emulator import FAULT_MARKER, AzureOpenAIEmulator, EmulatorSettings
from social_enrich.inference.azure_openai import AzureOpenAIConfigError, AzureOpenAIProvider, AzureOpenAIResource
from social_enrich.inference.provider import PostToScore
from social_enrich.inference.response_models import Sentiment

API_KEY = "sk-emulated-3f9c1a7e5b2d4c6e8a0f"  # distinctive, so a leak is unmistakable
DEPLOYMENT = "sentiment-e2e-deployment"
PROMPT = "Classify the sentiment of the social-media post given as JSON."
ASSET = "social_media_sentiment"
TARGET = ("enriched", "social_media_sentiment")
DAY = dt.date(2026, 11, 1)

POSITIVE = "I absolutely love this new phone, best purchase ever! Amazing camera 😍"
NEGATIVE = "This is terrible. I hate it, worst customer service I have ever had."


def post(text: str, key: int = 0, **extra: object) -> PostToScore:
    return PostToScore(key=key, fields={"post_text": text, **extra}, text=text)


def fault(name: str) -> str:
    return f"Just a regular post about the weekend. {FAULT_MARKER}{name}"


def slow(text: str) -> str:
    """``text`` with the emulator's marker for an answer held back by ``settings.slow_seconds``."""
    return f"{text} {FAULT_MARKER}slow"


def closed_port() -> int:
    """A loopback port nothing listens on: bound by the kernel, then released."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def user_message(body: dict) -> dict:
    """The post fields the provider sent, decoded from the one user message of a logged request."""
    users = [m for m in body["messages"] if m["role"] == "user"]
    assert len(users) == 1
    return json.loads(users[0]["content"])


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


def provider_for(endpoint: str, workers: int = 4, timeout_seconds: float = 10) -> AzureOpenAIProvider:
    resource = AzureOpenAIResource(endpoint=endpoint, max_retries=0, timeout_seconds=timeout_seconds)
    return resource.build_provider(deployment=DEPLOYMENT, response_model=Sentiment, prompt=PROMPT, workers=workers)


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
    assert emulator.stats["by_status"] == {200: 2}
    # The SDK asked for structured output with the Sentiment schema.
    formats = [body["response_format"] for body in emulator.requests_log]
    assert all(f["type"] == "json_schema" and f["json_schema"]["strict"] for f in formats)
    assert set(formats[0]["json_schema"]["schema"]["properties"]) == {"label", "score", "confidence"}


def test_only_the_post_fields_are_sent(provider: AzureOpenAIProvider, emulator: AzureOpenAIEmulator):
    fields = {"post_text": POSITIVE, "language": "en", "reaction_like": 12, "hashtags": "#tech"}
    provider.score([PostToScore(key=99, fields=fields, text=POSITIVE)])

    (body,) = emulator.requests_log
    assert body["model"] == DEPLOYMENT
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert body["messages"][0]["content"] == PROMPT
    assert user_message(body) == fields  # exactly these fields: not the key, nothing added


def test_invalid_json_answer_fails_the_post(provider: AzureOpenAIProvider):
    (result,) = provider.score([post(fault("invalid_json"))])
    assert result.status == "failed"
    assert result.response is None
    assert "invalid structured answer" in result.error


@pytest.mark.parametrize("name,status", [("http_500", 500), ("http_503", 503)])
def test_server_error_fails_the_post(provider: AzureOpenAIProvider, emulator: AzureOpenAIEmulator, name: str, status: int):
    (result,) = provider.score([post(fault(name))])
    assert result.status == "failed"
    assert f"HTTP {status}" in result.error
    assert emulator.stats["by_status"] == {status: 1}  # max_retries=0: exactly one attempt


def test_wrong_key_fails_with_401(emulator: AzureOpenAIEmulator, monkeypatch: pytest.MonkeyPatch):
    wrong = "sk-not-the-right-key-0123456789"
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", wrong)
    provider = provider_for(emulator.endpoint)

    results = provider.score([post(POSITIVE, 1), post(NEGATIVE, 2)])

    assert [r.status for r in results] == ["failed", "failed"]
    for result in results:
        assert "HTTP 401" in result.error
        assert wrong not in result.error and API_KEY not in result.error
    assert emulator.stats["by_status"] == {401: 2}


def test_prompt_content_filter_is_filtered(provider: AzureOpenAIProvider):
    (result,) = provider.score([post(fault("content_filter"))])
    assert result.status == "filtered"
    assert result.response is None
    assert "content_filter" in result.error and "prompt" in result.error


def test_answer_content_filter_is_filtered(provider: AzureOpenAIProvider):
    (result,) = provider.score([post(fault("finish_content_filter"))])
    assert result.status == "filtered"
    assert result.response is None
    assert "content_filter" in result.error and "answer" in result.error


def test_one_bad_post_fails_alone_and_order_is_kept(provider: AzureOpenAIProvider, emulator: AzureOpenAIEmulator):
    # The first post is held longest, so answers arrive out of input order.
    emulator.settings.slow_seconds = 0.4
    texts = [slow(POSITIVE), NEGATIVE, fault("http_500"), POSITIVE, fault("content_filter"), NEGATIVE]
    finished: list[int] = []

    results = provider.score([post(t, i) for i, t in enumerate(texts)], progress=finished.append)

    assert [r.status for r in results] == ["ok", "ok", "failed", "ok", "filtered", "ok"]
    labels = [r.response.label if r.response else None for r in results]
    assert labels == ["positive", "negative", None, "positive", None, "negative"]
    assert "HTTP 500" in results[2].error
    assert finished == [1] * len(texts)


def test_workers_bound_the_requests_in_flight(provider: AzureOpenAIProvider, emulator: AzureOpenAIEmulator):
    # Every answer takes a while, so requests overlap as much as the provider lets them.
    emulator.settings.latency_seconds = 0.15
    results = provider.score([post(POSITIVE if i % 2 else NEGATIVE, i) for i in range(16)])  # provider: workers=4

    assert all(r.status == "ok" for r in results)
    stats = emulator.stats
    assert stats["max_in_flight"] == 4  # never more than workers, and workers were actually used
    assert stats["in_flight"] == 0
    assert stats["requests"] == 16


def test_one_worker_sends_one_request_at_a_time(emulator: AzureOpenAIEmulator, api_key: str):
    emulator.settings.latency_seconds = 0.05
    results = provider_for(emulator.endpoint, workers=1).score([post(POSITIVE, i) for i in range(5)])
    assert [r.status for r in results] == ["ok"] * 5
    assert emulator.stats["max_in_flight"] == 1


def test_connection_refused_fails_every_post_without_raising(api_key: str):
    provider = provider_for(f"http://127.0.0.1:{closed_port()}")
    results = provider.score([post(POSITIVE, 1), post(NEGATIVE, 2)])
    assert [r.status for r in results] == ["failed", "failed"]
    for result in results:
        assert result.error.startswith("cannot reach Azure OpenAI: APIConnectionError")
        assert API_KEY not in result.error


def test_slow_answer_times_out_as_a_failed_post(emulator: AzureOpenAIEmulator, api_key: str):
    emulator.settings.slow_seconds = 1.0
    provider = provider_for(emulator.endpoint, timeout_seconds=0.3)
    results = provider.score([post(slow(POSITIVE), 1), post(NEGATIVE, 2)])
    assert results[0].status == "failed"
    assert "Timeout" in results[0].error
    assert results[1].status == "ok" and results[1].response.label == "negative"


def test_empty_input_sends_nothing(provider: AzureOpenAIProvider, emulator: AzureOpenAIEmulator):
    assert provider.score([]) == []
    assert emulator.stats["requests"] == 0


# ------------------------------------------------------------------------------------------
# Secrets
# ------------------------------------------------------------------------------------------


def test_key_never_in_errors_or_repr(provider: AzureOpenAIProvider, emulator: AzureOpenAIEmulator):
    texts = [fault(name) for name in ("http_500", "http_503", "invalid_json", "content_filter", "finish_content_filter")]
    results = provider.score([post(t, i) for i, t in enumerate(texts)])

    assert [r.status for r in results] == ["failed", "failed", "failed", "filtered", "filtered"]
    assert all(r.error and API_KEY not in r.error for r in results)
    assert API_KEY not in repr(provider) and API_KEY not in str(provider)
    assert DEPLOYMENT in repr(provider) and emulator.endpoint in repr(provider)


def test_missing_endpoint_error_names_the_variable_not_the_key(api_key: str):
    with pytest.raises(AzureOpenAIConfigError) as raised:
        AzureOpenAIResource().build_provider(deployment=DEPLOYMENT, response_model=Sentiment, prompt=PROMPT, workers=2)
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
    resource = AzureOpenAIResource(endpoint=emulator.endpoint, api_key_env_var="TEAM_OPENAI_KEY")

    with pytest.raises(AzureOpenAIConfigError, match=r"\$TEAM_OPENAI_KEY") as raised:
        resource.build_provider(deployment=DEPLOYMENT, response_model=Sentiment, prompt=PROMPT, workers=2)
    assert API_KEY not in str(raised.value)


def test_endpoint_comes_from_the_environment(emulator: AzureOpenAIEmulator, api_key: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", emulator.endpoint)
    provider = AzureOpenAIResource(max_retries=0).build_provider(
        deployment=DEPLOYMENT, response_model=Sentiment, prompt=PROMPT, workers=2
    )
    (result,) = provider.score([post(POSITIVE)])
    assert result.status == "ok" and result.response.label == "positive"


# ------------------------------------------------------------------------------------------
# End to end through Dagster
# ------------------------------------------------------------------------------------------

# Fields the sentiment job sends: every gold column except its exclude_fields.
SENT_FIELDS = {
    "reaction_like", "reaction_love", "reaction_haha", "reaction_wow", "reaction_sad", "reaction_angry",
    "comment_count", "share_count", "channel_name", "author_handle", "post_text", "hashtags", "language",
}


@pytest.fixture
def azure_env(emulator: AzureOpenAIEmulator, api_key: str, monkeypatch: pytest.MonkeyPatch) -> AzureOpenAIEmulator:
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", emulator.endpoint)
    monkeypatch.setenv("AZURE_OPENAI_DEPLOYMENT", DEPLOYMENT)
    return emulator


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


def materialize(instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    defs = build_definitions()  # after the env is set: job YAMLs read it at load time
    return defs.resolve_implicit_global_asset_job_def().execute_in_process(
        partition_key=DAY.isoformat(), asset_selection=[dg.AssetKey(ASSET)], instance=instance, raise_on_error=False
    )


def touched_keys(catalog: Catalog, day: dt.date) -> set[int]:
    """Posts with a row in either gold table whose last_update_time falls on the (UTC) day."""
    keys: set[int] = set()
    for name in ("fact_social_media_reaction_post", "dim_post_details"):
        rows = catalog.load_table(("gold", name)).scan(selected_fields=("post_key", "last_update_time")).to_arrow()
        on_day = pc.equal(pc.cast(rows["last_update_time"], pa.date32()), pa.scalar(day, pa.date32()))
        keys.update(rows.filter(on_day)["post_key"].to_pylist())
    return keys


FILLER = {"channel_name": "x", "author_handle": "@fault_tester", "language": "en"}


def append_posts(catalog: Catalog, texts: dict[int, str], day: dt.date) -> None:
    """Add posts with the given keys and texts to both gold tables, touched on ``day``."""
    when = dt.datetime.combine(day, dt.time(12, 0), dt.timezone.utc)
    for name in ("fact_social_media_reaction_post", "dim_post_details"):
        table = catalog.load_table(("gold", name))
        schema = table.schema().as_arrow()
        columns = {}
        for field in schema:
            if field.name == "post_key":
                values = list(texts)
            elif field.name == "post_text":
                values = list(texts.values())
            elif field.name in ("last_update_time", "created_time"):
                values = [when] * len(texts)
            else:  # e.g. channel_name, language; reactions and other details stay null
                values = [FILLER.get(field.name)] * len(texts)
            columns[field.name] = pa.array(values, field.type)
        table.append(pa.table(columns, schema=schema))


def latest_texts(catalog: Catalog) -> dict[int, str | None]:
    """post_key -> post_text of its latest dim_post_details row."""
    rows = catalog.load_table(("gold", "dim_post_details")).scan().to_arrow().sort_by("last_update_time")
    return dict(zip(rows["post_key"].to_pylist(), rows["post_text"].to_pylist()))


def read_target(catalog: Catalog) -> pa.Table:
    return catalog.load_table(TARGET).scan().to_arrow()


def metadata_values(result: dg.ExecuteInProcessResult) -> dict:
    (materialization,) = result.asset_materializations_for_node(ASSET)
    return {name: value.value for name, value in materialization.metadata.items()}


def test_materialize_one_partition_with_faults(azure_env: AzureOpenAIEmulator, seeded, catalog: Catalog, instance):
    first_fault_key = max(touched_keys(catalog, DAY) | {0}) + 100_000
    faults = {
        first_fault_key: ("http_500", "failed", "HTTP 500"),
        first_fault_key + 1: ("invalid_json", "failed", "invalid structured answer"),
        first_fault_key + 2: ("content_filter", "filtered", "content_filter"),
        first_fault_key + 3: ("finish_content_filter", "filtered", "content_filter"),
    }
    append_posts(catalog, {key: fault(name) for key, (name, _, _) in faults.items()}, DAY)
    expected_keys = touched_keys(catalog, DAY)
    assert set(faults) <= expected_keys

    result = materialize(instance)

    assert result.success
    rows = read_target(catalog)
    keys = rows["post_key"].to_pylist()
    assert len(keys) == len(set(keys)) == len(expected_keys)  # one row per touched post
    assert set(keys) == expected_keys
    assert set(rows["model"].to_pylist()) == {DEPLOYMENT}
    assert set(rows["partition_date"].to_pylist()) == {DAY}

    by_key = {row["post_key"]: row for row in rows.to_pylist()}
    for key, (name, status, error) in faults.items():
        row = by_key.pop(key)
        assert row["status"] == status, name
        assert error in row["error"], name
        assert row["label"] is None, name
    # A post whose text is null is never sent; every other post is a normal one and scores ok.
    texts = latest_texts(catalog)
    null_text = [by_key.pop(key) for key in list(by_key) if texts[key] is None]
    assert all(row["status"] == "failed" and row["error"] == "post_text is null" for row in null_text)
    normal = list(by_key.values())
    assert len(normal) > 150
    for row in normal:
        assert row["status"] == "ok", row
        assert row["error"] is None and row["label"] in {"positive", "negative", "neutral", "mixed"}
        assert -1 <= row["score"] <= 1 and 0 <= row["confidence"] <= 1

    metadata = metadata_values(result)
    assert metadata["model"] == DEPLOYMENT
    assert metadata["posts_touched"] == len(expected_keys)
    assert metadata["posts_scored"] == len(normal)
    assert metadata["posts_failed"] == 2 and metadata["posts_filtered"] == 2
    assert metadata["labels"] == dict(Counter(row["label"] for row in normal))
    assert metadata["dagster/partition_row_count"] == len(expected_keys)

    # What went over the wire: one request per post (max_retries=2 retries the HTTP 500 post),
    # each with exactly the job's fields and never the index or excluded columns.
    sent = [user_message(body) for body in azure_env.requests_log]
    assert all(set(fields) == SENT_FIELDS for fields in sent)
    assert Counter(f["post_text"] for f in sent)[fault("http_500")] == 3
    assert len(sent) == len(normal) + len(faults) + 2


def test_every_post_failing_fails_the_run_but_stores_the_rows(
    emulator: AzureOpenAIEmulator, seeded, catalog: Catalog, instance, monkeypatch: pytest.MonkeyPatch
):
    wrong_key = "sk-wrong-key-9d8c7b6a5f4e3d2c1b0a"
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", emulator.endpoint)
    monkeypatch.setenv("AZURE_OPENAI_DEPLOYMENT", DEPLOYMENT)
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", wrong_key)
    expected_keys = touched_keys(catalog, DAY)

    result = materialize(instance)

    assert not result.success
    (failure,) = result.get_step_failure_events()
    assert "max_failed_share" in failure.step_failure_data.error.message
    assert failure.step_failure_data.user_failure_data.metadata["posts_failed"].value == len(expected_keys)

    rows = read_target(catalog)
    assert set(rows["post_key"].to_pylist()) == expected_keys and rows.num_rows == len(expected_keys)
    assert set(rows["status"].to_pylist()) == {"failed"}
    assert all("HTTP 401" in error for error in rows["error"].to_pylist())
    assert set(rows["model"].to_pylist()) == {DEPLOYMENT}
    assert emulator.stats["by_status"] == {401: len(expected_keys)}  # 401 is never retried

    records = instance.all_logs(result.run_id)
    assert records and any("HTTP 401" in str(record) or "max_failed_share" in str(record) for record in records)
    for record in records:
        assert wrong_key not in str(record)
