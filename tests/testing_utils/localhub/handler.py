"""LocalHub HTTP plumbing: a threading server that cuts its connections on stop, and the handler.

The handler reads request bodies (``Content-Length`` or chunked), writes answers, turns a
:class:`~.storage.HubError` into the status, ``X-Error-Code`` and ``X-Error-Message`` headers the
client maps to its exceptions, and reports a bug of the server as a 500.
"""

from __future__ import annotations

import http.server
import json
import socket
import socketserver
import sys
import threading
import traceback
from typing import TYPE_CHECKING, Any, Iterator

from .storage import CHUNK, HubError, header_safe

if TYPE_CHECKING:
    from .server import LocalHub


class HubHTTPServer(http.server.ThreadingHTTPServer):
    """One port of a LocalHub: ``role`` ``"api"`` (the Hub API) or ``"cdn"`` (LFS downloads)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, hub: LocalHub, role: str):
        self.hub = hub
        self.role = role  # "api" or "cdn"
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, RequestHandler)

    def server_bind(self):  # skip HTTPServer's socket.getfqdn(): it may do a slow DNS lookup
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = host
        self.server_port = port

    def process_request(self, request, client_address):
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def close_connections(self):
        """Cut keep-alive connections so a stopped hub really looks down to clients."""
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class RequestHandler(http.server.BaseHTTPRequestHandler):
    """Reads a request, hands it to the hub, and answers errors as the Hub does."""

    protocol_version = "HTTP/1.1"
    server_version = "LocalHub/1.0"
    timeout = 60  # idle keep-alive connections are dropped after this many seconds

    server: HubHTTPServer

    def log_message(self, format, *args):  # noqa: A002
        if self.server.hub.verbose:
            sys.stderr.write("[LocalHub %s] %s\n" % (self.server.role, format % args))

    def do_GET(self):
        self._dispatch()

    def do_HEAD(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def do_PUT(self):
        self._dispatch()

    def do_DELETE(self):
        self._dispatch()

    def do_PATCH(self):
        self._dispatch()

    # -- request body -------------------------------------------------------------

    def iter_body(self) -> Iterator[bytes]:
        if self._body_done:
            return
        self._body_done = True
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    raise ConnectionError("client closed the connection mid-body")
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return
                remaining = size
                while remaining:
                    chunk = self.rfile.read(min(remaining, CHUNK))
                    if not chunk:
                        raise ConnectionError("client closed the connection mid-body")
                    remaining -= len(chunk)
                    yield chunk
                self.rfile.readline()  # CRLF after the chunk
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining:
                chunk = self.rfile.read(min(remaining, CHUNK))
                if not chunk:
                    raise ConnectionError("client closed the connection mid-body")
                remaining -= len(chunk)
                yield chunk

    def body(self) -> bytes:
        if self._body is None:
            self._body = b"".join(self.iter_body())
        return self._body

    def json_body(self) -> Any:
        raw = self.body()
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise HubError(400, f"Invalid JSON body: {exc}") from None

    # -- responses -----------------------------------------------------------------

    def send(
        self,
        status: int,
        body: bytes = b"",
        headers: dict | None = None,
        content_type: str | None = "application/json; charset=utf-8",
        content_length: int | None = None,
    ) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            self.send_header(key, str(value))
        self.send_header("Content-Length", str(len(body) if content_length is None else content_length))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
        self._responded = True

    def send_json(self, obj: Any, status: int = 200, headers: dict | None = None, content_type: str | None = None):
        body = json.dumps(obj).encode()
        self.send(status, body, headers=headers, content_type=content_type or "application/json; charset=utf-8")

    def send_error_answer(self, err: HubError) -> None:
        headers = dict(err.headers)
        headers["X-Error-Message"] = header_safe(err.message)
        if err.code:
            headers["X-Error-Code"] = err.code
        self.send_json({"error": err.message, **err.extra}, status=err.status, headers=headers)

    def _dispatch(self) -> None:
        self._body = None
        self._body_done = False
        self._responded = False
        hub = self.server.hub
        hub._log_request(self)
        try:
            if self.server.role == "cdn":
                hub._handle_cdn(self)
            else:
                hub._handle(self)
            if not self._responded:
                raise HubError(500, "handler sent no response")
        except HubError as err:
            self._finish_body()
            if not self._responded:
                self.send_error_answer(err)
        except (ConnectionError, BrokenPipeError, socket.timeout):
            self.close_connection = True
        except Exception as exc:  # noqa: BLE001 -- a bug in the server: report it as a 500
            traceback.print_exc(file=sys.stderr)
            self.close_connection = True
            if not self._responded:
                try:
                    self.send_error_answer(HubError(500, f"LocalHub internal error: {exc!r}"))
                except OSError:
                    pass
        finally:
            if not self.close_connection:
                try:
                    self._finish_body()
                except (OSError, ValueError, ConnectionError):
                    self.close_connection = True

    def _finish_body(self) -> None:
        for _ in self.iter_body():
            pass
