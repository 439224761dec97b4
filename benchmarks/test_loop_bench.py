"""The loop: one watchdog tick with 16 and 256 targets (bare, and full: sample, assess, plan,
publish State, metrics collect), the collector and a real /metrics scrape, the Classifier and
the Planner alone, and the loop thread's own CPU share at a 1 s interval (reported, not
asserted)."""

from __future__ import annotations

import dataclasses
import http.client
import statistics
import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.exposition import generate_latest

import metalmem
from metalmem.level import Level
from metalmem.metrics import make_registry
from metalmem.pressure import Classifier
from metalmem.server import Server, make_app
from metalmem.watchdog import Watchdog

from .common import QUICK
from .conftest import Loop, critical_policy, enforce_policy, make_targets


@dataclasses.dataclass(frozen=True)
class _Target:
    key: str
    pid: int


@pytest.fixture(scope="module")
def sampler() -> Iterator[metalmem.Sampler]:
    with metalmem.Sampler() as s:
        yield s


@pytest.mark.parametrize("n", [16, 256])
def test_tick_metalmem(benchmark: Any, children: list[int], n: int) -> None:
    """The bare tick: no planner, no listeners, no collect (the loop's own floor)."""
    benchmark.group = f"tick-{n}"
    targets = [_Target(f"t{i}", pid) for i, pid in enumerate(children[:n])]
    with metalmem.Sampler() as s:
        dog = Watchdog(s, Classifier(interval=1.0), targets, interval=1.0)
        state = benchmark(dog.tick)
    assert len(state.processes) == n


@pytest.mark.parametrize("level", ["normal", "critical"])
@pytest.mark.parametrize("n", [16, 256])
def test_tick_full(
    benchmark: Any, sampler: metalmem.Sampler, children: list[int], n: int, level: str
) -> None:
    """Tick + collect as the agent runs them. ``normal``: the steady state (the planner only
    checks settle and unblock). ``critical``: dry-run under CRITICAL, so the planner ranks
    every target on every tick and nothing is signalled."""
    benchmark.group = f"tick-{n}"
    loop = Loop(sampler, make_targets(sampler, children[:n]), critical=level == "critical")
    assert benchmark(loop.full_tick) > 0
    state = loop.dog.state
    assert state.assessment is not None and len(state.processes) == n
    assert state.assessment.level == (Level.CRITICAL if level == "critical" else Level.NORMAL)
    assert (state.plan is not None) == (level == "critical")


@pytest.mark.parametrize("n", [16, 256])
def test_tick_full_at_1s(
    benchmark: Any, sampler: metalmem.Sampler, children: list[int], n: int
) -> None:
    """The same NORMAL tick + collect, one round per 1.05 s, as the agent runs it at a 1 s
    interval: the sampler's once-a-second reads (/proc/vmstat, each target's
    /proc/PID/status) are due on every round, and the caches are as cold as between two real
    ticks. A back-to-back loop amortises both away, so this is the honest per-tick cost."""
    benchmark.group = f"tick-{n}"
    loop = Loop(sampler, make_targets(sampler, children[:n]), critical=False)
    loop.full_tick()
    del loop.ticks[:], loop.collects[:]
    benchmark.pedantic(
        loop.full_tick, setup=lambda: time.sleep(1.05), rounds=3 if QUICK else 12, iterations=1
    )
    # The split, for the report: the watchdog's own tick duration and the collect after it.
    benchmark.extra_info["tick_median_s"] = statistics.median(loop.ticks)
    benchmark.extra_info["collect_median_s"] = statistics.median(loop.collects)


@pytest.mark.parametrize("n", [16, 256])
def test_collect_metalmem(
    benchmark: Any, sampler: metalmem.Sampler, children: list[int], n: int
) -> None:
    """One scrape's body over one State, as the agent's /metrics writes it (families, text, its
    own process metrics; metalmem/exposition.py)."""
    benchmark.group = f"collect-{n}"
    loop = Loop(sampler, make_targets(sampler, children[:n]), critical=False)
    loop.dog.tick()
    assert len(benchmark(loop.collector.exposition)) > 0


@pytest.fixture(scope="module")
def served(sampler: metalmem.Sampler, children: list[int]) -> Iterator[tuple[Loop, Server]]:
    """The agent's HTTP app over a 16-target loop, on 127.0.0.1 port 0."""
    loop = Loop(sampler, make_targets(sampler, children[:16]), critical=False)
    loop.dog.tick()
    app = make_app(
        lambda: loop.dog.state, loop.collector, version=metalmem.__version__, interval=lambda: 1.0
    )
    with Server(app, "127.0.0.1", 0) as server:
        yield loop, server


def test_scrape_metalmem_http(benchmark: Any, served: tuple[Loop, Server]) -> None:
    """GET /metrics over loopback, a new connection each time (a scraper that keeps its
    connection, as Prometheus does, saves the connect and accept)."""
    benchmark.group = "scrape-16"
    _, server = served

    def scrape() -> int:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        try:
            conn.request("GET", "/metrics")
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == 200
            return len(body)
        finally:
            conn.close()

    assert benchmark(scrape) > 0


def test_scrape_render_only(benchmark: Any, served: tuple[Loop, Server]) -> None:
    """The scrape's body in process, without HTTP (the agent's path)."""
    benchmark.group = "scrape-16"
    loop, _ = served
    assert len(benchmark(loop.collector.exposition)) > 0


def test_scrape_render_prometheus_client(benchmark: Any, served: tuple[Loop, Server]) -> None:
    """The same families through prometheus-client's registry and generate_latest (what the
    agent did before issue 15, and what a host application's registry does)."""
    benchmark.group = "scrape-16"
    loop, _ = served
    registry = make_registry(loop.collector, self_metrics=False)
    assert len(benchmark(generate_latest, registry)) > 0


def test_classifier_assess(benchmark: Any) -> None:
    benchmark.group = "classifier"
    with metalmem.Sampler() as s:
        m = s.system()
    clf = Classifier(interval=1.0)
    clock = iter(range(10**9))
    benchmark(lambda: clf.assess(m, float(next(clock))))


@pytest.mark.parametrize("n", [16, 256])
def test_planner_plan(
    benchmark: Any, sampler: metalmem.Sampler, children: list[int], n: int
) -> None:
    """Planner.plan at CRITICAL (actionable) over n live targets: rank, gates, victims."""
    benchmark.group = f"planner-{n}"
    pids = children[:n]
    targets = make_targets(sampler, pids)
    system = sampler.system()
    by_pid = sampler.processes(pids)
    processes = {t.key: by_pid[t.pid] for t in targets}
    assessment = Classifier(critical_policy(), interval=1.0).assess(system, 1.0)
    assert assessment.level == Level.CRITICAL and assessment.actionable
    planner = metalmem.Planner(enforce_policy(), critical_policy())
    plan = benchmark(planner.plan, assessment, system, processes, targets, 2.0)
    assert plan.victims and len(plan.candidates) == n


def test_loop_thread_cpu_share_at_1s(children: list[int]) -> None:
    """Runs the real loop for 10 s (3 s in quick mode) with 16 targets; prints the thread's
    CPU share (the agent soak, benchmarks/agent_bench.py, measures the whole process)."""
    targets = [_Target(f"t{i}", pid) for i, pid in enumerate(children[:16])]
    with metalmem.Sampler() as s:
        dog = Watchdog(s, Classifier(interval=1.0), targets, interval=1.0)
        with dog:
            time.sleep(0.5)
            cpu0, t0 = dog.state.cpu_seconds, dog.state.heartbeat
            time.sleep(3.2 if QUICK else 10.2)
            cpu1, t1 = dog.state.cpu_seconds, dog.state.heartbeat
    share = (cpu1 - cpu0) / (t1 - t0)
    print(
        f"\nwatchdog thread CPU at 1 s, 16 targets: {share * 100:.4f}% of one core "
        f"({cpu1 - cpu0:.6f} s over {t1 - t0:.1f} s)"
    )
