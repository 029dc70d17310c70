"""How many output tokens a packed request reserves: what answers actually take, not the job's ceiling.

Azure charges a request against the deployment's TPM quota as its prompt plus ``max_tokens``, at
once, whatever the answer then uses. A reservation of the job's ``max_output_tokens_per_post`` for
every post, when answers take about half of it, wastes about a third of the quota. So the budget
follows a high quantile of the completion tokens per post of the answers seen so far, plus a margin,
with the job's setting as the ceiling. An answer cut off at ``max_tokens`` is split and asked again
(see ``azure_openai``); each cut-off also raises the budget, so a shift to longer answers is met.
"""

from __future__ import annotations

import math
from collections import deque

QUANTILE = 0.99
MARGIN = 0.10  # on top of the quantile
WARM_UP = 10  # answers seen before the quantile is trusted; until then, the ceiling
RECENT = 2000  # answers the quantile is taken over
RAISE_AFTER_CUT_OFF = 1.25


class OutputBudget:
    """``max_tokens`` for a pack of posts; fed with the completion tokens of every answer read."""

    def __init__(self, ceiling_per_post: int, overhead: int) -> None:
        self.ceiling_per_post, self.overhead = ceiling_per_post, overhead
        self._per_post: deque[float] = deque(maxlen=RECENT)
        self._raised = 1.0
        self._quantile: float | None = None  # recomputed every WARM_UP answers: sorting per request is waste

    def max_tokens(self, posts: int) -> int:
        # A lone post is a retry, or a post of a pack that was cut off: it gets the whole ceiling, so a
        # long answer is never cut off twice.
        per_post = self.ceiling_per_post if posts == 1 else self.per_post()
        return self.overhead + math.ceil(round(per_post * posts, 6))  # round: 17 x 1.1 x 20 is 374.00000000000006

    def per_post(self) -> float:
        if self._quantile is None:
            return self.ceiling_per_post
        return min(self.ceiling_per_post, self._quantile * (1 + MARGIN) * self._raised)

    def observe(self, completion_tokens: int, posts: int) -> None:
        """A complete answer for ``posts`` posts took ``completion_tokens``."""
        if posts < 2 or completion_tokens <= 0:
            return  # a lone retry says little about a pack
        self._per_post.append(max(0, completion_tokens - self.overhead) / posts)
        if len(self._per_post) >= WARM_UP and len(self._per_post) % WARM_UP == 0:
            ranked = sorted(self._per_post)
            self._quantile = ranked[min(len(ranked) - 1, math.ceil(QUANTILE * len(ranked)) - 1)]

    def on_cut_off(self) -> None:
        self._raised = min(self._raised * RAISE_AFTER_CUT_OFF, 100.0)
