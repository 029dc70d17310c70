"""Azure's prompt caching, simply: a long enough prompt prefix seen before is partly "cached"."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Any

from .prompt import cacheable_prefix

# Azure caches prompts of at least 1024 tokens, in steps of 128 tokens.
MIN_CACHED_TOKENS = 1024
CACHE_STEP_TOKENS = 128


class PromptCache:
    """Remembers the prefixes (first message + schema, per deployment) of recent requests.

    Bounded, oldest forgotten first, like a real cache evicting; hashes only, so long prompts cost
    little memory.  Thread-safe.
    """

    def __init__(self, capacity: int = 4096):
        self._capacity = capacity
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()

    def cached_tokens(self, deployment: str, body: dict[str, Any]) -> int:
        """Tokens of ``body``'s prompt served from cache, and remember its prefix for next time."""
        prefix, tokens = cacheable_prefix(body)
        if tokens < MIN_CACHED_TOKENS:
            return 0
        key = hashlib.blake2b(f"{deployment}\x00{prefix}".encode(), digest_size=16).digest()
        with self._lock:
            hit = key in self._seen
            self._seen[key] = None
            self._seen.move_to_end(key)
            while len(self._seen) > self._capacity:
                self._seen.popitem(last=False)
        return tokens // CACHE_STEP_TOKENS * CACHE_STEP_TOKENS if hit else 0
