"""Publish, then act (issue 14): the level change, the State, the Kubernetes condition and an
"Evicting" event go out before the stop's first signal, and the loop keeps sampling and
publishing while the stop runs (its own thread), so /memstats and /metrics stay current.

Real processes, real signals, the real agent, the contract fake of the API server.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import time
from typing import Any

import pytest

import metalmem
from metalmem.eviction import EvictionMode, EvictionPolicy, Planner
from metalmem.kube import KubeOptions, KubeReporter
from metalmem.pressure import Classifier
from metalmem.targets import KubeRef, Priority, StopMethod, Target
from metalmem.watchdog import Listeners, Watchdog

from .agentproc import AgentProcess
from .helpers import Children, wait_for
from .test_gate_findings import _config, _target
from .test_watchdog_eviction import _critical_now

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux signals and /proc")
kubefake = pytest.importorskip("tests.kubefake")

# SIGTERM: note the monotonic time (one clock for every process of the machine), then exit.
VICTIM = r"""
import os, signal, sys, time
path = sys.argv[1]
def on_term(signum, frame):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, repr(time.monotonic()).encode())
    os._exit(0)
signal.signal(signal.SIGTERM, on_term)
hold = bytearray(b"\x01") * (8 << 20)
print("ready", flush=True)
time.sleep(120)
"""


def _victim(path: pathlib.Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-c", VICTIM, str(path)], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    return proc


def _body(req: Any) -> dict[str, Any]:
    return req.body if isinstance(req.body, dict) else {}


def test_level_condition_and_evicting_event_precede_the_first_signal(
    tmp_path: pathlib.Path,
) -> None:
    term = tmp_path / "term"
    victim = _victim(term)
    marks: dict[str, float] = {}
    try:
        with kubefake.FakeKube() as fake, metalmem.Sampler() as s:
            fake.create({
                "apiVersion": "inference.llmkube.dev/v1alpha1", "kind": "InferenceService",
                "metadata": {"name": "chat", "namespace": "llm"}, "spec": {"modelRef": "m"},
            })  # fmt: skip
            policy = _critical_now(s, transition_period=0.0)
            options = KubeOptions(
                kubeconfig=str(fake.write_kubeconfig(tmp_path / "kubeconfig", namespace="llm")),
                node_name="node-1", refresh=0.2, request_timeout=2.0, backoff_initial=0.05,
                backoff_max=0.2, suspend_grace=0.2,
            )  # fmt: skip
            reporter = KubeReporter(options, pressure=policy)
            reporter.start()
            listeners = Listeners(
                on_level_change=[lambda o, n, a: marks.setdefault("level", time.monotonic())],
                on_evicting=[lambda r: marks.setdefault("evicting", time.monotonic())],
            )
            reporter.attach(listeners)
            start = s.process(victim.pid).start_time
            assert start is not None
            target = Target(
                "llm/chat", victim.pid, start, Priority.BATCH, stop=StopMethod(grace=2.0),
                kube=KubeRef("llm", "chat"),
            )  # fmt: skip
            eviction = EvictionPolicy(
                mode=EvictionMode.ENFORCE, min_managed_share=0.0, floor=0, cooldown=0.0,
                min_reclaim=0, settle_timeout=0.5,
            )  # fmt: skip
            dog = Watchdog(
                s, Classifier(policy, interval=0.1), lambda: reporter.overlay([target]),
                interval=0.1, min_interval=0.05, planner=Planner(eviction, policy),
                listeners=listeners, stopper=reporter.stopper, adopted=lambda: [target],
            )  # fmt: skip
            dog.gate.metadata = reporter.metadata
            reporter.gate = dog.gate.check
            try:
                with dog:
                    wait_for(term.exists, timeout=20, what="the SIGTERM")
                    wait_for(lambda: term.read_text(), timeout=5, what="its time")
            finally:
                reporter.stop()
            requests = fake.requests
    finally:
        victim.kill()
        victim.wait()
    signalled = float(term.read_text())
    condition = next(
        r for r in requests
        if r.resource.endswith("/status") and "Critical" in repr(_body(r))
    )  # fmt: skip
    evicting = next(r for r in requests if _body(r).get("reason") == "Evicting")
    suspend = next(
        r for r in requests
        if r.method == "PATCH" and not r.resource.endswith("/status")
        and _body(r).get("spec", {}).get("suspend") is True
    )  # fmt: skip
    # In this order: level change (listeners), condition, "Evicting", suspend, first signal.
    assert marks["level"] < marks["evicting"] < signalled, marks
    assert condition.at < evicting.at < suspend.at < signalled, (
        condition.at, evicting.at, suspend.at, signalled,
    )  # fmt: skip


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} in /metrics")


def _first_document(agent: AgentProcess) -> Any:
    def check() -> dict[str, Any] | None:
        doc = agent.memstats()
        return doc if doc["seq"] >= 1 else None

    return check


def test_memstats_and_metrics_stay_current_during_a_10_s_stop(
    tmp_path: pathlib.Path, children: Children
) -> None:
    interval = 0.5
    stubborn = children.spawn(allocate_mib=16, ignore_term=True)
    keeper = children.spawn(allocate_mib=8)
    config = tmp_path / "agent.toml"
    _config(
        config,
        [_target("stubborn", stubborn.pid, "batch"), _target("keeper", keeper.pid, "high")],
        eviction='grace = "10s"',
    )
    args = [
        "--eviction-enabled", "--memory-watchdog-interval", "500ms", "--config", str(config),
        "--state-dir", str(tmp_path / "state"),
    ]  # fmt: skip
    with AgentProcess(args, tmp_path / "agent.log") as agent:
        # A document from the first tick on: the first CRITICAL tick publishes before it acts.
        doc = wait_for(_first_document(agent), timeout=10, what="the first tick's document")
        assert doc["assessment"] is not None
        wait_for(lambda: agent.memstats()["stopping"] is not None, timeout=15, what="the stop")
        seen = []
        while (doc := agent.memstats())["stopping"] is not None:
            assert doc["stopping"]["key"] == "stubborn"
            assert doc["assessment"]["level"] == "CRITICAL"
            assert doc["sample_age"] < 2 * interval, doc["sample_age"]
            metrics = agent.get("/metrics")[2]
            assert _metric(metrics, "metalmem_watchdog_heartbeat_age_seconds") < 2 * interval
            seen.append((time.monotonic(), doc["seq"]))
            time.sleep(0.2)
        wait_for(lambda: "event=stop key=stubborn" in agent.log(), timeout=20, what="the stop")
        line = next(x for x in agent.log().splitlines() if "event=stop key=stubborn" in x)
        assert "result=killed" in line, line
        assert seen[-1][0] - seen[0][0] >= 8.0, seen  # the whole grace was watched
        assert seen[-1][1] - seen[0][1] >= 10  # ticks went on all along
