"""Issue 16: the reporter among LLMKube's other writers of an InferenceService's status.

The API double plays LLMKube (tests/kubefake.py :class:`LLMKube`): its main controller
``Status().Update``s the whole status with its own view of the conditions, its gateway
merge-patches the whole list without a resourceVersion, and its metal agent's memory watchdog
writes a ``MemoryPressure`` of its own. After each, our entry is back within one refresh, the
re-apply is counted, the other writer of our type is reported once, and nothing else on the
object is changed by us.
"""

from __future__ import annotations

import logging
import pathlib
import signal
from typing import Any

import pytest

from metalmem.kube import CONDITION_TYPE
from metalmem.kube.objects import condition_owners
from metalmem.level import Level

from . import test_kube
from .helpers import wait_for
from .kubefake import APPLY_PATCH, FakeKube, LLMKube
from .test_kube import NS, Env, _ticks, linux_only

env = test_kube.env  # the fixture: a /proc tree, the API double, a kubeconfig


def _ours(env: Env, name: str) -> dict[str, Any]:
    """The last MemoryPressure entry metalmem applied to ``name``."""
    return env.written(name)[-1]


def _is_ours(env: Env, name: str) -> bool:
    c = env.condition(name)
    ours = _ours(env, name)
    return c is not None and all(c.get(k) == v for k, v in ours.items())


def _others(obj: dict[str, Any]) -> dict[str, Any]:
    """Everything of the object but our condition entry and the bookkeeping of writes."""
    meta = {k: v for k, v in obj["metadata"].items()
            if k not in ("resourceVersion", "managedFields")}  # fmt: skip
    status = dict(obj.get("status") or {})
    status["conditions"] = [
        c for c in status.get("conditions") or () if c.get("type") != CONDITION_TYPE
    ]
    return {**obj, "metadata": meta, "status": status}


def test_condition_owners_reads_managed_fields() -> None:
    key = 'k:{"type":"MemoryPressure"}'
    obj = {"metadata": {"managedFields": [
        {"manager": "metalmem", "fieldsV1": {"f:status": {"f:conditions": {key: {".": {}}}}}},
        {"manager": "agent", "fieldsV1": {"f:status": {"f:conditions": {
            key: {"f:status": {}}, 'k:{"type":"Available"}': {".": {}}}}}},
        {"manager": "ctrl", "fieldsV1": {"f:status": {"f:conditions": {
            'k:{"type":"Available"}': {".": {}}}}}},
        {"manager": "odd", "fieldsV1": {"f:status": {"f:conditions": {"k:{bad": {}}}}},
    ]}}  # fmt: skip
    assert condition_owners(obj) == {"metalmem", "agent"}


@linux_only
def test_our_condition_comes_back_after_each_llmkube_writer(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="metalmem.kube")
    llmkube = LLMKube(env.fake)
    env.seed("m", priority="normal")
    kid = env.children.spawn(allocate_mib=8)
    targets = [env.target(kid, "m")]
    reporter = env.reporter()
    reporter.start()
    dog = env.watchdog(reporter, targets)
    writers = (
        ("controller", lambda: llmkube.controller(NS, "m")),
        ("gateway", lambda: llmkube.gateway(NS, "m")),
        ("watchdog", lambda: llmkube.watchdog(NS, "m")),
        ("watchdog again", lambda: llmkube.watchdog(NS, "m", status="False", reason="Normal")),
    )
    try:
        with dog:
            env.host.set(Level.WARNING)
            wait_for(lambda: env.reason_is("m", "Warning"), what="our Warning")
            for what, write in writers:
                assert reporter.flush(5)
                applied = len(env.written("m"))
                seen = len(env.fake.requests)
                before = write()  # the object as the writer left it
                entry = next((c for c in before["status"]["conditions"]
                              if c["type"] == CONDITION_TYPE), None)  # fmt: skip
                assert entry is None or entry["reason"] != _ours(env, "m")["reason"], what
                # back within one refresh (0.2 s; the deadline is generous for a loaded host)
                wait_for(lambda: _is_ours(env, "m"), timeout=10, what=f"ours back after {what}")
                after = env.fake.get(NS, "m")
                assert after is not None
                assert _others(after) == _others(before), f"{what}: we changed something else"
                assert reporter.flush(5)
                assert len(env.written("m")) == applied + 1, f"{what}: exactly one re-apply"
                after_write = env.fake.requests[seen:]
                heal = next(i for i, r in enumerate(after_write)
                            if r.content_type == APPLY_PATCH and r.status == 200)  # fmt: skip
                reads = [r for r in after_write[:heal] if r.verb == "list"]
                # the first refresh that read it restores it (a list already in flight at the
                # write may have read the object before it)
                assert 1 <= len(reads) <= 2, f"{what}: restored by the first refresh after it"
            _ticks(dog, 10)
            assert reporter.flush(5)
            restored = env.stats.snapshot()["kube_restored"]
            writers_seen = reporter.condition_writers
    finally:
        reporter.stop()
    assert restored == {"removed": 2, "changed": 2}, restored
    assert writers_seen == {LLMKube.METAL_AGENT}
    told = [m for r in caplog.records if "kube_condition_other_writer" in (m := r.getMessage())]
    assert len(told) == 1 and LLMKube.METAL_AGENT in told[0], "told once"
    final = env.fake.get(NS, "m")
    assert final is not None
    types = [c["type"] for c in final["status"]["conditions"]]
    assert sorted(types) == ["Available", "GatewayReady", "MemoryPressure"]
    assert final["status"].get("phase") == "Ready", "the controller's status is kept"


def test_doctor_kube_names_another_writer_of_the_condition(tmp_path: pathlib.Path) -> None:
    """`doctor --kube` lists the objects and names a field manager other than metalmem that
    owns a MemoryPressure entry (LLMKube's watchdog left on); warn, with the flag that fixes
    it. Without one it says so, with the number of objects."""
    pytest.importorskip("kubernetes")
    from .test_doctor import by_check, doctor_json

    with FakeKube() as fake:
        config = fake.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)
        fake.create({"apiVersion": "inference.llmkube.dev/v1alpha1", "kind": "InferenceService",
                     "metadata": {"name": "m", "namespace": NS},
                     "spec": {"modelRef": "llama"}})  # fmt: skip
        check = by_check(doctor_json("--kube", "--kubeconfig", str(config))[0])["kube"]
        assert check["verdict"] == "ok", check
        assert "no other writer of MemoryPressure on 1 object(s)" in check["finding"]
        LLMKube(fake).watchdog(NS, "m")
        check = by_check(doctor_json("--kube", "--kubeconfig", str(config))[0])["kube"]
    assert check["verdict"] == "warn", check
    assert LLMKube.METAL_AGENT in check["finding"]
    assert "--memory-watchdog-interval=0" in check["fix"]


@linux_only
def test_a_kueue_labelled_object_is_never_suspended(env: Env) -> None:
    """Kueue's admission lever is spec.suspend: metalmem stops the process by signal (through
    the safety gate) with the reason named, and never writes spec.suspend; the resume path
    leaves the object alone too."""
    obj = {"apiVersion": "inference.llmkube.dev/v1alpha1", "kind": "InferenceService",
           "metadata": {"name": "q", "namespace": NS,
                        "labels": {"kueue.x-k8s.io/queue-name": "team-a"}},
           "spec": {"modelRef": "llama", "priority": "batch"}}  # fmt: skip
    env.fake.create(obj)
    env.seed("d", priority="high")
    kid_q = env.children.spawn(allocate_mib=16, signal_log=env.tmp / "q.signals")
    kid_d = env.children.spawn()
    targets = [env.target(kid_q, "q", grace=2.0), env.target(kid_d, "d")]
    suspends: list[str] = []
    env.fake.watch(lambda kind, old, new: suspends.append(new["metadata"]["name"])
                   if new and new.get("spec", {}).get("suspend") else None)  # fmt: skip
    reporter = env.reporter()
    reporter.start()
    dog = env.watchdog(reporter, targets, settle_timeout=0.2)
    try:
        with dog:
            wait_for(lambda: env.reason_is("q", "Normal"), what="q seen")
            env.host.set(Level.CRITICAL)
            wait_for(lambda: env.reason_is("q", "Evicted"), timeout=10, what="q Evicted")
            env.host.set(Level.NORMAL)
            wait_for(lambda: env.reason_is("q", "Normal"), timeout=10, what="q Normal")
            _ticks(dog, 10)
            assert reporter.flush(5)
            evictions = dog.state.evictions
    finally:
        reporter.stop()
    assert [(e.key, e.result) for e in evictions] == [("llm/q", "terminated")]
    assert evictions[0].message.startswith(
        "not suspended (admission-managed: kueue.x-k8s.io/queue-name=team-a"
    ), evictions[0].message
    assert kid_q.signals() == [signal.SIGTERM], "the signal path stopped it"
    assert suspends == [], "spec.suspend was never set"
    assert not [r for r in env.fake.requests if r.method == "PATCH" and "spec" in (r.body or {})]
