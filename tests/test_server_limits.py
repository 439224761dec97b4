"""The HTTP server's limits over real sockets (issue 18): a backlog and a connection cap that
hold many idle clients, bounded request heads (bytes and time), one log line per failed
connection. Latency under load is measured in benchmarks/http_load.py, not asserted here."""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterable, Iterator

import pytest

from metalmem.server import LISTEN_BACKLOG, MAX_CONNECTIONS, Server

from .helpers import wait_for
from .test_server import _raw


def hello(environ: dict[str, object], start_response: object) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])  # type: ignore[operator]
    return [b"ok\n"]


@contextlib.contextmanager
def serving(**limits: float) -> Iterator[Server]:
    server = Server(hello, "127.0.0.1", 0, **limits)  # type: ignore[arg-type]
    server.start()
    try:
        yield server
    finally:
        server.stop()


def request(port: int, raw: bytes = b"GET /healthz HTTP/1.0\r\n\r\n") -> bytes:
    """Send ``raw`` and read the whole answer (the server closes after one request)."""
    return _raw(port, raw)


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0


def idle(port: int, n: int, first: bytes = b"GET /healthz HTTP/1.0\r\n") -> list[socket.socket]:
    """``n`` clients that sent part of a request head and then nothing (slowloris)."""
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(first)
        socks.append(s)
    return socks


def test_the_defaults_hold_300_clients() -> None:
    assert MAX_CONNECTIONS > 300 and LISTEN_BACKLOG >= 300


def test_300_idle_clients_leave_healthz_answering() -> None:
    with serving() as server:
        socks = idle(server.port, 300)
        try:
            assert status(request(server.port)) == 200
        finally:
            for s in socks:
                s.close()


def test_a_connection_over_the_cap_is_answered_503_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="metalmem.server"), serving(max_connections=3) as srv:
        socks = idle(srv.port, 3)
        answers = [request(srv.port) for _ in range(3)]
        assert {status(a) for a in answers} == {503}, answers
        assert answers[0].endswith(b"too many connections\r\n")
        for s in socks:
            s.close()
        wait_for(lambda: status(request(srv.port)) == 200, timeout=10, what="a free slot")
    events = [r.getMessage().split()[0] for r in caplog.records]
    assert events.count("event=http_connections_full") == 1, events
    assert "event=http_connections_available" in events


def test_a_request_head_over_the_limit_is_refused_with_431() -> None:
    with serving(max_head=4096) as server:
        small = b"GET /healthz HTTP/1.0\r\nX-A: " + b"a" * 1000 + b"\r\n\r\n"
        assert status(request(server.port, small)) == 200
        # Many lines each under the stdlib's 64 KiB line limit: only the total is over.
        big = b"GET /healthz HTTP/1.0\r\n" + b"".join(
            b"X-%d: %s\r\n" % (i, b"b" * 1000) for i in range(8)
        )
        assert status(request(server.port, big + b"\r\n")) == 431


def test_the_default_head_limit_refuses_the_issues_99_by_65k_request() -> None:
    with serving() as server:
        head = b"GET /healthz HTTP/1.0\r\n" + b"".join(
            b"X-%d: %s\r\n" % (i, b"c" * 65000) for i in range(99)
        )
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            with contextlib.suppress(OSError):  # the server may close before all is sent
                s.sendall(head + b"\r\n")
            answer = s.recv(4096)
        assert status(answer) == 431, answer[:200]


def test_an_idle_client_costs_one_log_line_not_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG, logger="metalmem.server"), serving(head_timeout=0.3) as srv:
        (s,) = idle(srv.port, 1, first=b"")
        try:
            wait_for(lambda: s.recv(1) == b"", timeout=10, what="the server closing")
        finally:
            s.close()
        wait_for(
            lambda: any("http_connection_failed" in r.getMessage() for r in caplog.records),
            timeout=5,
            what="the log line",
        )
    failed = [r for r in caplog.records if "http_connection" in r.getMessage()]
    assert len(failed) == 1, [r.getMessage() for r in failed]
    assert failed[0].exc_info is None and "\n" not in failed[0].getMessage()


def test_a_client_that_drips_its_head_is_cut_off_at_the_head_deadline() -> None:
    with serving(head_timeout=0.5) as server:
        s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        try:
            s.sendall(b"GET /healthz HTTP/1.0\r\n")

            def dripped_and_closed() -> bool:
                try:
                    s.sendall(b"X-Drip: 1\r\n")  # a complete header line each poll
                    s.settimeout(0.05)
                    return s.recv(1) == b""
                except TimeoutError:
                    return False
                except OSError:
                    return True  # reset: closed too

            wait_for(dripped_and_closed, timeout=10, interval=0.1, what="the server closing")
        finally:
            s.close()
