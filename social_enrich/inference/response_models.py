"""Pydantic response models: what a model must answer for one post."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Sentiment(BaseModel):
    """The sentiment of one social-media post."""

    model_config = ConfigDict(extra="forbid")

    label: Literal["positive", "negative", "neutral", "mixed"] = Field(description="Overall sentiment of the post.")
    score: float = Field(ge=-1, le=1, description="-1 very negative ... 1 very positive.")
    confidence: float = Field(ge=0, le=1, description="How sure the label is, 0 to 1.")
