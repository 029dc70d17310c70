"""A loopback emulator of Azure OpenAI's chat-completions API, for tests and benchmarks.

It speaks enough of the wire format that the unmodified ``openai`` SDK (``AzureOpenAI``,
``AsyncAzureOpenAI`` and ``OpenAI(base_url=.../openai/v1/)``) works against it, including
``chat.completions.parse`` with a pydantic ``response_format``, and it behaves like a real
deployment under load: per-deployment rate limits with 429s and retry-after, latency that grows
with the answer, and random faults.

Answers are deterministic: sentiment-like fields come from VADER on the post's text, everything
else from a generic JSON-schema walker:

* an enum containing "positive" and "negative" gets VADER's label (compound >= 0.05 positive,
  <= -0.05 negative, else neutral); ``score`` gets the compound, ``confidence`` 0.5 + |compound|/2;
* other enums their first value, strings ``"emulated <name>"``, numbers 0 pulled into their bounds;
* the first top-level array-of-objects property gets one item per post when the last user message
  is JSON carrying a list of posts with ``id``s; each item echoes its post's ``id``.  A post's text
  is its ``text``/``content``/``body``/``message``/``post`` key, else any key ending in "text"
  (``post_text``), else its longest string; never its id.

Layout, one concept per module:

* ``settings``: :class:`EmulatorSettings`, every knob, validated on creation and assignment.
* ``prompt``: reading a request; the token estimates (:func:`prompt_tokens_estimate`,
  :func:`rate_limit_tokens`) a client can reproduce exactly.
* ``sentiment``, ``schema_filler``: VADER, and :func:`fill_schema`.
* ``chat``: :func:`build_chat_reply`, pure: request body (+ fault) -> :class:`Reply`.
* ``replies``: :class:`Reply` and Azure-shaped errors (:func:`error_reply`).
* ``faults``: fault names, markers, and :func:`pick_fault` for random faults by share.
* ``latency``: :func:`reply_delay`, pure: how long to hold a reply.
* ``rate_limits``: the sliding-window per-deployment limiter.
* ``prompt_cache``: Azure prompt caching, simplified (``usage.prompt_tokens_details.cached_tokens``).
* ``randomness``: the emulator's seeded RNGs.  ``stats``: counters and snapshot.
* ``server``: HTTP plumbing and :class:`AzureOpenAIEmulator` (a daemon thread; context manager).
* ``cli``: the command line.

A chat request goes: route and auth -> deployment -> answer built -> rate limit (429 if over; a
rejected request consumes no quota) -> one random-fault draw -> prompt cache -> latency -> answer.

Faults.  Put ``EMULATOR_FAULT:<name>`` anywhere in a user message (it applies to the whole request),
or set ``share_<name>`` to fault that share of admitted requests at random (seeded by ``seed``):

* ``http_500``, ``http_503``: Azure's 500 / 503 error bodies;
* ``malformed_json`` (marker alias ``invalid_json``): a 200 whose content is truncated JSON;
* ``content_filter``: Azure's HTTP 400 with code content_filter (prompt filtered);
* ``missing_post``: a 200 whose per-post array lacks one item (the marker: the last; random: any);
  a one-item array comes back empty;
* ``drop``: the connection is closed without an answer (the client sees a connection error);
* ``timeout``: held ``timeout_hold_seconds``, then closed without an answer (the client's timeout fires);
* marker only: ``finish_content_filter`` (a 200 with finish_reason content_filter and no content),
  ``slow`` (answers normally, ``slow_seconds`` late; combines with any of the others).

The first answer-changing marker wins; a marked request keeps its marker's fault whatever the draw.

Run standalone (every setting has a flag; ``--help`` lists them)::

    python -m social_enrich.devtools.azure_openai_emulator --port 0 --api-key KEY --deployment NAME --rpm 600
"""

from .chat import build_chat_reply
from .cli import main
from .faults import FAULT_MARKER, pick_fault
from .latency import jitter_factor, reply_delay
from .prompt import prompt_tokens_estimate, rate_limit_tokens
from .replies import Reply, error_reply
from .schema_filler import fill_schema
from .server import AzureOpenAIEmulator
from .settings import EmulatorSettings, SettingsError

__all__ = [
    "AzureOpenAIEmulator",
    "EmulatorSettings",
    "SettingsError",
    "Reply",
    "build_chat_reply",
    "error_reply",
    "fill_schema",
    "jitter_factor",
    "main",
    "pick_fault",
    "prompt_tokens_estimate",
    "rate_limit_tokens",
    "reply_delay",
    "FAULT_MARKER",
]
