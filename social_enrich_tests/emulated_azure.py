"""Talking to the Azure OpenAI emulator: the constants, posts and job settings the engine tests share."""

from __future__ import annotations

import datetime as dt
import json

import pyarrow as pa
from pyiceberg.catalog import Catalog

from social_enrich.config import InferenceConfig
from social_enrich.devtools.azure_openai_emulator import FAULT_MARKER
from social_enrich.inference.azure_openai import AzureOpenAIProvider
from social_enrich.inference.azure_openai import AzureOpenAISettings
from social_enrich.inference.provider import PostToScore
from social_enrich.inference.response_models import Sentiment

API_KEY = "sk-emulated-3f9c1a7e5b2d4c6e8a0f"  # distinctive, so a leak is unmistakable
DEPLOYMENT = "sentiment-e2e-deployment"
PROMPT = "Classify the sentiment of the social-media post given as JSON."
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


def sent_posts(body: dict) -> list[dict]:
    """The posts (id + fields, as objects) one logged request carried in its one user message, compact:
    the field names once, then each post's values in that order."""
    users = [m for m in body["messages"] if m["role"] == "user"]
    assert len(users) == 1
    sent = json.loads(users[0]["content"])
    return [dict(zip(sent["fields"], row, strict=True)) for row in sent["posts"]]


def inference(**settings: object) -> InferenceConfig:
    """The engine's settings; tests keep retries few and fast unless they say otherwise."""
    base = {"response_format": "sentiment", "model": DEPLOYMENT, "prompt": PROMPT, "workers": 4,
            "retry": {"max_attempts": 3, "max_seconds": 30}}
    return InferenceConfig.model_validate({**base, **settings})


def provider_for(endpoint: str, timeout_seconds: float = 10, **settings: object) -> AzureOpenAIProvider:
    resource = AzureOpenAISettings(endpoint=endpoint, timeout_seconds=timeout_seconds)
    return resource.build_provider(inference(**settings), Sentiment)


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


def read_target(catalog: Catalog) -> pa.Table:
    return catalog.load_table(TARGET).scan().to_arrow()


def comparable(rows: pa.Table) -> list[dict]:
    """Target rows without the write time, in key order."""
    return rows.drop_columns(["written_at"]).sort_by("post_key").to_pylist()
