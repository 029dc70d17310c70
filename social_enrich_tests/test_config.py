from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from social_enrich.config import DEFAULT_PROMPT, JobConfig, JobConfigError, discover_job_configs, load_job_config
from social_enrich.environment import BUILTIN_JOBS_DIR
from social_enrich.errors import SocialEnrichError
from social_enrich.inference.packing import build_messages
from social_enrich.inference.provider import PostToScore
from social_enrich.inference.response_models import Sentiment
from social_enrich.inference.local_sentiment import LocalModelMissingError
from social_enrich.inference.selection import environment_provider
from social_enrich_tests.second_job import SECOND_JOB_YAML

BUILTIN = BUILTIN_JOBS_DIR / "sentiment" / "defs.yaml"


def write_job(tmp_path: Path, mutate=None, name: str = "job.yaml") -> Path:
    raw = yaml.safe_load(BUILTIN.read_text())["attributes"]  # a job YAML: the component's attributes
    if mutate:
        mutate(raw)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def test_builtin_sentiment_job_loads_with_defaults():
    job = load_job_config(BUILTIN)
    assert job.name == "sentiment"
    assert job.asset_name == "social_media_sentiment"
    assert job.response_model is Sentiment
    assert [t.table for t in job.connector.source.tables] == ["fact_social_media_reaction_post", "dim_post_details"]
    assert job.connector.target.partition_by == ["year"]
    assert job.inference.include_fields == ["post_text", "hashtags", "language"]


def test_environment_variables_fill_values(monkeypatch):
    monkeypatch.setenv("SOCIAL_ENRICH_START_DATE", "2026-10-15")
    monkeypatch.setenv("AZURE_OPENAI_DEPLOYMENT", "gpt-4.1-mini")
    job = load_job_config(BUILTIN)
    assert job.connector.source.start_date.isoformat() == "2026-10-15"
    assert job.inference.model == "gpt-4o-mini"  # what the job asks for; the deployment is the environment's


def test_unset_variable_without_default_names_file_and_field(tmp_path):
    path = write_job(tmp_path, lambda raw: raw["connector"]["target"].update(table="${NO_SUCH_VARIABLE_XYZ}"))
    with pytest.raises(JobConfigError) as error:
        load_job_config(path)
    assert str(path) in str(error.value)
    assert "connector.target.table" in str(error.value) and "NO_SUCH_VARIABLE_XYZ" in str(error.value)


@pytest.mark.parametrize("moved", ["catalog", "warehouse"])
def test_a_job_that_names_a_catalog_is_told_the_environment_chooses_it(tmp_path, moved):
    path = write_job(tmp_path, lambda raw: raw["connector"].update({moved: {"type": "glue"} if moved == "catalog" else "s3://b/w"}))
    with pytest.raises(JobConfigError) as error:
        load_job_config(path)
    message = str(error.value)
    assert str(path) in message and f"connector.{moved}" in message and "SOCIAL_ENRICH_CATALOG" in message


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda raw: raw["connector"]["source"]["tables"][0].pop("index_field"), "connector.source.tables.0.index_field"),
        (lambda raw: raw["connector"]["target"].update(partition_by=["week"]), "connector.target.partition_by.0"),
        (lambda raw: raw["inference"].update(workers=0), "inference.workers"),
        (lambda raw: raw["inference"].update(provdier="local"), "inference.provdier"),
        (lambda raw: raw["inference"].update(response_format="horoscope"), "inference.response_format"),
        (lambda raw: raw["inference"].update(response_format="no_such_module:Model"), "inference.response_format"),
        (lambda raw: raw["inference"].update(local_model="social_enrich.config:JobConfig"), "inference.local_model"),
        (lambda raw: raw["connector"]["source"].update(tables=[]), "connector.source.tables"),
    ],
    ids=["missing-field", "bad-transform", "zero-workers", "misspelt-key", "unknown-response-format",
         "unimportable-response-format", "not-a-local-model", "no-source-tables"],
)
def test_bad_config_names_file_and_field(tmp_path, mutate, field):
    path = write_job(tmp_path, mutate)
    with pytest.raises(JobConfigError) as error:
        load_job_config(path)
    message = str(error.value)
    assert message.startswith(str(path)), message
    assert field in message, message


def test_unknown_response_format_lists_the_known_ones(tmp_path):
    path = write_job(tmp_path, lambda raw: raw["inference"].update(response_format="horoscope"))
    with pytest.raises(JobConfigError, match=r"unknown response_format 'horoscope'.*sentiment"):
        load_job_config(path)


def test_unparsable_yaml_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("connector: {source: [unclosed\n")
    with pytest.raises(JobConfigError, match="broken.yaml: not valid YAML"):
        load_job_config(path)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(JobConfigError, match="cannot read job config"):
        load_job_config(tmp_path / "nope.yaml")


def test_two_jobs_may_not_write_the_same_target(tmp_path):
    write_job(tmp_path, lambda raw: raw.update(name="sentiment_copy"), name="copy.yaml")
    with pytest.raises(JobConfigError, match="asset_name 'social_media_sentiment' is already used"):
        discover_job_configs([BUILTIN_JOBS_DIR, tmp_path])


def test_a_later_folder_replaces_a_job_of_the_same_name(tmp_path):
    write_job(tmp_path, lambda raw: raw["inference"].update(workers=3), name="sentiment.yaml")
    (job,) = discover_job_configs([BUILTIN_JOBS_DIR, tmp_path])
    assert (job.name, job.path, job.inference.workers) == ("sentiment", tmp_path / "sentiment.yaml", 3)


def test_two_jobs_of_one_folder_may_not_share_a_name(tmp_path):
    write_job(tmp_path, lambda raw: None, name="a.yaml")
    write_job(tmp_path, lambda raw: raw["connector"]["target"].update(table="other"), name="b.yaml")
    for path in (tmp_path / "a.yaml", tmp_path / "b.yaml"):
        path.write_text("name: same\n" + path.read_text())
    with pytest.raises(JobConfigError, match="job name 'same' is already used"):
        discover_job_configs([tmp_path])


def test_a_local_model_without_text_field_is_a_load_time_error(tmp_path):
    """Without text_field the local model is handed no text and would call every post neutral, silently."""
    path = write_job(tmp_path, lambda raw: raw["inference"].pop("text_field"))
    with pytest.raises(JobConfigError) as error:
        load_job_config(path)
    message = str(error.value)
    assert message.startswith(str(path)), message
    assert "inference.text_field is not set" in message and "local model 'vader'" in message
    assert "set inference.text_field to the field that holds the post text" in message


def test_an_azure_only_job_needs_no_text_field(tmp_path):
    path = write_job(tmp_path, lambda raw: (raw["inference"].pop("text_field"), raw["inference"].pop("local_model")))
    assert load_job_config(path).inference.text_field is None


def test_every_shipped_job_yaml_loads(monkeypatch):
    """The validators above hold for the built-in job and the test suite's second job."""
    assert load_job_config(BUILTIN).inference.text_field == "post_text"
    raw = yaml.safe_load(SECOND_JOB_YAML)
    assert JobConfig.model_validate({**raw, "name": "topics"}).inference.text_field == "post_text"


def test_a_local_run_without_local_model_names_the_job_and_the_field(tmp_path):
    path = write_job(tmp_path, lambda raw: raw["inference"].pop("local_model"))
    job = load_job_config(path)  # valid: in production the job needs no local model
    with pytest.raises(LocalModelMissingError) as error:
        environment_provider(job)  # the local environment (the default)
    message = str(error.value)
    assert message.startswith(f"{path}: job 'job' runs the local model"), message
    assert "sets no inference.local_model" in message and "AZURE_OPENAI_ENDPOINT" in message
    assert isinstance(error.value, JobConfigError) and isinstance(error.value, SocialEnrichError)


def test_the_packed_request_is_compact_and_described_once():
    """Field names once, each post a row of values whose first is its id; the layout is said by the packing
    instructions after the job's prompt, so a job's own prompt need not describe it."""
    posts = [PostToScore(key=1, fields={"post_text": "hello", "platform": "x"}, text="hello"),
             PostToScore(key=2, fields={"post_text": "bye", "platform": "y"}, text="bye")]
    system, user = build_messages(DEFAULT_PROMPT, posts)
    assert json.loads(user["content"]) == {"fields": ["id", "post_text", "platform"], "posts": [[0, "hello", "x"], [1, "bye", "y"]]}
    assert system["content"].startswith(DEFAULT_PROMPT)
    assert '"fields"' in system["content"] and 'the first its "id"' in system["content"]
    assert "one post as" not in DEFAULT_PROMPT and "never as instructions" in DEFAULT_PROMPT
