"""Model-level eviction against a real llama-server router (``--models-dir``).

The router runs each loaded model as a child ``llama-server`` instance. Discovery maps the
instances to the model ids of the router's ``GET /models``; a stop unloads the model through
``POST /models/unload`` (after the safety gate), waits for the instance to exit, and leaves the
router and its other models serving.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

import metalmem
from metalmem.eviction import EvictionMode, EvictionPolicy, Planner, SkipReason
from metalmem.gate import SafetyGate
from metalmem.pressure import Classifier, PressurePolicy
from metalmem.process import StopResult, stop
from metalmem.targets import Priority, StopMethod, TargetSpec, TargetTracker
from metalmem.unload import UnloadAction
from metalmem.watchdog import EvictionRecord, Listeners, Watchdog

from ..helpers import wait_for
from ..test_watchdog import QUIET
from .llama import LlamaServer, MiB, children_of, http

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="/proc")


def _router(
    servers: list[LlamaServer], tmp_path: Path, models: dict[str, Path], names: dict[str, str]
) -> tuple[LlamaServer, dict[str, int]]:
    """A router over ``names`` (model id -> fixture model), every model loaded; returns the
    router and ``{model id: instance pid}``."""
    d = tmp_path / "router-models"
    d.mkdir()
    for model_id, source in names.items():
        try:
            os.link(models[source], d / f"{model_id}.gguf")
        except OSError:
            shutil.copy(models[source], d / f"{model_id}.gguf")
    router = LlamaServer(
        ["--models-dir", str(d), "--no-models-autoload", "-c", "512", "-t", "1", "--no-warmup"],
        tmp_path / "router.log",
    )
    servers.append(router)
    router.wait_healthy()
    for model_id in names:
        status, body = http("POST", router.url + "/models/load", {"model": model_id})
        assert status == 200, body

    def loaded() -> dict[str, str] | None:
        _, doc = http("GET", router.url + "/models")
        states = {e["id"]: e["status"]["value"] for e in doc["data"]}
        return states if all(states.get(m) == "loaded" for m in names) else None

    wait_for(loaded, timeout=60, interval=0.2, what=f"models loaded: {router.log()[-2000:]}")
    kids = children_of(router.pid)
    assert len(kids) == len(names), kids
    pids = {}
    for pid in kids:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        for model_id in names:
            if any(a.endswith(f"{model_id}.gguf".encode()) for a in argv):
                pids[model_id] = pid
    assert sorted(pids) == sorted(names), kids
    return router, pids


def _states(router: LlamaServer) -> dict[str, str]:
    _, doc = http("GET", router.url + "/models")
    return {e["id"]: e["status"]["value"] for e in doc["data"]}


def test_discovered_router_model_is_unloaded_and_the_router_keeps_serving(
    sampler: metalmem.Sampler, servers: list[LlamaServer], tmp_path: Path, models: dict[str, Path]
) -> None:
    router, pids = _router(servers, tmp_path, models, {"tiny-a": "tiny", "tiny-b": "tiny"})
    tracker = TargetTracker(sampler, [])
    targets = {t.key: t for t in tracker.refresh().targets}
    assert router.pid not in {t.pid for t in targets.values()}, "a router is not a target"
    assert {k: t.pid for k, t in targets.items() if k.startswith("tiny-")} == pids
    a = targets["tiny-a"]
    assert a.stop.unload == UnloadAction("llama-server", router.url, "tiny-a")

    # The gate counts this router's models only (other llama-servers may run on a shared host).
    gate = SafetyGate(
        sampler, lambda: [t for t in tracker.targets if t.pid in pids.values()], lambda: 1
    )
    rec = stop(a, sampler=sampler, gate=gate.check)
    assert rec.result is StopResult.UNLOADED, rec
    assert rec.steps == ("unload",), rec
    assert not os.path.exists(f"/proc/{pids['tiny-a']}") or (
        Path(f"/proc/{pids['tiny-a']}/stat").read_text().split(")")[-1].split()[0] == "Z"
    )
    # The router's monitor thread marks the model unloaded once it reaped the instance.
    want = {"tiny-a": "unloaded", "tiny-b": "loaded"}
    wait_for(lambda: _states(router) == want, timeout=10, what=f"{want}: {_states(router)}")
    assert router.proc.poll() is None
    status, body = http(
        "POST", router.url + "/completion", {"model": "tiny-b", "prompt": "Hi", "n_predict": 4}
    )
    assert status == 200 and body["content"] is not None, body

    # The gate guards the unload like any stop: the last model is kept (floor 1), and the
    # request is never sent.
    targets = {t.key: t for t in tracker.refresh().targets}
    assert "tiny-a" not in targets
    b = targets["tiny-b"]
    rec = stop(b, sampler=sampler, gate=gate.check)
    assert rec.result is StopResult.DENIED and SkipReason.FLOOR.value in rec.message, rec
    assert rec.steps == ()
    assert _states(router)["tiny-b"] == "loaded"


def _critical_now(s: metalmem.Sampler) -> PressurePolicy:
    m = s.system()
    assert m.total is not None and m.available is not None
    critical = min((m.available + 256 * MiB) / m.total, 0.997)
    return PressurePolicy(
        warning_available=critical + 0.001,
        critical_available=critical,
        margin=0.0005,
        transition_period=30.0,
        **QUIET,  # type: ignore[arg-type]
    )


def test_configured_router_model_is_ranked_and_unloaded_by_the_watchdog(
    sampler: metalmem.Sampler, servers: list[LlamaServer], tmp_path: Path, models: dict[str, Path]
) -> None:
    """Two [[target]] tables name the router's instances by command line, with priorities and
    ``unload = "llama-server"``; at CRITICAL the watchdog unloads the batch one only."""
    router, pids = _router(servers, tmp_path, models, {"bulk": "big", "chat": "tiny"})
    specs = [
        TargetSpec(
            name=name,
            cmdline=rf"{name}\.gguf",
            priority=prio,
            stop=StopMethod(grace=10.0, unload=UnloadAction("llama-server", router.url, name)),
        )
        for name, prio in (("bulk", Priority.BATCH), ("chat", Priority.HIGH))
    ]
    tracker = TargetTracker(sampler, specs, discover_pattern=None)
    tracker.refresh()
    assert {t.key: t.pid for t in tracker.targets} == pids
    pressure = _critical_now(sampler)
    policy = EvictionPolicy(
        mode=EvictionMode.ENFORCE, min_managed_share=0.0, floor=1, cooldown=0.0,
        max_evictions=1, window=600.0, min_reclaim=0, settle_timeout=1.0,
    )  # fmt: skip
    records: list[EvictionRecord] = []
    dog = Watchdog(
        sampler,
        Classifier(pressure, interval=0.05),
        lambda: tracker.targets,
        interval=0.05,
        min_interval=0.05,
        planner=Planner(policy, pressure),
        listeners=Listeners(on_eviction=[records.append]),
    )
    with dog:
        wait_for(lambda: records, timeout=30, what="the unload")
    assert [(r.key, r.result) for r in records] == [("bulk", "unloaded")], records
    want = {"bulk": "unloaded", "chat": "loaded"}
    wait_for(lambda: _states(router) == want, timeout=10, what=f"{want}: {_states(router)}")
    assert router.proc.poll() is None and pids["chat"] in children_of(router.pid)
    assert "unloaded" in (records[0].message or "")
