"""The loop: one watchdog tick with 16 and 256 targets, the classifier alone, and the loop
thread's own CPU share at a 1 s interval (reported, not asserted)."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import pytest

import metalmem
from metalmem.pressure import Classifier
from metalmem.watchdog import Watchdog


@dataclasses.dataclass(frozen=True)
class _Target:
    key: str
    pid: int


@pytest.mark.parametrize("n", [16, 256])
def test_tick_metalmem(benchmark: Any, children: list[int], n: int) -> None:
    benchmark.group = f"tick-{n}"
    targets = [_Target(f"t{i}", pid) for i, pid in enumerate(children[:n])]
    with metalmem.Sampler() as s:
        dog = Watchdog(s, Classifier(interval=1.0), targets, interval=1.0)
        state = benchmark(dog.tick)
    assert len(state.processes) == n


def test_classifier_assess(benchmark: Any) -> None:
    benchmark.group = "classifier"
    with metalmem.Sampler() as s:
        m = s.system()
    clf = Classifier(interval=1.0)
    clock = iter(range(10**9))
    benchmark(lambda: clf.assess(m, float(next(clock))))


def test_loop_thread_cpu_share_at_1s(children: list[int]) -> None:
    """Runs the real loop for 10 s with 16 targets; prints the thread's CPU share."""
    targets = [_Target(f"t{i}", pid) for i, pid in enumerate(children[:16])]
    with metalmem.Sampler() as s:
        dog = Watchdog(s, Classifier(interval=1.0), targets, interval=1.0)
        with dog:
            time.sleep(0.5)
            cpu0, t0 = dog.state.cpu_seconds, dog.state.heartbeat
            time.sleep(10.2)
            cpu1, t1 = dog.state.cpu_seconds, dog.state.heartbeat
    share = (cpu1 - cpu0) / (t1 - t0)
    print(
        f"\nwatchdog thread CPU at 1 s, 16 targets: {share * 100:.4f}% of one core "
        f"({cpu1 - cpu0:.6f} s over {t1 - t0:.1f} s)"
    )
