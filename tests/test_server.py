"""The HTTP endpoints over a real watchdog, served on 127.0.0.1 port 0, fetched over sockets."""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import pathlib
import socket
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

import metalmem
from metalmem.eviction import EvictionMode, Planner, SkipReason
from metalmem.level import Level
from metalmem.metrics import METRIC_NAMES, AgentStats, MetalmemCollector, SampleDurations
from metalmem.metrics import make_registry as make_metrics_registry
from metalmem.pressure import Classifier, Signal
from metalmem.process import StopResult
from metalmem.server import HEALTH_FACTOR, Server, make_app, memstats
from metalmem.targets import Priority, TargetSource
from metalmem.watchdog import EvictionRecord, Listeners, SkipRecord, State, Watchdog

from . import samples
from .helpers import Children, reap
from .test_metrics import SYSTEM_METRICS, FakeClock, Key

SCHEMA_PATH = pathlib.Path(__file__).parent.parent / "docs" / "memstats.schema.json"
SCHEMA = json.loads(SCHEMA_PATH.read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
VERSION = "1.2.3-test"


@dataclasses.dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def fetch(port: int, path: str, *, method: str = "GET", **headers: str) -> Response:
    """One request over a real socket; HTTP errors are answers too."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return Response(r.status, dict(r.headers), r.read())
    except urllib.error.HTTPError as e:
        with e:
            return Response(e.code, dict(e.headers), e.read())


@dataclasses.dataclass
class Agent:
    """A watchdog (not started: tests tick it) behind a served app."""

    dog: Watchdog
    clock: FakeClock
    server: Server
    interval: list[float]
    stats: AgentStats

    @property
    def port(self) -> int:
        return self.server.port

    def get(self, path: str, **kw: Any) -> Response:
        return fetch(self.port, path, **kw)


def serve(
    dog: Watchdog,
    clock: FakeClock,
    *,
    interval: float = 2.0,
    watchdog_enabled: bool = True,
    durations: SampleDurations | None = None,
) -> Agent:
    stats = AgentStats()
    current = [interval]
    collector = MetalmemCollector(
        lambda: dog.state,
        stats=stats,
        durations=durations or SampleDurations(),
        version=VERSION,
        platform=sys.platform,
        clock=clock,
    )
    app = make_app(
        lambda: dog.state,
        collector,
        version=VERSION,
        interval=lambda: current[0],
        watchdog_enabled=watchdog_enabled,
        clock=clock,
    )
    server = Server(app, "127.0.0.1", 0)
    server.start()
    return Agent(dog, clock, server, current, stats)


@pytest.fixture
def agent(sampler: metalmem.Sampler, children: Children) -> Iterator[Agent]:
    """Two targets: a live child (``ns/a``) and a reaped one (``b``)."""
    child = children.spawn(allocate_mib=8)
    gone = children.spawn()
    reap(gone.pid)
    clock = FakeClock()
    durations = SampleDurations()
    dog = Watchdog(
        sampler,
        Classifier(),
        [Key("ns/a", child.pid), Key("b", gone.pid)],
        interval=2.0,
        clock=clock,
        listeners=Listeners(on_sample=[durations.on_sample]),
    )
    a = serve(dog, clock, durations=durations)
    try:
        yield a
    finally:
        a.server.stop()


def exposed_names(text: str) -> dict[str, list[Any]]:
    out = {}
    for f in text_string_to_metric_families(text):
        out[f.name + "_total" if f.type == "counter" else f.name] = f.samples
    return out


# --- /metrics --------------------------------------------------------------------------------


def test_metrics_parse_and_agree_with_the_state(agent: Agent) -> None:
    agent.dog.tick()
    r = agent.get("/metrics")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    families = exposed_names(r.body.decode())
    system = agent.dog.state.system
    assert system is not None
    # every family, with samples where known, and the client library's process_* and python_*
    assert {n for n in families if n.startswith("metalmem_")} == set(METRIC_NAMES)
    assert "process_cpu_seconds_total" in families and "python_info" in families
    for field, name in SYSTEM_METRICS.items():
        assert (families[name] == []) == (getattr(system, field) is None), name
    (total,) = families["metalmem_memory_total_bytes"]
    assert total.value == system.total
    (level,) = families["metalmem_pressure_level"]
    assessment = agent.dog.state.assessment
    assert assessment is not None and level.value == int(assessment.level)
    hot = [s.labels["level"] for s in families["metalmem_pressure_state"] if s.value == 1]
    assert hot == [assessment.level.name.lower()]


def test_metrics_speak_openmetrics_when_asked(agent: Agent) -> None:
    agent.dog.tick()
    r = agent.get("/metrics", Accept="application/openmetrics-text; version=1.0.0")
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("application/openmetrics-text")
    text = r.body.decode()
    assert text.endswith("# EOF\n")
    names = {f.name for f in openmetrics_families(text)}  # type: ignore[no-untyped-call]
    assert "metalmem_evictions" in names and "metalmem_memory_total_bytes" in names
    assert "# UNIT metalmem_memory_total_bytes bytes" in text


# --- /memstats -------------------------------------------------------------------------------


def test_memstats_validates_and_agrees_with_the_state(agent: Agent) -> None:
    agent.dog.tick()
    agent.clock.advance(1.5)
    r = agent.get("/memstats")
    assert r.status == 200 and r.headers["Content-Type"] == "application/json"
    doc = r.json()
    VALIDATOR.validate(doc)
    state = agent.dog.state
    assert state.system is not None and state.assessment is not None
    assert doc["version"] == VERSION and doc["seq"] == state.seq == 1
    assert doc["mode"] == "observe" and doc["interval"] == state.interval
    assert doc["system"]["total"] == state.system.total  # exact bytes, an int in JSON
    assert isinstance(doc["system"]["total"], int)
    assert doc["system"]["available"] == state.system.available
    assert doc["gpu"] == {"limit": state.system.gpu_limit, "used": state.system.gpu_used}
    assert doc["assessment"]["level"] == state.assessment.level.name
    assert doc["heartbeat_age"] >= 1.5 and doc["sample_age"] >= 1.5
    a = state.processes["ns/a"]
    assert isinstance(a, metalmem.ProcessMemory)
    assert doc["processes"]["ns/a"]["memory"]["footprint"] == a.footprint
    assert doc["processes"]["ns/a"]["error"] is None
    assert doc["processes"]["b"]["memory"] is None
    assert doc["processes"]["b"]["error"]["type"] == "NoSuchProcess"
    assert doc["counters"] == dict(state.counters)


def test_memstats_before_the_first_sample_validates(agent: Agent) -> None:
    doc = agent.get("/memstats").json()
    VALIDATOR.validate(doc)
    assert doc["seq"] == 0 and doc["system"] is None and doc["assessment"] is None
    assert doc["sample_age"] is None and doc["processes"] == {}


@pytest.mark.skipif(sys.platform != "linux", reason="Linux signals and /proc")
def test_memstats_lists_the_eviction_and_the_block(
    sampler: metalmem.Sampler, children: Children, tmp_path: pathlib.Path
) -> None:
    from .test_watchdog_eviction import _critical_now, _eviction, _target

    batch = children.spawn(allocate_mib=16)
    keeper = children.spawn()
    pressure = _critical_now(sampler)
    clock = FakeClock()
    dog = Watchdog(
        sampler,
        Classifier(pressure, interval=0.05),
        [
            _target(sampler, batch, "batch", Priority.BATCH),
            _target(sampler, keeper, "team/keeper", Priority.HIGH),
        ],
        interval=0.05,
        min_interval=0.05,
        planner=Planner(_eviction(EvictionMode.ENFORCE), pressure),
        state_dir=str(tmp_path),
        clock=clock,
    )
    agent = serve(dog, clock, interval=0.05)
    try:
        dog.tick()
        clock.advance(2.0)  # past settle_timeout: the record moves to the eviction list
        dog.tick()
        dog.tick()
        doc = agent.get("/memstats").json()
        VALIDATOR.validate(doc)
        assert [(e["key"], e["result"]) for e in doc["evictions"]] == [("batch", "terminated")]
        assert doc["evictions"][0]["pid"] == batch.pid
        assert doc["blocked"] == ["batch"] and doc["processes"]["batch"]["blocked"] is True
        assert doc["processes"]["team/keeper"]["namespace"] is None  # no kube ref given
        assert doc["processes"]["team/keeper"]["priority"] == "high"
        assert doc["skips"] and doc["skips"][-1]["reason"] == "budget_exhausted"
        assert doc["eviction_counts"] == [
            {"reason": "memory.available", "result": "terminated", "count": 1}
        ]
        assert doc["mode"] == "enforce" and doc["settling"] is None
        text = agent.get("/metrics").body.decode()
        assert 'metalmem_evictions_total{reason="memory.available",result="terminated"} 1.0' in (
            text
        )
    finally:
        agent.server.stop()


def test_schema_documents_every_field_and_knows_every_enum_value() -> None:
    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for name, sub in node.get("properties", {}).items():
                assert "description" in sub, f"{path}.{name} has no description"
            for key, sub in node.items():
                walk(sub, f"{path}.{key}")
        elif isinstance(node, list):
            for i, sub in enumerate(node):
                walk(sub, f"{path}[{i}]")

    walk(SCHEMA, "$")
    defs = SCHEMA["$defs"]
    reason = defs["assessment"]["properties"]["reasons"]["items"]["properties"]
    assert set(reason["signal"]["enum"]) == {s.value for s in Signal}
    assert set(defs["level"]["enum"]) == {lvl.name for lvl in Level}
    assert set(defs["skip"]["properties"]["reason"]["enum"]) == {r.value for r in SkipReason}
    assert set(defs["eviction"]["properties"]["result"]["enum"]) == {
        r.value for r in StopResult
    } | {"dry-run"}
    assert set(SCHEMA["properties"]["mode"]["enum"]) == {m.value for m in EvictionMode}
    proc = defs["process"]["properties"]
    assert set(proc["priority"]["enum"]) == {p.value for p in Priority} | {None}
    assert set(proc["source"]["enum"]) == {s.value for s in TargetSource} | {None}


# A State from hand-built records (tests/samples.py): every optional value None or set.
_opt_bytes = st.none() | st.integers(min_value=0, max_value=1 << 50)
_finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12)
_opt_float = st.none() | _finite


@st.composite
def _states(draw: st.DrawFn) -> State:
    t = draw(st.floats(min_value=0, max_value=1e6))
    psi = draw(st.none() | st.builds(metalmem.PSI, *[_opt_float] * 6))
    system = samples.host(
        t,
        total=draw(st.none() | st.integers(min_value=1, max_value=1 << 50)),
        available=draw(_opt_bytes),
        free=draw(_opt_bytes),
        wired=draw(_opt_bytes),
        compressed=draw(_opt_bytes),
        swap_total=draw(_opt_bytes),
        swap_used=draw(_opt_bytes),
        oom_kills=draw(st.none() | st.integers(min_value=0, max_value=1000)),
        os_level=draw(st.none() | st.sampled_from(list(Level))),
        psi=psi,
        gpu_limit=draw(_opt_bytes),
        gpu_used=draw(_opt_bytes),
        counters_timestamp=draw(_opt_float),
        limited=draw(st.booleans()),
    )
    has_sample = draw(st.booleans())
    assessment = Classifier().assess(system, t) if has_sample else None
    keys = draw(st.lists(st.sampled_from(["a", "ns/b", "c#12", "d"]), unique=True, max_size=4))
    targets = tuple(Key(k, 100 + i) for i, k in enumerate(keys))
    processes: dict[str, Any] = {}
    for i, k in enumerate(keys):
        if draw(st.booleans()):
            processes[k] = metalmem.ProcessMemory(
                pid=100 + i,
                start_time=draw(_opt_float),
                rss=draw(_opt_bytes),
                footprint=draw(_opt_bytes),
                wired=draw(_opt_bytes),
                swap=draw(_opt_bytes),
                peak=draw(_opt_bytes),
                anon=draw(_opt_bytes),
                timestamp=t,
                detail_timestamp=draw(_opt_float),
            )
        else:
            processes[k] = draw(
                st.sampled_from(
                    [metalmem.NoSuchProcess("gone", pid=100 + i), OSError(5, "I/O error")]
                )
            )
    evictions = tuple(
        EvictionRecord(
            k, 100, "batch", "memory.available", draw(_opt_bytes),
            draw(st.sampled_from([*(r.value for r in StopResult), "dry-run"])),
            draw(_opt_bytes), draw(st.floats(min_value=0, max_value=60)), 1.7e9, "m",
        )
        for k in draw(st.lists(st.sampled_from(keys or ["x"]), max_size=25))
    )  # fmt: skip
    skips = tuple(
        SkipRecord(r, "why", 1.7e9)
        for r in draw(st.lists(st.sampled_from(list(SkipReason)), max_size=25))
    )
    return State(
        seq=draw(st.integers(min_value=0, max_value=10**9)),
        system=system if has_sample else None,
        processes=processes,
        targets=targets,
        assessment=assessment,
        history=(),
        counters={"ticks": draw(st.integers(min_value=0, max_value=10**9))},
        heartbeat=t,
        started_at=t - 1,
        interval=draw(st.floats(min_value=0.01, max_value=60)),
        sample_duration=draw(st.floats(min_value=0, max_value=10)),
        cpu_seconds=draw(st.floats(min_value=0, max_value=1e6)),
        events=draw(st.booleans()),
        mode=draw(st.sampled_from(list(EvictionMode))),
        blocked=tuple(keys[:1]),
        settling=draw(st.none() | st.sampled_from(keys or ["x"])),
        evictions=evictions,
        skips=skips,
        eviction_counts={("memory.available", "terminated"): len(evictions)},
        skip_counts={r.value: 1 for r in {s.reason for s in skips}},
        reclaimed_total=draw(st.integers(min_value=0, max_value=1 << 40)),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(state=_states(), now=st.floats(min_value=0, max_value=2e6))
def test_memstats_validates_for_arbitrary_states(state: State, now: float) -> None:
    doc = memstats(state, version=VERSION, now=now)
    VALIDATOR.validate(doc)
    json.dumps(doc, allow_nan=False)  # strict JSON
    assert len(doc["evictions"]) == min(20, len(state.evictions))
    assert len(doc["skips"]) == min(20, len(state.skips))
    if state.system is not None:
        assert doc["system"]["total"] == state.system.total


# --- /healthz and /readyz --------------------------------------------------------------------


def test_healthz_follows_the_heartbeat_on_the_watchdog_clock(
    agent: Agent, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="metalmem.server")
    agent.dog.tick()
    assert agent.get("/healthz").status == 200
    agent.clock.advance(HEALTH_FACTOR * 2.0 - 0.5)  # the interval is 2 s
    assert agent.get("/healthz").status == 200
    agent.clock.advance(1.0)
    r = agent.get("/healthz")
    assert r.status == 503
    assert b"stalled" in r.body and b"6.000 s" in r.body  # the reason names the limit
    agent.interval[0] = 10.0  # a reload lengthened the interval: the limit follows
    assert agent.get("/healthz").status == 200
    agent.interval[0] = 2.0
    assert agent.get("/healthz").status == 503
    agent.dog.tick()  # the loop came back
    assert agent.get("/healthz").status == 200
    events = [m.split()[0] for m in caplog.messages if "healthz" in m]
    assert events == [  # once per change, not per request
        "event=healthz_failing",
        "event=healthz_recovered",
        "event=healthz_failing",
        "event=healthz_recovered",
    ]


def test_healthz_says_so_when_the_watchdog_is_disabled(sampler: metalmem.Sampler) -> None:
    clock = FakeClock()
    dog = Watchdog(sampler, Classifier(), interval=1.0, clock=clock)
    agent = serve(dog, clock, interval=1.0, watchdog_enabled=False)
    try:
        clock.advance(3600.0)
        r = agent.get("/healthz")
        assert r.status == 200 and b"disabled" in r.body
        assert agent.get("/readyz").status == 200
    finally:
        agent.server.stop()


def test_readyz_after_the_first_sample(agent: Agent) -> None:
    r = agent.get("/readyz")
    assert r.status == 503 and b"no sample" in r.body
    agent.dog.tick()
    assert agent.get("/readyz").status == 200


# --- routing, methods, side effects ----------------------------------------------------------


def test_unknown_paths_are_404_and_other_methods_405(agent: Agent) -> None:
    for path in ("/", "/nope", "/metrics/", "/memstats.json", "/favicon.ico"):
        assert agent.get(path).status == 404, path
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        for path in ("/metrics", "/memstats", "/healthz", "/readyz"):
            r = agent.get(path, method=method)
            assert r.status == 405, (method, path)
            assert r.headers["Allow"] == "GET, HEAD"


def _raw(port: int, request: bytes) -> bytes:
    """Everything the server sends back for one HTTP/1.0 request (it closes afterwards)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_an_http11_connection_stays_open_across_scrapes(agent: Agent) -> None:
    # Prometheus keeps its connection (issue 15): the second scrape rides the same socket.
    import http.client

    agent.dog.tick()
    conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        first = conn.getresponse()
        assert first.status == 200 and first.getheader("Connection") is None
        body = first.read()
        sock = conn.sock
        conn.request("GET", "/metrics")
        second = conn.getresponse()
        assert second.status == 200 and len(second.read()) > 0 and len(body) > 0
        assert conn.sock is sock and sock is not None  # not reconnected
    finally:
        conn.close()
    # HTTP/1.0, or Connection: close, is answered once and closed.
    reply = _raw(agent.port, b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200") and b"Connection: close" in reply


def test_metrics_are_gzipped_when_the_scraper_asks(agent: Agent) -> None:
    import gzip

    agent.dog.tick()
    plain = agent.get("/metrics")
    packed = agent.get("/metrics", **{"Accept-Encoding": "gzip"})
    assert packed.headers.get("Content-Encoding") == "gzip"
    assert "Content-Encoding" not in plain.headers
    text = gzip.decompress(packed.body).decode()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert names == {f.name for f in text_string_to_metric_families(plain.body.decode())}


def test_head_answers_headers_without_a_body(agent: Agent) -> None:
    agent.dog.tick()
    for path in ("/metrics", "/memstats", "/healthz", "/readyz"):
        # A raw socket: an HTTP client would skip a HEAD response's body even if one came.
        reply = _raw(agent.port, f"HEAD {path} HTTP/1.0\r\n\r\n".encode())
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 200") and body == b"", path
    for path in ("/memstats", "/metrics"):  # the length a GET would have
        answer = agent.get(path, method="HEAD")
        assert int(answer.headers["Content-Length"]) > 100, path


def test_no_endpoint_changes_state(agent: Agent) -> None:
    agent.dog.tick()
    before = agent.dog.state
    for method in ("GET", "HEAD", "POST", "DELETE"):
        for path in ("/metrics", "/memstats", "/healthz", "/readyz", "/x"):
            agent.get(path, method=method)
    assert agent.dog.state is before
    assert agent.dog.tick().seq == 2  # and nothing ticked in between


def test_a_failing_handler_answers_500_and_the_server_goes_on(
    sampler: metalmem.Sampler, caplog: pytest.LogCaptureFixture
) -> None:
    dog = Watchdog(sampler, Classifier(), interval=1.0)
    broken: list[bool] = [False]

    def state() -> State:
        if broken[0]:
            raise RuntimeError("snapshot unavailable")
        return dog.state

    app = make_app(
        state,
        make_metrics_registry(MetalmemCollector(state, version="1", platform="p")),
        version="1",
        interval=lambda: 1.0,
    )
    with Server(app, "127.0.0.1", 0) as server:
        broken[0] = True
        with caplog.at_level(logging.ERROR, logger="metalmem.server"):
            for path in ("/memstats", "/healthz", "/readyz", "/metrics"):
                assert fetch(server.port, path).status == 500, path
        assert "event=http_handler_failed" in caplog.text
        broken[0] = False
        assert fetch(server.port, "/healthz").status == 200


def test_concurrent_scrapes_while_the_loop_runs(sampler: metalmem.Sampler) -> None:
    clock = FakeClock()
    dog = Watchdog(sampler, Classifier(), interval=0.02, min_interval=0.02, clock=clock)
    agent = serve(dog, clock, interval=0.02)
    statuses: list[int] = []
    lock = threading.Lock()

    def scrape_many() -> None:
        for path in ("/metrics", "/memstats") * 10:
            r = agent.get(path)
            if path == "/memstats":
                VALIDATOR.validate(r.json())
            with lock:
                statuses.append(r.status)

    try:
        with dog:
            threads = [threading.Thread(target=scrape_many) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    finally:
        agent.server.stop()
    assert statuses == [200] * 80


# --- the server ------------------------------------------------------------------------------


def _app(sampler: metalmem.Sampler) -> Any:
    dog = Watchdog(sampler, Classifier(), interval=1.0)
    collector = MetalmemCollector(lambda: dog.state, version="1", platform="p")
    return make_app(
        lambda: dog.state, make_metrics_registry(collector), version="1", interval=lambda: 1.0
    )


def test_port_in_use_raises_oserror_at_start(sampler: metalmem.Sampler) -> None:
    app = _app(sampler)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError) as info:
            Server(app, "127.0.0.1", port).start()
        assert info.value.errno == errno.EADDRINUSE
    with Server(app, "127.0.0.1", 0) as first:
        with pytest.raises(OSError):
            Server(app, "127.0.0.1", first.port).start()
        assert fetch(first.port, "/healthz").status == 200  # the first one still serves


def test_stop_closes_the_socket_and_ends_the_thread(sampler: metalmem.Sampler) -> None:
    server = Server(_app(sampler), "127.0.0.1", 0)
    server.start()
    port = server.port
    assert port != 0 and fetch(port, "/healthz").status == 200
    server.stop()
    assert not any(t.name == "metalmem-http" for t in threading.enumerate())
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
        pass
    server.stop()  # idempotent
    again = Server(_app(sampler), "127.0.0.1", port)  # the port is free again
    again.start()
    again.stop()


def test_ipv6_loopback(sampler: metalmem.Sampler) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    try:
        server = Server(_app(sampler), "::1", 0)
        server.start()
    except OSError as exc:
        pytest.skip(f"cannot bind ::1 here: {exc}")
    try:
        with urllib.request.urlopen(f"http://[::1]:{server.port}/healthz", timeout=10) as r:
            assert r.status == 200
    finally:
        server.stop()


def test_request_logs_go_to_the_logger_not_stderr(
    agent: Agent, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    with caplog.at_level(logging.DEBUG, logger="metalmem.server"):
        agent.get("/healthz")
        agent.get("/nope")
    assert "event=http_request" in caplog.text and "/nope" in caplog.text
    assert capfd.readouterr().err == ""


# --- measured, not asserted --------------------------------------------------------------------


def test_scrape_latency_with_16_targets(
    sampler: metalmem.Sampler, children: Children, capsys: pytest.CaptureFixture[str]
) -> None:
    kids = [children.spawn() for _ in range(16)]
    clock = FakeClock()
    dog = Watchdog(
        sampler, Classifier(), [Key(f"ns/m{i}", k.pid) for i, k in enumerate(kids)], clock=clock
    )
    agent = serve(dog, clock)
    try:
        dog.tick()
        text = agent.get("/metrics").body.decode()
        series = exposed_names(text)["metalmem_process_footprint_bytes"]
        assert len(series) == 16
        size = {"/metrics": len(text), "/memstats": len(agent.get("/memstats").body)}
        timings: dict[str, list[float]] = {"/metrics": [], "/memstats": []}
        for _ in range(100):
            for path, out in timings.items():
                t0 = time.perf_counter()
                assert agent.get(path).status == 200
                out.append(time.perf_counter() - t0)
    finally:
        agent.server.stop()
    with capsys.disabled():
        for path, out in timings.items():
            out.sort()
            print(
                f"\n{path} with 16 targets over loopback: median "
                f"{statistics.median(out) * 1e3:.2f} ms, p95 {out[94] * 1e3:.2f} ms, "
                f"{size[path]} bytes",
                end="",
            )


@pytest.mark.skipif(sys.platform != "linux", reason="Linux signals and /proc")
def test_healthz_stays_200_while_a_stop_runs_its_grace(
    sampler: metalmem.Sampler, children: Children
) -> None:
    # The loop publishes no heartbeat while it waits out a victim's grace period; a liveness
    # probe that read that as a stall would kill the agent in the middle of an eviction.
    from metalmem.process import stop

    from .test_watchdog_eviction import _critical_now, _eviction, _target

    victim = children.spawn(allocate_mib=8)
    other = children.spawn(allocate_mib=8)
    clock = FakeClock()
    seen: list[Response] = []
    box: list[Agent] = []

    def stopper(target: Any, s: metalmem.Sampler) -> Any:
        clock.advance(HEALTH_FACTOR * 2.0 + 5.0)  # well past the stall limit of a 2 s loop
        seen.append(box[0].get("/healthz"))
        return stop(target, sampler=s)

    pressure = _critical_now(sampler)
    dog = Watchdog(
        sampler,
        Classifier(pressure, interval=2.0),
        [
            _target(sampler, victim, "victim", Priority.BATCH, grace=2.0),
            _target(sampler, other, "other", Priority.HIGH, grace=2.0),
        ],
        interval=2.0,
        clock=clock,
        planner=Planner(_eviction(EvictionMode.ENFORCE), pressure),
        stopper=stopper,
    )
    box.append(serve(dog, clock))
    try:
        dog.tick()
        assert len(seen) == 1, "the planner did not evict"
        assert seen[0].status == 200 and b"stopping" in seen[0].body
        # Past the stop's own deadline, the same silence is a stall again.
        clock.advance(2.0 + 10.0 + HEALTH_FACTOR * 2.0)
        assert box[0].get("/healthz").status == 503
    finally:
        box[0].server.stop()


def _switches(tid: int) -> int:
    with open(f"/proc/self/task/{tid}/status") as f:
        return sum(
            int(line.split()[1]) for line in f if line.startswith(("voluntary", "nonvoluntary"))
        )


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="Linux per-thread status")
def test_an_idle_server_does_not_wake_and_stops_at_once(sampler: metalmem.Sampler) -> None:
    # serve_forever(poll_interval=0.25) woke four times a second; the server now blocks in
    # select() until a connection or stop() (issue 15: idle wake-ups at most the tick rate).
    server = Server(_app(sampler), "127.0.0.1", 0)
    server.start()
    try:
        assert fetch(server.port, "/healthz").status == 200
        thread = next(t for t in threading.enumerate() if t.name == "metalmem-http")
        assert thread.native_id is not None
        before = _switches(thread.native_id)
        time.sleep(1.5)
        assert _switches(thread.native_id) - before <= 1
        assert fetch(server.port, "/healthz").status == 200  # still serving
    finally:
        t0 = time.monotonic()
        server.stop()
        assert time.monotonic() - t0 < 1.0  # woken by its pipe, not a poll
    assert not any(t.name == "metalmem-http" for t in threading.enumerate())
