"""The Batches API (Azure OpenAI Global Batch): input validation, a lazy lifecycle, and output files.

Routes (``{prefix}`` is ``/openai`` with ``?api-version=...`` or ``/openai/v1``):

* ``POST {prefix}/batches``: ``{"input_file_id", "endpoint": "/chat/completions", "completion_window": "24h",
  "metadata"?}`` -> a batch object (``"/v1/chat/completions"`` is accepted as the endpoint too);
* ``GET {prefix}/batches`` (``limit`` 1-100, default 20; ``after``), newest first;
* ``GET {prefix}/batches/{id}``; ``POST {prefix}/batches/{id}/cancel``.

A request malformed as a whole (not a JSON object; no ``input_file_id``; an endpoint other than chat
completions; bad ``metadata``) gets HTTP 400 and no batch.  Anything else creates a batch; what is
wrong with its input fails it after validation (status ``failed``, ``errors.data`` naming the line).

There is no background thread: a batch's status follows from the time since its creation, worked
out on every read (retrieve, list, cancel, and the emulator's stats).  With ``T`` the
``batch_completion_seconds`` in force at creation, a batch is ``validating`` until ``0.1 T``, then
``failed`` (bad input) or ``in_progress`` until ``T``, ``finalizing`` until ``1.1 T``, then
``completed``; an expiring batch turns ``expired`` at ``T``.  The lines are answered when the batch
reaches its final status, each with :func:`~.chat.build_chat_reply` exactly as the chat route
answers the same body (realtime rate limits and random faults do not apply).

The outcome of each batch is fixed at creation: the next scripted one (:meth:`BatchStore.script`),
else drawn from the ``batch_share_*`` settings with the emulator's seed.  A batch with good input
that would take its deployment past its enqueued-token limit fails validation instead, with code
``token_limit_exceeded`` (see :mod:`.batch_quota`; checked at creation, seen when validation ends).

Cancelling a validating, in-progress or finalizing batch answers ``cancelling``; the next read finds
it ``cancelled``, with ``batch_expired_completed_share`` of its lines answered (none if it was still
validating) and the rest in the error file as ``batch_cancelled``.  A completed, failed or expired
batch cannot be cancelled (400); cancelling a cancelled one changes nothing.

Output files hold 200 lines, ``{"id": "batch_req_<hex>", "custom_id", "response": {"status_code": 200,
"request_id", "body": <chat completion>}, "error": null}``; error files hold lines answered with an
error (the same shape, ``status_code`` 4xx/5xx, ``body: {"error": {...}}``) and lines never answered
(``"response": null, "error": {"code": "batch_expired" | "batch_cancelled", "message"}``).  Each file
exists only when it has a line, and both are shuffled.  ``request_counts``: ``total`` lines (0 until
validated, and for a failed batch), ``completed`` output lines, ``failed`` error-file lines.

Finishing costs what the chat route would for every line (about 0.15 ms each, VADER mostly), paid
by the read that finishes the batch: some 15 s for 100,000 lines.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .batch_quota import ENQUEUED_STATUSES, batch_tokens, quota_error
from .chat import build_chat_reply
from .files import FileStore, bad_request, list_page, not_found
from .replies import Reply, error_reply
from .settings import EmulatorSettings
from .stats import BatchLineCounts, Stats

# What a batch can be scripted to do:
#   completed: every line answered (no random error lines);
#   failed: fails validation with code invalid_request;
#   expired: expires at T; batch_expired_completed_share of the lines answered, the rest batch_expired;
#   stuck: stays in_progress until cancelled;
#   error_lines: completes, every line at an odd 0-based index answered with a 500.
OUTCOMES = ("completed", "failed", "expired", "stuck", "error_lines")
FINAL_STATUSES = ("completed", "failed", "expired", "cancelled")

MAX_LINES = 100_000
MAX_BYTES = 200 * 1024 * 1024
CHAT_URLS = ("/chat/completions", "/v1/chat/completions")
COMPLETION_WINDOW = "24h"
_WINDOW_SECONDS = 24 * 3600
# Validation and finalizing each last this share of batch_completion_seconds.
_PHASE_SHARE = 0.1
# Enough to name every problem of a small file without echoing a whole broken 100,000-line one.
MAX_REPORTED_ERRORS = 100
_DEFAULT_LIST_LIMIT, _MAX_LIST_LIMIT = 20, 100
_MAX_METADATA_PAIRS = 16

_UNANSWERED = {
    "batch_expired": "This request could not be executed before the completion window expired.",
    "batch_cancelled": "This request was not executed because the batch was cancelled.",
}


def _error(code: str, message: str, line: int | None = None, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


# -- validation ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchRequest:
    custom_id: str
    body: dict[str, Any]


@dataclass
class ValidatedInput:
    requests: list[BatchRequest] = field(default_factory=list)
    deployment: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    # What the requests enqueue against the deployment's enqueued-token quota (see batch_quota).
    tokens: int = 0


class _LineError(ValueError):
    def __init__(self, code: str, message: str, param: str | None = None):
        super().__init__(message)
        self.code, self.param = code, param


def validate_input(data: bytes, deployments: tuple[str, ...]) -> ValidatedInput:
    """The requests of a batch input file, or the problems that fail the batch (lines numbered from 1).

    Blank lines are skipped.  Problems found: the file over 200 MB or 100,000 requests, or empty;
    per line, the first of: not JSON (invalid_json_line); not an object, a missing or mistyped
    custom_id/method/url/body, a method other than POST, or no body.model (invalid_request); a url
    other than chat completions (url_mismatch); a model that is no configured deployment
    (model_not_found) or another than the first line's (model_mismatch); a repeated custom_id
    (duplicate_custom_id).
    """
    if len(data) > MAX_BYTES:
        message = f"The input file has {len(data):,} bytes; a batch file may have at most {MAX_BYTES:,} (200 MB)."
        return ValidatedInput(errors=[_error("invalid_request", message, param="input_file_id")])
    lines = [(number, text) for number, text in enumerate(data.split(b"\n"), start=1) if text.strip()]
    if not lines:
        return ValidatedInput(errors=[_error("empty_batch", "The input file has no requests.", param="input_file_id")])
    if len(lines) > MAX_LINES:
        message = f"The input file has {len(lines):,} requests; a batch may have at most {MAX_LINES:,}."
        return ValidatedInput(errors=[_error("too_many_tasks", message, param="input_file_id")])
    result = ValidatedInput()
    seen: set[str] = set()
    for number, text in lines:
        try:
            request = _parse_line(text, deployments)
            model = request.body["model"]
            if result.deployment is not None and model != result.deployment:
                raise _LineError(
                    "model_mismatch",
                    f"The model {model!r} differs from {result.deployment!r} of the earlier lines; "
                    "a batch file may use one deployment only.",
                    "body.model",
                )
            if request.custom_id in seen:
                message = f"The custom_id {request.custom_id!r} is used by an earlier line."
                raise _LineError("duplicate_custom_id", message, "custom_id")
        except _LineError as exc:
            result.errors.append(_error(exc.code, f"Line {number}: {exc}", number, exc.param))
            continue
        seen.add(request.custom_id)
        result.deployment = model
        result.requests.append(request)
    del result.errors[MAX_REPORTED_ERRORS:]
    return result


def _parse_line(text: bytes, deployments: tuple[str, ...]) -> BatchRequest:
    try:
        line = json.loads(text)
    except ValueError as exc:  # UnicodeDecodeError included
        raise _LineError("invalid_json_line", f"The line is not valid JSON ({exc}).") from None
    if not isinstance(line, dict):
        raise _LineError("invalid_request", "The line must be a JSON object.")
    for key, kind in (("custom_id", str), ("method", str), ("url", str), ("body", dict)):
        if key not in line:
            raise _LineError("invalid_request", f"The line lacks the required field {key!r}.", key)
        if not isinstance(line[key], kind):
            raise _LineError("invalid_request", f"The field {key!r} must be a {kind.__name__}.", key)
    if line["method"].upper() != "POST":
        raise _LineError("invalid_request", f"The method must be POST, got {line['method']!r}.", "method")
    if line["url"] not in CHAT_URLS:
        raise _LineError("url_mismatch", f"The url must be {CHAT_URLS[0]}, got {line['url']!r}.", "url")
    model = line["body"].get("model")
    if not isinstance(model, str):
        raise _LineError("invalid_request", "The body lacks a model (the deployment name).", "body.model")
    if model not in deployments:
        raise _LineError("model_not_found", f"The deployment {model!r} does not exist.", "body.model")
    return BatchRequest(line["custom_id"], line["body"])


# -- one batch ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """What a batch will do, fixed at its creation."""

    outcome: str
    seed: int  # its own RNG: which lines fail, which an expired batch answers, the output order
    completion_seconds: float
    error_line_share: float
    partial_share: float


# Per status reached: the timestamps it sets, each with its offset in units of completion_seconds.
_PHASE_TIMES: dict[str, tuple[tuple[str, float], ...]] = {
    "validating": (),
    "in_progress": (("in_progress_at", _PHASE_SHARE),),
    "finalizing": (("in_progress_at", _PHASE_SHARE), ("finalizing_at", 1.0)),
    "completed": (("in_progress_at", _PHASE_SHARE), ("finalizing_at", 1.0), ("completed_at", 1 + _PHASE_SHARE)),
    "failed": (("failed_at", _PHASE_SHARE),),
    "expired": (("in_progress_at", _PHASE_SHARE), ("expired_at", 1.0)),
}
_TIME_FIELDS = (
    "in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at", "cancelled_at",
)  # fmt: skip


class Batch:
    """One batch: its input, its plan, and where its lifecycle has got to.  Thread-safe."""

    def __init__(
        self, params: dict[str, Any], validated: ValidatedInput, plan: _Plan, files: FileStore, stats: Stats
    ) -> None:
        self.id = f"batch_{uuid.uuid4().hex}"
        self._params = params
        self._validated = validated
        self._plan = plan
        self._files = files
        self._stats = stats
        self._lock = threading.Lock()
        self._created_wall = time.time()
        self._created_monotonic = time.monotonic()
        self._status = "validating"
        self._times: dict[str, int | None] = dict.fromkeys(_TIME_FIELDS)
        self._output_file_id: str | None = None
        self._error_file_id: str | None = None
        self._counts = {"total": 0, "completed": 0, "failed": 0}

    @property
    def status(self) -> str:
        with self._lock:
            return self._status

    @property
    def deployment(self) -> str | None:
        return self._validated.deployment

    def enqueued_tokens(self) -> int:
        """What this batch counts against its deployment's enqueued-token quota now (as last advanced).

        A batch that fails validation was never enqueued: it counts nothing, even while validating.
        """
        with self._lock:
            if self._validated.errors or self._status not in ENQUEUED_STATUSES:
                return 0
            return self._validated.tokens

    def advance(self) -> None:
        """Bring the status up to now (answering the lines when the batch ends)."""
        with self._lock:
            self._advance()

    def cancel(self) -> str | None:
        """Start cancelling; None, or why the batch cannot be cancelled.  Cancelled on the next read."""
        with self._lock:
            self._advance()
            if self._status in FINAL_STATUSES and self._status != "cancelled":
                return f"Cannot cancel a batch with status '{self._status}'."
            if self._status not in ("cancelling", "cancelled"):
                self._status = "cancelling"
                self._times["cancelling_at"] = int(time.time())
            return None

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            failed = self._status == "failed"
            created_at = int(self._created_wall)
            return {
                "id": self.id,
                "object": "batch",
                "endpoint": self._params["endpoint"],
                "errors": {"object": "list", "data": list(self._validated.errors)} if failed else None,
                "input_file_id": self._params["input_file_id"],
                "completion_window": self._params["completion_window"],
                "status": self._status,
                "output_file_id": self._output_file_id,
                "error_file_id": self._error_file_id,
                "created_at": created_at,
                "expires_at": created_at + _WINDOW_SECONDS,
                **self._times,
                "request_counts": dict(self._counts),
                "metadata": self._params.get("metadata"),
                "model": self._validated.deployment,
            }

    # -- under self._lock -------------------------------------------------------------------

    def _advance(self) -> None:
        if self._status in FINAL_STATUSES:
            return
        if self._status == "cancelling":
            self._times["cancelled_at"] = int(time.time())
            self._finish("cancelled")
            return
        status = self._scheduled(time.monotonic() - self._created_monotonic)
        span = self._plan.completion_seconds
        for name, offset in _PHASE_TIMES[status]:
            if self._times[name] is None:
                self._times[name] = int(self._created_wall + offset * span)
        if status != "validating" and status != "failed":
            self._counts["total"] = len(self._validated.requests)
        self._status = status
        if status in FINAL_STATUSES:
            self._finish(status)

    def _scheduled(self, elapsed: float) -> str:
        span = self._plan.completion_seconds
        if elapsed < _PHASE_SHARE * span:
            return "validating"
        if self._validated.errors:
            return "failed"
        if self._plan.outcome == "stuck" or elapsed < span:
            return "in_progress"
        if self._plan.outcome == "expired":
            return "expired"
        return "finalizing" if elapsed < (1 + _PHASE_SHARE) * span else "completed"

    def _finish(self, status: str) -> None:
        self._status = status
        requests = [] if self._validated.errors else self._validated.requests
        rng = random.Random(self._plan.seed)
        failing = self._failing_lines(rng, len(requests))
        if status == "completed":
            answered = set(range(len(requests)))
        elif self._times["in_progress_at"] is None:  # cancelled while validating: nothing ran
            answered = set()
        else:
            # A hair of slack: 0.29 * 100 is 28.999999999999996 in floats.
            share_count = int(self._plan.partial_share * len(requests) + 1e-9)
            answered = set(rng.sample(range(len(requests)), share_count))
        unanswered_code = "batch_expired" if status == "expired" else "batch_cancelled"
        outputs, errors = [], []
        counts = BatchLineCounts()
        for index, request in enumerate(requests):
            if index not in answered:
                errors.append(_unanswered_line(request.custom_id, unanswered_code))
                counts.unanswered += 1
                continue
            reply = _answer(request, self._validated.deployment or "", failing[index])
            counts.add(reply)
            (outputs if reply.status == 200 else errors).append(_response_line(request.custom_id, reply))
        rng.shuffle(outputs)  # Azure does not keep the input order: clients join on custom_id
        rng.shuffle(errors)
        self._output_file_id = self._write(outputs, "output")
        self._error_file_id = self._write(errors, "error")
        self._counts = {"total": len(requests), "completed": len(outputs), "failed": len(errors)}
        self._stats.record_batch_finished(status, counts)

    def _failing_lines(self, rng: random.Random, count: int) -> list[bool]:
        """Per line: answered with a 500 instead of its answer."""
        if self._plan.outcome == "error_lines":
            return [index % 2 == 1 for index in range(count)]
        share = self._plan.error_line_share
        return [rng.random() < share for _ in range(count)] if share > 0 else [False] * count

    def _write(self, lines: list[dict[str, Any]], kind: str) -> str | None:
        if not lines:
            return None
        data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
        return self._files.add(data, f"{self.id}_{kind}.jsonl", "batch_output").id


def _answer(request: BatchRequest, deployment: str, failing: bool) -> Reply:
    """The chat route's answer to one line; fault markers that would send no answer become a 500."""
    if failing:
        return error_reply(500)
    try:
        reply = build_chat_reply(
            request.body, deployment, completion_id=f"chatcmpl-{uuid.uuid4().hex[:24]}", created=int(time.time())
        )
    except Exception as exc:  # an emulator bug fails the line, as the chat route answers it with a 500
        return error_reply(500, "EmulatorError", f"{type(exc).__name__}: {exc}")
    return error_reply(500) if reply.no_answer is not None else reply


def _line_id() -> str:
    return f"batch_req_{uuid.uuid4().hex}"


def _response_line(custom_id: str, reply: Reply) -> dict[str, Any]:
    response = {"status_code": reply.status, "request_id": uuid.uuid4().hex, "body": reply.payload}
    return {"id": _line_id(), "custom_id": custom_id, "response": response, "error": None}


def _unanswered_line(custom_id: str, code: str) -> dict[str, Any]:
    error = {"code": code, "message": _UNANSWERED[code]}
    return {"id": _line_id(), "custom_id": custom_id, "response": None, "error": error}


# -- the store ---------------------------------------------------------------------------------

_UNSEEDED = object()


class BatchStore:
    """Every batch, the outcome script, and the seeded draws of outcomes.  Thread-safe."""

    def __init__(self, files: FileStore, stats: Stats) -> None:
        self._files = files
        self._stats = stats
        self._lock = threading.Lock()
        self._batches: dict[str, Batch] = {}
        self._script: deque[str] = deque()
        self._seed: object = _UNSEEDED
        self._rng = random.Random()

    def script(self, *outcomes: str) -> None:
        """Queue the outcomes of the next batches created, one each, before any random draw applies."""
        unknown = [outcome for outcome in outcomes if outcome not in OUTCOMES]
        if unknown:
            raise ValueError(f"unknown batch outcome(s) {unknown}; known: {', '.join(OUTCOMES)}")
        with self._lock:
            self._script.extend(outcomes)

    def create(self, params: dict[str, Any], settings: EmulatorSettings) -> Batch:
        validated = self._validate(params, settings)  # outside the lock: a big file takes a while
        self.advance_all()  # batches whose time is up end now, and stop counting as enqueued
        with self._lock:
            if self._seed != settings.seed:
                self._seed = settings.seed
                self._rng = random.Random(None if settings.seed is None else f"{settings.seed}/batches")
            scripted = self._script.popleft() if self._script else None
            draw, seed = self._rng.random(), self._rng.getrandbits(64)  # two draws per batch, scripted or not
            outcome = scripted or _drawn_outcome(settings, draw)
            if outcome == "failed" and not validated.errors:
                validated.errors.append(_error("invalid_request", "The batch failed validation (emulated failure)."))
            if not validated.errors and validated.deployment is not None:
                # Checked and enqueued under one lock, so two batches created at once can't both slip in.
                deployment = validated.deployment
                limit = settings.batch_limit_of(deployment)
                problem = quota_error(deployment, validated.tokens, self._enqueued(deployment), limit)
                if problem is not None:
                    validated.errors.append(_error("token_limit_exceeded", problem))
            error_line_share = settings.batch_share_error_lines if scripted is None else 0.0
            partial_share = settings.batch_expired_completed_share
            plan = _Plan(outcome, seed, settings.batch_completion_seconds, error_line_share, partial_share)
            batch = Batch(params, validated, plan, self._files, self._stats)
            self._batches[batch.id] = batch
        self._stats.record_batch_created()
        batch.advance()  # a zero completion time ends the batch at once
        return batch

    def get(self, batch_id: str) -> Batch | None:
        with self._lock:
            batch = self._batches.get(batch_id)
        if batch is not None:
            batch.advance()
        return batch

    def newest_first(self) -> list[Batch]:
        """Every batch, advanced to now."""
        with self._lock:
            batches = list(reversed(self._batches.values()))
        for batch in batches:
            batch.advance()
        return batches

    def advance_all(self) -> None:
        self.newest_first()

    def _validate(self, params: dict[str, Any], settings: EmulatorSettings) -> ValidatedInput:
        errors = []
        if params["completion_window"] != COMPLETION_WINDOW:
            message = f"The completion_window must be {COMPLETION_WINDOW!r}, got {params['completion_window']!r}."
            errors.append(_error("invalid_request", message, param="completion_window"))
        input_file = self._files.get(params["input_file_id"])
        if input_file is None or input_file.purpose != "batch":
            what = "does not exist" if input_file is None else f"has purpose {input_file.purpose!r}, not 'batch'"
            message = f"The input file {params['input_file_id']!r} {what}."
            errors.append(_error("invalid_request", message, param="input_file_id"))
            return ValidatedInput(errors=errors)
        validated = validate_input(input_file.data, settings.deployments)
        validated.errors[:0] = errors
        validated.tokens = batch_tokens(request.body for request in validated.requests)
        return validated

    def _enqueued(self, deployment: str) -> int:
        """Tokens of ``deployment``'s batches not final yet; under self._lock."""
        total = 0
        for batch in self._batches.values():
            if batch.deployment == deployment:
                batch.advance()  # cheap: create() advanced every batch just before taking the lock
                total += batch.enqueued_tokens()
        return total

    def enqueued_tokens(self) -> dict[str, int]:
        """Deployment -> tokens of its batches not final yet (deployments with none left out)."""
        self.advance_all()
        totals: dict[str, int] = {}
        with self._lock:
            for batch in self._batches.values():
                tokens = batch.enqueued_tokens()
                if tokens and batch.deployment is not None:
                    totals[batch.deployment] = totals.get(batch.deployment, 0) + tokens
        return totals


def _drawn_outcome(settings: EmulatorSettings, draw: float) -> str:
    if draw < settings.batch_share_failed:
        return "failed"
    if draw < settings.batch_share_failed + settings.batch_share_expired:
        return "expired"
    return "completed"


# -- HTTP --------------------------------------------------------------------------------------


def batches_api(
    store: BatchStore, settings: EmulatorSettings, method: str, batch_id: str | None, action: str | None,
    query: dict[str, str], body: bytes,
) -> Reply | None:  # fmt: skip
    """The answer to an authorised Batches API call, or None when no such route exists (404)."""
    if batch_id is None:
        if action is not None:
            return None
        if method == "POST":
            return _create(store, settings, body)
        if method == "GET":
            return list_page([b.to_json() for b in store.newest_first()], query, _DEFAULT_LIST_LIMIT, _MAX_LIST_LIMIT)
        return None
    if (method, action) not in (("GET", None), ("POST", "cancel")):
        return None
    batch = store.get(batch_id)
    if batch is None:
        return not_found("Batch", batch_id)
    if action == "cancel":
        problem = batch.cancel()
        if problem is not None:
            return bad_request(problem)
    return Reply(200, batch.to_json())


def _create(store: BatchStore, settings: EmulatorSettings, body: bytes) -> Reply:
    try:
        params = json.loads(body)
    except ValueError:
        return bad_request("We could not parse the JSON body of your request.")
    if not isinstance(params, dict):
        return bad_request("The request body must be a JSON object.")
    for name in ("input_file_id", "endpoint", "completion_window"):
        if not isinstance(params.get(name), str) or not params[name]:
            return bad_request(f"'{name}' is a required string.", name)
    if params["endpoint"] not in CHAT_URLS:
        message = f"Invalid endpoint {params['endpoint']!r}: the emulator supports {CHAT_URLS[0]}."
        return bad_request(message, "endpoint")
    metadata = params.get("metadata")
    if metadata is not None and not (
        isinstance(metadata, dict)
        and len(metadata) <= _MAX_METADATA_PAIRS
        and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    ):
        return bad_request(f"'metadata' must be at most {_MAX_METADATA_PAIRS} string key-value pairs.", "metadata")
    kept = {name: params[name] for name in ("input_file_id", "endpoint", "completion_window")}
    return Reply(200, store.create({**kept, "metadata": metadata}, settings).to_json())
