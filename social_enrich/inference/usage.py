"""What model calls cost: requests, retries, 429s and tokens, priced per 1M tokens."""

from __future__ import annotations

from dataclasses import dataclass, fields

from social_enrich.config import PriceConfig


@dataclass
class Usage:
    requests: int = 0  # attempts sent, retries and splits included
    retries: int = 0
    throttled: int = 0  # answered 429
    errors: int = 0  # attempts that failed in passing otherwise: a 5xx, a dropped connection, a timeout
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # part of prompt_tokens served from Azure's prompt cache
    answers_cut_off: int = 0  # answers that stopped at max_tokens (their posts were asked again)

    def __add__(self, other: Usage) -> Usage:
        return Usage(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def __sub__(self, other: Usage) -> Usage:
        return Usage(**{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)})

    def cost_usd(self, prices: PriceConfig) -> float:
        uncached = self.prompt_tokens - self.cached_tokens
        total = uncached * prices.input + self.cached_tokens * prices.cached_input + self.completion_tokens * prices.output
        return total / 1_000_000


def answered_shares(usage_by_deployment: dict[str, Usage]) -> dict[str, float]:
    """Each deployment's share (0..1) of the requests answered (not a 429, a 5xx, a drop or a timeout); all 0 before any."""
    answered = {name: max(0, u.requests - u.throttled - u.errors) for name, u in usage_by_deployment.items()}
    total = sum(answered.values())
    return {name: n / total if total else 0.0 for name, n in answered.items()}
