"""metalmem.Agent embedded in a host application, without the CLI: lifecycle, reload, the
host's listeners, stop action, Prometheus registry and WSGI server (issue 20)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import wsgiref.simple_server
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import metalmem
from metalmem.eviction import EvictionMode
from metalmem.targets import Priority, Target, TargetSpec
from metalmem.watchdog import EvictionRecord, Listeners, SkipRecord

from .helpers import wait_for
from .test_watchdog_eviction import _critical_now, _eviction

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux signals and /proc")

SLEEPER = (sys.executable, "-c", "import time; time.sleep(120)")  # a llama-server stand-in


@contextlib.contextmanager
def host_children(*names: str) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """The host's own children, by name; whatever is left is killed and reaped, by pid."""
    procs = {name: subprocess.Popen(SLEEPER, stdin=subprocess.DEVNULL) for name in names}
    try:
        yield procs
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


def spec(name: str, proc: subprocess.Popen[bytes], **kw: Any) -> TargetSpec:
    return TargetSpec(name=name, pid=proc.pid, **kw)


def keys(agent: metalmem.Agent) -> set[str]:
    return {t.key for t in agent.state.targets}


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def call(app: Any, path: str) -> tuple[str, bytes]:
    """One GET through a WSGI app, in this thread."""
    environ: dict[str, Any] = {}
    wsgiref.util.setup_testing_defaults(environ)
    environ["PATH_INFO"] = path
    status: list[str] = []
    body = b"".join(app(environ, lambda s, h, exc=None: status.append(s)))
    return status[0], body


def metalmem_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("metalmem-")}


def tasks_and_fds() -> tuple[int, int]:
    """This process's threads (Python's and the sampler's C ones) and open fds."""
    return len(os.listdir("/proc/self/task")), len(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
def _threads_end() -> Iterator[None]:
    """Every test leaves the process as it found it (later tests count threads)."""
    before = set(threading.enumerate())
    yield
    wait_for(lambda: set(threading.enumerate()) <= before, timeout=10, what="threads end")


# --- lifecycle ------------------------------------------------------------------------------


def test_two_agents_start_and_stop_in_one_process(tmp_path: Any) -> None:
    before = metalmem_threads()
    baseline = tasks_and_fds()
    for run in range(2):
        config = metalmem.AgentConfig(
            interval=0.05, listen=("127.0.0.1", 0), state_dir=str(tmp_path)
        )
        with metalmem.Agent(config) as agent:
            port = agent.port
            assert port
            wait_for(lambda p=port: get(p, "/readyz")[0] == 200, timeout=10, what="readyz")
            assert {"metalmem-watchdog", "metalmem-http"} <= metalmem_threads(), run
        with pytest.raises(OSError):
            get(port, "/healthz")  # the port is closed
        with pytest.raises(RuntimeError, match="runs once"):
            agent.start()
        wait_for(lambda: metalmem_threads() <= before, timeout=10, what="its threads end")
        # Nothing leaks: the pressure-event thread and fds, the stop path's sampler, sockets.
        wait_for(lambda: tasks_and_fds() == baseline, timeout=10, what=f"{baseline} again")


def test_bad_settings_are_library_errors_naming_the_key(tmp_path: Any) -> None:
    cases = [
        ({"interval": "soon"}, "interval"),
        ({"listen": "nonsense"}, "listen"),
        ({"pressure": {"warning_available": 0.05}}, "pressure"),
        ({"targets": [{"name": "x"}]}, "targets"),
        ({"log_level": "loud"}, "log_level"),
        ({"discover": ".*"}, "discover"),
        ({"colour": "red"}, "colour"),
    ]
    for mapping, key in cases:
        with pytest.raises(metalmem.ConfigError) as info:
            metalmem.AgentConfig.from_mapping(mapping)
        assert info.value.key == key and key in str(info.value), (mapping, info.value)
        assert "\n" not in str(info.value)
    # ...and what only running it can find: still a ConfigError, before anything runs.
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for config, key in [
        (metalmem.AgentConfig(scope=str(tmp_path / "no-such-cgroup")), "scope"),
        (metalmem.AgentConfig(state_dir=str(a_file)), "state_dir"),
        (metalmem.AgentConfig(record=str(tmp_path)), "record"),
    ]:
        with pytest.raises(metalmem.ConfigError) as info:
            metalmem.Agent(config)
        assert info.value.key == key, info.value
    with socket_in_use() as port:
        agent = metalmem.Agent(metalmem.AgentConfig(listen=("127.0.0.1", port)))
        with pytest.raises(metalmem.ConfigError) as info:
            agent.start()
        assert info.value.key == "listen" and "cannot listen" in str(info.value)


@contextlib.contextmanager
def socket_in_use() -> Iterator[int]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_reload_applies_thresholds_and_targets_and_refuses_bad_discovery() -> None:
    with host_children("a", "b") as procs:
        config = metalmem.AgentConfig(interval=0.05, targets=(spec("a", procs["a"]),))
        with metalmem.Agent(config, serve_http=False) as agent:
            wait_for(lambda: keys(agent) == {"a"}, timeout=10, what="target a")
            new = config.replace(
                pressure={"warning_available": 0.5, "critical_available": 0.25},
                targets=(spec("a", procs["a"]), spec("b", procs["b"])),
            )
            agent.reload(new)
            wait_for(lambda: keys(agent) == {"a", "b"}, timeout=10, what="target b adopted")
            status, body = call(agent.wsgi_app, "/memstats")
            assert status.startswith("200")
            assert json.loads(body)["thresholds"]["memory.available"] == {
                "warning": 0.5,
                "critical": 0.25,
            }
            # Both children are python: discovery capped at 1 matches too much. Refused whole.
            with pytest.raises(metalmem.ConfigError) as info:
                agent.reload(new.replace(discover="python", max_matches=1, targets=()))
            assert info.value.key == "discover"
            assert agent.config.targets == new.targets and agent.config.discover is None


# --- the host's hooks -----------------------------------------------------------------------


def test_an_eviction_goes_through_the_hosts_stop_action() -> None:
    levels: list[tuple[metalmem.Level, metalmem.Level]] = []
    evictions: list[EvictionRecord] = []
    stopped: list[str] = []
    with metalmem.Sampler() as s:
        pressure = _critical_now(s)
    with host_children("batch", "chat") as procs:

        def stop_action(target: Target) -> None:  # the host stops its own child, its way
            stopped.append(target.key)
            procs[target.key].terminate()
            procs[target.key].wait(10)

        config = metalmem.AgentConfig(
            interval=0.05,
            pressure=pressure,
            eviction=_eviction(EvictionMode.ENFORCE),
            targets=(
                spec("batch", procs["batch"], priority=Priority.BATCH),
                spec("chat", procs["chat"], priority=Priority.HIGH),
            ),
        )
        listeners = Listeners(
            on_level_change=[lambda old, new, a: levels.append((old, new))],
            on_eviction=[evictions.append],
        )
        with metalmem.Agent(config, listeners=listeners, stop_target=stop_action, serve_http=False):
            wait_for(lambda: evictions, timeout=20, what="an eviction")
        assert stopped == ["batch"]
        assert evictions[0].key == "batch" and evictions[0].result == "terminated"
        assert "host's stop action" in evictions[0].message
        assert levels[0] == (metalmem.Level.NORMAL, metalmem.Level.CRITICAL)
        assert procs["chat"].poll() is None  # the floor of 1 keeps the last one


def test_the_safety_gate_still_decides_what_reaches_the_hosts_stop_action() -> None:
    skips: list[SkipRecord] = []
    stopped: list[str] = []
    with metalmem.Sampler() as s:
        pressure = _critical_now(s)
    with host_children("guarded", "victim") as procs:

        def ended_elsewhere(rec: EvictionRecord) -> None:
            # Between the plan and the stop, the host's own supervision ends the victim: the
            # gate, asked again right before the stop action, must refuse it.
            procs[rec.key].kill()
            procs[rec.key].wait(10)

        config = metalmem.AgentConfig(
            interval=0.05,
            pressure=pressure,
            eviction=_eviction(EvictionMode.ENFORCE, floor=0),
            targets=(
                # The lowest priority, so it would go first; protected, so it never goes.
                spec("guarded", procs["guarded"], priority=Priority.BATCH, protected=True),
                spec("victim", procs["victim"], priority=Priority.NORMAL),
            ),
        )
        listeners = Listeners(on_skip=[skips.append], on_evicting=[ended_elsewhere])
        with metalmem.Agent(
            config, listeners=listeners, stop_target=lambda t: stopped.append(t.key),
            serve_http=False,
        ):  # fmt: skip
            wait_for(
                lambda: any(r.explanation.startswith("safety gate") for r in skips),
                timeout=20,
                what="the gate's refusal",
            )
        gate = [r for r in skips if r.explanation.startswith("safety gate")]
        assert gate[0].reason.value == "gone", gate
        assert stopped == []
        assert procs["guarded"].poll() is None


def _families(registry: CollectorRegistry) -> Iterable[str]:
    return {f.name for f in registry.collect()}


def test_metrics_in_the_hosts_registry_and_the_app_in_the_hosts_server() -> None:
    registry = CollectorRegistry()
    for run in range(2):  # the collector leaves with its agent: a second one registers again
        with metalmem.Agent(
            metalmem.AgentConfig(interval=0.05), registry=registry, serve_http=False
        ) as agent:
            assert agent.port is None and "metalmem-http" not in metalmem_threads()
            wait_for(
                lambda: registry.get_sample_value("metalmem_memory_available_bytes"),
                timeout=10,
                what="a sample in the host's registry",
            )
            assert all(name.startswith("metalmem_") for name in _families(registry)), run
            with host_server(agent) as port:
                assert get(port, "/") == (200, "the host's own page")
                assert get(port, "/guardian/readyz")[0] == 200
                status, body = get(port, "/guardian/metrics")
                assert status == 200 and "metalmem_pressure_level" in body
                status, body = get(port, "/guardian/memstats")
                assert status == 200 and json.loads(body)["system"]["total"] > 0
        assert list(_families(registry)) == []


class _Quiet(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def host_server(agent: metalmem.Agent) -> Iterator[int]:
    """The host's WSGI server, with the agent's endpoints mounted under /guardian."""

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith("/guardian/"):
            inner = {**environ, "SCRIPT_NAME": "/guardian", "PATH_INFO": path[len("/guardian") :]}
            return agent.wsgi_app(inner, start_response)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"the host's own page"]

    server = wsgiref.simple_server.make_server("127.0.0.1", 0, app, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
