"""Real llama-server processes: the agent's tick cost with 4 of them as targets, and the time
from CRITICAL to a model's memory back, for a signal stop and for a router unload.

    python benchmarks/real_server.py --json benchmarks/real_server.json [--repeat 3]

Needs the llama-server that ``make e2e`` builds (tests/e2e/llama_build.py) and PyPI's ``gguf``
(the ``e2e`` extra); the time-to-memory part also needs root and a memory cgroup
(tests/cgroups.py). What is missing is recorded as ``skipped`` and the report says so.
``METALMEM_BENCH_SKIP`` containing ``real`` skips the whole part.

- **Tick**: 4 servers on the 17 MB model, discovered by executable name; ``Watchdog.tick()``
  (sample the host and the 4 processes, assess, publish; no planner) timed 500 times
  (``--ticks``) on the calling thread: wall and thread CPU per tick. Discovery itself
  (``TargetTracker.refresh()``, which the agent runs every 5 s) is timed the same way.
- **CRITICAL to memory back**: in a memory cgroup, a victim (the 153 MB model read into
  anonymous memory: ``--load-mode none``, ``--no-mmap`` in older builds; ``-c 8192``) and a
  keeper (the 17 MB model). Once both serve, the group's limit is set so that only 15 % of it
  is available (CRITICAL below 25 %) and a watchdog ticking every 50 ms starts. Measured:
  from the first tick that assessed CRITICAL to the end of the settle phase, when
  ``available`` rose by half the victim's footprint (the watchdog's own settle rule); the
  stop's own duration beside it. *Signal*: two standalone servers, the victim stopped by
  SIGTERM. *Unload*: one router (``--models-dir``, ``--load-mode none`` for every instance)
  with both models loaded, the victim's model unloaded by ``POST /models/unload`` and
  verified by its instance's exit.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import QUICK, SKIP, machine  # noqa: E402

import metalmem  # noqa: E402
from metalmem.eviction import EvictionMode, EvictionPolicy, Planner  # noqa: E402
from metalmem.pressure import Classifier, PressurePolicy  # noqa: E402
from metalmem.targets import Priority, StopMethod, TargetSpec, TargetTracker  # noqa: E402
from metalmem.unload import UnloadAction  # noqa: E402
from metalmem.watchdog import EvictionRecord, Listeners, Watchdog  # noqa: E402

MiB = 1 << 20
COMMON = ["-c", "512", "-t", "1", "--no-warmup"]


def _quiet() -> dict[str, Any]:
    from tests.test_watchdog import QUIET

    return dict(QUIET)


def tick_cost(models: dict[str, pathlib.Path], tmp: pathlib.Path, ticks: int) -> dict[str, Any]:
    from tests.e2e.llama import LlamaServer

    servers = [
        LlamaServer(["-m", str(models["tiny"]), "--alias", f"bench-{i}", *COMMON], tmp / f"{i}.log")
        for i in range(4)
    ]
    try:
        for s in servers:
            s.wait_healthy()
        with metalmem.Sampler() as sampler:
            tracker = TargetTracker(sampler, [])
            refresh = []
            for _ in range(max(20, ticks // 10)):
                t0 = time.perf_counter()
                tracker.refresh()
                refresh.append(time.perf_counter() - t0)
            targets = [t for t in tracker.targets if t.key.startswith("bench-")]
            assert len(targets) == 4, tracker.targets
            dog = Watchdog(sampler, Classifier(PressurePolicy(**_quiet())), targets)
            wall, cpu = [], []
            for _ in range(ticks):
                c0, t0 = time.thread_time(), time.perf_counter()
                state = dog.tick()
                wall.append(time.perf_counter() - t0)
                cpu.append(time.thread_time() - c0)
            assert len(state.processes) == 4
        return {
            "targets": 4,
            "ticks": ticks,
            "tick_wall_median_s": statistics.median(wall),
            "tick_wall_p99_s": sorted(wall)[int(0.99 * (len(wall) - 1))],
            "tick_cpu_mean_s": statistics.fmean(cpu),
            "refresh_median_s": statistics.median(refresh),
        }
    finally:
        for s in servers:
            s.stop()


def _limit_for_critical(cg: Any, sampler: metalmem.Sampler) -> None:
    m = sampler.system()
    assert m.total is not None and m.available is not None
    working = m.total - m.available
    cg.set_limit(int(working / 0.85) & ~4095)


def _measure(
    sampler: metalmem.Sampler, targets: Callable[[], Any], victim_key: str
) -> dict[str, Any]:
    pressure = PressurePolicy(
        warning_available=0.35,
        critical_available=0.25,
        soft_grace=0.0,
        transition_period=30.0,
        **_quiet(),
    )
    policy = EvictionPolicy(
        mode=EvictionMode.ENFORCE, min_managed_share=0.0, floor=1, cooldown=0.0,
        max_evictions=1, window=600.0, min_reclaim=0, settle_timeout=10.0,
    )  # fmt: skip
    records: list[tuple[float, EvictionRecord]] = []
    # The limit already leaves less than CRITICAL: the watchdog's first tick assesses it, so
    # the clock starts when the watchdog does (a listener hears of the tick only after its
    # stop, which is what is being timed).
    assert (sampler.system().available or 0) < 0.25 * (sampler.system().total or 1)
    dog = Watchdog(
        sampler,
        Classifier(pressure, interval=0.05),
        targets,
        interval=0.05,
        min_interval=0.05,
        planner=Planner(policy, pressure),
        listeners=Listeners(on_eviction=[lambda r: records.append((time.monotonic(), r))]),
    )
    t_start = time.monotonic()
    with dog:
        deadline = time.monotonic() + 60
        while not records and time.monotonic() < deadline:
            time.sleep(0.01)
    if not records:
        raise RuntimeError("no eviction within 60 s")
    back_at, rec = records[0]
    first = t_start
    return {
        "key": rec.key,
        "result": rec.result,
        "footprint": rec.footprint,
        "reclaimed": rec.reclaimed,
        "stop_s": rec.duration,
        "critical_to_back_s": back_at - first,
        "victim_expected": victim_key,
    }


def signal_stop(models: dict[str, pathlib.Path], tmp: pathlib.Path) -> dict[str, Any]:
    from tests import cgroups
    from tests.e2e.llama import LlamaServer

    with cgroups.memory_cgroup(2 << 30) as cg:
        keeper = LlamaServer(
            ["-m", str(models["tiny"]), "--alias", "keeper", *COMMON], tmp / "k.log",
            popen=cg.popen,
        )  # fmt: skip
        victim = LlamaServer(
            ["-m", str(models["big"]), "--alias", "victim", "--load-mode", "none", *COMMON,
             "-c", "8192"],
            tmp / "v.log", popen=cg.popen,
        )  # fmt: skip
        try:
            keeper.wait_healthy()
            victim.wait_healthy()
            with metalmem.Sampler(scope=cg.scope) as s:
                tracker = TargetTracker(s, [])
                tracker.refresh()
                by_key = {t.key: t for t in tracker.targets}
                targets = [
                    dataclasses.replace(
                        by_key["keeper"], priority=Priority.HIGH, stop=StopMethod(grace=10.0)
                    ),
                    dataclasses.replace(
                        by_key["victim"], priority=Priority.BATCH, stop=StopMethod(grace=10.0)
                    ),
                ]
                _limit_for_critical(cg, s)
                out = _measure(s, lambda: targets, "victim")
            out["oom_kills"] = cg.oom_kills()
            return out
        finally:
            victim.stop()
            keeper.stop()


def router_unload(models: dict[str, pathlib.Path], tmp: pathlib.Path) -> dict[str, Any]:
    from tests import cgroups
    from tests.e2e.llama import LlamaServer, http

    d = tmp / "router-models"
    d.mkdir(exist_ok=True)
    for name, src in (("victim", "big"), ("keeper", "tiny")):
        if not (d / f"{name}.gguf").exists():
            os.link(models[src], d / f"{name}.gguf")
    with cgroups.memory_cgroup(2 << 30) as cg:
        router = LlamaServer(
            ["--models-dir", str(d), "--no-models-autoload", "--load-mode", "none", *COMMON,
             "-c", "8192"],
            tmp / "router.log", popen=cg.popen,
        )  # fmt: skip
        try:
            router.wait_healthy()
            for name in ("victim", "keeper"):
                status, body = http("POST", router.url + "/models/load", {"model": name})
                assert status == 200, body
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                _, doc = http("GET", router.url + "/models")
                if all(e["status"]["value"] == "loaded" for e in doc["data"]):
                    break
                time.sleep(0.2)
            specs = [
                TargetSpec(
                    name=name,
                    cmdline=rf"{name}\.gguf",
                    priority=prio,
                    stop=StopMethod(
                        grace=10.0, unload=UnloadAction("llama-server", router.url, name)
                    ),
                )
                for name, prio in (("victim", Priority.BATCH), ("keeper", Priority.HIGH))
            ]
            with metalmem.Sampler(scope=cg.scope) as s:
                tracker = TargetTracker(s, specs, discover_pattern=None)
                tracker.refresh()
                assert len(tracker.targets) == 2, tracker.targets
                _limit_for_critical(cg, s)
                out = _measure(s, lambda: tracker.targets, "victim")
            _, doc = http("GET", router.url + "/models")
            out["states_after"] = {e["id"]: e["status"]["value"] for e in doc["data"]}
            out["oom_kills"] = cg.oom_kills()
            return out
        finally:
            router.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--json", default="benchmarks/real_server.json")
    ap.add_argument("--repeat", type=int, default=1 if QUICK else 3)
    ap.add_argument("--ticks", type=int, default=100 if QUICK else 500)
    args = ap.parse_args()
    doc: dict[str, Any] = {"machine": machine()}
    from tests.e2e import llama

    if "real" in SKIP:
        doc["skipped"] = "METALMEM_BENCH_SKIP contains real"
    elif llama.binary() is None:
        doc["skipped"] = "llama-server is not built: run make e2e"
    else:
        with tempfile.TemporaryDirectory() as tmpdir:
            tmp = pathlib.Path(tmpdir)
            models = {
                "tiny": llama.write_model(tmp / "tiny.gguf"),
                "big": llama.write_model(tmp / "big.gguf", n_embd=512, seed=1),
            }
            print("real llama-server: tick cost with 4 targets", flush=True)
            doc["tick"] = tick_cost(models, tmp, args.ticks)
            from tests import cgroups

            reason = cgroups.skip_reason(psi=False)
            if reason:
                doc["reclaim_skipped"] = reason
            else:
                for name, fn in (("signal", signal_stop), ("unload", router_unload)):
                    runs = []
                    for i in range(args.repeat):
                        print(f"real llama-server: CRITICAL to memory back, {name} #{i + 1}",
                              flush=True)  # fmt: skip
                        runs.append(fn(models, tmp))
                    doc[name] = runs
    pathlib.Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps({k: v for k, v in doc.items() if k != "machine"}, indent=1))


if __name__ == "__main__":
    main()
