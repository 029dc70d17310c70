"""Run the real Definitions against a real Dagster instance."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg

from social_enrich.definitions import build_definitions
from social_enrich.environment import BUILTIN_JOBS_DIR


def materialize_day(
    instance: dg.DagsterInstance,
    day: str,
    asset: str = "social_media_sentiment",
    defs: dg.Definitions | None = None,
    run_config: dict[str, Any] | None = None,
    raise_on_error: bool = True,
) -> dg.ExecuteInProcessResult:
    defs = defs or build_definitions()
    return defs.resolve_implicit_global_asset_job_def().execute_in_process(
        partition_key=day,
        asset_selection=[dg.AssetKey(asset)],
        instance=instance,
        run_config=run_config or {},
        raise_on_error=raise_on_error,
    )


def materialization_metadata(result: dg.ExecuteInProcessResult, asset: str = "social_media_sentiment") -> dict[str, Any]:
    (event,) = result.asset_materializations_for_node(asset)
    return {key: value.value for key, value in event.metadata.items()}


def drop_config(asset: str = "social_media_sentiment") -> dict[str, Any]:
    return {"ops": {asset: {"config": {"drop": True}}}}


def sentiment_job_text() -> str:
    """The built-in sentiment job as a job YAML: the attributes of its defs.yaml, dedented."""
    lines = (BUILTIN_JOBS_DIR / "sentiment" / "defs.yaml").read_text().splitlines()
    body = lines[lines.index("attributes:") + 1:]
    return "".join(line.removeprefix("  ") + "\n" for line in body)


def edited_sentiment_yaml(folder: Path, replacements: dict[str, str]) -> Path:
    """A copy of the sentiment job YAML in ``folder`` (created), with some lines replaced."""
    text = sentiment_job_text()
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    folder.mkdir()
    path = folder / "sentiment.yaml"
    path.write_text(text)
    return path


def edited_sentiment_defs(tmp_path: Path, replacements: dict[str, str]) -> dg.Definitions:
    """Definitions built from a copy of the sentiment job YAML with some lines replaced."""
    return build_definitions([edited_sentiment_yaml(tmp_path / "jobs", replacements).parent])


def materialize_days(instance: dg.DagsterInstance, first: Any, last: Any, asset: str = "social_media_sentiment") -> dg.ExecuteInProcessResult:
    """One run of the days first..last, as a backfill run of a range is."""
    return build_definitions().resolve_implicit_global_asset_job_def().execute_in_process(
        tags={"dagster/asset_partition_range_start": str(first), "dagster/asset_partition_range_end": str(last)},
        asset_selection=[dg.AssetKey(asset)],
        instance=instance,
    )


def dagster_materialize_command(day: str, asset: str = "social_media_sentiment") -> list[str]:
    """`dagster asset materialize` of one day, with this interpreter's dagster."""
    return [str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m", "social_enrich.definitions",
            "--select", asset, "--partition", day]


def wait_until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    """Poll ``condition`` every 0.1 s; fail, saying what was awaited, after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"still waiting after {seconds}s: {what}"
        time.sleep(0.1)
