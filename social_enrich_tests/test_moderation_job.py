"""A moderation-like job: a list, an optional number and a nested model stored as real Iceberg
list, nullable double and struct columns, with the model's own summary in the metadata.

Real parts: the sample gold in a catalog on disk, a real Dagster instance, the Azure OpenAI emulator over loopback."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pyarrow.compute as pc
import pytest

from social_enrich.definitions import build_definitions
from social_enrich.devtools.azure_openai_emulator import AzureOpenAIEmulator, EmulatorSettings
from social_enrich.lakehouse.catalog import load_table
from social_enrich_tests.dagster_helpers import materialization_metadata, materialize_day
from social_enrich_tests.emulated_azure import API_KEY, DEPLOYMENT
from social_enrich_tests.moderation_job import MODERATION_JOB_YAML, Moderation, moderate

ASSET, TARGET = "post_moderation", "enriched.post_moderation"


def moderation_defs(tmp_path: Path, yaml_text: str = MODERATION_JOB_YAML) -> dg.Definitions:
    jobs = tmp_path / "moderation_jobs"
    jobs.mkdir(exist_ok=True)
    (jobs / "moderation.yaml").write_text(yaml_text)
    return build_definitions([jobs])


def column_types(catalog) -> dict[str, str]:
    return {f.name: f"{'' if f.required else 'optional '}{f.field_type}" for f in load_table(catalog, TARGET).schema().fields}


def assert_typed_columns(catalog) -> None:
    types = column_types(catalog)
    assert types["categories"].startswith("optional list<") and "string" in types["categories"]
    assert types["severity"] == "optional double"
    assert types["evidence"].startswith("optional struct<") and "word" in types["evidence"] and "position" in types["evidence"]
    assert types["flagged"] == "optional boolean"


def test_the_local_model_stores_lists_nullable_numbers_and_structs(tmp_path, catalog, seeded, instance):
    result = materialize_day(instance, seeded.days[0].isoformat(), asset=ASSET, defs=moderation_defs(tmp_path))

    assert_typed_columns(catalog)
    rows = load_table(catalog, TARGET).scan().to_arrow()
    ok = rows.filter(pc.equal(rows["status"], "ok")).to_pylist()
    texts = _texts(catalog)
    for row in ok:  # each stored value is the model's answer, typed
        expected = moderate(texts[row["post_key"]]).model_dump()
        assert {k: row[k] for k in expected} == expected
    assert any(r["categories"] for r in ok) and any(not r["categories"] for r in ok)
    assert any(r["severity"] is None for r in ok) and any(isinstance(r["severity"], float) for r in ok)
    assert any(isinstance(r["evidence"], dict) for r in ok)

    # The model's declared summary: category counts and shares, and the mean severity.
    meta = materialization_metadata(result, ASSET)
    counted = Counter(c for r in ok for c in r["categories"])
    assert meta["categories"] == dict(sorted(counted.items()))
    assert all(meta[f"categories/{c}"] == n for c, n in counted.items())
    severities = [r["severity"] for r in ok if r["severity"] is not None]
    assert meta["mean/severity"] == pytest.approx(sum(severities) / len(severities), abs=1e-6)
    assert "labels" not in meta


def test_a_job_replaces_the_models_summary(tmp_path, catalog, seeded, instance):
    yaml_text = MODERATION_JOB_YAML + "  summary: {counts: {flagged: flags}, means: []}\n"
    meta = materialization_metadata(
        materialize_day(instance, seeded.days[0].isoformat(), asset=ASSET, defs=moderation_defs(tmp_path, yaml_text)), ASSET)
    assert set(meta["flags"]) <= {"true", "false"} and sum(meta["flags"].values()) == meta["posts_scored"]
    assert "categories" not in meta and "mean/severity" not in meta


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[AzureOpenAIEmulator]:
    with AzureOpenAIEmulator(EmulatorSettings(api_key=API_KEY, deployments=(DEPLOYMENT,), seed=3)) as emu:
        for name, value in {"AZURE_OPENAI_ENDPOINT": emu.endpoint, "AZURE_OPENAI_API_KEY": API_KEY,
                            "AZURE_OPENAI_DEPLOYMENT": DEPLOYMENT, "SOCIAL_ENRICH_ENV": "production"}.items():
            monkeypatch.setenv(name, value)
        yield emu


def test_azure_openai_answers_are_stored_typed_too(emulator, tmp_path, catalog, seeded, instance):
    result = materialize_day(instance, seeded.days[0].isoformat(), asset=ASSET, defs=moderation_defs(tmp_path))

    assert emulator.stats["requests"] > 0
    assert_typed_columns(catalog)
    rows = load_table(catalog, TARGET).scan().to_arrow()
    ok = rows.filter(pc.equal(rows["status"], "ok")).to_pylist()
    assert ok and len(ok) == materialization_metadata(result, ASSET)["posts_scored"]
    for row in ok:  # what is stored reads back as a valid answer, with a list and a struct (or null)
        Moderation.model_validate({name: row[name] for name in Moderation.model_fields})
        assert isinstance(row["categories"], list)


def _texts(catalog) -> dict:
    details = load_table(catalog, "gold.dim_post_details").scan(selected_fields=("post_key", "post_text", "last_update_time")).to_arrow()
    latest: dict = {}
    for row in sorted(details.to_pylist(), key=lambda r: r["last_update_time"]):
        latest[row["post_key"]] = row["post_text"]
    return latest
