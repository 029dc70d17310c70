"""A second, small enrichment job defined outside the package: a response model and a local model."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class PostTopic(BaseModel):
    topic: Literal["food", "travel", "tech", "other"] = Field(description="What the post is mostly about.")
    mentions_someone: bool = Field(description="Whether the post @mentions an account.")
    keywords: list[str] = Field(description="Up to three words that decided the topic.")


class KeywordTopicModel:
    model_id = "keyword-topics-1"
    WORDS = {
        "food": ("pizza", "ramen", "tacos", "sushi", "burgers", "coffee", "bagels", "pho", "noodles", "croissants"),
        "travel": ("flight", "airport", "hotel", "trip", "train", "beach"),
        "tech": ("phone", "laptop", "app", "camera", "battery", "update", "headphones"),
    }

    def score(self, fields: dict[str, Any], text: str | None) -> PostTopic:
        words = (text or "").lower()
        for topic, vocabulary in self.WORDS.items():
            found = [w for w in vocabulary if w in words][:3]
            if found:
                return PostTopic(topic=topic, mentions_someone="@" in words, keywords=found)
        return PostTopic(topic="other", mentions_someone="@" in words, keywords=[])


SECOND_JOB_YAML = """
description: Topic of each post, a second job that needs no change to social_enrich.
connector:
  source:
    start_date: 2026-11-01
    tables:
      - {database: gold, table: dim_post_details, datetime_field: last_update_time, index_field: post_key}
  target: {database: enriched, table: post_topics, datetime_field: labelled_at, index_field: post_key, partition_by: [month]}
inference:
  local_model: social_enrich_tests.second_job:KeywordTopicModel
  response_format: social_enrich_tests.second_job:PostTopic
  prompt_version: topics-v1
  text_field: post_text
  include_fields: [post_text, hashtags, channel_name]
"""
