"""The HTTP side of the replay server: a threading ``http.server`` that writes JSON and Server-Sent Events."""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol, cast

from shared_scorer.server.wire import error_body

_DISCONNECTS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)


@dataclass
class Response:
    """A reply to write: a JSON body, or (``events`` set) a Server-Sent Events stream."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    events: list[str] | None = None  # Server-Sent Events payloads; "[DONE]" is added by the handler

    @classmethod
    def json(cls, status: int, body: object, headers: dict[str, str] | None = None) -> Response:
        return cls(status, json.dumps(body, ensure_ascii=False).encode(), headers or {})

    @classmethod
    def error(cls, status: int, message: str, type_: str, code: str | None) -> Response:
        return cls.json(status, error_body(message, type_, code))


class Router(Protocol):
    """What answers the requests (the :class:`~shared_scorer.server.replay.ReplayServer`)."""

    def route(self, method: str, target: str, body: object) -> Response:
        """Answer one HTTP request (``body`` is the decoded JSON body, or None)."""
        ...


class HTTPServer(ThreadingHTTPServer):
    """One thread per connection; it keeps track of open connections to close them on stop."""

    daemon_threads = True
    request_queue_size = 128  # benchmarks open many connections at once

    def __init__(self, address: tuple[str, int], replay: Router) -> None:
        self.replay = replay
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self._busy = 0
        self._idle = threading.Condition()
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up (e.g. after its timeout) is not an error worth a traceback."""
        if not isinstance(sys.exc_info()[1], _DISCONNECTS):
            super().handle_error(request, client_address)

    def track(self, connection: socket.socket, open_: bool) -> None:
        with self._connections_lock:
            if open_:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def busy(self, delta: int) -> None:
        """Count the requests being answered (``+1`` when one starts, ``-1`` when it is written)."""
        with self._idle:
            self._busy += delta
            self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is being answered; False if some still are after ``timeout`` seconds."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout)

    def close_connections(self) -> None:
        """Shut down kept-alive connections so their handler threads end."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60
    server_version = "frugal-replay/1"

    @property
    def _server(self) -> HTTPServer:
        return cast(HTTPServer, self.server)

    def setup(self) -> None:
        super().setup()
        self._server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self._server.track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the request log is :attr:`ReplayServer.requests`."""

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        self._server.busy(+1)
        try:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body: object = json.loads(raw) if raw else None
            except ValueError:
                response = Response.error(400, "The body is not valid JSON.", "invalid_request_error", None)
            else:
                try:
                    response = self._server.replay.route(method, self.path, body)
                except Exception as exc:  # a bug here must reach the client, not only stderr
                    message = f"replay server error: {type(exc).__name__}: {exc}"
                    response = Response.error(500, message, "replay_server_error", None)
            self._write(response)
        except _DISCONNECTS:  # the client gave up (e.g. timed out on a hang)
            self.close_connection = True
        finally:
            self._server.busy(-1)

    def _write(self, response: Response) -> None:
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        if response.events is None:
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            self.wfile.write(response.body)
            return
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for payload in [*response.events, "[DONE]"]:
            data = f"data: {payload}\n\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.write(b"0\r\n\r\n")
