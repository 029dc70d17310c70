"""Pydantic response models: what a model must answer for one post."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from social_enrich.response_summary import Summary


class Sentiment(BaseModel):
    """The sentiment of one social-media post."""

    model_config = ConfigDict(extra="forbid")
    # Metadata: labels (JSON), labels/<label>, label_share/<label>, mean/score, mean/confidence.
    summary: ClassVar[Summary] = Summary(counts={"label": "labels"}, means=("score", "confidence"))

    label: Literal["positive", "negative", "neutral", "mixed"] = Field(description="Overall sentiment of the post.")
    score: float = Field(ge=-1, le=1, description="-1 very negative ... 1 very positive.")
    confidence: float = Field(ge=0, le=1, description="How sure the label is, 0 to 1.")
