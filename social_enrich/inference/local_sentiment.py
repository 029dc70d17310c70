"""The local provider: a lexicon model built for social-media text (VADER), no network needed."""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import version
from typing import Any

from pydantic import BaseModel, ValidationError
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from social_enrich.inference.provider import PostToScore, ResultCallback, ScoreResult
from social_enrich.inference.response_models import Sentiment
from social_enrich.inference.usage import Usage

# VADER's own thresholds for the compound score.
POSITIVE_AT = 0.05
NEGATIVE_AT = -0.05
# Both polarities this strong in one post make it mixed ("love the camera, battery is awful").
MIXED_AT = 0.15


class VaderSentimentModel:
    """VADER (Hutto & Gilbert, 2014): handles emoji, caps, "!!!", slang and negation."""

    model_id = f"vader-{version('vaderSentiment')}"

    def __init__(self) -> None:
        self._analyzer = SentimentIntensityAnalyzer()

    def score(self, fields: dict[str, Any], text: str | None) -> Sentiment:
        polarity = self._analyzer.polarity_scores(text or "")
        compound, pos, neg = polarity["compound"], polarity["pos"], polarity["neg"]
        if pos >= MIXED_AT and neg >= MIXED_AT:
            label, confidence = "mixed", min(pos, neg) / max(pos, neg)
        elif compound >= POSITIVE_AT:
            label, confidence = "positive", abs(compound)
        elif compound <= NEGATIVE_AT:
            label, confidence = "negative", abs(compound)
        else:
            label, confidence = "neutral", polarity["neu"]
        return Sentiment(label=label, score=compound, confidence=round(confidence, 4))


class LocalProvider:
    """Runs a local model post by post; a post the model cannot handle fails alone."""

    caches_responses = False  # scoring again is cheaper than a cache lookup

    def __init__(self, model: Any, response_model: type[BaseModel]) -> None:
        self._model = model
        self._response_model = response_model
        self.model_id = getattr(model, "model_id", type(model).__name__)
        self.usage = Usage()

    def score(self, posts: Sequence[PostToScore], on_result: ResultCallback | None = None) -> list[ScoreResult]:
        results = []
        for i, post in enumerate(posts):
            try:
                answer = self._model.score(post.fields, post.text)
                # Validate like an LLM answer: a local model must honour the same contract.
                response = self._response_model.model_validate(answer, from_attributes=True)
                result = ScoreResult("ok", response)
            except (ValidationError, ValueError, TypeError) as e:
                result = ScoreResult.failed(f"local model {self.model_id}: {type(e).__name__}: {e}")
            results.append(result)
            if on_result:
                on_result(i, result)
        return results
