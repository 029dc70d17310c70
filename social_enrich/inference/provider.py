"""What every inference provider takes and returns, so the asset never knows which one runs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pydantic import BaseModel

from social_enrich.inference.usage import Usage

Status = Literal["ok", "failed", "filtered"]


@dataclass(frozen=True)
class PostToScore:
    key: Any  # the index value, for messages only
    fields: dict[str, Any]  # exactly what is sent to the model
    text: str | None  # the configured text field, for local models


@dataclass(frozen=True)
class ScoreResult:
    status: Status
    response: BaseModel | None = None
    error: str | None = None

    @classmethod
    def failed(cls, error: str) -> ScoreResult:
        return cls("failed", None, error[:1000])


ResultCallback = Callable[[int, ScoreResult], None]  # (position in the posts, its result), as each settles


class Provider(Protocol):
    """Scores posts; one result per post, in order. A post's failure is a result, never an exception.

    A provider class is named by the environment (a built-in name or module:Class, see plugins.py) and
    built by ``from_config(config, job)`` from its own pydantic ``Config``.

    ``on_result`` hears of every result as soon as it is known, so the caller can checkpoint and
    report progress while the rest are still being scored. ``caches_responses`` says whether answers
    are worth keeping (they cost money) or cheaper to compute again (a local model).
    """

    model_id: str  # the model column of the rows it answers
    cache_identity: str  # the model and its version (never a deployment name): what the response cache keys on
    caches_responses: bool
    usage: Usage  # model calls made so far; zero for a local model

    def score(self, posts: Sequence[PostToScore], on_result: ResultCallback | None = None) -> list[ScoreResult]: ...
