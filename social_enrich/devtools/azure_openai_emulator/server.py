"""HTTP plumbing: routing, auth, rate limits, faults and latency around the pure chat builder, the
routes of the Files and Batches APIs (their logic lives in ``files`` and ``batches``), and the
control route that puts deployments down and back (``outages``, ``own_endpoints``)."""

from __future__ import annotations

import json
import re
import socket
import socketserver
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .batches import BatchStore, batches_api
from .chat import answer_fault_of, build_chat_reply, with_cached_tokens
from .files import FileContent, FileStore, files_api
from .latency import reply_delay
from .outages import OUTAGE_MODES, Outages, check_mode, outage_reply
from .own_endpoints import OwnEndpoints
from .prompt import rate_limit_tokens
from .prompt_cache import PromptCache
from .randomness import Randomness
from .rate_limits import UNLIMITED_REQUESTS, UNLIMITED_TOKENS, RateLimiter
from .replies import Reply, error_reply, throttled_reply
from .settings import EmulatorSettings
from .stats import Stats

_DEPLOYMENT_ROUTE = re.compile(r"^/openai/deployments/([^/]+)/chat/completions/?$")
_V1_ROUTE = re.compile(r"^/openai/v1/chat/completions/?$")
# Files and Batches: /openai/{files|batches}[/{id}[/{action}]] with ?api-version=..., or /openai/v1/... without.
_API_ROUTE = re.compile(r"^/openai(/v1)?/(files|batches)(?:/([^/]+)(?:/([^/]+))?)?/?$")
# Outages on command: POST /control/deployments/<name> {"mode": ...}; GET /control/deployments.
# Served on the main endpoint only, without an api-key (it is the test's hand, not a client's).
_CONTROL_ROUTE = re.compile(r"^/control/deployments(?:/([^/]+))?/?$")
_UNLIMITED_HEADERS = {
    "x-ratelimit-remaining-requests": str(UNLIMITED_REQUESTS),
    "x-ratelimit-remaining-tokens": str(UNLIMITED_TOKENS),
}


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 keep-alive: the SDK pools connections, and benchmarks should measure the same.
    protocol_version = "HTTP/1.1"
    server_version = "AzureOpenAIEmulator/1"
    server: "_EmulatorHTTPServer"

    def setup(self) -> None:
        super().setup()
        # Headers and body go out as two writes; with Nagle's algorithm on, the second waits for the
        # client's delayed ACK, adding ~40 ms to every answer.  Real latency comes from the model.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # quiet: tests and benchmarks don't want a line per request on stderr

    def do_GET(self) -> None:
        raw = self._read_body()
        if urlsplit(self.path).path.rstrip("/") == "/stats":
            self._send(Reply(200, self.server.emulator.stats_json()), count=False)
        elif not self._answer_control("GET", raw) and not self._answer_api("GET", raw):
            self._send(error_reply(404))

    def do_DELETE(self) -> None:
        raw = self._read_body()
        if not self._answer_api("DELETE", raw):
            self._send(error_reply(404))

    def do_POST(self) -> None:
        raw = self._read_body()
        if self._answer_control("POST", raw) or self._answer_api("POST", raw):
            return
        emulator = self.server.emulator
        settings = emulator.settings
        with emulator.request_in_flight():
            try:
                reply = self._handle_post(raw)
            except Exception as exc:  # an emulator bug should surface as a 500, not a dropped connection
                reply = error_reply(500, "EmulatorError", f"{type(exc).__name__}: {exc}")
            if reply.no_answer == "timeout":
                # Held so the client's own timeout fires first; stop() cuts the hold short.
                self.server.stopping.wait(settings.timeout_hold_seconds)
            elif reply.no_answer is None:
                jitter = emulator._randomness.draw_jitter(settings) if reply.status == 200 else 1.0
                delay = reply_delay(settings, reply, jitter)
                if delay > 0:
                    self.server.stopping.wait(delay)  # stop() cuts the wait short
            # Counted, and out of flight, before the client can see the answer: a client that has
            # its answer always finds it in the stats.
            emulator.record(reply)
        if reply.no_answer is not None:
            # Nothing at all: handle() ends and socketserver closes the socket, so the client sees
            # the connection end without a response (a connection error), and tracking stays clean.
            self.close_connection = True
            return
        self._send(reply, count=False)

    def do_PUT(self) -> None:
        self._read_body()
        self._send(error_reply(404))

    do_PATCH = do_PUT

    def _answer_control(self, method: str, raw: bytes) -> bool:
        """Answer a control call; False if the path is not one, or this is an own endpoint (nothing sent)."""
        route = _CONTROL_ROUTE.match(urlsplit(self.path).path)
        if route is None or self.server.deployment is not None:
            return False
        self._send(_control_answer(self.server.emulator, method, route.group(1), raw), count=False)
        return True

    def _answer_api(self, method: str, raw: bytes) -> bool:
        """Answer a Files or Batches API call; False if the path is not one (nothing sent).

        These calls are not chat requests: they are neither counted as ``requests`` nor in flight.
        """
        url = urlsplit(self.path)
        route = _API_ROUTE.match(url.path)
        if route is None:
            return False
        try:
            answer = self._api_answer(method, route, url.query, raw)
        except Exception as exc:  # an emulator bug should surface as a 500, not a dropped connection
            answer = error_reply(500, "EmulatorError", f"{type(exc).__name__}: {exc}")
        if isinstance(answer, FileContent):
            self._write(200, answer.data, answer.content_type, {})
        else:
            self._send(answer if answer is not None else error_reply(404), count=False)
        return True

    def _api_answer(
        self, method: str, route: re.Match[str], query_string: str, raw: bytes
    ) -> Reply | FileContent | None:
        emulator = self.server.emulator
        v1, collection, object_id, action = route.groups()
        query = {name: values[-1] for name, values in parse_qs(query_string).items()}
        # Like the deployments route: Azure answers 404 when a non-v1 call lacks api-version.
        if v1 is None and "api-version" not in query:
            return error_reply(404)
        if not self._authorised(emulator.settings.api_key):
            return error_reply(401)
        if collection == "files":
            content_type = self.headers.get("Content-Type") or ""
            return files_api(emulator._files, emulator._stats, method, object_id, action, query, raw, content_type)
        return batches_api(emulator._batches, emulator.settings, method, object_id, action, query, raw)

    def _handle_post(self, raw: bytes) -> Reply:
        emulator = self.server.emulator
        settings = emulator.settings
        url = urlsplit(self.path)
        route = _DEPLOYMENT_ROUTE.match(url.path)
        if route is None and not _V1_ROUTE.match(url.path):
            return error_reply(404)
        api_versions = parse_qs(url.query).get("api-version")
        # Azure answers 404 "Resource not found" when a deployments call lacks api-version.
        if route is not None and not api_versions:
            return error_reply(404)
        deployment = route.group(1) if route is not None else None
        if settings.fail_all_with is not None:
            return self._untouched_quota(error_reply(settings.fail_all_with), deployment)
        if not self._authorised(settings.api_key):
            return self._untouched_quota(error_reply(401), deployment)

        try:
            body = json.loads(raw)
        except ValueError:
            reply = error_reply(400, "BadRequest", "We could not parse the JSON body of your request.")
            return self._untouched_quota(reply, deployment)
        if not isinstance(body, dict):
            reply = error_reply(400, "BadRequest", "The request body must be a JSON object.")
            return self._untouched_quota(reply, deployment)
        emulator.log_request(body)

        if route is None:
            deployment = body.get("model") if isinstance(body.get("model"), str) else None
        own = self.server.deployment
        if deployment not in settings.deployments or (own is not None and deployment != own):
            return self._untouched_quota(_deployment_not_found(), None)
        assert deployment is not None
        api_version = (api_versions or ["v1"])[0]
        outage = emulator._outages.mode_of(deployment)
        if outage is not None:
            return self._untouched_quota(outage_reply(outage, api_version), deployment)

        def build(**fault: Any) -> Reply:
            return build_chat_reply(
                body, deployment, completion_id=f"chatcmpl-{uuid.uuid4().hex[:24]}", created=int(time.time()), **fault
            )

        # Built before admission: without max_tokens, the cost is the answer's own completion tokens.
        reply = build()
        cost = rate_limit_tokens(body, completion_tokens=reply.completion_tokens)
        admission = emulator._rate_limiter.admit(deployment, cost, settings)
        if not admission.admitted:
            assert admission.limit is not None
            throttled = throttled_reply(admission.retry_after_seconds, admission.limit, api_version)
            throttled.headers.update(admission.headers())
            throttled.deployment = deployment
            return throttled

        # Admitted: from here on the request has consumed quota, whatever happens to it.
        kind, pick = emulator._randomness.draw_fault(settings)
        cached = emulator._prompt_cache.cached_tokens(deployment, body) if reply.status == 200 else 0
        if kind is not None and reply.status == 200 and answer_fault_of(reply) is None:
            reply = build(fault=kind, omit_pick=pick)
        with_cached_tokens(reply, cached)
        reply.rate_limit_tokens = cost
        reply.headers.update(admission.headers())
        reply.deployment = deployment
        return reply

    def _untouched_quota(self, reply: Reply, deployment: str | None) -> Reply:
        """``reply`` for ``deployment``, with its remaining-quota headers, for answers that consume none."""
        emulator = self.server.emulator
        if deployment is not None and deployment in emulator.settings.deployments:
            # An outage's own headers (a throttle says nothing remains) win over the window's.
            remaining = emulator._rate_limiter.remaining(deployment, emulator.settings)
            reply.headers = {**remaining.headers(), **reply.headers}
            reply.deployment = deployment
        return reply

    def _authorised(self, api_key: str) -> bool:
        if self.headers.get("api-key") == api_key:
            return True
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        return scheme.lower() == "bearer" and token.strip() == api_key

    def _read_body(self) -> bytes:
        # Always drain the body, or the next request on this keep-alive connection is garbage.
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send(self, reply: Reply, count: bool = True) -> None:
        if count:
            self.server.emulator.record(reply)
        # Azure sends only the remaining quota (no x-ratelimit-limit-*); without a limit, large constants.
        headers = {**_UNLIMITED_HEADERS, **reply.headers}
        self._write(reply.status, json.dumps(reply.payload).encode(), "application/json", headers)

    def _write(self, status: int, data: bytes, content_type: str, extra_headers: dict[str, str]) -> None:
        request_id = str(uuid.uuid4())
        self.send_response(status)
        headers = {
            "Content-Type": content_type,
            "Content-Length": str(len(data)),
            "apim-request-id": request_id,
            "x-request-id": request_id,
            "x-ms-region": "Emulator",
            **extra_headers,
        }
        try:
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (e.g. its timeout beat a slow answer): nothing to tell it.
            self.close_connection = True


def _deployment_not_found() -> Reply:
    return error_reply(
        404,
        "DeploymentNotFound",
        "The API deployment for this resource does not exist. If you created the deployment "
        "within the last 5 minutes, please wait a moment and try again.",
    )


def _control_answer(emulator: AzureOpenAIEmulator, method: str, name: str | None, raw: bytes) -> Reply:
    """``GET /control/deployments`` (every deployment's state) or ``POST /control/deployments/<name>``."""
    if name is None:
        if method != "GET":
            return error_reply(404)
        states = [emulator.deployment_state(d) for d in emulator.settings.deployments]
        return Reply(200, {"object": "list", "data": states})
    if method != "POST":
        return error_reply(404)
    if name not in emulator.settings.deployments:
        return _deployment_not_found()
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict) or "mode" not in body:
        return error_reply(400, "BadRequest", 'The body must be a JSON object {"mode": <mode or null>}.')
    try:
        check_mode(body["mode"])
    except ValueError:
        modes = ", ".join(f'"{mode}"' for mode in OUTAGE_MODES)
        return error_reply(400, "BadRequest", f"mode must be null or one of {modes}, got {body['mode']!r}.")
    emulator.fail_deployment(name, body["mode"])
    return Reply(200, emulator.deployment_state(name))


class _EmulatorHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # the default listen backlog of 5 resets connections under concurrent load
    allow_reuse_address = False  # port 0: the kernel picks a free port; no reuse games needed

    def __init__(
        self, address: tuple[str, int], emulator: "AzureOpenAIEmulator", deployment: str | None = None
    ) -> None:
        self.emulator = emulator
        # An own endpoint serves this deployment's chat requests only; None: the main endpoint.
        self.deployment = deployment
        if deployment is not None:
            # Reopened on its old port right after refusing: its closed connections sit in TIME_WAIT.
            self.allow_reuse_address = True
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self._no_connections = threading.Condition(self._connections_lock)
        self.stopping = threading.Event()  # set by close_connections(); ends any reply delay early
        super().__init__(address, _Handler)

    def track(self, conn: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(conn)

    def untrack(self, conn: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(conn)
            self._no_connections.notify_all()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client hanging up (its timeout, a drop it answered with RST) is normal traffic, not an
        # error worth a traceback on stderr; anything else still gets one.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def server_bind(self) -> None:
        # Skip HTTPServer.server_bind's socket.getfqdn(), a reverse DNS lookup that can stall.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def close_connections(self, timeout: float = 2.0, how: int = socket.SHUT_RD) -> None:
        """Unblock idle keep-alive handlers so each closes its own socket, then wait for them.

        By default only the read side is shut: a handler mid-request still writes its answer, then
        sees EOF.  ``how=SHUT_RDWR`` cuts in-flight requests off too (an outage): their answers go
        nowhere.  A handler holding its answer back (latency, ``slow``, ``timeout``) stops holding at once.
        """
        self.stopping.set()
        with self._connections_lock:
            for conn in list(self._connections):
                try:
                    conn.shutdown(how)
                except OSError:
                    pass  # already gone
            self._no_connections.wait_for(lambda: not self._connections, timeout)


class AzureOpenAIEmulator:
    """Azure OpenAI chat-completions emulator on a background thread. Usage::

        with AzureOpenAIEmulator() as emu:
            client = openai.AzureOpenAI(azure_endpoint=emu.endpoint, api_key="test-key", api_version="2024-10-21")
    """

    def __init__(
        self, settings: EmulatorSettings | None = None, host: str = "127.0.0.1", port: int = 0,
        own_endpoints: bool = False,
    ) -> None:  # fmt: skip
        self.settings = settings or EmulatorSettings()
        self.host = host
        self.port = port
        self.endpoint = ""
        # Open every deployment's own endpoint at start(), rather than on the first endpoint_of().
        self.own_endpoints = own_endpoints
        self.requests_log: list[dict[str, Any]] = []
        self._log_lock = threading.Lock()
        self._stats = Stats()
        self._rate_limiter = RateLimiter()
        self._prompt_cache = PromptCache()
        self._randomness = Randomness()
        self._files = FileStore()
        self._batches = BatchStore(self._files, self._stats)
        self._outages = Outages()
        self._own = OwnEndpoints(host, self._own_server)
        # Serializes outage changes with the listeners they open and close.
        self._control_lock = threading.Lock()
        self._server: _EmulatorHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "AzureOpenAIEmulator":
        if self._server is not None:
            raise RuntimeError("emulator already started")
        self._server = _EmulatorHTTPServer((self.host, self.port), self)
        host, port = self._server.server_address[:2]
        self.port = port
        self.endpoint = f"http://{host}:{port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="azure-openai-emulator", daemon=True
        )
        self._thread.start()
        if self.own_endpoints:
            for deployment in self.settings.deployments:
                self.endpoint_of(deployment)
        return self

    def stop(self) -> None:
        """Stop the main endpoint and every own endpoint (their ports are not kept for a restart)."""
        server, thread = self._server, self._thread
        if server is None:
            return
        with self._control_lock:
            self._own.close_all()
        self._server = self._thread = None
        server.shutdown()
        server.close_connections()
        server.server_close()
        if thread is not None:
            thread.join()

    def __enter__(self) -> "AzureOpenAIEmulator":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    # -- a pool of deployments: own endpoints and outages ---------------------------------------

    def endpoint_of(self, deployment: str) -> str:
        """The URL of ``deployment``'s own endpoint, opened now on a free port if it has none.

        It serves the same state (quotas, stats, files, batches) as :attr:`endpoint`, but chat
        requests for ``deployment`` only; ``refuse`` closes it (see :mod:`.own_endpoints`).
        """
        self._known(deployment)
        with self._control_lock:
            if self._server is None:
                raise RuntimeError("the emulator is not running: start() it first")
            return self._own.endpoint_of(deployment, refused=self._outages.mode_of(deployment) == "refuse")

    def fail_deployment(self, deployment: str, mode: str | None) -> None:
        """Put ``deployment`` in an outage: ``"http_503"``, ``"throttle"`` or ``"refuse"`` (see
        :mod:`.outages`); None ends it.  Unknown deployments raise LookupError, bad modes ValueError."""
        self._known(deployment)
        check_mode(mode)
        with self._control_lock:
            old = self._outages.set(deployment, mode)
            if (old == "refuse") != (mode == "refuse"):
                self._own.set_refused(deployment, refused=mode == "refuse")

    def restore_deployment(self, deployment: str) -> None:
        """End ``deployment``'s outage: it answers again, an own endpoint on the same port."""
        self.fail_deployment(deployment, None)

    def deployment_state(self, deployment: str) -> dict[str, Any]:
        """``{"deployment", "mode" (None: up), "endpoint" (its own, None if it has none)}``."""
        self._known(deployment)
        mode = self._outages.mode_of(deployment)
        return {"deployment": deployment, "mode": mode, "endpoint": self._own.existing().get(deployment)}

    def enqueued_tokens(self, deployment: str) -> int:
        """Tokens of ``deployment``'s batches not final yet, as its enqueued-token quota counts them."""
        self._known(deployment)
        return self._batches.enqueued_tokens().get(deployment, 0)

    def _known(self, deployment: str) -> None:
        if deployment not in self.settings.deployments:
            raise LookupError(f"no deployment {deployment!r}; configured: {', '.join(self.settings.deployments)}")

    def _own_server(self, host: str, port: int, deployment: str) -> _EmulatorHTTPServer:
        return _EmulatorHTTPServer((host, port), self, deployment)

    # -- bookkeeping, called from handler threads ---------------------------------------------

    def log_request(self, body: dict[str, Any]) -> None:
        with self._log_lock:
            self.requests_log.append(body)

    def record(self, reply: Reply) -> None:
        self._stats.record(reply)

    @contextmanager
    def request_in_flight(self) -> Iterator[None]:
        """Count a chat request as in flight for the duration of the block."""
        with self._stats.in_flight():
            yield

    @property
    def stats(self) -> dict[str, Any]:
        """A consistent snapshot; see :class:`~.stats.Stats` for the keys.

        Batches are brought up to now first, so a batch whose time is up counts as finished.  Besides
        the counters, ``enqueued_tokens``: deployment -> tokens of its batches not final yet (state,
        not a counter: :meth:`reset_stats` leaves it).
        """
        enqueued = self._batches.enqueued_tokens()  # advances every batch first
        stats = self._stats.snapshot(self.settings.deployments)
        stats["enqueued_tokens"] = {name: enqueued.get(name, 0) for name in self.settings.deployments}
        stats["enqueued_tokens"].update(enqueued)  # a deployment no longer configured still shows
        return stats

    def stats_json(self) -> dict[str, Any]:
        stats = self.stats
        stats["by_status"] = {str(k): v for k, v in sorted(stats["by_status"].items())}
        stats["faults"] = dict(sorted(stats["faults"].items()))
        stats["batches_by_status"] = dict(sorted(stats["batches_by_status"].items()))
        return stats

    def script_batches(self, *outcomes: str) -> None:
        """Script the outcomes of the next batches created, one each, in order: ``"completed"``,
        ``"failed"``, ``"expired"``, ``"stuck"`` or ``"error_lines"`` (see :mod:`.batches`).

        A scripted batch does exactly that (no random draw touches it); once the script is used up,
        the ``batch_share_*`` settings apply again.  Calls add to the script; a bad name raises ValueError.
        """
        self._batches.script(*outcomes)

    def reset_stats(self) -> None:
        """Zero the counters (``in_flight`` stays live) and clear :attr:`requests_log`.

        Rate-limit windows, the prompt cache, files, batches and the batch script are server
        state, not stats: they are kept (a batch finishing after the reset counts after it).
        """
        self._stats.reset()
        with self._log_lock:
            self.requests_log.clear()
