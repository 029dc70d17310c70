"""A deployment served on a port of its own, which an outage can stop listening on and reopen.

Azure deployments of a pool often sit on separate resources, each with its own endpoint; a client
failing over sees one endpoint refuse connections while another answers.  Each own endpoint is a
listener of the same handler and emulator state (quotas, stats, files, batches) that answers chat
requests for its deployment only (another deployment's name gets 404 DeploymentNotFound).

Refusing closes the listener and its connections (in-flight requests are cut off without an
answer, though the stats count what they would have got), then holds the port with a bound socket that does not listen: a connect gets ECONNREFUSED,
exactly as when nothing listens, and no other socket can take the port meanwhile.  Reopening
binds the same port again (SO_REUSEADDR, so connections left in TIME_WAIT don't stand in the way).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Any, Protocol


class _Server(Protocol):
    server_address: Any

    def serve_forever(self, poll_interval: float = ...) -> None: ...
    def shutdown(self) -> None: ...
    def close_connections(self, timeout: float = ..., how: int = ...) -> None: ...
    def server_close(self) -> None: ...


# (host, port, deployment) -> a bound, listening server with SO_REUSEADDR set.
ServerFactory = Callable[[str, int, str], _Server]


class _Listener:
    def __init__(self, deployment: str, host: str, make_server: ServerFactory):
        self.deployment = deployment
        self.host = host
        self.port = 0  # 0 until first bound; then kept for good
        self._make_server = make_server
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._placeholder: socket.socket | None = None

    @property
    def listening(self) -> bool:
        return self._server is not None

    def listen(self) -> None:
        if self._server is not None:
            return
        self._release_placeholder()
        server = self._make_server(self.host, self.port, self.deployment)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05},
            name=f"azure-openai-emulator-{self.deployment}", daemon=True,
        )  # fmt: skip
        self._thread.start()

    def refuse(self) -> None:
        """Stop listening, cut every connection, and hold the port without listening."""
        self._stop_server(socket.SHUT_RDWR)
        if self._placeholder is None:
            placeholder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            placeholder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            placeholder.bind((self.host, self.port))
            self.port = placeholder.getsockname()[1]
            self._placeholder = placeholder

    def close(self) -> None:
        """Stop for good (the emulator stops): idle connections closed, in-flight answers still sent."""
        self._stop_server(socket.SHUT_RD)
        self._release_placeholder()

    def _stop_server(self, how: int) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        server.shutdown()
        server.close_connections(how=how)
        server.server_close()
        if thread is not None:
            thread.join()

    def _release_placeholder(self) -> None:
        if self._placeholder is not None:
            self._placeholder.close()
            self._placeholder = None


def _set(listener: _Listener, refused: bool) -> None:
    if refused:
        listener.refuse()
    else:
        listener.listen()


class OwnEndpoints:
    """Every deployment's own listener, opened on first use.  Thread-safe."""

    def __init__(self, host: str, make_server: ServerFactory):
        self._host = host
        self._make_server = make_server
        self._listeners: dict[str, _Listener] = {}
        self._lock = threading.Lock()

    def endpoint_of(self, deployment: str, refused: bool) -> str:
        """The URL of ``deployment``'s own listener, opened now if it has none (held refused if ``refused``)."""
        with self._lock:
            listener = self._listeners.get(deployment)
            if listener is None:
                listener = self._listeners[deployment] = _Listener(deployment, self._host, self._make_server)
                _set(listener, refused)
            return f"http://{self._host}:{listener.port}"

    def existing(self) -> dict[str, str]:
        """Deployment -> URL, for the deployments that have an own listener (open or refusing)."""
        with self._lock:
            return {name: f"http://{self._host}:{listener.port}" for name, listener in self._listeners.items()}

    def set_refused(self, deployment: str, refused: bool) -> None:
        """Refuse on, or reopen, ``deployment``'s listener; nothing if it has none."""
        with self._lock:
            listener = self._listeners.get(deployment)
            if listener is not None:
                _set(listener, refused)

    def close_all(self) -> None:
        with self._lock:
            listeners, self._listeners = list(self._listeners.values()), {}
        for listener in listeners:
            listener.close()
