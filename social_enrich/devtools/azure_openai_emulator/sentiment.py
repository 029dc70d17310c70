"""Sentiment of a post's text, from VADER with the local model's thresholds."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from social_enrich.inference.local_sentiment import NEGATIVE_AT, POSITIVE_AT


@lru_cache(maxsize=1)
def _analyzer() -> SentimentIntensityAnalyzer:
    # Built on first use: loading the lexicon takes ~100 ms and only answers need it.
    return SentimentIntensityAnalyzer()


@dataclass(frozen=True)
class Sentiment:
    compound: float

    @property
    def label(self) -> str:
        # The local model's thresholds (VADER's own); the emulator answers with three labels only.
        if self.compound >= POSITIVE_AT:
            return "positive"
        if self.compound <= NEGATIVE_AT:
            return "negative"
        return "neutral"

    @property
    def confidence(self) -> float:
        # Never below 0.5 so neutral texts don't look like failed classifications.
        return round(0.5 + abs(self.compound) / 2, 4)


def sentiment_of(text: str) -> Sentiment:
    return Sentiment(_analyzer().polarity_scores(text)["compound"])
