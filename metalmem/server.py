"""HTTP endpoints of the agent: /metrics, /memstats, /healthz, /readyz (issue 6, part 2).

A stdlib WSGI app, served by metalmem/httpserver.py on one thread (or mounted by a host
application in its own server): no framework, nothing to install. Every endpoint only *reads*
the watchdog's latest :class:`State` (STYLE rule 14), so a scrape never waits for the loop and
the loop never waits for a scrape. ``/metrics`` is written by metalmem/exposition.py (the text
format, or OpenMetrics when the scraper's ``Accept`` asks for it; gzip when accepted;
``name[]`` filtering), or by prometheus-client's own app over a registry a host application
passes.
Request logs go to this module's logger at DEBUG.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, cast

from .exposition import CONTENT_TYPE_OPENMETRICS, CONTENT_TYPE_TEXT, wants_openmetrics
from .httpserver import HttpServer
from .pressure import SIGNAL_TABLE, PressurePolicy, assessment_to_dict
from .sampler import ProcessMemory
from .watchdog import EvictionRecord, SkipRecord, State, TargetLike

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

    from prometheus_client.registry import CollectorRegistry

log = logging.getLogger(__name__)

__all__ = [
    "HEALTH_FACTOR",
    "MEMSTATS_SCHEMA_VERSION",
    "Health",
    "Server",
    "heartbeat_health",
    "make_app",
    "memstats",
    "thresholds_dict",
]

MEMSTATS_SCHEMA_VERSION = 1
"""Bumped when a /memstats field changes meaning or goes away (adding one does not)."""

HEALTH_FACTOR = 3.0
"""/healthz fails once the heartbeat is older than this many intervals (issue 6)."""

_PROCESS_FIELDS = ("rss", "footprint", "wired", "swap", "peak", "anon")


# --- /memstats -------------------------------------------------------------------------------


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None``: JSON has no NaN or inf."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _system_dict(state: State) -> dict[str, Any] | None:
    s = state.system
    if s is None:
        return None
    return {
        "scope": s.scope,
        "limited": s.limited,
        "total": s.total,
        "available": s.available,
        "free": s.free,
        "wired": s.wired,
        "compressed": s.compressed,
        "swap_total": s.swap_total,
        "swap_used": s.swap_used,
        "pageouts": s.pageouts,
        "swapouts": s.swapouts,
        "oom_kills": s.oom_kills,
        "os_level": s.os_level.name if s.os_level is not None else None,
        "psi": s.psi._asdict() if s.psi is not None else None,
        "timestamp": s.timestamp,
        "counters_timestamp": s.counters_timestamp,
    }


def _process_dict(state: State, target: TargetLike) -> dict[str, Any]:
    """One target: what the config says about it, then its sample or the error for it."""
    key: str = target.key
    priority = getattr(target, "priority", None)
    kube = getattr(target, "kube", None)
    source = getattr(target, "source", None)
    sample = state.processes.get(key)
    out: dict[str, Any] = {
        "pid": target.pid,
        "start_time": getattr(target, "start_time", None),
        "priority": priority.value if priority is not None else None,
        "protected": getattr(target, "protected", None),
        "budget": getattr(target, "budget", None),
        "namespace": kube.namespace if kube is not None else None,
        "source": source.value if source is not None else None,
        "blocked": key in state.blocked,
        "memory": None,
        "error": None,
    }
    if isinstance(sample, ProcessMemory):
        out["memory"] = {f: getattr(sample, f) for f in _PROCESS_FIELDS}
        out["memory"]["timestamp"] = sample.timestamp
    elif sample is not None:
        out["error"] = {
            "type": type(sample).__name__,
            "message": str(sample),
            "errno": sample.errno,
        }
    return out


def _eviction_dict(r: EvictionRecord) -> dict[str, Any]:
    return {
        "key": r.key,
        "pid": r.pid,
        "priority": r.priority,
        "reason": r.reason,
        "footprint": r.footprint,
        "result": r.result,
        "reclaimed": r.reclaimed,
        "duration": r.duration,
        "timestamp_unix": r.timestamp_unix,
        "message": r.message,
    }


def _skip_dict(r: SkipRecord) -> dict[str, Any]:
    return {
        "reason": str(r.reason),
        "explanation": r.explanation,
        "timestamp_unix": r.timestamp_unix,
    }


def thresholds_dict(policy: PressurePolicy) -> dict[str, dict[str, float | None]]:
    """The thresholds in force per signal, in the signal's own unit (as the assessment's
    reasons give values: fractions, PSI percent, bytes per second, seconds, level numbers);
    ``None`` where that level of the signal is off."""
    out: dict[str, dict[str, float | None]] = {}
    for spec in SIGNAL_TABLE:
        warning, critical = spec.thresholds(policy)
        out[spec.signal.value] = {"warning": warning, "critical": critical}
    return out


def memstats(
    state: State,
    *,
    version: str,
    now: float | None = None,
    policy: PressurePolicy | None = None,
    unmatched: Sequence[str] = (),
) -> dict[str, Any]:
    """The JSON-ready document of ``/memstats`` for one State (``docs/memstats.schema.json``).

    Bytes stay exact integers and unknown values stay ``None`` (JSON null); levels are names.
    ``now`` is a reading of the watchdog's clock (``time.monotonic()`` by default), against
    which the sample's and the heartbeat's ages are measured; the sampler's timestamps are on
    the same clock in the agent. Non-finite floats become null (JSON cannot carry them).
    ``policy`` gives ``thresholds`` (null without it); ``unmatched`` names configured targets
    that match no process right now, so a typo in a config is visible, not silent.
    """
    if now is None:
        now = time.monotonic()
    system = state.system
    doc: dict[str, Any] = {
        "schema_version": MEMSTATS_SCHEMA_VERSION,
        "version": version,
        "seq": state.seq,
        "mode": state.mode.value,
        "interval": state.interval,
        "sample_age": now - system.timestamp if system is not None else None,
        "heartbeat_age": now - state.heartbeat,
        "uptime": now - state.started_at,
        "sample_duration": state.sample_duration,
        "cpu_seconds": state.cpu_seconds,
        "events": state.events,
        "system": _system_dict(state),
        "gpu": (
            {"limit": system.gpu_limit, "used": system.gpu_used} if system is not None else None
        ),
        "assessment": (
            assessment_to_dict(state.assessment) if state.assessment is not None else None
        ),
        "processes": {t.key: _process_dict(state, t) for t in state.targets},
        "blocked": list(state.blocked),
        "settling": state.settling,
        "stopping": (
            {
                "key": state.stopping,
                "deadline_in": state.busy_until - now if state.busy_until is not None else None,
            }
            if state.stopping is not None
            else None
        ),
        "evictions": [_eviction_dict(r) for r in state.evictions[-20:]],
        "skips": [_skip_dict(r) for r in state.skips[-20:]],
        "eviction_counts": [
            {"reason": reason, "result": result, "count": n}
            for (reason, result), n in sorted(state.eviction_counts.items())
        ],
        "skip_counts": dict(sorted(state.skip_counts.items())),
        "reclaimed_total": state.reclaimed_total,
        "counters": dict(sorted(state.counters.items())),
        "thresholds": thresholds_dict(policy) if policy is not None else None,
        "unmatched": sorted(unmatched),
    }
    result: dict[str, Any] = _finite(doc)
    return result


# --- liveness ---------------------------------------------------------------------------------


class Health(NamedTuple):
    """The loop's liveness at one instant: ``/healthz`` and systemd's watchdog both use it."""

    healthy: bool
    age: float  # seconds since the last completed tick
    limit: float  # HEALTH_FACTOR x the configured interval
    busy_left: float | None  # seconds left of a stop in flight (healthy meanwhile), else None


def heartbeat_health(state: State, now: float, interval: float) -> Health:
    """Healthy while the heartbeat is younger than :data:`HEALTH_FACTOR` x ``interval``, or a
    stop in flight has not passed its own deadline plus that limit (``State.busy_until``): the
    loop is then quiet, not stalled."""
    age = now - state.heartbeat
    limit = HEALTH_FACTOR * interval
    if state.failed is not None:  # the loop died: no deadline makes it healthy again
        return Health(False, age, limit, None)
    busy = state.busy_until
    if busy is not None and now < busy + limit:
        return Health(True, age, limit, busy - now)
    return Health(age < limit, age, limit, None)


# --- the WSGI app ----------------------------------------------------------------------------

_Response = tuple[str, list[tuple[str, str]], bytes]


class Exposition(Protocol):
    """What /metrics renders: :class:`metalmem.metrics.MetalmemCollector` is one."""

    def exposition(self, *, openmetrics: bool = ..., names: Any = ...) -> bytes: ...


GZIP_MIN = 1024
"""Bodies below this many bytes are sent as they are even when gzip is accepted."""
_TEXT = "text/plain; charset=utf-8"


def _text(status: str, body: str) -> _Response:
    return status, [("Content-Type", _TEXT)], body.encode()


def make_app(
    state: Callable[[], State],
    registry: Exposition | CollectorRegistry,
    *,
    version: str,
    interval: Callable[[], float],
    watchdog_enabled: bool = True,
    clock: Callable[[], float] = time.monotonic,
    policy: Callable[[], PressurePolicy] | None = None,
    unmatched: Callable[[], Sequence[str]] | None = None,
) -> WSGIApplication:
    """The agent's WSGI app: ``/metrics``, ``/memstats``, ``/healthz``, ``/readyz``.

    ``state`` returns the latest snapshot; ``interval`` the configured watchdog interval
    (a callable: a config reload may change it); ``clock`` the watchdog's clock (injectable
    for tests). ``/healthz`` is 200 while the heartbeat is younger than
    :data:`HEALTH_FACTOR` x the interval (or a stop in flight has not passed its deadline,
    ``State.busy_until``), else 503 naming the age and the limit (200 when the watchdog is
    disabled); ``/readyz`` is 200 once a sample exists (or the watchdog is
    disabled), else 503. ``policy`` and ``unmatched`` feed ``/memstats``' ``thresholds`` and
    ``unmatched`` (read per request: a reload changes both). Other paths are 404, other
    methods than GET and HEAD 405. A failure inside a handler is logged and answered 500;
    it never reaches the server thread.
    """
    metrics_app = _metrics_app(registry)
    was_healthy = [True]  # logged on change only (STYLE rule 17); a race only repeats a line

    def healthz() -> _Response:
        if not watchdog_enabled:
            return _text("200 OK", "ok: watchdog disabled\n")
        current = state()
        if current.failed is not None:
            return _text(
                "503 Service Unavailable", f"unhealthy: the watchdog loop died: {current.failed}\n"
            )
        every = interval()
        healthy, age, limit, busy_left = heartbeat_health(current, clock(), every)
        if busy_left is not None:
            return _text("200 OK", f"ok: stopping a target (deadline in {busy_left:.1f} s)\n")
        if healthy != was_healthy[0]:
            was_healthy[0] = healthy
            if healthy:
                log.info("event=healthz_recovered heartbeat_age=%.3f", age)
            else:
                log.warning("event=healthz_failing heartbeat_age=%.3f limit=%.3f", age, limit)
        if healthy:
            return _text("200 OK", f"ok: heartbeat {age:.3f} s ago (limit {limit:.3f} s)\n")
        return _text(
            "503 Service Unavailable",
            f"unhealthy: watchdog heartbeat is {age:.3f} s old, over {limit:.3f} s "
            f"({HEALTH_FACTOR:g} x interval {every:g} s); the loop is stalled\n",
        )

    def readyz() -> _Response:
        if state().system is not None:
            return _text("200 OK", "ready: first sample taken\n")
        if not watchdog_enabled:
            return _text("200 OK", "ready: watchdog disabled\n")
        return _text("503 Service Unavailable", "not ready: no sample yet\n")

    def memstats_json() -> _Response:
        doc = memstats(
            state(),
            version=version,
            now=clock(),
            policy=policy() if policy is not None else None,
            unmatched=unmatched() if unmatched is not None else (),
        )
        body = json.dumps(doc, allow_nan=False, separators=(",", ":")).encode()
        return "200 OK", [("Content-Type", "application/json"), ("Cache-Control", "no-store")], body

    routes: Mapping[str, Callable[[], _Response]] = {
        "/healthz": healthz,
        "/readyz": readyz,
        "/memstats": memstats_json,
    }

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "")
        if path != "/metrics" and path not in routes:
            status, headers, body = _text("404 Not Found", f"not found: {path}\n")
        elif method not in ("GET", "HEAD"):
            status, headers, body = _text("405 Method Not Allowed", f"{method} not allowed\n")
            headers.append(("Allow", "GET, HEAD"))
        elif path == "/metrics":
            return _metrics(environ, start_response, method)
        else:
            try:
                status, headers, body = routes[path]()
            except Exception:
                log.exception("event=http_handler_failed path=%s", path)
                status, headers, body = _text("500 Internal Server Error", "internal error\n")
        headers.append(("Content-Length", str(len(body))))
        start_response(status, headers)
        return [b""] if method == "HEAD" else [body]

    def _metrics(
        environ: WSGIEnvironment, start_response: StartResponse, method: str
    ) -> Iterable[bytes]:
        if method == "HEAD":  # answered as GET, without the body
            environ = {**environ, "REQUEST_METHOD": "GET"}
        answer: list[tuple[str, list[tuple[str, str]]]] = []

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            answer.append((status, list(headers)))
            return lambda data: None

        try:
            body = b"".join(metrics_app(environ, capture))
            status, headers = answer[0]
        except Exception:
            log.exception("event=http_handler_failed path=/metrics")
            status, headers, body = _text("500 Internal Server Error", "internal error\n")
        headers.append(("Content-Length", str(len(body))))  # for HEAD too: the GET's length
        start_response(status, headers)
        return [b""] if method == "HEAD" else [body]

    return app


def _metrics_app(registry: Exposition | CollectorRegistry) -> WSGIApplication:
    """/metrics: our own exposition (no prometheus-client on the agent's path), or
    prometheus-client's app over a registry that a host application passed."""
    if not hasattr(registry, "exposition"):
        from prometheus_client import make_wsgi_app

        return cast("WSGIApplication", make_wsgi_app(registry))
    source = cast(Exposition, registry)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        openmetrics = wants_openmetrics(environ.get("HTTP_ACCEPT"))
        names = None
        query = environ.get("QUERY_STRING", "")
        if "name" in query:
            from urllib.parse import parse_qs

            names = parse_qs(query).get("name[]")
        body = source.exposition(openmetrics=openmetrics, names=names)
        ctype = CONTENT_TYPE_OPENMETRICS if openmetrics else CONTENT_TYPE_TEXT
        headers = [("Content-Type", ctype)]
        if len(body) >= GZIP_MIN and "gzip" in environ.get("HTTP_ACCEPT_ENCODING", ""):
            import zlib

            packer = zlib.compressobj(1, zlib.DEFLATED, 31)  # gzip framing, fastest level
            body = packer.compress(body) + packer.flush()
            headers.append(("Content-Encoding", "gzip"))
        start_response("200 OK", headers)
        return [body]

    return app


# --- the server ------------------------------------------------------------------------------


MAX_REQUEST_HEAD = 16 * 1024
"""Bytes of request line plus headers one request may send; more is answered 431. The stdlib
allows 100 headers of 64 KiB each: 10 such requests took the agent from 29 to 313 MiB RSS."""

REQUEST_HEAD_TIMEOUT = 10.0
"""Seconds a client has to send its whole request head (from its first byte, or from the
connection): a per-recv timeout alone lets a client that sends one byte every few seconds
(slowloris) hold a connection for hours. A response must make progress as often."""

MAX_CONNECTIONS = 512
"""Connections open at once; the next is answered 503 and closed. Above the 300 concurrent
idle clients benchmarks/http_load.py holds while /healthz stays fast."""

LISTEN_BACKLOG = 1024
"""listen() backlog (socketserver's default is 5: a burst of scrapers got connection resets).
The kernel caps it at net.core.somaxconn (Linux) or kern.ipc.somaxconn (macOS)."""


class Server:
    """Serves a WSGI app on ``host:port`` from a daemon thread.

    :meth:`start` binds at once, so a port in use raises ``OSError`` (EADDRINUSE) to the
    caller before any thread starts (the agent exits 2 with it). The limits (connections at
    once, request-head bytes and time) default to the module's constants; tests lower them.
    ``port`` 0 takes an ephemeral port; :attr:`port` is the bound one. IPv6 hosts (``::1``)
    work.
    """

    def __init__(
        self,
        app: WSGIApplication,
        host: str,
        port: int,
        *,
        max_connections: int = MAX_CONNECTIONS,
        max_head: int = MAX_REQUEST_HEAD,
        head_timeout: float = REQUEST_HEAD_TIMEOUT,
    ) -> None:
        self.app = app
        self.host = host
        self._requested_port = port
        self._limits = (max_connections, max_head, head_timeout)
        self._httpd: HttpServer | None = None
        self._thread: threading.Thread | None = None
        self._wake: tuple[int, int] | None = None

    @property
    def port(self) -> int:
        """The bound port (the requested one until :meth:`start`)."""
        if self._httpd is None:
            return self._requested_port
        return int(self._httpd.address[1])

    def start(self) -> None:
        """Bind, listen and serve on a daemon thread; raises ``OSError`` if binding fails."""
        if self._httpd is not None:
            raise RuntimeError("Server already started")
        max_connections, max_head, head_timeout = self._limits
        httpd = HttpServer(
            self.app,
            self.host,
            self._requested_port,
            max_connections=max_connections,
            max_head=max_head,
            head_timeout=head_timeout,
            backlog=LISTEN_BACKLOG,
        )
        self._httpd = httpd
        self._wake = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(
            target=httpd.serve,
            args=(self._wake[0],),
            name="metalmem-http",
            daemon=True,
        )
        self._thread.start()
        log.info("event=http_listening host=%s port=%d", self.host, self.port)

    def stop(self, timeout: float = 1.0) -> None:
        """Stop serving, close every connection and the listening socket. The serving
        thread is woken through a pipe, so this returns as soon as it ends (``timeout`` at
        most). Idempotent."""
        httpd, thread, wake = self._httpd, self._thread, self._wake
        if httpd is None:
            return
        if wake is not None:
            os.write(wake[1], b"x")
        if thread is not None:
            thread.join(timeout)
        if wake is not None and not (thread is not None and thread.is_alive()):
            os.close(wake[0])
            os.close(wake[1])
        self._httpd = None
        self._thread = None
        self._wake = None

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
