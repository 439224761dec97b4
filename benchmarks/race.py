"""The race against the OOM killer, for real in a memory cgroup (issue 14).

    python benchmarks/race.py --json benchmarks/race.json

A 1 GiB memory cgroup (v1 here, v2 where that is the hierarchy; tests/cgroups.py makes and
removes it) holds a high-priority target (400 MiB), a batch target (200 MiB) and an unmanaged
process that, at a random moment, grows by STEP MiB every 100 ms up to +450 MiB: more than
fits beside both targets, less than fits once the batch target is gone. Each target writes
``time.monotonic()`` (one clock for every process of the machine) to a file when SIGTERM
arrives, and exits; a thread of ours reads the group's OOM-kill counter every 2 ms and notes
when it first moves. Three methods, each run at every rate:

- ``metalmem``: the real ``metalmem-agent run --scope <group> --eviction-enabled`` with its
  default settings (2 s interval, default thresholds and eviction policy), both targets
  pinned by pid; the growth starts at a uniformly random phase of its 2 s interval;
- ``kernel``: no agent: when and whom the kernel's OOM killer kills;
- ``llmkube``: LLMKube's method, simulated here: every 10 s (random phase) read the group's
  available memory, and SIGTERM the batch target when it is below 10 %.

A run is *won* when the batch target got SIGTERM before any OOM kill in the group and the
high-priority target was never killed (nor signalled). Reported per method and rate: wins,
and the time from growth start to SIGTERM (median, max).

``METALMEM_BENCH_QUICK=1``: 2 runs per method and rate. ``METALMEM_BENCH_SKIP=race`` skips it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from common import QUICK, SKIP, machine  # noqa: E402

MiB = 1 << 20
LIMIT = 1024 * MiB
HIGH_MIB, BATCH_MIB, GROW_MIB = 400, 200, 450
RATES = (20, 50, 200, 1000)  # MiB per 100 ms; 1000: as fast as one process can fault pages
AGENT = os.path.join(os.path.dirname(sys.executable), "metalmem-agent")
SETTLE = 1.5  # seconds watched after the growth ends (or after the SIGTERM): a late OOM kill

TARGET = r"""
import os, signal, sys, time
path, mib = sys.argv[1], int(sys.argv[2])
def on_term(signum, frame):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, repr(time.monotonic()).encode())
    os._exit(0)
signal.signal(signal.SIGTERM, on_term)
hold = bytearray(b"\x01") * (mib << 20)
print("ready", flush=True)
while True:
    time.sleep(60)
"""

GROWER = r"""
import sys, time
step, total = int(sys.argv[1]), int(sys.argv[2])
print("ready", flush=True)
sys.stdin.readline()
start = time.monotonic()
print(repr(start), flush=True)
chunks, grown, tick = [], 0, start
while grown < total:
    n = min(step, total - grown)
    chunks.append(bytearray(b"\x01") * (n << 20))
    grown += n
    tick += 0.1
    time.sleep(max(0.0, tick - time.monotonic()))
print(repr(time.monotonic()), flush=True)
sys.stdin.readline()
"""


def _child(cg: Any, args: list[str]) -> subprocess.Popen[bytes]:
    proc = cg.popen([sys.executable, "-c", *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    return proc


def _read_time(path: pathlib.Path) -> float | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return float(text) if text else None


class OomWatch:
    """Notes the first time the group's OOM-kill counter moves (polled every 2 ms)."""

    def __init__(self, cg: Any) -> None:
        self.cg = cg
        self.base = cg.oom_kills()
        self.first: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            with contextlib.suppress(OSError, LookupError):
                if self.cg.oom_kills() > self.base:
                    self.first = time.monotonic()
                    return

    def close(self) -> int:
        self._stop.set()
        self._thread.join(1)
        return int(self.cg.oom_kills() - self.base)


@contextlib.contextmanager
def _agent(
    cg: Any, work: pathlib.Path, high: int, batch: int, *, scope: str | None = ""
) -> Iterator[subprocess.Popen[bytes]]:
    """The real agent, defaults but for the scope (the group's unless ``scope`` is None: the
    host) and the two pinned targets; yields once it has armed its event thresholds."""
    config = work / "agent.toml"
    config.write_text(
        f'[[target]]\nname = "high"\npid = {high}\npriority = "high"\n\n'
        f'[[target]]\nname = "batch"\npid = {batch}\npriority = "batch"\n'
    )
    log = work / "agent.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [AGENT, "run", "--listen", "127.0.0.1:0", "--no-kube",
             *(["--scope", scope or cg.scope] if scope is not None else []),
             "--eviction-enabled", "--config", str(config), "--state-dir", str(work / "state")],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while "event=event_thresholds" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("agent did not start:\n" + log.read_text(errors="replace"))
            time.sleep(0.01)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _llmkube(cg: Any, batch: subprocess.Popen[bytes], phase: float, stop: threading.Event) -> None:
    """LLMKube's watchdog: every 10 s, available below 10 % of the limit -> SIGTERM."""
    import metalmem

    with metalmem.Sampler(scope=cg.scope) as s:
        next_at = time.monotonic() + phase
        while not stop.wait(max(0.0, next_at - time.monotonic())):
            m = s.system()
            if m.available is not None and m.total and m.available < 0.10 * m.total:
                with contextlib.suppress(ProcessLookupError):
                    batch.send_signal(signal.SIGTERM)
                return
            next_at += 10.0


def run_once(method: str, step: int, rng: random.Random) -> dict[str, Any]:
    from tests import cgroups

    with tempfile.TemporaryDirectory(prefix="metalmem-race-") as tmp:
        work = pathlib.Path(tmp)
        with cgroups.memory_cgroup(LIMIT) as cg, contextlib.ExitStack() as stack:
            high = _child(cg, [TARGET, str(work / "high"), str(HIGH_MIB)])
            batch = _child(cg, [TARGET, str(work / "batch"), str(BATCH_MIB)])
            grower = _child(cg, [GROWER, str(step), str(GROW_MIB)])
            stop_poll = threading.Event()
            phase = 0.0
            if method == "metalmem":
                stack.enter_context(_agent(cg, work, high.pid, batch.pid))
                phase = rng.uniform(0.0, 2.0)
            elif method == "llmkube":
                phase = rng.uniform(0.0, 10.0)
                poller = threading.Thread(
                    target=_llmkube, args=(cg, batch, phase, stop_poll), daemon=True
                )
                poller.start()
                stack.callback(poller.join, 2)
                stack.callback(stop_poll.set)
                phase = 0.0
            time.sleep(phase)
            watch = OomWatch(cg)
            assert grower.stdin is not None and grower.stdout is not None
            grower.stdin.write(b"go\n")
            grower.stdin.flush()
            start = float(grower.stdout.readline())
            ended = None
            line = grower.stdout.readline()  # the growth's end, or EOF if it was killed
            if line.strip():
                ended = float(line)
            deadline = time.monotonic() + SETTLE
            while time.monotonic() < deadline:
                time.sleep(0.05)
            kills = watch.close()
            codes = {n: p.poll() for n, p in (("high", high), ("batch", batch), ("grower", grower))}
            sigterm = _read_time(work / "batch")
            high_term = _read_time(work / "high")
    killed = [n for n, c in codes.items() if c == -signal.SIGKILL]
    won = (
        sigterm is not None
        and (watch.first is None or sigterm < watch.first)
        and codes["high"] is None
        and high_term is None
    )
    return {
        "won": won,
        "start_to_sigterm_ms": None if sigterm is None else round((sigterm - start) * 1000, 1),
        "start_to_oom_ms": None if watch.first is None else round((watch.first - start) * 1000, 1),
        "growth_ms": None if ended is None else round((ended - start) * 1000, 1),
        "oom_kills": kills,
        "sigkilled": killed,
        "high_signalled": high_term is not None,
        "phase_s": round(phase, 3) if method == "metalmem" else None,
    }


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads (the loop, the event thread, HTTP)."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def normal_cost(seconds: float) -> dict[str, Any]:
    """The agent's whole-process CPU at NORMAL with its defaults, on the host scope and on an
    idle 1 GiB v1 cgroup scope holding the two targets: percent of one core."""
    from tests import cgroups

    out: dict[str, Any] = {"seconds": seconds}
    with tempfile.TemporaryDirectory(prefix="metalmem-race-") as tmp:
        work = pathlib.Path(tmp)
        with cgroups.memory_cgroup(LIMIT) as cg:
            high = _child(cg, [TARGET, str(work / "high"), str(HIGH_MIB)])
            batch = _child(cg, [TARGET, str(work / "batch"), str(BATCH_MIB)])
            for name, scope in (("cgroup", cg.scope), ("host", None)):
                with _agent(cg, work, high.pid, batch.pid, scope=scope) as agent:
                    time.sleep(3.0)  # past start-up
                    c0, t0 = _cpu_seconds(agent.pid), time.monotonic()
                    time.sleep(seconds)
                    c1, t1 = _cpu_seconds(agent.pid), time.monotonic()
                out[name] = {"core_percent": round((c1 - c0) / (t1 - t0) * 100, 4)}
                print(f"normal cost {name}: {json.dumps(out[name])}", flush=True)
    return out


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    done = [r for r in runs if "error" not in r]
    times = [r["start_to_sigterm_ms"] for r in done if r["start_to_sigterm_ms"] is not None]
    ooms = [r["start_to_oom_ms"] for r in done if r["start_to_oom_ms"] is not None]
    return {
        "runs": len(done),
        "errors": len(runs) - len(done),
        "wins": sum(r["won"] for r in done),
        "oom_runs": sum(r["oom_kills"] > 0 for r in done),
        "high_killed": sum("high" in r["sigkilled"] for r in done),
        "sigterm_median_ms": round(statistics.median(times), 1) if times else None,
        "sigterm_max_ms": max(times) if times else None,
        "oom_median_ms": round(statistics.median(ooms), 1) if ooms else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--json", default="benchmarks/race.json")
    ap.add_argument("--runs", type=int, help="metalmem runs per rate (20; quick 2)")
    ap.add_argument("--baseline-runs", type=int, help="kernel and llmkube runs per rate (10)")
    ap.add_argument("--rates", default=",".join(map(str, RATES)))
    ap.add_argument("--methods", default="metalmem,kernel,llmkube")
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--cost-seconds", type=float, help="NORMAL cost window (60; quick 5; 0: off)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    runs = args.runs or (2 if QUICK else 20)
    base_runs = args.baseline_runs or (2 if QUICK else 10)
    doc: dict[str, Any] = {"machine": machine(), "limit_mib": LIMIT // MiB,
                           "high_mib": HIGH_MIB, "batch_mib": BATCH_MIB, "grow_mib": GROW_MIB,
                           "results": {}}  # fmt: skip
    if "race" in SKIP:
        doc["skipped"] = "METALMEM_BENCH_SKIP contains race"
    else:
        from tests import cgroups

        reason = cgroups.skip_reason(psi=False)
        if reason:
            doc["skipped"] = reason
    if "skipped" not in doc:
        cost = args.cost_seconds if args.cost_seconds is not None else (5.0 if QUICK else 60.0)
        if cost > 0:
            doc["normal_cost"] = normal_cost(cost)
        for method in args.methods.split(","):
            for step in map(int, args.rates.split(",")):
                n = runs if method == "metalmem" else base_runs
                results = []
                for i in range(n):
                    try:
                        r = run_once(method, step, rng)
                    except Exception as exc:  # recorded: the report says what failed
                        r = {"error": f"{type(exc).__name__}: {exc}"}
                    print(f"  {method} {step} MiB/100ms {i + 1}/{n}: {json.dumps(r)}", flush=True)
                    results.append(r)
                doc["results"][f"{method}/{step}"] = {
                    "runs": results, "summary": _summary(results)
                }  # fmt: skip
                print(f"{method} {step}: {json.dumps(_summary(results))}", flush=True)
    pathlib.Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
