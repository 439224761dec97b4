"""A real eviction: two llama-servers in a memory cgroup, a real memory hog, the real watchdog.

The cgroup holds a high-priority server (the 17 MB model, mmap'd) and a batch server (the
153 MB model read into anonymous memory with ``--load-mode none``, ``--no-mmap`` in older
builds, plus its KV cache), discovered by executable name like any host's. Its limit is then
set from what they use (the working set W): ``L`` leaves room ``X = L - W`` for a hog that
grows by 4 MiB every 100 ms up to ``X`` plus 48 MiB, so that without an eviction the group
runs out (no swap: the memsw limit is the same) and the kernel OOM killer fires (checked by
hand: it did, after 6 s). With the watchdog the batch server is stopped by SIGTERM, drains
(its log says so), and the hog fits in what it gave back; a client asks the high-priority
server for a completion every 50 ms from start to end and never fails.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import metalmem
from metalmem.eviction import EvictionMode, EvictionPolicy, Planner
from metalmem.level import Level
from metalmem.pressure import Classifier, PressurePolicy
from metalmem.targets import Priority, StopMethod, Target, discover
from metalmem.watchdog import EvictionRecord, Listeners, Watchdog

from .. import cgroups
from ..helpers import wait_for
from ..test_watchdog import QUIET
from .llama import LlamaServer, MiB

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="cgroups")

GROW = r"""
import sys, time
cap = int(sys.argv[1]) << 20
chunks, held = [], 0
print("ready", flush=True)
sys.stdin.readline()  # go
while held < cap:
    chunks.append(bytearray(b"\x01") * (4 << 20))
    held += 4 << 20
    time.sleep(0.1)
print("full", flush=True)
time.sleep(600)
"""

WARNING, CRITICAL = 0.20, 0.12
HIGH, BATCH = f"e2e-chat-{os.getpid()}", f"e2e-batch-{os.getpid()}"  # unique on a shared host
DRAIN = "cleaning up before exit"  # llama-server's log line on SIGTERM


class Client(threading.Thread):
    """Asks a server for a 4-token completion every 50 ms; counts answers and failures."""

    def __init__(self, server: LlamaServer) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.answers = 0
        self.failures: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                body = self.server.complete(n_predict=4)
                assert body.get("content") is not None
                self.answers += 1
            except Exception as exc:
                self.failures.append(repr(exc))
            self.halt.wait(0.05)


@dataclasses.dataclass
class Scene:
    cg: cgroups.MemoryCgroup
    sampler: metalmem.Sampler
    high: LlamaServer
    batch: LlamaServer
    hog: subprocess.Popen[bytes]
    targets: list[Target]
    batch_footprint: int


@contextlib.contextmanager
def scene(tmp_path: Path, models: dict[str, Path]) -> Iterator[Scene]:
    reason = cgroups.skip_reason(psi=False)
    if reason:
        pytest.skip(reason)
    common = ["-c", "512", "-t", "1", "--no-warmup"]
    started: list[LlamaServer] = []
    with cgroups.memory_cgroup(2 << 30) as cg:
        try:
            high = LlamaServer(
                ["-m", str(models["tiny"]), "--alias", HIGH, *common],
                tmp_path / "high.log",
                popen=cg.popen,
            )
            started.append(high)
            batch = LlamaServer(
                ["-m", str(models["big"]), "--alias", BATCH, "--load-mode", "none", *common,
                 "-c", "8192"],
                tmp_path / "batch.log",
                popen=cg.popen,
            )  # fmt: skip
            started.append(batch)
            high.wait_healthy()
            batch.wait_healthy()
            batch.complete()
            hog = cg.popen(
                [sys.executable, "-c", GROW, "0"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            assert hog.stdout is not None and hog.stdout.readline() == b"ready\n"
            with metalmem.Sampler(scope=cg.scope) as s:
                m = s.system()
                assert m.total is not None and m.available is not None
                working = m.total - m.available
                fp = s.process(batch.pid).footprint
                assert fp is not None and fp > 150 * MiB, fp
                # Room X: NORMAL at the start, and again once the batch server is gone and
                # the hog holds X + 48 MiB (module docstring).
                lo, hi = working / (1 - WARNING - 0.03), (fp - 48 * MiB) / (WARNING + 0.03)
                assert lo < hi, f"working set {working >> 20} MiB, batch {fp >> 20} MiB"
                limit = int((lo + hi) / 2) & ~(4096 - 1)
                cg.set_limit(limit)
                room = limit - working
                hog.kill()
                hog.wait()
                hog = cg.popen(
                    [sys.executable, "-c", GROW, str((room >> 20) + 48)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                )
                assert hog.stdout is not None and hog.stdout.readline() == b"ready\n"
                found = {t.key: t for t in discover(s, "llama-server")}
                targets = [
                    dataclasses.replace(
                        found[HIGH], priority=Priority.HIGH, stop=StopMethod(grace=5.0)
                    ),
                    dataclasses.replace(
                        found[BATCH], priority=Priority.BATCH, stop=StopMethod(grace=5.0)
                    ),
                ]
                assert [t.pid for t in targets] == [high.pid, batch.pid]
                yield Scene(cg, s, high, batch, hog, targets, fp)
        finally:
            for srv in started:
                srv.stop()


def _dog(sc: Scene, transition: float = 30.0, warning: float = WARNING, **kwargs: Any) -> Watchdog:
    pressure = PressurePolicy(
        warning_available=warning,
        critical_available=CRITICAL,
        soft_grace=0.0,
        transition_period=transition,
        **QUIET,  # type: ignore[arg-type]
    )
    policy = EvictionPolicy(
        mode=EvictionMode.ENFORCE,
        min_managed_share=0.0,
        floor=1,
        cooldown=0.0,
        max_evictions=1,
        window=600.0,
        min_reclaim=0,
        settle_timeout=5.0,
    )
    return Watchdog(
        sc.sampler,
        Classifier(pressure, interval=0.05),
        sc.targets,
        interval=0.05,
        min_interval=0.05,
        planner=Planner(policy, pressure),
        **kwargs,
    )


def test_batch_server_drains_and_the_high_one_keeps_answering(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    with scene(tmp_path, models) as sc:
        client = Client(sc.high)
        client.start()
        records: list[EvictionRecord] = []
        dog = _dog(sc, listeners=Listeners(on_eviction=[records.append]))
        with dog:
            assert sc.hog.stdin is not None
            sc.hog.stdin.write(b"go\n")
            sc.hog.stdin.flush()
            wait_for(lambda: records, timeout=60, interval=0.05, what="the eviction")
            assert sc.hog.stdout is not None
            assert sc.hog.stdout.readline() == b"full\n", "the hog did not get its memory"
            time.sleep(1.0)  # the high server answers on, with the hog at its full size
        client.halt.set()
        client.join(10)
        assert [r.key for r in records] == [BATCH]
        assert records[0].result == "terminated", records[0]
        assert records[0].reclaimed is not None and records[0].reclaimed > 0.5 * sc.batch_footprint
        assert sc.batch.proc.wait(5) == 0
        assert DRAIN in sc.batch.log(), sc.batch.log()[-2000:]
        assert sc.high.proc.poll() is None
        assert client.failures == [] and client.answers >= 10, (client.answers, client.failures)
        assert sc.cg.oom_kills() == 0, "the kernel OOM killer fired"
        assert sc.hog.poll() is None


def test_respawn_by_a_stand_in_owner_waits_until_normal_holds(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    """An owner that restarts the batch server whenever it exits, unless the watchdog blocks
    its key: no restart during the pressure, one once NORMAL held for the transition period
    (1 s) after the hog ended. WARNING starts at 45 % here, so that the hog at its full size
    keeps the group out of NORMAL once the batch server is gone (about 30 % available): a
    restart then would run the group out of memory."""
    with scene(tmp_path, models) as sc:
        records: list[EvictionRecord] = []
        unblocked: list[float] = []
        dog = _dog(
            sc,
            transition=1.0,
            warning=0.45,
            listeners=Listeners(
                on_eviction=[records.append],
                on_unblock=[lambda keys: unblocked.append(time.monotonic())],
            ),
        )
        refused: list[float] = []
        respawned: list[tuple[float, LlamaServer]] = []
        halt = threading.Event()

        def owner() -> None:
            while not halt.wait(0.05):
                if respawned or sc.batch.proc.poll() is None:
                    continue
                if dog.is_blocked(BATCH):
                    refused.append(time.monotonic())
                    continue
                s = LlamaServer(sc.batch.argv[1:-4], tmp_path / "batch2.log", popen=sc.cg.popen)
                respawned.append((time.monotonic(), s))

        with dog:
            t = threading.Thread(target=owner, daemon=True)
            t.start()
            assert sc.hog.stdin is not None and sc.hog.stdout is not None
            sc.hog.stdin.write(b"go\n")
            sc.hog.stdin.flush()
            wait_for(lambda: records, timeout=60, interval=0.05, what="the eviction")
            assert sc.hog.stdout.readline() == b"full\n"
            wait_for(lambda: len(refused) >= 5, timeout=10, what="the owner tries and is refused")
            assert not respawned and dog.is_blocked(BATCH)
            ended = time.monotonic()
            sc.hog.kill()  # the pressure passes
            sc.hog.wait()
            wait_for(lambda: respawned, timeout=30, interval=0.05, what="the respawn")
            halt.set()
            t.join(5)
            assessment = dog.state.assessment
        when, again = respawned[0]
        try:
            again.wait_healthy()
            assert unblocked and when >= unblocked[0]
            assert unblocked[0] - ended >= 1.0, "unblocked before NORMAL held for 1 s"
            assert all(r < ended + 0.1 for r in refused[:5])
            assert assessment is not None and assessment.level == Level.NORMAL
            assert again.complete()["content"] is not None
            assert sc.cg.oom_kills() == 0
        finally:
            again.stop()
