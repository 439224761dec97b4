"""The Kubernetes reporter against a real kube-apiserver (``make e2e-kube``).

The same in-process harness as tests/test_kube.py (the real Watchdog, Sampler, Planner, child
processes and metalmem.kube.rest), but the API server is kube-apiserver with etcd, LLMKube's
CRD and deploy/kubernetes/rbac.yaml applied, and the agent authenticates as the service account
that rbac.yaml binds. What only a real server can answer: server-side apply beside a manager that
Updates and merge-patches the same list, structural pruning and validation of what we write,
events.k8s.io/v1 validation and series, RBAC, and what ``kubectl describe`` shows.

Collected only when METALMEM_KUBE_APISERVER names the binary (tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import pathlib
import shutil
import subprocess
import threading
from collections.abc import Iterator
from typing import Any, cast

import pytest

import metalmem
from metalmem.eviction import EvictionMode
from metalmem.kube import (
    CONDITION_TYPE,
    FIELD_MANAGER,
    REPORTING_CONTROLLER,
    SUSPEND_ANNOTATION,
    KubeReporter,
)
from metalmem.kube.memory import MEMORY_ANNOTATION
from metalmem.level import Level
from metalmem.targets import Priority
from metalmem.watchdog import Watchdog

from ..helpers import Children, wait_for
from ..kubereal import GROUP, PLURAL, VERSION, RealKube, grant_removed
from ..test_kube import AVAILABLE_COND, NS, POLICY, Env, Host, _ticks

pytest.importorskip("kubernetes")
CONTROLLER = "llmkube-controller"


@pytest.fixture
def env(real_kube: RealKube, tmp_path: pathlib.Path, children: Children) -> Iterator[Env]:
    """Env of tests/test_kube.py with the real server in the fake's place, emptied first."""
    real_kube.clear(NS)
    host = Host(tmp_path / "root")
    with metalmem.Sampler(root=str(host.root)) as sampler:
        kubeconfig = real_kube.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)
        yield Env(cast(Any, real_kube), host, sampler, kubeconfig, children, tmp_path)
    host.close()


def _real(env: Env) -> RealKube:
    return cast(RealKube, env.fake)


@contextlib.contextmanager
def _observed(
    env: Env, name: str, *, real_clock: bool = False
) -> Iterator[tuple[KubeReporter, Watchdog]]:
    """One seeded object, its child as the target, the reporter and an observing watchdog
    running while inside; the reporter is stopped after. ``real_clock``: timestamps from the
    wall clock (Env's reporter steps a fake one), for what an operator reads as an age."""
    env.seed(name)
    kid = env.children.spawn()
    reporter = env.reporter()
    if real_clock:
        reporter = KubeReporter(reporter.options, pressure=POLICY, stats=env.stats)
    reporter.start()
    dog = env.watchdog(reporter, [env.target(kid, name)], mode=EvictionMode.OBSERVE)
    try:
        with dog:
            yield reporter, dog
    finally:
        reporter.stop()


def _no_refusals(env: Env) -> None:
    """Every write the reporter made was accepted: no 403, no 422, no other error."""
    writes = env.stats.snapshot()["kube_writes"]
    bad = {k: v for k, v in writes.items() if k[1] != "success"}  # type: ignore[union-attr]
    assert not bad, f"writes the real server refused: {bad}"


def _controller_update(kube: RealKube, name: str, message: str) -> None:
    """LLMKube's ``Status().Update()``: read, set its condition (meta.SetStatusCondition keeps
    the others), PUT the whole object back."""
    obj = kube.get(NS, name)
    assert obj is not None
    conds = obj.setdefault("status", {}).setdefault("conditions", [])
    for c in conds:
        if c["type"] == "Available":
            c["message"] = message
    kube.update_status(obj, manager=CONTROLLER)


def _controller_merge_patch(kube: RealKube, name: str, conditions: list[dict[str, Any]]) -> None:
    """controller-runtime's ``Status().Patch(client.MergeFrom(orig))``: a JSON merge patch whose
    conditions list is the controller's whole list (merge patch replaces lists)."""
    kube.patch(NS, name, {"status": {"conditions": conditions}}, status=True, manager=CONTROLLER)


def test_condition_by_apply_beside_a_controller_that_updates_and_merge_patches(env: Env) -> None:
    kube = _real(env)
    with _observed(env, "a") as (reporter, dog):
        wait_for(lambda: env.reason_is("a", "Normal"), what="a Normal")
        env.host.set(Level.WARNING)
        wait_for(lambda: env.reason_is("a", "Warning"), what="a Warning")
        # The controller reads, changes its own condition, writes the whole object back.
        _controller_update(kube, "a", "serving (update)")
        assert env.reason_is("a", "Warning"), "a read-modify-write keeps our entry"
        # And merge-patches its list as it read it (ours included, unchanged).
        obj = kube.get(NS, "a")
        assert obj is not None
        conds = [dict(c) for c in obj["status"]["conditions"]]
        for c in conds:
            if c["type"] == "Available":
                c["message"] = "serving (merge)"
        _controller_merge_patch(kube, "a", conds)
        assert env.reason_is("a", "Warning")
        # Our next write is a server-side apply of our entry alone: theirs stays.
        env.host.set(Level.NORMAL)
        wait_for(lambda: env.reason_is("a", "Normal"), what="a Normal again")
        _ticks(dog, 5)
        assert reporter.flush(5)
    obj = kube.get(NS, "a")
    assert obj is not None
    available = kube.condition(NS, "a", "Available")
    assert available == {**AVAILABLE_COND, "message": "serving (merge)"}
    ours = kube.condition(NS, "a", CONDITION_TYPE)
    assert ours is not None and ours["status"] == "False" and ours["observedGeneration"] == 1
    applied = [m for m in obj["metadata"]["managedFields"]
               if m["manager"] == FIELD_MANAGER and m["operation"] == "Apply"]  # fmt: skip
    assert len(applied) == 1 and applied[0]["subresource"] == "status"
    assert list(applied[0]["fieldsV1"]["f:status"]["f:conditions"]) == [
        f'k:{{"type":"{CONDITION_TYPE}"}}'
    ], "we own our entry only"
    theirs = [m for m in obj["metadata"]["managedFields"] if m["manager"] == CONTROLLER]
    assert theirs and all(m["operation"] == "Update" for m in theirs)
    _no_refusals(env)


def test_our_entry_is_healed_after_a_merge_patch_drops_it(env: Env) -> None:
    kube = _real(env)
    with _observed(env, "a") as (_reporter, _dog):
        env.host.set(Level.WARNING)
        wait_for(lambda: env.reason_is("a", "Warning"), what="a Warning")
        _controller_merge_patch(kube, "a", [AVAILABLE_COND])  # a stale read: ours dropped
        assert kube.condition(NS, "a", CONDITION_TYPE) is None
        wait_for(lambda: env.reason_is("a", "Warning"), timeout=10, what="our entry healed")


def test_the_per_model_memory_annotation(env: Env) -> None:
    """The annotation is written by merge patch with the shipped RBAC and survives the CRD's
    structural pruning (annotations are metadata, never pruned); its numbers are the child's."""
    kube = _real(env)
    with _observed(env, "a") as (reporter, _dog):
        note = wait_for(
            lambda: ((kube.get(NS, "a") or {}).get("metadata") or {}).get("annotations", {})
            .get(MEMORY_ANNOTATION),
            timeout=20,
            what="the memory annotation",
        )  # fmt: skip
        assert reporter.flush(5)
    doc = json.loads(note)
    assert doc["footprint"] is not None and doc["footprint"] > 0 and doc["rss"] >= doc["footprint"]
    assert doc["node"] == "node-1" and doc["time"].endswith("Z") and len(doc["pids"]) == 1
    _no_refusals(env)


def test_events_and_their_series_pass_the_real_validation(env: Env) -> None:
    kube = _real(env)
    with _observed(env, "a") as (reporter, dog):
        wait_for(lambda: env.reason_is("a", "Normal"), what="a Normal")
        for level, reason in ((Level.WARNING, "Warning"), (Level.NORMAL, "Normal"),
                              (Level.WARNING, "Warning")):  # fmt: skip
            env.host.set(level)
            wait_for(lambda r=reason: env.reason_is("a", r), what=reason)
            _ticks(dog, 5)
        assert reporter.flush(5)
        wait_for(lambda: len(env.events("a")) >= 2, what="the events stored")
    _no_refusals(env)
    uid = kube.get(NS, "a")["metadata"]["uid"]  # type: ignore[index]
    evs = env.events("a")
    assert all(e["reportingController"] == REPORTING_CONTROLLER for e in evs)
    assert all(e["regarding"]["uid"] == uid and e["regarding"]["kind"] == "InferenceService"
               for e in evs)  # fmt: skip
    changes = [(e["note"].split(":")[0], (e.get("series") or {}).get("count", 1)) for e in evs
               if e["reason"] == "MemoryPressureLevelChanged"]  # fmt: skip
    assert changes == [("memory pressure NORMAL -> WARNING", 2),
                       ("memory pressure WARNING -> NORMAL", 1)], changes  # fmt: skip
    series = next(e for e in evs if e.get("series"))["series"]
    assert series["lastObservedTime"].endswith("Z") and "." in series["lastObservedTime"]


def test_suspend_resume_priority_and_protection_from_the_spec(env: Env) -> None:
    """CRITICAL: the batch object is suspended through spec.suspend and its owner (a stand-in
    for LLMKube) stops it; the protected one, though batch and larger, is never suspended or
    signalled; NORMAL: resumed. Priority and protection come from the objects' specs."""
    kube = _real(env)
    env.seed("a", priority="batch")
    env.seed("b", priority="high")
    env.seed("p", priority="batch", evictionProtection=True)
    kid_a = env.children.spawn(allocate_mib=16, signal_log=env.tmp / "a.signals")
    kid_b = env.children.spawn(signal_log=env.tmp / "b.signals")
    kid_p = env.children.spawn(allocate_mib=64, signal_log=env.tmp / "p.signals")
    targets = [env.target(kid_a, "a"), env.target(kid_b, "b"), env.target(kid_p, "p")]
    stop_owner = threading.Event()

    def owner() -> None:
        """LLMKube's role: tear the model down when spec.suspend turns true (SIGKILL, which the
        child cannot record: a recorded signal came from metalmem)."""
        while not stop_owner.wait(0.05):
            obj = kube.get(NS, "a")
            if obj is not None and obj["spec"].get("suspend") and kid_a.popen.poll() is None:
                kid_a.popen.kill()

    thread = threading.Thread(target=owner, name="owner")
    thread.start()
    reporter = env.reporter()
    reporter.start()
    dog = env.watchdog(reporter, targets, max_evictions=1)
    try:
        with dog:
            from_spec = [Priority.BATCH, Priority.HIGH, Priority.BATCH]
            wait_for(lambda: [t.priority for t in reporter.overlay(targets)] == from_spec,
                     what="specs read")  # fmt: skip
            assert [t.protected for t in reporter.overlay(targets)] == [False, False, True]
            env.host.set(Level.CRITICAL)
            wait_for(lambda: env.reason_is("a", "Evicted"), timeout=15, what="a Evicted")
            assert kube.get(NS, "a")["spec"]["suspend"] is True  # type: ignore[index]
            env.host.set(Level.NORMAL)
            wait_for(lambda: not kube.get(NS, "a")["spec"]["suspend"], timeout=15,  # type: ignore[index]
                     what="a resumed")  # fmt: skip
            wait_for(lambda: [e for e in env.events("a") if e["reason"] == "Resumed"],
                     what="the Resumed event")  # fmt: skip
            assert reporter.flush(5)
            evictions = dog.state.evictions
    finally:
        reporter.stop()
        stop_owner.set()
        thread.join(5)
    assert [(r.key, r.result) for r in evictions] == [("llm/a", "terminated")]
    assert kid_a.signals() == [] and kid_b.signals() == [] and kid_p.signals() == []
    assert not kid_p.has_exited() and not kid_b.has_exited()
    p = kube.get(NS, "p")
    assert p is not None and p["spec"]["suspend"] is False
    assert SUSPEND_ANNOTATION not in (p["metadata"].get("annotations") or {})
    assert not [e for e in env.events("p") if e["reason"] in ("Suspended", "Evicted")]
    a = kube.get(NS, "a")
    assert a is not None and SUSPEND_ANNOTATION not in (a["metadata"].get("annotations") or {})
    reasons = [e["reason"] for e in env.events("a")]
    assert "Suspended" in reasons and "Evicted" in reasons and "Resumed" in reasons
    _no_refusals(env)


GRANTED = [("get", PLURAL, ""), ("list", PLURAL, ""), ("patch", PLURAL, ""),
           ("patch", PLURAL, "status")]  # fmt: skip
REFUSED = [("watch", PLURAL, ""), ("update", PLURAL, ""), ("delete", PLURAL, ""),
           ("update", PLURAL, "status"), ("create", PLURAL, "")]  # fmt: skip


def test_the_shipped_rbac_grants_exactly_what_the_agent_uses(real_kube: RealKube) -> None:
    """The authorizer's own answers for the agent's identity (SubjectAccessReview)."""
    for verb, resource, sub in GRANTED:
        assert real_kube.can_i(verb, resource, NS, subresource=sub), (verb, resource, sub)
    for verb, resource, sub in REFUSED:
        assert not real_kube.can_i(verb, resource, NS, subresource=sub), (verb, resource, sub)
    for verb in ("create", "patch"):
        assert real_kube.can_i(verb, "events", NS, group="events.k8s.io")
        assert not real_kube.can_i(verb, "events", NS, group=""), "no core events"


def test_a_removed_grant_is_a_403_reported_once_with_the_missing_rule(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    kube = _real(env)
    env.seed("x")
    kid = env.children.spawn()
    reporter = env.reporter()
    caplog.set_level(logging.INFO, logger="metalmem.kube")
    with grant_removed(kube, "patch", f"{PLURAL}/status"):
        wait_for(lambda: not kube.can_i("patch", PLURAL, NS, subresource="status"),
                 what="the authorizer sees the change")  # fmt: skip
        reporter.start()
        dog = env.watchdog(reporter, [env.target(kid, "x")], mode=EvictionMode.OBSERVE)
        try:
            with dog:
                wait_for(lambda: [r for r in caplog.records
                                  if "event=kube_forbidden" in r.getMessage()],
                         timeout=15, what="the 403 reported")  # fmt: skip
                for level in (Level.WARNING, Level.NORMAL):
                    env.host.set(level)
                    _ticks(dog, 5)
                assert reporter.flush(5)
        finally:
            reporter.stop()
    forbidden = [r.getMessage() for r in caplog.records if "event=kube_forbidden" in r.getMessage()]
    assert len(forbidden) == 1, forbidden
    assert "verb=patch resource=inferenceservices/status" in forbidden[0]
    assert f"apiGroup {GROUP}" in forbidden[0] and "403" in forbidden[0]
    assert kube.condition(NS, "x", CONDITION_TYPE) is None, "nothing was written"
    assert env.stats.snapshot()["kube_writes"][("condition", "forbidden")] >= 1  # type: ignore[index]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (Debian's kubernetes-client)")
def test_kubectl_describe_shows_the_condition_and_events(env: Env) -> None:
    """What an operator reads: the condition under Status, our event under Events, from us."""
    kube = _real(env)
    with _observed(env, "a", real_clock=True) as (reporter, _dog):
        env.host.set(Level.WARNING)
        wait_for(lambda: env.reason_is("a", "Warning"), what="a Warning")
        assert reporter.flush(5)
        wait_for(lambda: env.events("a"), what="an event")
    admin = kube.write_kubeconfig(env.tmp / "admin.kubeconfig", admin=True)
    out = subprocess.run(
        ["kubectl", "--kubeconfig", str(admin), "describe", "inferenceservice", "a", "-n", NS],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    status, events = (
        out[out.index("\nStatus:") : out.index("\nEvents:")],
        out[out.index("\nEvents:") :],
    )
    blocks = status.split("Last Transition Time:")[1:]  # one block per condition
    fields = [dict(" ".join(line.split()).split(": ", 1) for line in b.strip().splitlines()[1:]
                   if ": " in line) for b in blocks]  # fmt: skip
    ours = [f for f in fields if f.get("Type") == CONDITION_TYPE]
    assert len(ours) == 1, out
    assert ours[0]["Status"] == "True" and ours[0]["Reason"] == "Warning", out
    assert ours[0]["Message"].startswith("WARNING: available 3.0 GiB of 8.0 GiB"), out
    assert [f["Type"] for f in fields] == ["Available", CONDITION_TYPE], out
    [row] = [line.split() for line in events.splitlines() if "MemoryPressureLevelChanged" in line]
    assert row[:2] == ["Warning", "MemoryPressureLevelChanged"], out
    assert row[2] != "<invalid>" and row[3] == REPORTING_CONTROLLER, out
    assert "memory pressure NORMAL -> WARNING" in " ".join(row), out


@pytest.mark.parametrize(
    "change,ok,error",
    [
        ({}, True, ""),
        ({"tls-server-name": "localhost"}, True, ""),  # in the serving certificate
        ({"server": "localhost"}, True, ""),  # https://localhost:<port>: checked by name
        ({"tls-server-name": "elsewhere.example"}, False, "CERTIFICATE_VERIFY_FAILED"),
        ({"certificate-authority-data": None}, False, "CERTIFICATE_VERIFY_FAILED"),
        ({"certificate-authority-data": None, "insecure-skip-tls-verify": True}, True, ""),
    ],
)
def test_tls_is_verified_as_the_kubeconfig_says(
    real_kube: RealKube, tmp_path: pathlib.Path, change: dict[str, Any], ok: bool, error: str
) -> None:
    """metalmem.kube.rest's TLS (http.client + ssl) against the server's own certificate
    (127.0.0.1 and localhost, signed by the CA the kubeconfig carries)."""
    import yaml

    from metalmem.kube.api import Api, CallFailed
    from metalmem.kube.options import KubeOptions, Resource

    real_kube.clear(NS)
    kubeconfig = real_kube.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)
    doc = yaml.safe_load(kubeconfig.read_text())
    cluster = doc["clusters"][0]["cluster"]
    for key, value in change.items():
        if key == "server":
            cluster["server"] = cluster["server"].replace("127.0.0.1", value)
        elif value is None:
            del cluster[key]
        else:
            cluster[key] = value
    kubeconfig.write_text(yaml.safe_dump(doc))
    api = Api(KubeOptions(kubeconfig=str(kubeconfig)), Resource(GROUP, VERSION, PLURAL))
    try:
        if ok:
            assert api.list(NS) == []
        else:
            with pytest.raises(CallFailed) as info:
                api.list(NS)
            assert info.value.transient and error in info.value.message
    finally:
        api.close()
