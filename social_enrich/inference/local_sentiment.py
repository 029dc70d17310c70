"""The local provider, and its built-in model: a lexicon model built for social-media text (VADER), no network needed."""

from __future__ import annotations

import string
from collections.abc import Sequence
from importlib.metadata import version
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from social_enrich.config import JobConfigError, LocalModelRef
from social_enrich.environment import ENVIRONMENT_VAR
from social_enrich.errors import SocialEnrichError
from social_enrich.plugins import resolve_local_model
from social_enrich.inference.provider import PostToScore, ResultCallback, ScoreResult
from social_enrich.inference.response_models import Sentiment
from social_enrich.inference.usage import Usage

# VADER's own thresholds for the compound score.
POSITIVE_AT = 0.05
NEGATIVE_AT = -0.05
# Both polarities this strong in one post make it mixed ("love the camera, battery is awful").
MIXED_AT = 0.15
# Code points that only join or restyle emoji (ZWJ, text and emoji presentation). VADER maps emoji one code
# point at a time, so left in they stick to a description's last word: "❤️" would read "red heart\ufe0f".
_EMOJI_GLUE = str.maketrans("", "", "\u200d\ufe0e\ufe0f")


class VaderSentimentModel:
    """VADER (Hutto & Gilbert, 2014): handles emoji, caps, "!!!", slang and negation.

    VADER's own confidence is the strength of the label (|compound|, or the neutral share for a
    neutral post). Alone, it calls text VADER cannot read (Arabic, Chinese, zero-width characters,
    emoji missing from its map) neutral with confidence 1.0, so a confidence filter would keep
    exactly the posts it did not understand. The confidence is therefore scaled by ``readable_share``:
    the share of the text VADER could read, counted in characters so that scripts written without
    spaces (Chinese, Japanese) weigh as much as their length. The labels are VADER's, unchanged, but
    for emoji joiners and presentation selectors, removed first so that VADER reads "❤️" as "red heart".
    """

    model_id = f"vader-{version('vaderSentiment')}"

    def __init__(self) -> None:
        self._analyzer = SentimentIntensityAnalyzer()

    def score(self, fields: dict[str, Any], text: str | None) -> Sentiment:
        text = (text or "").translate(_EMOJI_GLUE)
        polarity = self._analyzer.polarity_scores(text)
        compound, pos, neg = polarity["compound"], polarity["pos"], polarity["neg"]
        if pos >= MIXED_AT and neg >= MIXED_AT:
            label, strength = "mixed", min(pos, neg) / max(pos, neg)
        elif compound >= POSITIVE_AT:
            label, strength = "positive", abs(compound)
        elif compound <= NEGATIVE_AT:
            label, strength = "negative", abs(compound)
        else:
            label, strength = "neutral", polarity["neu"]
        return Sentiment(label=label, score=compound, confidence=round(strength * self.readable_share(text), 4))

    def readable_share(self, text: str) -> float:
        """The share of the text's characters, in words split on whitespace as VADER splits them, that
        lie in words VADER can read: words of its lexicon (emoticons included), ASCII words (English
        it either scores or rightly treats as neutral, numbers, handles) and emoji of its emoji map.

        A word with any other character (another script, a zero-width space, an unknown emoji) is
        unread as a whole, as VADER cannot look it up. Punctuation around a word does not count, nor
        a word of punctuation alone unless it is an emoticon VADER knows. No readable character: 0.
        Latin-script foreign languages are mostly ASCII and count as read: the measure finds text
        VADER cannot read at all, not the language it is in.
        """
        lexicon = self._analyzer.lexicon
        read = total = 0
        for token in text.translate(_EMOJI_GLUE).split():
            word = token.strip(string.punctuation)  # as VADER strips it before the lexicon lookup
            if not word:
                if token in lexicon:  # an emoticon: ":)"
                    read, total = read + len(token), total + len(token)
                continue
            total += len(word)
            if token.lower() in lexicon or word.lower() in lexicon or self._known_characters(word):
                read += len(word)
        return read / total if total else 0.0

    def _known_characters(self, word: str) -> bool:
        emojis = self._analyzer.emojis  # VADER replaces each of these code points with its description
        if not all(c.isascii() or c in emojis for c in word):
            return False
        return any(c.isascii() and c.isalnum() or c in emojis for c in word)


class LocalModelMissingError(JobConfigError, SocialEnrichError):
    """The environment runs the local model, and the job names none: a job problem, not an Azure one."""


class LocalProviderConfig(BaseModel):
    """The local provider's own settings: by default each job's ``inference.local_model``."""

    model_config = ConfigDict(extra="forbid")
    model: LocalModelRef | None = Field(default=None, description="Run this local model instead of each job's own.")


class LocalProvider:
    """Runs a local model on a list of posts; a post the model cannot handle fails alone.

    A model with ``score_batch(posts)`` (a list of PostToScore in, one answer per post out) scores the
    list at once, so it can vectorise; otherwise ``score(fields, text)`` is called post by post."""

    caches_responses = False  # scoring again is cheaper than a cache lookup
    Config = LocalProviderConfig

    @classmethod
    def from_config(cls, config: LocalProviderConfig, job: Any) -> LocalProvider:
        ref = config.model or job.inference.local_model
        if ref is None:
            raise LocalModelMissingError(
                f"{job.path or 'job ' + repr(job.name)}: job '{job.name}' runs the local model (the environment is local: "
                f"${ENVIRONMENT_VAR} is unset or local) but sets no inference.local_model: set inference.local_model "
                f"(e.g. vader), or run it where {ENVIRONMENT_VAR}=production (Azure OpenAI at $AZURE_OPENAI_ENDPOINT)"
            )
        model_class = resolve_local_model(ref.name)
        try:
            model = model_class(**ref.args)
        except TypeError as e:
            raise LocalModelMissingError(
                f"{job.path or 'job ' + repr(job.name)}: inference.local_model '{ref.name}' cannot be built with args "
                f"{sorted(ref.args)}: {e}"
            ) from e
        return cls(model, job.response_model)

    def __init__(self, model: Any, response_model: type[BaseModel]) -> None:
        self._model = model
        self._response_model = response_model
        self.model_id = getattr(model, "model_id", type(model).__name__)
        self.cache_identity = self.model_id
        self.usage = Usage()

    def score(self, posts: Sequence[PostToScore], on_result: ResultCallback | None = None) -> list[ScoreResult]:
        answers: Sequence[Any] | None = None
        if posts and callable(getattr(self._model, "score_batch", None)):
            answers = self._model.score_batch(list(posts))
            if len(answers) != len(posts):
                raise ValueError(f"local model {self.model_id}: score_batch gave {len(answers)} answers for {len(posts)} posts")
        results = []
        for i, post in enumerate(posts):
            try:
                answer = answers[i] if answers is not None else self._model.score(post.fields, post.text)
                if isinstance(answer, Exception):
                    raise answer
                # Validate like an LLM answer: a local model must honour the same contract.
                response = self._response_model.model_validate(answer, from_attributes=True)
                result = ScoreResult("ok", response)
            except (ValidationError, ValueError, TypeError) as e:
                result = ScoreResult.failed(f"local model {self.model_id}: {type(e).__name__}: {e}")
            results.append(result)
            if on_result:
                on_result(i, result)
        return results
