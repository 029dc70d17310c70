"""The environment chooses the provider, from an open registry, and never falls back to another.

Real parts: the sample gold in a catalog on disk, a real Dagster instance, the Azure OpenAI emulator over loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pyarrow.compute as pc
import pytest

from social_enrich.config import JobConfigError, load_job_config
from social_enrich.definitions import build_definitions
from social_enrich.devtools.azure_openai_emulator import AzureOpenAIEmulator, EmulatorSettings
from social_enrich.environment import EnvironmentConfigError
from social_enrich.inference.selection import ProviderConfigError
from social_enrich.lakehouse.catalog import load_table
from social_enrich_tests.dagster_helpers import drop_config, edited_sentiment_defs, materialization_metadata, materialize_day, sentiment_job_text
from social_enrich_tests.emulated_azure import API_KEY
from social_enrich_tests.providers.word_list import BatchWordModel, WordListProvider, word_label

TARGET = "enriched.social_media_sentiment"
WORDS = {"positive": ["love", "great", "amazing"], "negative": ["hate", "awful", "terrible"]}


def production(monkeypatch: pytest.MonkeyPatch, provider: str | None = None, config: dict | None = None) -> None:
    monkeypatch.setenv("SOCIAL_ENRICH_ENV", "production")
    if provider:
        monkeypatch.setenv("SOCIAL_ENRICH_PROVIDER", provider)
    if config is not None:
        monkeypatch.setenv("SOCIAL_ENRICH_PROVIDER_CONFIG", json.dumps(config))


def test_a_provider_from_a_test_folder_runs_with_its_own_config(monkeypatch, catalog, seeded, instance):
    production(monkeypatch, "social_enrich_tests.providers.word_list:WordListProvider", {**WORDS, "version": "7"})
    WordListProvider.calls.clear()

    result = materialize_day(instance, seeded.days[0].isoformat())

    rows = load_table(catalog, TARGET).scan().to_arrow()
    assert set(rows["model"].to_pylist()) == {"word-list-7"}
    positive, negative = set(WORDS["positive"]), set(WORDS["negative"])
    ok = rows.filter(pc.equal(rows["status"], "ok")).to_pylist()
    assert ok and all(r["label"] == word_label(r_text, positive, negative)["label"]
                      for r, r_text in zip(ok, _texts(catalog, [r["post_key"] for r in ok])))
    assert max(WordListProvider.calls) > 1  # a list of posts per call, not one by one
    assert materialization_metadata(result)["model"] == "word-list-7"


def _texts(catalog, keys: list) -> list[str | None]:
    details = load_table(catalog, "gold.dim_post_details").scan(selected_fields=("post_key", "post_text", "last_update_time")).to_arrow()
    latest: dict = {}
    for row in sorted(details.to_pylist(), key=lambda r: r["last_update_time"]):
        latest[row["post_key"]] = row["post_text"]
    return [latest[k] for k in keys]


def test_a_local_model_is_built_with_its_args_and_scores_a_list_at_once(tmp_path, catalog, seeded, instance):
    model = "{name: social_enrich_tests.providers.word_list:BatchWordModel, args: {positive: [love, great], negative: [hate]}}"
    defs = edited_sentiment_defs(tmp_path, {"  local_model: vader": f"  local_model: {model} #"})
    BatchWordModel.batches.clear()

    materialize_day(instance, seeded.days[0].isoformat(), defs=defs)

    rows = load_table(catalog, TARGET).scan().to_arrow()
    assert set(rows["model"].to_pylist()) == {"batch-words-2-1"}
    assert BatchWordModel.batches and max(BatchWordModel.batches) > 1


def test_a_local_model_given_unknown_args_names_the_model_and_the_args(tmp_path, catalog, seeded, instance):
    model = "{name: social_enrich_tests.providers.word_list:BatchWordModel, args: {positive: [a], negative: [b], size: 3}}"
    defs = edited_sentiment_defs(tmp_path, {"  local_model: vader": f"  local_model: {model} #"})
    result = materialize_day(instance, seeded.days[0].isoformat(), defs=defs, raise_on_error=False)
    assert not result.success
    error = str(result.get_step_failure_events()[0].step_failure_data.error.message)
    assert "inference.local_model 'social_enrich_tests.providers.word_list:BatchWordModel'" in error and "size" in error


@pytest.mark.parametrize(("provider", "config", "named"), [
    ("no_such_provider", {}, "unknown provider 'no_such_provider'"),
    ("social_enrich_tests.providers.word_list:NoSuchClass", {}, "has no 'NoSuchClass'"),
    ("social_enrich_tests.providers.word_list:word_label", {}, "must be a class with a pydantic model Config"),
    ("social_enrich_tests.providers.word_list:WordListProvider", {"positive": ["a"]}, "negative: Field required"),
    ("azure_openai", {"timeout_seconds": -1}, "timeout_seconds: Input should be greater than 0"),
])
def test_a_provider_that_cannot_be_built_fails_the_load_naming_it(monkeypatch, provider, config, named):
    production(monkeypatch, provider, config)
    with pytest.raises(ProviderConfigError, match="provider") as error:
        build_definitions()
    assert named in str(error.value)


def test_production_without_an_endpoint_fails_the_run_and_writes_no_local_rows(monkeypatch, catalog, seeded, instance):
    """The old `provider: auto` wrote VADER rows into production when the endpoint went missing."""
    production(monkeypatch)
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", API_KEY)

    result = materialize_day(instance, seeded.days[0].isoformat(), raise_on_error=False)

    assert not result.success
    error = result.get_step_failure_events()[0].step_failure_data.error.message
    assert "needs an endpoint: set $AZURE_OPENAI_ENDPOINT" in error
    assert not catalog.table_exists(TARGET)


def test_an_unknown_environment_fails_the_load_naming_the_variable(monkeypatch):
    monkeypatch.setenv("SOCIAL_ENRICH_ENV", "prod")
    with pytest.raises(EnvironmentConfigError, match=r"\$SOCIAL_ENRICH_ENV is 'prod': use one of local, production"):
        build_definitions()


def test_a_provider_config_that_is_not_json_names_the_variable(monkeypatch):
    monkeypatch.setenv("SOCIAL_ENRICH_ENV", "production")
    monkeypatch.setenv("SOCIAL_ENRICH_PROVIDER_CONFIG", "{deployment: x}")
    with pytest.raises(EnvironmentConfigError, match=r"\$SOCIAL_ENRICH_PROVIDER_CONFIG is not JSON"):
        build_definitions()


def test_a_job_that_names_a_provider_is_told_the_environment_chooses_it(tmp_path):
    path = tmp_path / "sentiment.yaml"
    path.write_text(sentiment_job_text().replace("inference:\n", "inference:\n  provider: auto\n"))
    with pytest.raises(JobConfigError, match="inference.provider is no longer a job setting") as error:
        load_job_config(path)
    assert "SOCIAL_ENRICH_ENV" in str(error.value) and str(path) in str(error.value)


@pytest.fixture
def two_deployments() -> Iterator[AzureOpenAIEmulator]:
    with AzureOpenAIEmulator(EmulatorSettings(api_key=API_KEY, deployments=("mini-eastus", "mini-westeu"))) as emu:
        yield emu


def test_two_deployments_of_one_model_share_their_cached_answers(monkeypatch, two_deployments, catalog, seeded, instance):
    production(monkeypatch)
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", two_deployments.endpoint)
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", API_KEY)
    day = seeded.days[0].isoformat()
    monkeypatch.setenv("AZURE_OPENAI_DEPLOYMENT", "mini-eastus")
    first = materialization_metadata(materialize_day(instance, day))
    requests = two_deployments.stats["requests"]
    assert first["posts_scored"] > 0 and requests > 0

    monkeypatch.setenv("AZURE_OPENAI_DEPLOYMENT", "mini-westeu")  # another deployment of gpt-4o-mini
    again = materialization_metadata(materialize_day(instance, day, run_config=drop_config()))

    assert two_deployments.stats["requests"] == requests  # nothing paid twice
    assert again["posts_from_cache"] == first["posts_scored"] + first["posts_filtered"]
    assert again["model"] == first["model"] == "gpt-4o-mini"
