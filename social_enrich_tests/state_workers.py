"""What the state-store tests run in a second (or third) process: ``python -m social_enrich_tests.state_workers <what> <json>``.

The state store comes from the environment ($SOCIAL_ENRICH_STATE_URL, $SOCIAL_ENRICH_HOME), like a run's.
Each worker prints one JSON line with what it did; ``crash_after`` ends the process with ``os._exit``
(no cleanup, no finally: a killed process) right after the named step.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from social_enrich.environment import default_state_store
from social_enrich.inference.provider import ScoreResult
from social_enrich.inference.response_models import Sentiment

CRASH_CODE = 17


def put_answers(params: dict[str, Any]) -> dict[str, Any]:
    """Write answers for keys ``first``..``last`` in chunks of ``chunk``, starting at ``start_at`` (epoch s)."""
    keys = [f"key-{n}" for n in range(params["first"], params["last"])]
    with default_state_store().response_cache() as cache:
        _wait_until(params["start_at"])
        for n in range(0, len(keys), params["chunk"]):
            cache.put_many((k, ScoreResult("ok", Sentiment(label="positive", score=0.5, confidence=0.9))) for k in keys[n : n + params["chunk"]])
    return {"written": len(keys)}


def claim_posts(params: dict[str, Any]) -> dict[str, Any]:
    """Claim ``per_claim`` unsent posts at a time until none is left (at most ``max_claims`` claims)."""
    claimed: list[Any] = []
    with default_state_store().batch_store() as store:
        _wait_until(params["start_at"])
        for _ in range(params["max_claims"]):
            got = store.claim(params["job"], lambda waiting: [(None, {"req": waiting[: params["per_claim"]]})] if waiting else [])
            if not got:
                break
            claimed += [p.key for intent, _ in got for p in store.intent_requests(params["job"], intent.intent_id)["req"]]
    return {"claimed": claimed}


def send_unsent(params: dict[str, Any]) -> dict[str, Any]:
    """``batch_enrichment.send_unsent`` for the built-in sentiment job against the emulator at ``endpoint``."""
    import openai

    from social_enrich import batch_enrichment
    from social_enrich.config import load_job_config
    from social_enrich.environment import BUILTIN_JOBS_DIR
    from social_enrich.inference.azure_batch import AzureBatchClient
    from social_enrich.state.batch_store import BatchStore

    job = load_job_config(BUILTIN_JOBS_DIR / "sentiment" / "defs.yaml")
    if params.get("crash_after") == "claim":  # the intent is recorded, nothing uploaded yet
        AzureBatchClient.submit = lambda *a, **k: os._exit(CRASH_CODE)  # type: ignore[method-assign]
    if params.get("crash_after") == "create":  # the batch exists at Azure, the store does not know it yet
        BatchStore.record_batch = lambda *a, **k: os._exit(CRASH_CODE)  # type: ignore[method-assign]
    sdk = openai.AzureOpenAI(azure_endpoint=params["endpoint"], api_key=params["api_key"], api_version="2024-10-21", max_retries=0)
    try:
        with default_state_store().batch_store() as store:
            _wait_until(params["start_at"])
            batch_ids, requests = batch_enrichment.send_unsent(job, store, AzureBatchClient(sdk, job.inference.model), logging.getLogger("worker"))
    finally:
        sdk.close()
    return {"batches": batch_ids, "requests": requests}


def collect_run(params: dict[str, Any]) -> dict[str, Any]:
    """A collect run the batch poller requested (``run_config``, ``tags``, ``day``), in process against the
    Dagster instance of $DAGSTER_HOME, with the jobs of ``jobs_dir``. ``crash_after``: ``download`` ends the
    process once the finished batches are downloaded and read, before their answers are stored;
    ``settle`` once they are stored, before the day's write commits."""
    import dagster as dg

    from social_enrich import batch_enrichment
    from social_enrich.definitions import build_definitions
    from social_enrich.state.batch_store import BatchStore

    if params.get("crash_after") == "download":
        BatchStore.collect = lambda *a, **k: os._exit(CRASH_CODE)  # type: ignore[method-assign]
    if params.get("crash_after") == "settle":
        batch_enrichment.write_days = lambda *a, **k: os._exit(CRASH_CODE)  # type: ignore[assignment]
    defs = build_definitions([Path(params["jobs_dir"])])
    with dg.DagsterInstance.get() as instance:
        result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            partition_key=params["day"], run_config=params["run_config"], tags=params["tags"], instance=instance,
            asset_selection=[dg.AssetKey(params["asset"])],
        )
    return {"days": sorted(m.partition for m in result.asset_materializations_for_node(params["asset"]))}


def _wait_until(start_at: float | None) -> None:
    # Both workers start their work at the same moment (after their slow imports), so they really overlap.
    if start_at is not None:
        time.sleep(max(0.0, min(start_at - time.time(), 30.0)))


WORKERS = {"put_answers": put_answers, "claim_posts": claim_posts, "send_unsent": send_unsent, "collect_run": collect_run}

if __name__ == "__main__":
    print(json.dumps(WORKERS[sys.argv[1]](json.loads(sys.argv[2]))), flush=True)
