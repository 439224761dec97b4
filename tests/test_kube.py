"""Kubernetes reporting, in process: the real Watchdog, Sampler, Planner and child processes,
and the real ``kubernetes`` client configured from a kubeconfig that points at the contract fake
(tests/kubefake.py) on loopback.

Pressure levels are set by the test, not by the host: the Sampler reads a /proc tree whose
``meminfo`` the test rewrites in place (the sampler keeps the file open and preads it) and whose
``<pid>`` entries link to our children's real /proc entries. So levels are exact whatever else
runs on this machine, while every sample, footprint, signal and exit is real.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

import metalmem
from metalmem.eviction import EvictionMode, EvictionPolicy, Planner
from metalmem.kube import (
    CONDITION_TYPE,
    REPORTING_CONTROLLER,
    SUSPEND_ANNOTATION,
    ConditionReason,
    KubeOptions,
    KubeReporter,
    Resource,
    condition_for,
    describe,
    fits_headroom,
    kube_available,
    microtime,
)
from metalmem.level import Level
from metalmem.metrics import AgentStats
from metalmem.pressure import Classifier, PressurePolicy
from metalmem.targets import KubeRef, Priority, StopMethod, Target
from metalmem.watchdog import Listeners, Watchdog

from . import samples
from .helpers import Child, Children, wait_for
from .kubefake import APPLY_PATCH, FakeKube, Rbac
from .test_watchdog import QUIET

GiB = 1 << 30
MiB = 1 << 20
NS = "llm"
RBAC_YAML = pathlib.Path(__file__).parent.parent / "deploy" / "kubernetes" / "rbac.yaml"
ROLE_YAML = RBAC_YAML.with_name("role-namespaced.yaml")

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="a /proc tree for the sampler")

# NORMAL above 0.55 (warning 0.5 + margin), WARNING below 0.5, CRITICAL below 0.25 of 8 GiB.
POLICY = PressurePolicy(
    warning_available=0.5,
    critical_available=0.25,
    margin=0.05,
    transition_period=0.3,
    soft_grace=0.0,
    **QUIET,  # type: ignore[arg-type]
)
SHARE = {Level.NORMAL: 0.75, Level.WARNING: 0.375, Level.CRITICAL: 0.125}


# --- pure parts ----------------------------------------------------------------------------------


def test_importing_the_module_does_not_import_kubernetes(tmp_path: pathlib.Path) -> None:
    code = (
        "import sys, metalmem, metalmem.kube as k\n"
        "print(k.kube_available(k.KubeOptions(kubeconfig=sys.argv[1]))[0])\n"
        "r = k.KubeReporter(k.KubeOptions())\n"
        "print('kubernetes' in sys.modules)\n"
    )
    (tmp_path / "kc").write_text("{}")
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "kc")],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    assert out.stdout.split() == ["True", "False"], out.stderr


def test_kube_available_follows_the_default_rule(tmp_path: pathlib.Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    token = tmp_path / "token"
    opts = KubeOptions()
    on, why = kube_available(opts, environ={"HOME": str(home)}, token_path=str(token))
    assert not on and "no in-cluster" in why
    (home / ".kube").mkdir()
    (home / ".kube" / "config").write_text("{}")
    assert kube_available(opts, environ={"HOME": str(home)}, token_path=str(token))[0]
    kc = tmp_path / "kc"
    kc.write_text("{}")
    env = {"HOME": str(tmp_path), "KUBECONFIG": f"/nonexistent{os.pathsep}{kc}"}
    assert kube_available(opts, environ=env, token_path=str(token)) == (
        True, f"kubeconfig {kc} (KUBECONFIG)",
    )  # fmt: skip
    incluster = {"HOME": str(tmp_path), "KUBERNETES_SERVICE_HOST": "10.0.0.1"}
    assert not kube_available(opts, environ=incluster, token_path=str(token))[0]
    token.write_text("t")
    assert kube_available(opts, environ=incluster, token_path=str(token)) == (
        True, "in-cluster service account",
    )  # fmt: skip
    missing = KubeOptions(kubeconfig=str(tmp_path / "nope"))
    on, why = kube_available(missing, environ=incluster, token_path=str(token))
    assert not on and "nope" in why, "an explicit kubeconfig that is missing wins"


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"resource": "inferenceservices"}, "resource"),
        ({"resource": "a/b/c/d"}, "resource"),
        ({"refresh": 31.0}, "refresh"),
        ({"refresh": 0}, "refresh"),
        ({"queue_size": 0}, "queue_size"),
        ({"node_name": ""}, "node_name"),
        ({"node_name": "n" * 129}, "node_name"),
        ({"backoff_initial": 5.0, "backoff_max": 1.0}, "backoff_initial"),
        ({"suspend_grace": -1.0}, "suspend_grace"),
        ({"namespace": ""}, "namespace"),
    ],
)
def test_options_are_validated(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        KubeOptions(**kwargs)


def test_resource_parse() -> None:
    r = Resource.parse("inference.llmkube.dev/v1alpha1/inferenceservices")
    assert (r.group, r.version, r.plural) == ("inference.llmkube.dev", "v1alpha1",
                                               "inferenceservices")  # fmt: skip
    assert r.api_version == "inference.llmkube.dev/v1alpha1"


def test_condition_table() -> None:
    assert condition_for(Level.NORMAL) == ("False", ConditionReason.NORMAL)
    assert condition_for(Level.NORMAL, evicted=True) == ("False", ConditionReason.NORMAL)
    assert condition_for(Level.WARNING) == ("True", ConditionReason.WARNING)
    assert condition_for(Level.CRITICAL) == ("True", ConditionReason.CRITICAL)
    assert condition_for(Level.CRITICAL, evicted=True) == ("True", ConditionReason.EVICTED)
    assert condition_for(Level.WARNING, evicted=True) == ("True", ConditionReason.EVICTED)


def test_headroom_rule_and_message_numbers() -> None:
    host = samples.host(total=8 * GiB, available=5 * GiB)  # 1 GiB above 0.5 of 8 GiB
    assert fits_headroom(1 * GiB, host, 0.5)
    assert not fits_headroom(1 * GiB + 1, host, 0.5)
    assert fits_headroom(None, host, 0.5), "an unknown footprint does not hold a resume"
    assert not fits_headroom(1, samples.host(available=None), 0.5)
    a = Classifier(POLICY).assess(samples.host(total=8 * GiB, available=1 * GiB), 0.0)
    text = describe(a.level, samples.host(total=8 * GiB, available=1 * GiB), a)
    assert text.startswith("CRITICAL: available 1.0 GiB of 8.0 GiB (12.5%); top signal "
                           "memory.available: ")  # fmt: skip


def test_microtime_has_exactly_six_digits() -> None:
    assert microtime(0.0) == "1970-01-01T00:00:00.000000Z"
    assert microtime(1.5) == "1970-01-01T00:00:01.500000Z"


# --- the in-process harness --------------------------------------------------------------------


class Host:
    """A /proc tree for the Sampler: ``meminfo`` we write, ``<pid>`` links to real children."""

    def __init__(self, root: pathlib.Path, total: int = 8 * GiB) -> None:
        self.root = root
        self.total = total
        (root / "proc").mkdir(parents=True)
        self._fd = os.open(root / "proc" / "meminfo", os.O_WRONLY | os.O_CREAT, 0o644)
        self.set(Level.NORMAL)

    def set(self, level: Level, *, available: int | None = None) -> None:
        avail = int(SHARE[level] * self.total) if available is None else available
        rows = [("MemTotal", self.total), ("MemFree", avail), ("MemAvailable", avail),
                ("SwapTotal", 0), ("SwapFree", 0)]  # fmt: skip
        text = "".join(f"{k + ':':<16}{v >> 10:>14} kB\n" for k, v in rows)
        os.pwrite(self._fd, text.encode(), 0)  # same length every time: one in-place write

    def link(self, child: Child) -> None:
        (self.root / "proc" / str(child.pid)).symlink_to(f"/proc/{child.pid}")

    def close(self) -> None:
        os.close(self._fd)


def _isvc(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "inference.llmkube.dev/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"modelRef": "llama", **spec},
    }


AVAILABLE_COND = {
    "type": "Available",
    "status": "True",
    "reason": "Ready",
    "message": "serving",
    "lastTransitionTime": "2026-01-01T00:00:00Z",
}


@dataclasses.dataclass
class Env:
    fake: FakeKube
    host: Host
    sampler: metalmem.Sampler
    kubeconfig: pathlib.Path
    children: Children
    tmp: pathlib.Path
    stats: AgentStats = dataclasses.field(default_factory=AgentStats)

    def seed(self, name: str, **spec: Any) -> None:
        """An object another controller (LLMKube) created and reports ``Available`` on."""
        self.fake.create(_isvc(name, **spec))
        self.fake.patch(NS, name, {"status": {"conditions": [AVAILABLE_COND]}}, status=True,
                        manager="llmkube-controller")  # fmt: skip

    def target(self, child: Child, name: str, *, grace: float = 5.0) -> Target:
        self.host.link(child)
        start = self.sampler.process(child.pid).start_time
        assert start is not None
        return Target(f"{NS}/{name}", child.pid, start, Priority.NORMAL,
                      stop=StopMethod(grace=grace), kube=KubeRef(NS, name))  # fmt: skip

    def reporter(self, **options: Any) -> KubeReporter:
        base: dict[str, Any] = {
            "kubeconfig": str(self.kubeconfig),
            "node_name": "node-1",
            "refresh": 0.2,
            "request_timeout": 2.0,
            "backoff_initial": 0.05,
            "backoff_max": 0.4,
        }
        base.update(options)
        wall = itertools.count(1_800_000_000.0, 7.0)  # each reading 7 s later: visible LTTs
        return KubeReporter(
            KubeOptions(**base), pressure=POLICY, stats=self.stats, wall=lambda: next(wall)
        )

    def watchdog(self, reporter: KubeReporter, targets: list[Target], **eviction: Any) -> Watchdog:
        policy: dict[str, Any] = {
            "mode": EvictionMode.ENFORCE,
            "min_managed_share": 0.0,
            "floor": 1,
            "cooldown": 0.0,
            "max_evictions": 1,
            "min_reclaim": 0,
            "settle_timeout": 1.0,
        }
        policy.update(eviction)
        listeners = Listeners()
        reporter.attach(listeners)
        return Watchdog(
            self.sampler,
            Classifier(POLICY, interval=0.05),
            lambda: reporter.overlay(targets),
            interval=0.05,
            min_interval=0.05,
            planner=Planner(EvictionPolicy(**policy), POLICY),
            listeners=listeners,
            stopper=reporter.stopper,
            state_dir=str(self.tmp / "state"),
        )

    def condition(self, name: str) -> dict[str, Any] | None:
        return self.fake.condition(NS, name, CONDITION_TYPE)

    def reason_is(self, name: str, reason: str) -> bool:
        c = self.condition(name)
        return c is not None and c["reason"] == reason

    def written(self, name: str) -> list[dict[str, Any]]:
        """Every MemoryPressure condition metalmem applied to ``name``, in order."""
        path = f"/apis/inference.llmkube.dev/v1alpha1/namespaces/{NS}/inferenceservices/{name}"
        return [
            r.body["status"]["conditions"][0]
            for r in self.fake.requests
            if r.path == f"{path}/status" and r.content_type == APPLY_PATCH and r.status == 200
        ]

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.fake.events(NS) if e["regarding"]["name"] == name]


@pytest.fixture
def env(tmp_path: pathlib.Path, children: Children) -> Iterator[Env]:
    if sys.platform != "linux":
        pytest.skip("a /proc tree for the sampler")
    pytest.importorskip("kubernetes")
    host = Host(tmp_path / "root")
    with FakeKube() as fake, metalmem.Sampler(root=str(host.root)) as sampler:
        kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)
        yield Env(fake, host, sampler, kubeconfig, children, tmp_path)
    host.close()


def _ticks(dog: Watchdog, n: int) -> None:
    seq = dog.state.seq
    wait_for(lambda: dog.state.seq >= seq + n, timeout=10, what=f"{n} ticks")


def _occurrences(events: list[dict[str, Any]], reason: str) -> list[tuple[str, int]]:
    """(note, count) of each event object with ``reason``; count includes its series."""
    return [
        (e["note"], (e.get("series") or {}).get("count", 1))
        for e in events
        if e["reason"] == reason
    ]


# --- end to end -------------------------------------------------------------------------------


@linux_only
def test_levels_eviction_and_recovery_give_exact_conditions_and_events(env: Env) -> None:
    """NORMAL -> WARNING -> NORMAL -> WARNING -> CRITICAL -> eviction (suspend, stand-in owner)
    -> NORMAL -> resume: the exact condition history per object, lastTransitionTime only on
    status changes, one event per change (a repeat within 10 min is a series), the other
    controller's Available condition intact on every stored version, RBAC from deploy/ enough
    and every granted verb used."""
    fake = env.fake
    fake.rbac = Rbac.from_yaml(RBAC_YAML)
    env.seed("a", priority="batch")
    env.seed("b", priority="high")
    kid_a = env.children.spawn(allocate_mib=32, signal_log=env.tmp / "a.signals")
    kid_b = env.children.spawn(allocate_mib=32, signal_log=env.tmp / "b.signals")
    targets = [env.target(kid_a, "a"), env.target(kid_b, "b")]
    stored: list[tuple[str, list[dict[str, Any]]]] = []

    def owner(kind: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        """LLMKube's role: tear the process down when spec.suspend turns true (SIGKILL, which
        the child cannot record: any signal it records came from metalmem)."""
        if new is None:
            return
        stored.append((new["metadata"]["name"], new.get("status", {}).get("conditions", [])))
        was = (old or {}).get("spec", {}).get("suspend")
        if new["metadata"]["name"] == "a" and new["spec"]["suspend"] and not was:
            kid_a.popen.kill()

    fake.watch(owner)
    reporter = env.reporter()
    reporter.start()
    dog = env.watchdog(reporter, targets)
    path_a = f"/apis/inference.llmkube.dev/v1alpha1/namespaces/{NS}/inferenceservices/a"
    try:
        with dog:
            for name in ("a", "b"):
                wait_for(lambda n=name: env.reason_is(n, "Normal"), what=f"{name} Normal")
            assert [t.priority for t in reporter.overlay(targets)] == [Priority.BATCH,
                                                                       Priority.HIGH]  # fmt: skip
            for level, reason in ((Level.WARNING, "Warning"), (Level.NORMAL, "Normal"),
                                  (Level.WARNING, "Warning")):  # fmt: skip
                env.host.set(level)
                for name in ("a", "b"):
                    wait_for(lambda n=name, r=reason: env.reason_is(n, r), what=f"{name} {reason}")
                _ticks(dog, 10)  # the level holds: nothing more may be written
            fake.inject(409, method="PATCH", path=path_a)  # the suspend patch conflicts once
            env.host.set(Level.CRITICAL)
            wait_for(lambda: env.reason_is("a", "Evicted"), timeout=10, what="a Evicted")
            wait_for(lambda: env.reason_is("b", "Critical"), what="b Critical")
            assert fake.get(NS, "a")["spec"]["suspend"] is True  # type: ignore[index]
            env.host.set(Level.NORMAL)
            wait_for(lambda: not fake.get(NS, "a")["spec"]["suspend"], timeout=10,  # type: ignore[index]
                     what="a resumed")  # fmt: skip
            wait_for(lambda: [e for e in env.events("a") if e["reason"] == "Resumed"],
                     what="the Resumed event")  # fmt: skip
            for name in ("a", "b"):
                wait_for(lambda n=name: env.reason_is(n, "Normal"), what=f"{name} Normal")
            _ticks(dog, 10)
            assert reporter.flush(5)
            skips = dict(dog.state.skip_counts)
            evictions = dog.state.evictions
    finally:
        reporter.stop()

    # The eviction went through the owner: no signal from metalmem, one suspend, a 409 retried.
    assert [(r.key, r.result) for r in evictions] == [("llm/a", "terminated")]
    assert "suspended llm/a" in evictions[0].message
    assert kid_a.signals() == [] and kid_b.signals() == [] and not kid_b.has_exited()
    a = fake.get(NS, "a")
    assert a is not None and SUSPEND_ANNOTATION not in a["metadata"].get("annotations", {})
    writes = env.stats.snapshot()["kube_writes"]
    assert writes[("suspend", "conflict")] == 1 and writes[("suspend", "success")] == 1  # type: ignore[index]
    assert writes[("resume", "success")] == 1  # type: ignore[index]

    # Exactly one condition write per change, nothing while a level held.
    hist = {n: [(c["status"], c["reason"]) for c in env.written(n)] for n in ("a", "b")}
    common = [("False", "Normal"), ("True", "Warning"), ("False", "Normal"), ("True", "Warning")]
    assert hist["a"] == [*common, ("True", "Critical"), ("True", "Evicted"), ("False", "Normal")]
    assert hist["b"] == [*common, ("True", "Critical"), ("False", "Normal")]
    for name in ("a", "b"):
        conds = env.written(name)
        for prev, cur in itertools.pairwise(conds):
            same = prev["status"] == cur["status"]
            assert (cur["lastTransitionTime"] == prev["lastTransitionTime"]) == same, (prev, cur)
    # observedGeneration: 1 until the suspend made it 2. Publish, then act (issue 14): the
    # Critical condition was written before the suspend, so it still carries generation 1.
    assert [c["observedGeneration"] for c in env.written("a")] == [1] * 5 + [2] * 2
    assert [c["observedGeneration"] for c in env.written("b")] == [1] * 6
    # The other controller's condition survived every stored version.
    for name, conditions in stored:
        assert AVAILABLE_COND in conditions, (name, conditions)
    owners = {(m["manager"], m["operation"]): m for m in a["metadata"]["managedFields"]}
    assert owners["metalmem", "Apply"]["subresource"] == "status"
    assert list(owners["metalmem", "Apply"]["fieldsV1"]["f:status"]["f:conditions"]) == [
        'k:{"type":"MemoryPressure"}'
    ]
    assert "f:suspend" in owners["metalmem", "Update"]["fieldsV1"]["f:spec"]

    # Events: one per change; the second NORMAL -> WARNING within 10 min is a series update.
    for name in ("a", "b"):
        evs = env.events(name)
        assert all(e["reportingController"] == REPORTING_CONTROLLER for e in evs)
        assert all(e["reportingInstance"] == "node-1" for e in evs)
        assert all(e["regarding"]["uid"] == fake.get(NS, name)["metadata"]["uid"] for e in evs)  # type: ignore[index]
        changes = [(n.split(":")[0], c) for n, c in _occurrences(evs, "MemoryPressureLevelChanged")]
        assert changes == [
            ("memory pressure NORMAL -> WARNING", 2),
            ("memory pressure WARNING -> NORMAL", 1),
            ("memory pressure WARNING -> CRITICAL", 1),
            ("memory pressure CRITICAL -> NORMAL", 1),
        ]
        types = {e["note"].split(":")[0]: e["type"] for e in evs if e["action"] != "Evict"}
        assert types["memory pressure CRITICAL -> NORMAL"] == "Normal"
        assert types["memory pressure NORMAL -> WARNING"] == "Warning"
        seen_skips: dict[str, int] = {}
        for note, count in _occurrences(evs, "EvictionSkipped"):
            reason = note.split(": ")[1]
            seen_skips[reason] = seen_skips.get(reason, 0) + count
        assert seen_skips == skips, "one EvictionSkipped per change of reason, not per tick"
    order = [e["reason"] for e in env.events("a") if e["reason"] != "EvictionSkipped"]
    assert order == [
        "MemoryPressureLevelChanged", "MemoryPressureLevelChanged",  # N->W (x2), W->N
        "MemoryPressureLevelChanged", "Evicting", "Suspended",  # publish, then act (issue 14)
        "Evicted", "RespawnBlocked", "MemoryPressureLevelChanged",
        "RespawnUnblocked", "Resumed",
    ]  # fmt: skip
    assert [e["reason"] for e in env.events("b") if e["reason"] != "EvictionSkipped"] == [
        "MemoryPressureLevelChanged"
    ] * 4
    evicted = next(e for e in env.events("a") if e["reason"] == "Evicted")
    assert "result terminated" in evicted["note"] and "footprint 3" in evicted["note"]

    # RBAC: nothing refused, and every granted verb was needed.
    assert not [r for r in fake.requests if r.status == 403]
    assert fake.used == Rbac.from_yaml(RBAC_YAML).granted() == Rbac.from_yaml(ROLE_YAML).granted()


@linux_only
def test_an_object_suspended_by_someone_else_is_signalled_and_never_resumed(env: Env) -> None:
    env.seed("c", priority="batch", suspend=True)  # a person suspended it; not ours
    env.seed("d", priority="high")
    kid_c = env.children.spawn(allocate_mib=16, signal_log=env.tmp / "c.signals")
    kid_d = env.children.spawn()
    targets = [env.target(kid_c, "c", grace=2.0), env.target(kid_d, "d")]
    reporter = env.reporter()
    reporter.start()
    dog = env.watchdog(reporter, targets, settle_timeout=0.2)
    try:
        with dog:
            wait_for(lambda: env.reason_is("c", "Normal"), what="c seen")
            env.host.set(Level.CRITICAL)
            wait_for(lambda: env.reason_is("c", "Evicted"), timeout=10, what="c Evicted")
            env.host.set(Level.NORMAL)
            wait_for(lambda: [e for e in env.events("c") if e["reason"] == "RespawnUnblocked"],
                     timeout=10, what="unblock")  # fmt: skip
            wait_for(lambda: env.reason_is("c", "Normal"), what="c Normal")
            _ticks(dog, 10)
            assert reporter.flush(5)
            evictions = dog.state.evictions
    finally:
        reporter.stop()
    assert evictions[0].result == "terminated"
    assert evictions[0].message.startswith("not suspended (spec.suspend was already set")
    assert kid_c.signals() == [signal.SIGTERM], "the signal path stopped it"
    c = env.fake.get(NS, "c")
    assert c is not None and c["spec"]["suspend"] is True
    assert SUSPEND_ANNOTATION not in c["metadata"].get("annotations", {})
    main_patches = [
        r
        for r in env.fake.requests
        if r.method == "PATCH"
        and r.path.endswith("/inferenceservices/c")
        and "spec" in (r.body or {})
    ]  # the memory annotation is metadata, not spec
    assert main_patches == [], "metalmem never wrote spec of an object it did not suspend"
    assert not [e for e in env.events("c") if e["reason"] in ("Suspended", "Resumed")]


@linux_only
def test_an_owner_too_slow_gets_the_signal_path_and_resume_waits_for_headroom(env: Env) -> None:
    """The owner ignores spec.suspend: after the grace the signal path runs (recorded). The
    object is still ours, so it is resumed, but only once its footprint fits above WARNING."""
    env.seed("e", priority="batch")
    env.seed("f", priority="high")
    kid_e = env.children.spawn(allocate_mib=64, signal_log=env.tmp / "e.signals")
    kid_f = env.children.spawn()
    targets = [env.target(kid_e, "e"), env.target(kid_f, "f")]
    reporter = env.reporter(suspend_grace=0.3)
    reporter.start()
    dog = env.watchdog(reporter, targets, settle_timeout=0.2)
    env.host.total = 1 * GiB  # NORMAL needs 0.55 of it: 0.56 is NORMAL with 61 MiB above
    env.host.set(Level.NORMAL)  # WARNING (0.5), where a 64 MiB footprint does not fit
    tight = int(0.56 * env.host.total)
    try:
        with dog:
            wait_for(lambda: env.reason_is("e", "Normal"), what="e seen")
            env.host.set(Level.CRITICAL)
            wait_for(lambda: dog.state.evictions, timeout=10, what="the eviction")
            env.host.set(Level.NORMAL, available=tight)
            wait_for(lambda: [e for e in env.events("e") if e["reason"] == "RespawnUnblocked"],
                     timeout=10, what="unblock")  # fmt: skip
            _ticks(dog, 20)
            assert env.fake.get(NS, "e")["spec"]["suspend"] is True, "64 MiB does not fit yet"  # type: ignore[index]
            env.host.set(Level.NORMAL)
            wait_for(lambda: not env.fake.get(NS, "e")["spec"]["suspend"], timeout=5,  # type: ignore[index]
                     what="resumed once it fits")  # fmt: skip
            record = dog.state.evictions[0]
    finally:
        reporter.stop()
    assert record.result == "terminated" and kid_e.signals() == [signal.SIGTERM]
    assert "did not exit within 0.3 s, so the signal path ran" in record.message
    e = env.fake.get(NS, "e")
    assert e is not None and SUSPEND_ANNOTATION not in e["metadata"].get("annotations", {})


OUTAGE = 30.0


@linux_only
def test_an_api_outage_never_delays_the_watchdog_and_recovery_writes_the_current_condition(
    env: Env,
) -> None:
    env.seed("g", priority="batch")
    env.seed("h", priority="high")
    kid_g = env.children.spawn(allocate_mib=16, signal_log=env.tmp / "g.signals")
    kid_h = env.children.spawn()
    targets = [env.target(kid_g, "g", grace=2.0), env.target(kid_h, "h")]
    reporter = env.reporter(queue_size=3)
    reporter.start()
    dog = env.watchdog(reporter, targets, settle_timeout=0.2)
    try:
        with dog:
            wait_for(lambda: env.reason_is("g", "Normal") and env.reason_is("h", "Normal"),
                     what="both seen")  # fmt: skip
            env.fake.stop()
            down_at = time.monotonic()
            before = len(env.fake.requests)
            seq = dog.state.seq
            env.host.set(Level.WARNING)
            _ticks(dog, 10)
            env.host.set(Level.CRITICAL)
            wait_for(lambda: dog.state.evictions, timeout=10, what="an eviction during the outage")
            # The outage: 30 s with the API gone, the reporter deep in its backoff.
            wait_for(lambda: time.monotonic() - down_at >= OUTAGE, timeout=OUTAGE + 10,
                     interval=0.5, what="the outage to last")  # fmt: skip
            history = [p.timestamp for p in dog.state.history if p.timestamp]
            assert dog.state.seq - seq >= OUTAGE / 0.05 * 0.5  # at least half the ticks due
            assert not reporter.is_reachable
            assert len(env.fake.requests) == before
            env.fake.start()
            wait_for(lambda: env.reason_is("g", "Evicted") and env.reason_is("h", "Critical"),
                     timeout=10, what="the current conditions after the outage")  # fmt: skip
            assert reporter.flush(5)
            record = dog.state.evictions[0]
    finally:
        reporter.stop()
    gaps = [b - a for a, b in itertools.pairwise(history)]
    assert max(gaps) < 1.0, "a tick waited for the API (request timeout 2 s, backoff)"
    assert record.result == "terminated" and kid_g.signals() == [signal.SIGTERM]
    assert record.message.startswith("not suspended (the API server is unreachable)")
    after = [(c["status"], c["reason"]) for c in env.written("g")]
    assert after == [("False", "Normal"), ("True", "Evicted")], "no stale WARNING replayed"
    assert env.stats.snapshot()["kube_dropped"] > 0, "more events than the queue holds"


@linux_only
def test_priority_and_protection_come_from_spec_and_a_missing_object_keeps_local_settings(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    env.seed("p", priority="critical", evictionProtection=True)
    kid_p = env.children.spawn()
    kid_q = env.children.spawn()
    local = dataclasses.replace(env.target(kid_q, "gone"), priority=Priority.LOW, protected=True)
    targets = [env.target(kid_p, "p"), local]
    reporter = env.reporter()
    caplog.set_level(logging.INFO, logger="metalmem.kube")
    reporter.start()
    try:
        reporter.overlay(targets)
        wait_for(lambda: reporter.overlay(targets)[0].priority == Priority.CRITICAL,
                 what="spec read")  # fmt: skip
        p, q = reporter.overlay(targets)
        assert p.protected is True and q == local, "a missing object keeps local settings"
        env.fake.patch(NS, "p", {"spec": {"priority": "batch", "evictionProtection": False}})
        wait_for(lambda: reporter.overlay(targets)[0].priority == Priority.BATCH,
                 what="the spec change within a refresh")  # fmt: skip
        assert reporter.overlay(targets)[0].protected is False
        lists = len([r for r in env.fake.requests if r.verb == "list"])
        wait_for(lambda: len([r for r in env.fake.requests if r.verb == "list"]) >= lists + 3,
                 what="more refreshes")  # fmt: skip
        missing = [r for r in caplog.records if "event=kube_object_missing" in r.getMessage()]
        assert len(missing) == 1 and "ref=llm/gone" in missing[0].getMessage()
        env.fake.create(_isvc("gone", priority="high"))
        wait_for(lambda: reporter.overlay(targets)[1].priority == Priority.HIGH,
                 what="the object appears")  # fmt: skip
        assert reporter.overlay(targets)[1].protected is True, "unset in spec: kept local"
    finally:
        reporter.stop()


@linux_only
def test_404_ends_reporting_for_that_object_and_403_is_logged_once_with_the_verb(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    env.seed("x")
    env.seed("y")
    rbac = Rbac.from_yaml(RBAC_YAML)
    env.fake.rbac = Rbac(tuple(r for r in rbac.rules if "inferenceservices/status" not in r[1]))
    kid_x, kid_y = env.children.spawn(), env.children.spawn()
    targets = [env.target(kid_x, "x"), env.target(kid_y, "y")]
    reporter = env.reporter()
    caplog.set_level(logging.INFO, logger="metalmem.kube")
    reporter.start()
    dog = env.watchdog(reporter, targets, mode=EvictionMode.OBSERVE)
    try:
        with dog:
            wait_for(lambda: [e for e in env.fake.requests if e.status == 403], what="a 403")
            env.fake.delete(NS, "x")
            wait_for(lambda: [r for r in caplog.records if "kube_object_missing" in r.getMessage()],
                     what="the next refresh sees x gone")  # fmt: skip
            seen_gone = len(env.fake.requests)
            for level in (Level.WARNING, Level.NORMAL, Level.WARNING):
                env.host.set(level)
                wait_for(lambda lv=level: dog.state.assessment is not None
                         and dog.state.assessment.level == lv, what=str(level))  # fmt: skip
                _ticks(dog, 5)
            assert reporter.flush(5)
            wait_for(lambda: len(env.events("y")) >= 2, what="y's events")
    finally:
        reporter.stop()
    forbidden = [r.getMessage() for r in caplog.records if "event=kube_forbidden" in r.getMessage()]
    assert len(forbidden) == 1
    assert "verb=patch resource=inferenceservices/status" in forbidden[0]
    assert env.stats.snapshot()["kube_writes"][("condition", "forbidden")] >= 3  # type: ignore[index]
    assert env.events("x") == [], "x is gone: nothing regarding it after the 404"
    assert not [r for r in env.fake.requests[seen_gone:] if r.name == "x"]
    gone = [r.getMessage() for r in caplog.records if "event=kube_object_missing" in r.getMessage()]
    assert len(gone) == 1 and "ref=llm/x" in gone[0]


def test_start_without_configuration_is_a_clear_error(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("kubernetes")
    reporter = KubeReporter(KubeOptions(kubeconfig=str(tmp_path / "missing")))
    with pytest.raises(metalmem.Error, match="cannot load Kubernetes configuration"):
        reporter.start()


def test_stopper_without_a_started_reporter_is_the_signal_path(
    sampler: metalmem.Sampler, children: Children, tmp_path: pathlib.Path
) -> None:
    kid = children.spawn(signal_log=tmp_path / "s")
    start = sampler.process(kid.pid).start_time
    assert start is not None
    target = Target("llm/z", kid.pid, start, stop=StopMethod(grace=2.0), kube=KubeRef(NS, "z"))
    record = KubeReporter(KubeOptions()).stopper(target, sampler)
    assert record.result == "terminated" and record.steps == ("SIGTERM",)
    wait_for(lambda: kid.signals() == [signal.SIGTERM], what="SIGTERM recorded")
