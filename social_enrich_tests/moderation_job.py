"""A moderation-like job defined outside the package: a list, an optional number and a nested model.

Its response model stores ``categories`` as list<string>, ``severity`` as an optional double and
``evidence`` as a struct, and declares its own summary (category counts, mean severity)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field

from social_enrich.response_summary import Summary

Category = Literal["insult", "spam", "complaint"]
WORDS: dict[str, tuple[str, ...]] = {
    "insult": ("hate", "awful", "terrible", "worst"),
    "spam": ("http", "www", "promo", "discount"),
    "complaint": ("broken", "late", "refund", "never"),
}


class Evidence(BaseModel):
    word: str = Field(description="The word that decided the first category.")
    position: int = Field(description="Where that word starts in the text.")


class Moderation(BaseModel):
    summary: ClassVar[Summary] = Summary(counts={"categories": "categories"}, means=("severity",))

    categories: list[Category] = Field(description="Every category the post falls in; empty when none.")
    severity: float | None = Field(description="0 to 1; null when the post falls in no category.")
    evidence: Evidence | None = Field(description="The word behind the first category; null when none.")
    flagged: bool = Field(description="Whether the post should be reviewed.")


def moderate(text: str | None) -> Moderation:
    words = (text or "").lower()
    found = [(category, word) for category, vocabulary in WORDS.items() for word in vocabulary if word in words]
    categories = list(dict.fromkeys(category for category, _ in found))
    if not categories:
        return Moderation(categories=[], severity=None, evidence=None, flagged=False)
    word = found[0][1]
    return Moderation(categories=categories, severity=round(min(1.0, 0.4 * len(found)), 2),
                      evidence=Evidence(word=word, position=words.index(word)), flagged="insult" in categories)


class WordModerationModel:
    model_id = "word-moderation-1"

    def score(self, fields: dict[str, Any], text: str | None) -> Moderation:
        return moderate(text)


MODERATION_JOB_YAML = """
description: Moderation categories of each post; a list, an optional number and a nested model as typed columns.
connector:
  source:
    start_date: 2026-11-01
    tables:
      - {database: gold, table: dim_post_details, datetime_field: last_update_time, index_field: post_key}
  target: {database: enriched, table: post_moderation, datetime_field: moderated_at, index_field: post_key}
inference:
  local_model: social_enrich_tests.moderation_job:WordModerationModel
  response_format: social_enrich_tests.moderation_job:Moderation
  prompt_version: moderation-v1
  text_field: post_text
  include_fields: [post_text]
"""
