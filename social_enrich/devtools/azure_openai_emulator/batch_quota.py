"""Azure Global Batch's enqueued-token quota: how many tokens a deployment may have waiting in batches.

Azure counts the tokens of every batch of a deployment that is not final yet (validating,
in_progress, finalizing, cancelling) against that deployment's enqueued-token quota.  A batch that
would take the total past it fails validation with code ``token_limit_exceeded``; it is never
enqueued, so it counts nothing itself.  Once earlier batches end, the same file goes through.

A batch's tokens are what its lines would cost against a realtime token limit, summed:
:func:`~.prompt.rate_limit_tokens` of each body (the prompt estimate plus ``max_tokens``), so a
client can work out exactly what it is about to enqueue.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .prompt import rate_limit_tokens

# The statuses whose tokens count against the quota.
ENQUEUED_STATUSES = ("validating", "in_progress", "finalizing", "cancelling")


def batch_tokens(bodies: Iterable[dict[str, Any]]) -> int:
    """The tokens a batch of these request bodies enqueues."""
    return sum(rate_limit_tokens(body) for body in bodies)


def quota_error(deployment: str, tokens: int, enqueued: int, limit: int | None) -> str | None:
    """Azure's message when ``tokens`` more would pass ``limit`` with ``enqueued`` waiting; else None."""
    if limit is None or enqueued + tokens <= limit:
        return None
    return (
        f"The number of enqueued tokens has surpassed the configured limit of {limit:,} for the deployment "
        f"'{deployment}': this batch has {tokens:,} tokens and {enqueued:,} are already enqueued. "
        "Please either increase the limit or try again once the current jobs have finished."
    )
