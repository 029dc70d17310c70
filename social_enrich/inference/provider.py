"""What every inference provider takes and returns, so the asset never knows which one runs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pydantic import BaseModel

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


ProgressCallback = Callable[[int], None]  # called with the number of posts just finished


class Provider(Protocol):
    """Scores posts; one result per post, in order. A post's failure is a result, never an exception."""

    model_id: str

    def score(self, posts: Sequence[PostToScore], progress: ProgressCallback | None = None) -> list[ScoreResult]: ...
