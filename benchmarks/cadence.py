"""The headline figures at the agent's real cadence: every call 1 s after the previous one of
its kind, caches as cold as they are then (issue 15: back-to-back loops amortise the reads
that are due once a second and keep the caches warm).

    python benchmarks/cadence.py --json benchmarks/cadence.json [--rounds 30]

One round per second; each round, in an order that alternates so no side always runs on the
caches the other just warmed:

- ``processes(64)`` (metalmem) and psutil's ``memory_info()`` on 64 reused ``Process``
  objects (the same 64 idle children, the same figures: rss and shared -> anon);
- ``system()`` and ``psutil.virtual_memory()``;
- a full tick + collect (the agent's loop and a scrape's collector, benchmarks/conftest.py
  ``Loop``) at 16 and at 64 targets, split into the tick and the collect; the cost per extra
  target is the slope between the two.

Medians and means over the rounds, per call. ``METALMEM_BENCH_QUICK=1``: 5 rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import psutil

import metalmem

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from common import QUICK, machine  # noqa: E402

from benchmarks.conftest import Loop, _spawn, make_targets  # noqa: E402

CHILD = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_DFL)\ntime.sleep(3600)\n"


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "median_s": statistics.median(values),
        "mean_s": statistics.fmean(values),
        "min_s": min(values),
        "max_s": max(values),
        "n": len(values),
    }


def run(rounds: int, spacing: float) -> dict[str, Any]:
    spawned = contextlib.contextmanager(_spawn)([sys.executable, "-c", CHILD], 64)
    pids = spawned.__enter__()
    series: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        series.setdefault(name, []).append(value)

    try:
        with metalmem.Sampler() as s16, metalmem.Sampler() as s64, metalmem.Sampler() as s:
            procs = [psutil.Process(p) for p in pids]
            loops = {
                16: Loop(s16, make_targets(s16, pids[:16]), critical=False),
                64: Loop(s64, make_targets(s64, pids), critical=False),
            }
            # The first call opens every pid's slot (and psutil its Process state): not steady.
            s.processes(pids)
            s.system()
            for p in procs:
                p.memory_info()
            for loop in loops.values():
                loop.full_tick()
                loop.ticks.clear()
                loop.collects.clear()
            ours = (
                ("processes_metalmem", lambda: s.processes(pids)),
                ("system_metalmem", s.system),
            )
            theirs = (
                ("processes_psutil", lambda: [p.memory_info() for p in procs]),
                ("system_psutil", psutil.virtual_memory),
            )
            next_at = time.monotonic() + spacing
            for i in range(rounds):
                time.sleep(max(0.0, next_at - time.monotonic()))
                next_at += spacing
                pairs = list(zip(ours, theirs, strict=True))
                for a, b in pairs:
                    first, second = (a, b) if i % 2 == 0 else (b, a)
                    add(first[0], _timed(first[1]))
                    add(second[0], _timed(second[1]))
                order = (16, 64) if i % 2 == 0 else (64, 16)
                for n in order:
                    add(f"tick_collect_{n}", _timed(loops[n].full_tick))
            for n, loop in loops.items():
                series[f"tick_{n}"] = loop.ticks
                series[f"collect_{n}"] = loop.collects
    finally:
        spawned.__exit__(None, None, None)
    out: dict[str, Any] = {name: _summary(v) for name, v in series.items()}
    m16, m64 = out["tick_collect_16"]["median_s"], out["tick_collect_64"]["median_s"]
    out["per_target_s"] = (m64 - m16) / 48
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--json", default="benchmarks/cadence.json", help="where to write it")
    ap.add_argument("--rounds", type=int, help="rounds, one a second (30; quick 5)")
    ap.add_argument("--spacing", type=float, default=1.0, help="seconds between rounds")
    args = ap.parse_args()
    rounds = args.rounds or (5 if QUICK else 30)
    load = [round(x, 2) for x in os.getloadavg()]
    doc = {
        "machine": machine(),
        "spacing_s": args.spacing,
        "rounds": rounds,
        "loadavg_before": load,
        "results": run(rounds, args.spacing),
    }
    doc["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    pathlib.Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    r = doc["results"]
    for key in ("processes_metalmem", "processes_psutil", "tick_collect_16", "tick_collect_64"):
        print(f"{key}: median {r[key]['median_s'] * 1e6:.0f} us, mean {r[key]['mean_s'] * 1e6:.0f}")
    print(f"per target: {r['per_target_s'] * 1e6:.2f} us; load {load}")


if __name__ == "__main__":
    main()
