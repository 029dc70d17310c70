"""The openai SDK pointed at the emulator: the texts, models and client the emulator tests share."""

from __future__ import annotations

from typing import Literal

import openai
from pydantic import BaseModel

from social_enrich.devtools.azure_openai_emulator import AzureOpenAIEmulator

DEPLOYMENT = "gpt-4o-mini"
API_VERSION = "2024-10-21"
POSITIVE = "I absolutely love this new phone, best purchase ever!"
NEGATIVE = "This is terrible. I hate it, worst service I have ever had."
NEUTRAL = "The train leaves at 5 from platform 2."


class Sentiment(BaseModel):
    label: Literal["positive", "negative", "neutral"]
    score: float


class PostSentiment(BaseModel):
    id: str
    sentiment: Sentiment


class BatchSentiment(BaseModel):
    """One answer per post, echoing each post's id: the shape of a multi-post request."""

    items: list[PostSentiment]


def sdk_client(emulator: AzureOpenAIEmulator, api_key: str, timeout: float = 10) -> openai.AzureOpenAI:
    # max_retries=0: tests must see the first failure, not wait out the SDK's back-off.
    return openai.AzureOpenAI(
        azure_endpoint=emulator.endpoint, api_key=api_key, api_version=API_VERSION, max_retries=0, timeout=timeout
    )
