"""A small HTTP/1.1 server for the agent's WSGI app: one thread, one selector (issue 15).

``wsgiref`` (with ``http.server``, ``http.client`` and ``email``) cost the agent ~6 MiB of RSS
and a new thread, a header parse through ``email.parser`` and a new connection for every
scrape. Here one thread multiplexes every connection: a scrape is a recv, a call of the app
and a send, HTTP/1.1 connections stay open for the next scrape, and an idle server sleeps in
select() until a connection, a deadline or :meth:`HttpServer.wake`.

The limits of issue 18 hold as before: at most ``max_connections`` open connections (the next
is answered 503 and closed, logged once per episode), a request head of at most ``max_head``
bytes (431) that must be complete within ``head_timeout`` of its first byte (or of the
connection), and a response that must make progress within ``head_timeout``. The app runs on
the server thread, so it must be quick: the agent's endpoints only read the latest State.
Request bodies are not read: a request that announces one is answered and the connection closed.
"""

from __future__ import annotations

import contextlib
import io
import logging
import selectors
import socket
import time
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger("metalmem.server")

__all__ = ["KEEPALIVE_IDLE", "HttpServer"]

KEEPALIVE_IDLE = 300.0
"""Seconds an HTTP/1.1 connection may sit idle between requests (a scraper's, kept for its
next scrape) before it is closed."""

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE
_REASONS = {
    400: "Bad Request",
    431: "Request Header Fields Too Large",
    505: "HTTP Version Not Supported",
}


class _ClientError(Exception):
    """A request the server answers itself with ``status`` and closes."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


class _Conn:
    __slots__ = ("addr", "buf", "deadline", "fd", "keep", "out", "served", "sock")

    def __init__(self, sock: socket.socket, addr: str, deadline: float) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.addr = addr
        self.buf = b""
        self.out = b""
        self.deadline = deadline
        self.keep = True
        self.served = 0


class _Errors(io.TextIOBase):
    """``wsgi.errors``: what an app writes there goes to the log, not stderr."""

    def write(self, s: str) -> int:
        if s.strip():
            log.warning("event=http_error detail=%r", s.rstrip())
        return len(s)


WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class HttpServer:
    """Serves ``app`` on ``host:port`` from :meth:`serve` (call it on a thread of its own)."""

    def __init__(
        self,
        app: WSGIApp,
        host: str,
        port: int,
        *,
        max_connections: int,
        max_head: int,
        head_timeout: float,
        backlog: int,
        idle_timeout: float = KEEPALIVE_IDLE,
    ) -> None:
        self.app = app
        self.max_connections = max_connections
        self.max_head = max_head
        self.head_timeout = head_timeout
        self.idle_timeout = idle_timeout
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(backlog)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self.socket = sock
        self.address: tuple[str, int] = sock.getsockname()[:2]
        self._conns: dict[int, _Conn] = {}
        self._refused = 0
        self._sel = selectors.DefaultSelector()
        self._base_environ = {
            "SERVER_NAME": str(host),
            "SERVER_PORT": str(self.address[1]),
            "SCRIPT_NAME": "",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.errors": _Errors(),
            "wsgi.multithread": False,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }

    # --- the loop -------------------------------------------------------------------------
    def serve(self, wake_r: int) -> None:
        """Serve until ``wake_r`` is readable, then close every connection and the socket."""
        sel = self._sel
        sel.register(self.socket, _READ, None)
        sel.register(wake_r, _READ, "wake")
        try:
            while True:
                timeout = None
                if self._conns:
                    timeout = max(0.0, min(c.deadline for c in self._conns.values()) - _now())
                for key, mask in sel.select(timeout):
                    conn: _Conn | str | None = key.data
                    if conn == "wake":
                        return
                    if not isinstance(conn, _Conn):
                        self._accept()
                    elif self._conns.get(conn.fd) is not conn:
                        continue  # closed earlier in this round (its fd may be a new one's)
                    elif mask & _WRITE:
                        if self._flush(conn) and conn.buf:
                            self._handle(conn)
                    else:
                        self._read(conn)
                self._expire(_now())
        finally:
            for conn in list(self._conns.values()):
                self._close(conn)
            sel.close()
            self.socket.close()

    def _accept(self) -> None:
        while True:
            try:
                sock, addr = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: log, and let the backlog wait
                log.warning("event=http_accept_failed error=%r", str(exc))
                return
            client = addr[0] if isinstance(addr, tuple) else str(addr)
            if len(self._conns) >= self.max_connections:
                self._refuse(sock)
                continue
            if self._refused:
                log.info("event=http_connections_available refused=%d", self._refused)
                self._refused = 0
            sock.setblocking(False)
            conn = _Conn(sock, client, _now() + self.head_timeout)
            self._conns[conn.fd] = conn
            self._sel.register(sock, _READ, conn)

    def _refuse(self, sock: socket.socket) -> None:
        """503 without answering the request, and close; logged once per episode."""
        self._refused += 1
        if self._refused == 1:
            log.warning("event=http_connections_full limit=%d", self.max_connections)
        with contextlib.suppress(OSError):
            sock.setblocking(False)
            sock.send(
                b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
                b"Content-Length: 22\r\nConnection: close\r\n\r\ntoo many connections\r\n"
            )
        _close_gently(sock)

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fail(conn, exc)
            return
        if not data:  # the client closed
            if conn.buf:
                self._fail(conn, ConnectionError("closed inside a request head"))
            else:
                log.debug("event=http_connection_closed client=%s", conn.addr)
                self._close(conn)
            return
        if not conn.buf and conn.served:  # a kept connection's next request starts its clock
            conn.deadline = _now() + self.head_timeout
        conn.buf += data
        self._handle(conn)

    def _handle(self, conn: _Conn) -> None:
        """Answer every complete request head in the buffer (pipelined ones in order)."""
        while conn.keep and not conn.out:
            end = conn.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(conn.buf) > self.max_head:
                    self._answer_error(conn, 431, f"request head over {self.max_head} bytes")
                return
            if end + 4 > self.max_head:
                self._answer_error(conn, 431, f"request head over {self.max_head} bytes")
                return
            head, conn.buf = conn.buf[:end], conn.buf[end + 4 :]
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            try:
                environ = self._environ(head, conn)
            except _ClientError as exc:
                self._answer_error(conn, exc.status, str(exc))
                return
            conn.out = self._call(environ, conn, request_line)
            conn.served += 1
            if not self._flush(conn):
                return

    def _flush(self, conn: _Conn) -> bool:
        """Send what is pending; True when all is sent and the connection stays open."""
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._fail(conn, exc)
            return False
        conn.out = conn.out[sent:]
        now = _now()
        if conn.out:
            if sent:
                conn.deadline = now + self.head_timeout  # progress: the write's clock restarts
            self._sel.modify(conn.sock, _WRITE, conn)
            return False
        if not conn.keep:
            self._close(conn)
            return False
        self._sel.modify(conn.sock, _READ, conn)
        conn.deadline = now + (self.head_timeout if conn.buf else self.idle_timeout)
        return True

    def _expire(self, now: float) -> None:
        for conn in [c for c in self._conns.values() if c.deadline <= now]:
            if conn.out:
                self._fail(conn, TimeoutError("response not taken in time"))
            elif conn.buf or not conn.served:
                self._fail(conn, TimeoutError("request head not complete in time"))
            else:
                log.debug("event=http_connection_idle client=%s", conn.addr)
                self._close(conn)

    def _fail(self, conn: _Conn, exc: BaseException) -> None:
        """One line per failed connection, never a traceback: routine for HTTP clients."""
        log.info("event=http_connection_failed client=%s error=%r", conn.addr, str(exc))
        self._close(conn)

    def _close(self, conn: _Conn) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(conn.sock)
        self._conns.pop(conn.fd, None)
        _close_gently(conn.sock)

    # --- one request ----------------------------------------------------------------------
    def _environ(self, head: bytes, conn: _Conn) -> dict[str, Any]:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split()
        if len(parts) != 3:
            raise _ClientError(400, f"bad request line {lines[0][:100]!r}")
        method, target, version = parts
        if version not in ("HTTP/1.0", "HTTP/1.1"):
            status = 505 if version.startswith("HTTP/") else 400
            raise _ClientError(status, f"bad request version {version[:20]!r}")
        path, _, query = target.partition("?")
        environ = dict(self._base_environ)
        environ.update(
            REQUEST_METHOD=method,
            PATH_INFO=urllib.parse.unquote(path, "latin-1"),
            QUERY_STRING=query,
            SERVER_PROTOCOL=version,
            REMOTE_ADDR=conn.addr,
        )
        environ["wsgi.input"] = io.BytesIO()
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise _ClientError(400, f"bad header line {line[:100]!r}")
            key = name.upper().replace("-", "_")
            if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                key = "HTTP_" + key
            value = value.strip()
            environ[key] = f"{environ[key]},{value}" if key in environ else value
        connection = str(environ.get("HTTP_CONNECTION", "")).lower()
        conn.keep = (version == "HTTP/1.1" and "close" not in connection) and not (
            environ.get("CONTENT_LENGTH", "0") not in ("", "0")
            or "HTTP_TRANSFER_ENCODING" in environ  # a body we do not read: close after
        )
        return environ

    def _call(self, environ: dict[str, Any], conn: _Conn, request_line: str) -> bytes:
        answer: list[Any] = []

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Any:
            answer[:] = [status, list(headers)]
            return lambda data: None

        try:
            body = b"".join(self.app(environ, start_response))
            status, headers = answer
        except Exception:
            log.exception("event=http_handler_failed path=%s", environ.get("PATH_INFO"))
            status, headers, body = "500 Internal Server Error", [], b"internal error\n"
            headers.append(("Content-Type", "text/plain; charset=utf-8"))
        names = {k.lower() for k, _ in headers}
        if "content-length" not in names:
            headers.append(("Content-Length", str(len(body))))
        if not conn.keep:
            headers.append(("Connection", "close"))
        log.debug(
            "event=http_request client=%s line=%r",
            conn.addr,
            f'"{request_line}" {status.split(" ", 1)[0]} {len(body)}',
        )
        lines = "".join(f"{k}: {v}\r\n" for k, v in headers)
        version = environ["SERVER_PROTOCOL"]  # a 1.0 client is answered in 1.0
        return f"{version} {status}\r\n{lines}\r\n".encode("latin-1") + body

    def _answer_error(self, conn: _Conn, status: int, detail: str) -> None:
        log.info("event=http_connection_failed client=%s error=%r", conn.addr, detail)
        body = f"{detail}\n".encode()
        conn.keep = False
        conn.buf = b""
        conn.out = (
            f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode() + body
        self._flush(conn)


def _close_gently(sock: socket.socket) -> None:
    """Close after reading what the client already sent: closing a socket with unread bytes
    sends a reset, and the client may then lose the answer it has not read yet."""
    with contextlib.suppress(OSError):
        sock.setblocking(False)
        for _ in range(16):  # bounded: 1 MiB at most, then the reset is the client's doing
            if not sock.recv(65536):
                break
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
    sock.close()


def _now() -> float:
    return time.monotonic()
