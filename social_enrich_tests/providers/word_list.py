"""A provider and a local model that live outside the package, to prove both are open: named by
module:Class, configured with their own fields, used with no change to social_enrich."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from social_enrich.inference.provider import PostToScore, ResultCallback, ScoreResult
from social_enrich.inference.usage import Usage


def word_label(text: str | None, positive: set[str], negative: set[str]) -> dict:
    words = set((text or "").lower().split())
    ups, downs = len(words & positive), len(words & negative)
    label = "mixed" if ups and downs else "positive" if ups else "negative" if downs else "neutral"
    return {"label": label, "score": max(-1.0, min(1.0, (ups - downs) / 2)), "confidence": 0.5}


class WordListConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    positive: list[str] = Field(min_length=1)
    negative: list[str] = Field(min_length=1)
    version: str = "1"


class WordListProvider:
    """Labels by word lists, the whole list of posts in one call; its answers are cached like a paid model's."""

    Config = WordListConfig
    caches_responses = True
    calls: list[int] = []  # posts per score call, across instances: what the test reads

    @classmethod
    def from_config(cls, config: WordListConfig, job) -> WordListProvider:
        return cls(config, job.response_model)

    def __init__(self, config: WordListConfig, response_model: type[BaseModel]) -> None:
        self.positive, self.negative = {w.lower() for w in config.positive}, {w.lower() for w in config.negative}
        self.response_model = response_model
        self.model_id = f"word-list-{config.version}"
        self.cache_identity = self.model_id
        self.usage = Usage()

    def score(self, posts: Sequence[PostToScore], on_result: ResultCallback | None = None) -> list[ScoreResult]:
        WordListProvider.calls.append(len(posts))
        results = []
        for n, post in enumerate(posts):
            result = ScoreResult("ok", self.response_model.model_validate(word_label(post.text, self.positive, self.negative)))
            results.append(result)
            if on_result:
                on_result(n, result)
        return results


class BatchWordModel:
    """A local model built with arguments, scoring a list of posts at once (``score_batch``)."""

    batches: list[int] = []

    def __init__(self, positive: list[str], negative: list[str]) -> None:
        self.positive, self.negative = set(positive), set(negative)
        self.model_id = f"batch-words-{len(positive)}-{len(negative)}"

    def score_batch(self, posts: list[PostToScore]) -> list[dict]:
        BatchWordModel.batches.append(len(posts))
        return [word_label(p.text, self.positive, self.negative) for p in posts]
