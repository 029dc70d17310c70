"""A loopback emulator of Azure OpenAI's chat-completions API and Global Batch, for tests and benchmarks.

It speaks enough of the wire format that the unmodified ``openai`` SDK (``AzureOpenAI``,
``AsyncAzureOpenAI`` and ``OpenAI(base_url=.../openai/v1/)``) works against it, including
``chat.completions.parse`` with a pydantic ``response_format``, and it behaves like a real
deployment under load: per-deployment rate limits with 429s and retry-after, latency that grows
with the answer, and random faults.  The Files and Batches APIs (``client.files``, ``client.batches``)
work too, answering each batch line as the chat route would, in compressed time.

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
* ``outages``: outages on command per deployment (503s, a 429 storm, refused connections).
* ``own_endpoints``: a deployment served on its own port, which ``refuse`` closes and reopens.
* ``batch_quota``: Global Batch's enqueued-token quota per deployment.
* ``prompt_cache``: Azure prompt caching, simplified (``usage.prompt_tokens_details.cached_tokens``).
* ``randomness``: the emulator's seeded RNGs.  ``stats``: counters and snapshot.
* ``files``: the Files API: an in-memory file store and multipart uploads.
* ``batches``: the Batches API: input validation, the batch lifecycle, output and error files.
* ``server``: HTTP plumbing and :class:`AzureOpenAIEmulator` (a daemon thread; context manager).
* ``cli``: the command line.

A chat request goes: route and auth -> deployment -> outage (if one is on) -> answer built -> rate
limit (429 if over; a rejected request consumes no quota) -> one random-fault draw -> prompt cache
-> latency -> answer.

A pool of deployments.  Each deployment has its own rate-limit window; ``deployment_limits`` gives
one its own (rpm, tpm) instead of ``requests_per_minute`` / ``tokens_per_minute``.  The stats count
per deployment too (``by_deployment``).  ``emu.endpoint_of(name)`` serves a deployment on a port of
its own as well (``own_endpoints=True``: all of them, at start), sharing all state with ``endpoint``.
``emu.fail_deployment(name, mode)`` / ``emu.restore_deployment(name)``, or ``POST
/control/deployments/<name>`` with ``{"mode": ...}`` (no api-key; main endpoint only; ``GET
/control/deployments`` lists every state), put one down and back:

* ``http_503``: every chat request answers 503 ServiceUnavailable, consuming no quota;
* ``throttle``: every chat request answers 429 with retry-after-ms 1000, whatever its quota;
* ``refuse``: its own endpoint stops listening (a connect fails with ECONNREFUSED) and reopens on
  the same port when restored; on the main endpoint its requests are read and the connection is
  closed without a response (the client sees the server disconnect, not a refused connect).

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

Files and Global Batch.  Under ``/openai/...?api-version=...`` (``AzureOpenAI``) or ``/openai/v1/...``
(``OpenAI(base_url=.../openai/v1/)``), with the same auth as chat:

* ``POST files`` (multipart ``purpose``, ``file``), ``GET files``, ``GET files/{id}``,
  ``GET files/{id}/content`` (raw bytes), ``DELETE files/{id}``;
* ``POST batches`` (``input_file_id``, ``endpoint`` "/chat/completions", ``completion_window`` "24h",
  ``metadata``), ``GET batches`` (``limit``, ``after``), ``GET batches/{id}``, ``POST batches/{id}/cancel``.

Input lines are ``{"custom_id", "method": "POST", "url": "/chat/completions", "body": {"model":
<deployment>, ...}}``, one deployment per file, at most 100,000 lines and 200 MB.  Bad input fails
the batch (status ``failed``, ``errors.data`` with code, message, line, param): a line not JSON
(invalid_json_line) or missing custom_id/method/url/body (invalid_request), a duplicate custom_id,
another url (url_mismatch), an unknown deployment (model_not_found) or a second one (model_mismatch),
too many lines (too_many_tasks), no lines (empty_batch), too many bytes, a completion_window other
than "24h", an unknown input file.  Status follows from the time since creation, worked out on every
read (no thread): ``validating`` for 0.1 T, ``in_progress`` until T (``batch_completion_seconds``),
``finalizing`` until 1.1 T, then ``completed``.  The output file holds ``{"id": "batch_req_...",
"custom_id", "response": {"status_code": 200, "request_id", "body": <the chat completion>}, "error":
null}`` lines in shuffled order (join on custom_id); the error file, only when there are errors,
holds lines answered with an error (``response.status_code`` 4xx/5xx, ``body: {"error": ...}``;
markers work as on the chat route, and drop/timeout become 500s) and lines never answered
(``"response": null, "error": {"code": "batch_expired" | "batch_cancelled", "message"}``).
``request_counts.completed`` counts output lines, ``failed`` error lines.  Realtime rate limits,
outages and random faults do not apply to batch lines.

The enqueued-token quota: the tokens of a deployment's batches not yet final (validating,
in_progress, finalizing, cancelling) may not pass ``batch_enqueued_token_limit`` (or its entry in
``deployment_batch_limits``; None: unlimited, the default).  A batch that would pass it fails
validation with code ``token_limit_exceeded``.  A batch's tokens: ``rate_limit_tokens`` of each line's
body (prompt estimate plus max_tokens), summed.  ``emu.enqueued_tokens(name)`` and the stats'
``enqueued_tokens`` say what is enqueued now.

Batch failure modes, one outcome per batch, fixed at creation: the next scripted one
(``emu.script_batches("expired", "completed", "failed", "stuck", "error_lines")``), else drawn with
``seed`` from ``batch_share_failed`` (fails validation, code invalid_request) and
``batch_share_expired`` (turns ``expired`` at T, answering ``batch_expired_completed_share`` of its
lines, the rest batch_expired); ``batch_share_error_lines`` of the lines of unscripted batches are
answered with a 500.  ``stuck`` stays ``in_progress`` until cancelled; ``error_lines`` answers every
line at an odd (0-based) index with a 500.  Cancelling answers ``cancelling``, and the next read
``cancelled``, with ``batch_expired_completed_share`` of the lines answered (none if it was still
validating) and the rest batch_cancelled.

Run standalone (every setting has a flag; ``--help`` lists them)::

    python -m social_enrich.devtools.azure_openai_emulator --port 0 --api-key KEY --deployment NAME --rpm 600
"""

from .chat import build_chat_reply
from .cli import main
from .faults import FAULT_MARKER, pick_fault
from .latency import jitter_factor, reply_delay
from .outages import OUTAGE_MODES
from .prompt import prompt_tokens_estimate, rate_limit_tokens
from .replies import Reply, error_reply
from .schema_filler import fill_schema
from .server import AzureOpenAIEmulator
from .settings import DeploymentLimits, EmulatorSettings, SettingsError

__all__ = [
    "AzureOpenAIEmulator",
    "DeploymentLimits",
    "EmulatorSettings",
    "OUTAGE_MODES",
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
