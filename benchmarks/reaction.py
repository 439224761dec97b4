"""Reaction: time from a pressure's onset (and from the kernel's event) to the victim's SIGTERM
and to its exit, event-driven against interval polling at our 2 s default and at 10 s.

    python benchmarks/reaction.py --json benchmarks/reaction.json

The victim is a real child target whose SIGTERM handler writes ``time.monotonic()`` to a file
and exits (CLOCK_MONOTONIC is one clock for every process of the machine); its exit is seen by
a thread of ours blocked in waitpid. The watchdog is the library's (``Watchdog`` + ``Planner``
in enforce mode, one target, no guard), ticking every 10 s, so between ticks only an event can
wake it. Three parts:

- ``psi`` (Linux, root, a writable memory cgroup with PSI; tests/cgroups.py): the victim runs
  in a 64 MiB cgroup, takes 56 MiB and then re-reads a 256 MiB file uncached, a real memory
  stall (reference/python-ecosystem.md 6.3). The watchdog samples the cgroup and waits on the
  Sampler's own PSI triggers (``Sampler.events()``, as the agent does). An observer thread of
  ours holds the same triggers on the same file: its wake-up time is the event's time. A tick
  reads CRITICAL from the cgroup's available memory (below 25 % of the limit).
- ``synthetic`` (everywhere): the event is a byte written to a pipe the watchdog waits on
  (``events=``), and the sampler's ``available`` is replaced by 5 % of total from that moment:
  every other part (sampling, assessing, planning, the stop) is real. It isolates the agent's
  own latency from the kernel's detection and runs where PSI cannot (macOS, CI, non-root).
- ``polling_default``: the same at our own default interval (2 s, cli/agent.py), the fair
  comparison for an agent without events (LLMKube's 10 s is ``polling``).
- ``agent_default``: the agent as it runs, events and its 2 s timer together, the pressure
  starting at a random phase of the interval (real PSI only).
- ``polling``: no event source. The pressure starts at a random phase of the 10 s interval,
  and the next timer tick finds it. Measured in real trials (``psi`` where it is available,
  else ``synthetic``); the expected delay over a uniform phase is computed (interval / 2,
  worst the interval) and both are reported, labelled.

``METALMEM_BENCH_QUICK=1``: one trial each. ``METALMEM_BENCH_SKIP``: ``reaction`` skips it all,
``polling`` the measured polling trials (10 s each; the computed figures stay).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import random
import select
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import metalmem
from metalmem.eviction import EvictionMode, EvictionPolicy, Planner
from metalmem.level import Level
from metalmem.pressure import Classifier, PressurePolicy
from metalmem.process import StopRecord, stop
from metalmem.targets import Priority, StopMethod, Target
from metalmem.watchdog import Watchdog

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import QUICK, QUIET, SKIP, machine  # noqa: E402

INTERVAL = 10.0  # the seed's default (LLMKube's watchdog ticks every 10 s)
DEFAULT_INTERVAL = 2.0  # ours: cli/agent.py DEFAULT_INTERVAL (checked in main)
LIMIT = 64 << 20
# Close to the limit, so the file cannot stay cached (python-ecosystem.md 6.3: 56 MiB with the
# interpreter charged elsewhere); the victim starts inside, so its ~5 MiB of start-up count.
HOLD = 51 << 20
FILE_SIZE = 256 << 20
THRASH_BUDGET = 25.0  # the victim stops thrashing (and exits 3) if nobody stops it first
SOME_MS, FULL_MS, WINDOW_S = 150, 50, 2.0  # Sampler.events() defaults, as the agent opens them


VICTIM = r"""
import os, signal, sys, time
term_path, mode = sys.argv[1], sys.argv[2]
out = os.open(term_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
def on_term(signum, frame):
    os.write(out, repr(time.monotonic()).encode())
    os._exit(0)
signal.signal(signal.SIGTERM, on_term)
print("ready", flush=True)
sys.stdin.readline()  # go
if mode == "idle":
    print(repr(time.monotonic()), flush=True)
    sys.stdin.readline()  # the parent closes stdin when it is done with us
    sys.exit(0)
data, hold, budget = sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
anon = bytearray(hold)
for i in range(0, hold, 4096):
    anon[i] = 1
print(repr(time.monotonic()), flush=True)  # onset: the working set is now near the limit
buf = bytearray(1 << 20)
fd = os.open(data, os.O_RDONLY)
deadline = time.monotonic() + budget
while time.monotonic() < deadline:
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.lseek(fd, 0, os.SEEK_SET)
    while os.readv(fd, [buf]):
        pass
sys.exit(3)
"""


# --- what the trials observe ------------------------------------------------------------------


class Marks:
    """Monotonic times of one trial, recorded by whichever thread sees them first."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.wakes: list[float] = []
        self.stop_called: float | None = None
        self.exit: float | None = None

    def wake(self) -> None:
        with self.lock:
            self.wakes.append(time.monotonic())


class TimedEvents:
    """The watchdog's event source, recording when the loop woke up to read it."""

    def __init__(self, inner: Any, marks: Marks) -> None:
        self.inner = inner
        self.marks = marks

    def fileno(self) -> int:
        return int(self.inner.fileno())

    def read(self) -> Level | None:
        self.marks.wake()
        level: Level | None = self.inner.read()
        return level

    def close(self) -> None:
        self.inner.close()


class PipeEvents:
    """A synthetic event source: a pipe; :meth:`fire` makes it readable (CRITICAL)."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)

    def fileno(self) -> int:
        return self.r

    def fire(self) -> None:
        os.write(self.w, bytes([int(Level.CRITICAL)]))

    def read(self) -> Level | None:
        try:
            data = os.read(self.r, 64)
        except BlockingIOError:
            return None
        return Level(max(data)) if data else None

    def close(self) -> None:
        for fd in (self.r, self.w):
            with contextlib.suppress(OSError):
                os.close(fd)


class PsiObserver:
    """Our own PSI triggers on the group's pressure file (the same thresholds the Sampler
    uses), on a thread: every time one fires is an event's time."""

    def __init__(self, path: pathlib.Path) -> None:
        self.fires: list[float] = []
        self.fds: list[int] = []
        window_us = round(WINDOW_S * 1e6)
        for kind, ms in (("some", SOME_MS), ("full", FULL_MS)):
            fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
            self.fds.append(fd)
            os.write(fd, f"{kind} {ms * 1000} {window_us}\0".encode())  # the kernel wants the NUL
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="psi-observer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        poller = select.poll()
        for fd in self.fds:
            poller.register(fd, select.POLLPRI)
        poller.register(self._stop_r, select.POLLIN)
        while True:
            ready = poller.poll()
            now = time.monotonic()
            if any(fd == self._stop_r for fd, _ in ready):
                return
            if any(ev & select.POLLPRI for _, ev in ready):
                self.fires.append(now)
            if any(ev & (select.POLLERR | select.POLLNVAL) for _, ev in ready):
                return

    def close(self) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join(5)
        for fd in (*self.fds, self._stop_r, self._stop_w):
            os.close(fd)


def _waiter(proc: subprocess.Popen[bytes], marks: Marks) -> threading.Thread:
    """Reap the victim on a thread and note when it was gone."""

    def run() -> None:
        proc.wait()
        marks.exit = time.monotonic()

    t = threading.Thread(target=run, name="victim-waiter", daemon=True)
    t.start()
    return t


def _timed_stopper(marks: Marks) -> Callable[[Target, metalmem.Sampler], StopRecord]:
    def stopper(target: Target, sampler: metalmem.Sampler) -> StopRecord:
        marks.stop_called = time.monotonic()
        return stop(target, sampler=sampler)

    return stopper


def _watchdog(
    sampler: metalmem.Sampler,
    target: Target,
    marks: Marks,
    events: Any,
    pressure: PressurePolicy,
    interval: float = INTERVAL,
) -> Watchdog:
    eviction = EvictionPolicy(
        mode=EvictionMode.ENFORCE,
        min_managed_share=0.0,
        floor=0,
        cooldown=0.0,
        min_reclaim=0,
        settle_timeout=1.0,
    )
    return Watchdog(
        sampler,
        Classifier(pressure, interval=interval),
        [target],
        interval=interval,
        min_interval=0.1,
        events=TimedEvents(events, marks) if events is not None else None,
        planner=Planner(eviction, pressure),
        stopper=_timed_stopper(marks),
    )


def _target(sampler: metalmem.Sampler, pid: int) -> Target:
    start = sampler.process(pid).start_time
    assert start is not None
    return Target("bench/victim", pid, start, Priority.BATCH, stop=StopMethod(grace=5.0))


def _wait(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout} s: {what}")
        time.sleep(0.005)


def _ms(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round((b - a) * 1000, 3)


def _term_time(path: pathlib.Path) -> float | None:
    text = path.read_text() if path.exists() else ""
    return float(text) if text else None


# --- trials -----------------------------------------------------------------------------------


def psi_trial(
    cgroups: Any,
    data: pathlib.Path,
    work: pathlib.Path,
    phase: float | None,
    interval: float = INTERVAL,
    events_on: bool | None = None,
) -> dict[str, Any]:
    """One real-thrash trial; ``phase`` None: event-driven, else the pressure starts ``phase``
    seconds after a tick. ``events_on`` (default: ``phase is None``) adds the PSI triggers:
    with a phase too, that is the agent as it runs (events and its timer)."""
    if events_on is None:
        events_on = phase is None
    marks = Marks()
    term = work / f"term-{time.monotonic_ns()}"
    pressure = PressurePolicy(
        warning_available=0.35, critical_available=0.25, soft_grace=0.0, **QUIET
    )
    with cgroups.memory_cgroup(LIMIT) as cg, contextlib.ExitStack() as stack:
        victim = cg.popen(
            [sys.executable, "-c", VICTIM, str(term), "thrash", str(data), str(HOLD),
             str(THRASH_BUDGET)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )  # fmt: skip
        assert victim.stdin is not None and victim.stdout is not None
        assert victim.stdout.readline() == b"ready\n"
        waiter = _waiter(victim, marks)
        sampler = stack.enter_context(metalmem.Sampler(scope=cg.scope))
        assert cg.pressure_file is not None
        observer = PsiObserver(cg.pressure_file)
        stack.callback(observer.close)
        events = None
        if events_on:
            events = stack.enter_context(
                sampler.events(some_ms=SOME_MS, full_ms=FULL_MS, window_s=WINDOW_S)
            )
        dog = _watchdog(sampler, _target(sampler, victim.pid), marks, events, pressure, interval)
        with dog:
            _wait(lambda: dog.state.seq >= 1, 5, "the first tick")
            tick = dog.state
            if phase is not None:
                time.sleep(max(0.0, tick.heartbeat + phase - time.monotonic()))
            victim.stdin.write(b"go\n")
            victim.stdin.flush()
            onset = float(victim.stdout.readline())
            waiter.join(THRASH_BUDGET + 10)
        oom_kills = cg.oom_kills()
    sigterm = _term_time(term)
    stop_called = marks.stop_called
    before = [f for f in observer.fires if stop_called is None or f <= stop_called]
    if events_on:
        # The event behind the evicting tick: the last fire before the stop (an earlier one
        # may have met a tick that still read WARNING while the victim was filling up).
        event = before[-1] if before else None
    else:
        # Polling ignores events: measure from the first, the moment an event-driven agent
        # would have woken.
        event = observer.fires[0] if observer.fires else None
    wake = None
    if event is not None:
        # Our observer and the watchdog are woken by the same kernel pass; either may note
        # the time first. The earlier of the two is the event's time.
        wake = next((w for w in marks.wakes if w >= event - 0.05), None)
        event = min(event, wake) if wake is not None else event
    trial = {
        "onset_to_event_ms": _ms(onset, event),
        "event_to_wake_ms": _ms(event, wake),
        "event_to_stop_ms": _ms(event, stop_called),
        "event_to_sigterm_ms": _ms(event, sigterm),
        "event_to_exit_ms": _ms(event, marks.exit),
        "onset_to_sigterm_ms": _ms(onset, sigterm),
        "sigterm_to_exit_ms": _ms(sigterm, marks.exit),
        "events_before_stop": len(before),
        "victim_exit_status": victim.returncode,
        "oom_kills": oom_kills,
    }
    if phase is not None:
        trial["phase_s"] = round(onset - tick.heartbeat, 3)
        trial["predicted_onset_to_tick_ms"] = _ms(onset, tick.heartbeat + tick.interval)
    return trial


def synthetic_trial(
    work: pathlib.Path, phase: float | None, interval: float = INTERVAL
) -> dict[str, Any]:
    """One synthetic trial: pipe event (``phase`` None) or polling with the pressure switched
    on ``phase`` seconds after a tick."""
    marks = Marks()
    term = work / f"term-{time.monotonic_ns()}"
    pressured = threading.Event()
    victim = subprocess.Popen(
        [sys.executable, "-c", VICTIM, str(term), "idle"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert victim.stdin is not None and victim.stdout is not None
    try:
        assert victim.stdout.readline() == b"ready\n"
        victim.stdin.write(b"go\n")
        victim.stdin.flush()
        float(victim.stdout.readline())
        waiter = _waiter(victim, marks)
        with contextlib.ExitStack() as stack:
            sampler = stack.enter_context(metalmem.Sampler())
            real = sampler.system

            def system() -> metalmem.SystemMemory:
                m = real()
                if pressured.is_set() and m.total is not None:
                    return m._replace(available=m.total // 20)
                return m

            sampler.system = system  # type: ignore[method-assign]
            events = PipeEvents() if phase is None else None
            if events is not None:
                stack.callback(events.close)
            pressure = PressurePolicy(soft_grace=0.0, **QUIET)
            dog = _watchdog(
                sampler, _target(sampler, victim.pid), marks, events, pressure, interval
            )
            with dog:
                _wait(lambda: dog.state.seq >= 1, 5, "the first tick")
                tick = dog.state
                wait = random.uniform(0.02, 0.2) if phase is None else phase
                time.sleep(max(0.0, tick.heartbeat + wait - time.monotonic()))
                event = time.monotonic()
                pressured.set()
                if events is not None:
                    events.fire()
                waiter.join(interval + 10)
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
    sigterm = _term_time(term)
    trial = {
        "event_to_wake_ms": _ms(event, marks.wakes[0] if marks.wakes else None),
        "event_to_stop_ms": _ms(event, marks.stop_called),
        "event_to_sigterm_ms": _ms(event, sigterm),
        "event_to_exit_ms": _ms(event, marks.exit),
        "sigterm_to_exit_ms": _ms(sigterm, marks.exit),
        "victim_exit_status": victim.returncode,
    }
    if phase is not None:
        trial["phase_s"] = round(event - tick.heartbeat, 3)
        trial["predicted_event_to_tick_ms"] = _ms(event, tick.heartbeat + tick.interval)
    return trial


def _summary(trials: list[dict[str, Any]], key: str) -> dict[str, Any]:
    values = [t[key] for t in trials if t.get(key) is not None]
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "median_ms": round(statistics.median(values), 3),
        "min_ms": round(min(values), 3),
        "max_ms": round(max(values), 3),
    }


def _psi_unavailable(cgroups: Any) -> str | None:
    if not sys.platform.startswith("linux"):
        return "PSI is Linux's"
    if cgroups is None:
        return "tests/cgroups.py is not importable"
    reason: str | None = cgroups.skip_reason()
    return reason


@contextlib.contextmanager
def _data_file(work: pathlib.Path) -> Iterator[pathlib.Path]:
    """The file the thrashing victim re-reads, on disk beside the other temporary files."""
    path = work / "thrash.bin"
    block = b"\1" * (1 << 20)
    with path.open("wb") as f:
        for _ in range(FILE_SIZE >> 20):
            f.write(block)
    try:
        yield path
    finally:
        path.unlink()


def _run_trials(name: str, n: int, trial: Callable[[], dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        try:
            t = trial()
        except Exception as exc:  # recorded: the report says what failed
            t = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"  {name} {i + 1}/{n}: {json.dumps(t)}", flush=True)
        out.append(t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--json", default="benchmarks/reaction.json", help="where to write it")
    ap.add_argument("--trials", type=int, help="event-driven trials per part (5; quick 1)")
    ap.add_argument("--polling-trials", type=int, help="measured polling trials (2; quick 1)")
    ap.add_argument("--seed", type=int, default=9, help="seed of the polling phases")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    sys.path.insert(0, str(HERE.parent))
    from metalmem.config import DEFAULT_INTERVAL as ours

    assert ours == DEFAULT_INTERVAL, "benchmarks/reaction.py: update DEFAULT_INTERVAL"
    n_psi = args.trials or (1 if QUICK else 5)
    n_syn = args.trials or (3 if QUICK else 20)
    n_poll = 0 if "polling" in SKIP else (args.polling_trials or (1 if QUICK else 2))
    n_default = args.polling_trials or (2 if QUICK else 5)  # 2 s each: cheap
    doc: dict[str, Any] = {
        "machine": machine(),
        "interval_s": INTERVAL,
        "thresholds": {"some_ms": SOME_MS, "full_ms": FULL_MS, "window_s": WINDOW_S},
    }
    if "reaction" in SKIP:
        doc["skipped"] = "METALMEM_BENCH_SKIP contains reaction"
        pathlib.Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
        return
    cgroups: Any = None
    with contextlib.suppress(ImportError):
        sys.path.insert(0, str(HERE.parent))
        from tests import cgroups
    why_not = _psi_unavailable(cgroups)
    work = pathlib.Path(tempfile.mkdtemp(prefix="metalmem-reaction-"))
    try:
        doc["synthetic"] = {
            "trials": _run_trials("synthetic", n_syn, lambda: synthetic_trial(work, None))
        }
        if why_not is None:
            with _data_file(work) as data:
                trials = _run_trials("psi", n_psi, lambda: psi_trial(cgroups, data, work, None))
                doc["psi"] = {"trials": trials}
                polls = _run_trials(
                    "polling (psi)",
                    n_poll,
                    lambda: psi_trial(cgroups, data, work, rng.uniform(0.5, INTERVAL - 1.0)),
                )
                ours = _run_trials(
                    f"polling at our default {DEFAULT_INTERVAL:g} s (psi)",
                    n_default,
                    lambda: psi_trial(
                        cgroups, data, work, rng.uniform(0.1, DEFAULT_INTERVAL - 0.1),
                        DEFAULT_INTERVAL,
                    ),
                )  # fmt: skip
                agent = _run_trials(
                    f"the agent as it runs: events and its {DEFAULT_INTERVAL:g} s tick (psi)",
                    n_default,
                    lambda: psi_trial(
                        cgroups, data, work, rng.uniform(0.1, DEFAULT_INTERVAL - 0.1),
                        DEFAULT_INTERVAL, events_on=True,
                    ),
                )  # fmt: skip
            doc["polling"] = {"method": "psi", "trials": polls}
            doc["polling_default"] = {"method": "psi", "trials": ours}
            doc["agent_default"] = {"method": "psi", "trials": agent}
        else:
            doc["psi"] = {"skipped": why_not}
            polls = _run_trials(
                "polling (synthetic)",
                n_poll,
                lambda: synthetic_trial(work, rng.uniform(0.5, INTERVAL - 1.0)),
            )
            ours = _run_trials(
                f"polling at our default {DEFAULT_INTERVAL:g} s (synthetic)",
                n_default,
                lambda: synthetic_trial(
                    work, rng.uniform(0.1, DEFAULT_INTERVAL - 0.1), DEFAULT_INTERVAL
                ),
            )
            doc["polling"] = {"method": "synthetic", "trials": polls}
            doc["polling_default"] = {"method": "synthetic", "trials": ours}
    finally:
        for p in work.iterdir():
            p.unlink()
        work.rmdir()
    doc.setdefault("agent_default", {"skipped": why_not})
    for part in ("synthetic", "psi", "polling", "polling_default", "agent_default"):
        trials = doc[part].get("trials", [])
        doc[part]["event_to_sigterm"] = _summary(trials, "event_to_sigterm_ms")
        doc[part]["event_to_exit"] = _summary(trials, "event_to_exit_ms")
        doc[part]["event_to_wake"] = _summary(trials, "event_to_wake_ms")
    for part in ("psi", "polling", "polling_default", "agent_default"):
        trials = doc[part].get("trials", [])
        doc[part]["onset_to_sigterm"] = _summary(trials, "onset_to_sigterm_ms")
    doc["polling_default"]["interval_s"] = DEFAULT_INTERVAL
    doc["polling_default"]["computed"] = {
        "how": "uniform phase of the pressure's start within the interval",
        "mean_ms": DEFAULT_INTERVAL / 2 * 1000,
        "worst_ms": DEFAULT_INTERVAL * 1000,
    }
    doc["polling"]["computed"] = {
        "how": "uniform phase of the pressure's start within the interval",
        "mean_ms": INTERVAL / 2 * 1000,
        "worst_ms": INTERVAL * 1000,
    }
    pathlib.Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
