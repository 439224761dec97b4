"""Issue 13's model test: random lives of real processes around a real Watchdog, one invariant.

Hypothesis draws sequences of: spawn a model (batch/normal/high, maybe protected, by ``pid =``
or ``cmdline``, maybe with an InferenceService), let one exit, leave one a zombie, hand an exited
model's pid to a stranger (real pid reuse through ns_last_pid), reload the config, restart the
agent (pins, blocks and Kubernetes facts from the state dir), delay the API server (503s),
mark an object protected, and CRITICAL or NORMAL phases. The watchdog, tracker, safety gate,
planner and Kubernetes reporter are the real ones; the API server is the contract fake; the
ticks are driven from the test so that each phase is a known step.

The invariant, checked after every step: only an adopted, unprotected, live managed identity is
ever signalled or suspended; every eviction left at least ``floor`` live managed targets; a
stopped target's respawn block holds until a NORMAL phase.
"""

from __future__ import annotations

import dataclasses
import pathlib
import signal
import sys
import tempfile
import time
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import metalmem
from metalmem.eviction import EvictionMode, EvictionPolicy, Planner
from metalmem.kube import KubeOptions, KubeReporter
from metalmem.level import Level
from metalmem.pins import PinStore
from metalmem.pressure import Classifier, PressurePolicy
from metalmem.targets import Priority, StopMethod, TargetSpec, TargetTracker
from metalmem.watchdog import EvictionRecord, Listeners, Watchdog

from .helpers import Child, can_choose_pids, reap, spawn_child, spawn_child_at_pid, wait_for
from .test_watchdog import QUIET
from .test_watchdog_eviction import _critical_now

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="Linux signals and /proc"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]
kubefake = pytest.importorskip("tests.kubefake")

NS = "llm"
FLOOR = 1
CALM = PressurePolicy(
    warning_available=0.02,
    critical_available=0.01,
    transition_period=0.0,
    **QUIET,  # type: ignore[arg-type]
)
RUNS: list[int] = []  # one entry per sequence run, for the report


@dataclasses.dataclass
class Role:
    name: str
    child: Child
    stranger: bool = False
    priority: str = "normal"
    protected: bool = False  # locally, from the start
    kube: bool = False
    kube_protected: bool = False  # on its object, from the start
    by: str = "pid"
    applied: bool = False  # in the specs the tracker has
    state: str = "alive"  # alive, zombie, reaped
    marker: str = ""  # unique on the host: another test run's cmdline must never match ours

    @property
    def key(self) -> str:
        return f"{NS}/{self.name}" if self.kube else self.name

    def spec(self) -> TargetSpec:
        how: dict[str, Any] = (
            {"pid": self.child.pid} if self.by == "pid" else {"cmdline": rf"--{self.marker}\b"}
        )
        return TargetSpec(
            name=self.name, namespace=NS if self.kube else None, priority=Priority(self.priority),
            protected=self.protected, stop=StopMethod(grace=0.5), **how,
        )  # fmt: skip


class World:
    """The children, the fake API server and the agent's pieces, rebuilt on restart."""

    def __init__(self, tmp: pathlib.Path, fake: Any, sampler: metalmem.Sampler) -> None:
        self.tmp, self.fake, self.sampler = tmp, fake, sampler
        self.kubeconfig = fake.write_kubeconfig(tmp / "kubeconfig", namespace=NS)
        self.roles: list[Role] = []
        self.records: list[EvictionRecord] = []
        self.violations: list[str] = []
        self.blocked_since_normal: set[str] = set()
        self.critical = _critical_now(sampler, transition_period=0.0)
        self.n = 0
        fake.watch(self._on_change)
        self._build()

    # -- the agent -------------------------------------------------------------------------
    def _build(self) -> None:
        state = str(self.tmp / "state")
        self.tracker = TargetTracker(
            self.sampler, self._specs(), discover_pattern=None, pins=PinStore(state)
        )
        self.tracker.refresh()  # as Agent.__init__ does, before anything runs
        options = KubeOptions(
            kubeconfig=str(self.kubeconfig), node_name="node-1", refresh=0.2,
            request_timeout=2.0, backoff_initial=0.05, backoff_max=0.2, suspend_grace=0.2,
        )  # fmt: skip
        self.reporter = KubeReporter(options, pressure=CALM, state_dir=state)
        self.reporter.start()
        listeners = Listeners(on_eviction=[self.records.append])
        self.reporter.attach(listeners)
        policy = EvictionPolicy(
            mode=EvictionMode.ENFORCE, min_managed_share=0.0, floor=FLOOR, cooldown=0.0,
            max_evictions=1000, min_reclaim=0, settle_timeout=0.0,
        )  # fmt: skip
        self.dog = Watchdog(
            self.sampler,
            Classifier(CALM, interval=0.05),
            self._targets,
            interval=0.05,
            min_interval=0.05,
            planner=Planner(policy, CALM),
            listeners=listeners,
            stopper=self.reporter.stopper,
            state_dir=state,
            adopted=lambda: self.tracker.targets,
        )
        self.dog.gate.metadata = self.reporter.metadata
        self.reporter.gate = self.dog.gate.check

    def _targets(self) -> Any:
        self.tracker.refresh()
        return self.reporter.overlay(self.tracker.targets)

    def _specs(self) -> list[TargetSpec]:
        specs = []
        for r in self.roles:
            # A table is first written for a model that runs (a pid that names a stranger by
            # then is legitimately that stranger's); once written it stays, exited or not.
            if not r.stranger and (r.applied or r.state != "reaped"):
                r.applied = True
                specs.append(r.spec())
        return specs

    def close(self) -> None:
        self.reporter.stop()
        for r in self.roles:
            reap(r.child.pid)

    # -- steps -----------------------------------------------------------------------------
    def spawn(self, priority: str, protected: bool, by: str, kube: bool, kprot: bool) -> None:
        self.n += 1
        name = f"m{self.n}"
        marker = f"mm-{uuid.uuid4().hex}-{name}"
        child = spawn_child(allocate_mib=4, signal_log=self.tmp / name, args=[f"--{marker}"])
        role = Role(name, child, priority=priority, protected=protected, kube=kube, by=by,
                    kube_protected=kube and kprot, marker=marker)  # fmt: skip
        if kube:
            self.fake.create({
                "apiVersion": "inference.llmkube.dev/v1alpha1", "kind": "InferenceService",
                "metadata": {"name": name, "namespace": NS},
                "spec": {"modelRef": "m", "evictionProtection": role.kube_protected},
            })  # fmt: skip
        self.roles.append(role)

    def _pick(self, i: int, *states: str) -> Role | None:
        pool = [r for r in self.roles if r.state in states and not r.stranger]
        return pool[i % len(pool)] if pool else None

    def exit(self, i: int) -> None:
        r = self._pick(i, "alive", "zombie")
        if r is not None:
            reap(r.child.pid)
            r.state = "reaped"

    def zombie(self, i: int) -> None:
        r = self._pick(i, "alive")
        if r is not None and r.child.popen.returncode is None:
            r.child.popen.send_signal(signal.SIGKILL)  # never reaped here: a zombie
            stat = pathlib.Path(f"/proc/{r.child.pid}/stat")
            wait_for(lambda: stat.read_bytes().rsplit(b")", 1)[1][1:2] == b"Z", timeout=10,
                     what="the zombie")  # fmt: skip
            r.state = "zombie"

    def reuse(self, i: int) -> None:
        r = self._pick(i, "reaped")
        if (
            r is None
            or not can_choose_pids()
            or any(o.child.pid == r.child.pid and o.state != "reaped" for o in self.roles)
        ):
            return
        try:
            child = spawn_child_at_pid(r.child.pid, signal_log=self.tmp / f"s{self.n}")
        except RuntimeError:
            return  # the host took the pid first: nothing to test this time
        self.n += 1
        self.roles.append(Role(f"s{self.n}", child, stranger=True))

    def reload(self) -> None:
        self.tracker.configure(self._specs(), None)
        # The agent's next tick refreshes (within one interval): a new pid spec is pinned to
        # the process it names then, not to whatever holds the pid after later steps.
        self.tracker.refresh()

    def restart(self) -> None:
        self.reporter.stop()
        self._build()

    def delay_api(self) -> None:
        for method in ("GET",):
            self.fake.inject(503, method=method, times=4)

    def protect(self, i: int) -> None:
        pool = [r for r in self.roles if r.kube and r.state == "alive"]
        if pool:
            r = pool[i % len(pool)]
            self.fake.patch(NS, r.name, {"spec": {"evictionProtection": True}})

    def phase(self, critical: bool) -> None:
        if critical:  # from what is available now: other work on the host moves it
            self.critical = _critical_now(self.sampler, transition_period=0.0)
        self.dog.classifier.set_policy(self.critical if critical else CALM)
        self.dog.planner.pressure = self.critical if critical else CALM  # type: ignore[union-attr]
        for i in range(12):
            # Six ticks, then on until no stop is settling: a stop's record is published when
            # its settle phase ends, and must be seen before the next step changes the world.
            if i >= 6 and self.dog.state.settling is None:
                break
            before = len(self.records)
            state = self.dog.tick()
            self._check_evictions(self.records[before:])
            if state.assessment is not None and state.assessment.level == Level.NORMAL:
                self.blocked_since_normal.clear()  # a NORMAL tick may lift the blocks
            time.sleep(0.05)  # let the reporter's worker read and write meanwhile

    # -- the invariant ---------------------------------------------------------------------
    def _on_change(self, kind: str, old: Any, new: Any) -> None:
        spec = (new or {}).get("spec") or {}
        was = ((old or {}).get("spec") or {}).get("suspend") is True
        if spec.get("suspend") is True and not was and spec.get("evictionProtection") is True:
            self.violations.append(f"suspended protected object {new['metadata']['name']}")

    def _check_evictions(self, records: list[EvictionRecord]) -> None:
        for rec in records:
            if rec.result not in ("terminated", "killed"):
                continue
            role = next((r for r in self.roles if r.key == rec.key and not r.stranger), None)
            if role is None or role.child.pid != rec.pid:
                self.violations.append(f"evicted {rec.key} pid {rec.pid}: not a managed identity")
                continue
            if role.protected or role.kube_protected:
                self.violations.append(f"evicted protected {rec.key}")
            if role.state != "alive" or not role.applied:
                self.violations.append(f"evicted {rec.key} in state {role.state}")
            role.state = "evicted"
            self.blocked_since_normal.add(rec.key)
            live = [r for r in self.roles if r.state == "alive" and r.applied and not r.stranger]
            if len(live) < FLOOR:
                self.violations.append(f"evicting {rec.key} left {len(live)} < floor {FLOOR}")

    def check(self) -> None:
        for r in self.roles:
            got = r.child.signals()
            if got and (r.stranger or r.protected or r.kube_protected):
                self.violations.append(f"{r.name} (stranger={r.stranger}) got signals {got}")
        missing = self.blocked_since_normal - set(self.dog.state.blocked)
        if missing:
            self.violations.append(f"blocks lost before NORMAL: {sorted(missing)}")
        assert not self.violations, self.violations


STEP = st.one_of(
    st.tuples(
        st.just("spawn"),
        st.sampled_from(["batch", "normal", "high"]),
        st.booleans(),
        st.sampled_from(["pid", "cmdline"]),
        st.booleans(),
        st.booleans(),
    ),
    st.tuples(st.sampled_from(["exit", "zombie", "reuse", "protect"]), st.integers(0, 7)),
    st.tuples(st.sampled_from(["reload", "restart", "delay_api", "critical", "normal"])),
)


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    first=st.lists(
        st.tuples(
            st.sampled_from(["batch", "normal", "high"]),
            st.booleans(),
            st.sampled_from(["pid", "cmdline"]),
            st.booleans(),
            st.booleans(),
        ),
        min_size=2,
        max_size=4,
    ),
    steps=st.lists(STEP, min_size=4, max_size=12),
)
def test_only_adopted_unprotected_live_identities_are_ever_stopped(
    first: list[tuple[Any, ...]], steps: list[tuple[Any, ...]]
) -> None:
    RUNS.append(len(steps))
    with (
        tempfile.TemporaryDirectory() as tmp,
        metalmem.Sampler() as sampler,
        kubefake.FakeKube() as fake,
    ):
        world = World(pathlib.Path(tmp), fake, sampler)
        try:
            for spec in first:
                world.spawn(*spec)
            world.reload()
            for step in [*steps, ("critical",)]:
                name, *args = step
                if name in ("critical", "normal"):
                    world.phase(name == "critical")
                else:
                    getattr(world, name)(*args)
                world.check()
        finally:
            world.close()


def test_report_how_many_sequences_ran() -> None:
    """Runs after the model test in file order: says how many sequences it drew."""
    if RUNS:
        print(f"\nmodel test: {len(RUNS)} sequences, {sum(RUNS)} steps")
