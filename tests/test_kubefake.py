"""The contract fake enforces the Kubernetes API rules the reporter depends on.

Each test sends what a buggy client would send and expects the real apiserver's answer, so a
reporter that passes against the fake cannot be relying on a leniency the real server lacks.
Requests go over real HTTP, through the official client where it matters (its content types).
"""

from __future__ import annotations

import http.client
import json
import os
import pathlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from .helpers import wait_for
from .kubefake import (
    APPLY_PATCH,
    JSON_PATCH,
    MERGE_PATCH,
    STRATEGIC_PATCH,
    FakeKube,
    Rbac,
)
from .kubereal import RealKube

Kube = FakeKube | RealKube

pytest.importorskip("kubernetes")

GROUP, VERSION, PLURAL = "inference.llmkube.dev", "v1alpha1", "inferenceservices"
BASE = f"/apis/{GROUP}/{VERSION}/namespaces/llm/{PLURAL}"
EVENTS = "/apis/events.k8s.io/v1/namespaces/llm/events"
RBAC_YAML = pathlib.Path(__file__).parent.parent / "deploy" / "kubernetes" / "rbac.yaml"


def _isvc(name: str = "a", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": "llm"},
        "spec": {"modelRef": "llama", **spec},
    }


def _cond(ctype: str, status: str = "True", reason: str = "Ready") -> dict[str, Any]:
    return {
        "type": ctype,
        "status": status,
        "reason": reason,
        "message": f"{ctype} is {status}",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }


# "real" only under `make e2e-kube` (METALMEM_KUBE_APISERVER set): no skip noise in `make test`.
SERVERS = ["fake", "real"] if os.environ.get("METALMEM_KUBE_APISERVER") else ["fake"]


@pytest.fixture(params=SERVERS)
def fake(request: pytest.FixtureRequest) -> Iterator[Kube]:
    """The contract: each test runs against the fake and, under `make e2e-kube`, the real
    kube-apiserver (as its admin, the fake's default of no RBAC), which is emptied first."""
    if request.param == "fake":
        with FakeKube() as f:
            yield f
        return
    real: RealKube = request.getfixturevalue("real_kube")
    real.clear("llm")
    yield real.as_admin()


@pytest.fixture
def fake_only() -> Iterator[FakeKube]:
    """The fake's own controls (outage, stall, inject, watch, its RBAC switch): nothing to
    compare with a real server."""
    with FakeKube() as f:
        yield f


def call(
    fake: Kube,
    method: str,
    path: str,
    body: Any = None,
    *,
    ctype: str | None = "application/json",
    query: str = "",
    token: str | None = None,
) -> tuple[int, dict[str, Any]]:
    """One raw HTTP request (what any client would send), answered by the fake or the server."""
    if isinstance(fake, RealKube):
        return fake.request(method, path, body, ctype=ctype, query=query, token=token)
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=5)
    headers = {"Authorization": f"Bearer {token or fake.token}"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        if ctype:
            headers["Content-Type"] = ctype
    try:
        conn.request(method, path + (f"?{query}" if query else ""), body=data, headers=headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


def _client(fake: Kube, tmp_path: pathlib.Path) -> Any:
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(
        config_file=str(fake.write_kubeconfig(tmp_path / "kubeconfig")),
        client_configuration=cfg,
        persist_config=False,
    )
    return client.ApiClient(cfg)


# --- status subresource isolation, generation, resourceVersion --------------------------------


def test_main_resource_writes_ignore_status_and_status_writes_ignore_spec(
    fake: Kube,
) -> None:
    created = fake.create({**_isvc(), "status": {"phase": "Ready"}})
    assert "status" not in created, "creation ignores status"
    assert created["metadata"]["generation"] == 1
    rv0 = created["metadata"]["resourceVersion"]

    code, obj = call(
        fake, "PATCH", f"{BASE}/a", {"spec": {"replicas": 2}, "status": {"phase": "Hacked"}},
        ctype=MERGE_PATCH,
    )  # fmt: skip
    assert code == 200 and obj["spec"]["replicas"] == 2 and "status" not in obj
    assert obj["metadata"]["generation"] == 2 and obj["metadata"]["resourceVersion"] != rv0

    code, obj = call(
        fake, "PATCH", f"{BASE}/a/status",
        {"spec": {"replicas": 7}, "status": {"phase": "Ready"},
         "metadata": {"annotations": {"x": "y"}}},
        ctype=MERGE_PATCH,
    )  # fmt: skip
    assert code == 200 and obj["status"] == {"phase": "Ready"}
    assert obj["spec"]["replicas"] == 2, "a status write must not change spec"
    assert "annotations" not in obj["metadata"], "nor metadata"
    assert obj["metadata"]["generation"] == 2, "status writes do not bump generation"

    # An annotation-only change bumps resourceVersion, not generation.
    code, obj2 = call(
        fake, "PATCH", f"{BASE}/a", {"metadata": {"annotations": {"k": "v"}}}, ctype=MERGE_PATCH
    )  # fmt: skip
    assert code == 200 and obj2["metadata"]["generation"] == 2
    assert int(obj2["metadata"]["resourceVersion"]) > int(obj["metadata"]["resourceVersion"])


def test_schema_defaults_are_applied(fake: Kube) -> None:
    obj = fake.create(_isvc())
    assert obj["spec"]["priority"] == "normal" and obj["spec"]["suspend"] is False


def test_stale_resource_version_is_a_conflict(fake: Kube) -> None:
    rv = fake.create(_isvc())["metadata"]["resourceVersion"]
    fake.patch("llm", "a", {"spec": {"replicas": 2}})
    code, status = call(
        fake, "PATCH", f"{BASE}/a",
        {"metadata": {"resourceVersion": rv}, "spec": {"suspend": True}}, ctype=MERGE_PATCH,
    )  # fmt: skip
    assert code == 409 and status["reason"] == "Conflict"
    assert fake.get("llm", "a")["spec"]["suspend"] is False  # type: ignore[index]
    current = fake.get("llm", "a")["metadata"]["resourceVersion"]  # type: ignore[index]
    code, _ = call(
        fake, "PATCH", f"{BASE}/a",
        {"metadata": {"resourceVersion": current}, "spec": {"suspend": True}},
        ctype=MERGE_PATCH,
    )  # fmt: skip
    assert code == 200


# --- patch types -------------------------------------------------------------------------------


def test_merge_patch_replaces_lists(fake: Kube) -> None:
    fake.create(_isvc())
    fake.patch("llm", "a", {"status": {"conditions": [_cond("Available")]}}, status=True)
    code, obj = call(
        fake, "PATCH", f"{BASE}/a/status",
        {"status": {"conditions": [_cond("MemoryPressure")]}}, ctype=MERGE_PATCH,
    )  # fmt: skip
    assert code == 200
    assert [c["type"] for c in obj["status"]["conditions"]] == ["MemoryPressure"]


def test_strategic_merge_on_a_custom_resource_is_415_through_the_real_client(
    fake: Kube, tmp_path: pathlib.Path
) -> None:
    from kubernetes import client

    fake.create(_isvc())
    api = client.CustomObjectsApi(_client(fake, tmp_path))
    # The client rewrites a dict body sent as JSON patch into a strategic merge patch.
    with pytest.raises(client.exceptions.ApiException) as err:
        api.patch_namespaced_custom_object_status(
            group=GROUP, version=VERSION, namespace="llm", plural=PLURAL, name="a",
            body={"status": {"phase": "x"}}, _content_type=JSON_PATCH,
        )  # fmt: skip
    assert err.value.status == 415
    if isinstance(fake, FakeKube):
        assert fake.requests[-1].content_type == STRATEGIC_PATCH
    code, _ = call(fake, "PATCH", f"{BASE}/a", {"spec": {}}, ctype=STRATEGIC_PATCH)
    assert code == 415


def test_json_patch_by_content_type(fake: Kube) -> None:
    fake.create(_isvc())
    ops = [
        {"op": "test", "path": "/spec/suspend", "value": False},
        {"op": "replace", "path": "/spec/suspend", "value": True},
    ]
    code, obj = call(fake, "PATCH", f"{BASE}/a", ops, ctype=JSON_PATCH)
    assert code == 200 and obj["spec"]["suspend"] is True
    code, _ = call(fake, "PATCH", f"{BASE}/a", ops, ctype=JSON_PATCH)
    assert code == 422, "the test op fails now"
    code, _ = call(fake, "PATCH", f"{BASE}/a", ops, ctype=MERGE_PATCH)
    assert code == 400, "a list is not a merge patch of an object: undecodable"


# --- server-side apply ---------------------------------------------------------------------------


def _apply_body(*conditions: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceService",
        "metadata": {"name": "a", "namespace": "llm"},
        "status": {"conditions": list(conditions)},
    }


def _managers(obj: dict[str, Any]) -> dict[str, Any]:
    return {m["manager"]: m for m in obj["metadata"]["managedFields"]}


def test_apply_merges_list_map_entries_by_key_and_tracks_managers(
    fake: Kube, tmp_path: pathlib.Path
) -> None:
    from kubernetes import client

    fake.create(_isvc())
    fake.patch("llm", "a", {"status": {"conditions": [_cond("Available")]}}, status=True,
               manager="llmkube-controller")  # fmt: skip
    api = client.CustomObjectsApi(_client(fake, tmp_path))

    def apply(cond: dict[str, Any], **kw: Any) -> dict[str, Any]:
        return dict(
            api.patch_namespaced_custom_object_status(
                group=GROUP, version=VERSION, namespace="llm", plural=PLURAL, name="a",
                body=_apply_body(cond), field_manager="metalmem",
                _content_type=APPLY_PATCH, **kw,
            )
        )  # fmt: skip

    mine = {**_cond("MemoryPressure", "True", "Warning"), "observedGeneration": 1}
    obj = apply(mine, force=True)
    types = {c["type"]: c for c in obj["status"]["conditions"]}
    assert set(types) == {"Available", "MemoryPressure"}
    assert types["Available"] == _cond("Available")
    owners = _managers(obj)
    assert owners["metalmem"]["operation"] == "Apply"
    assert owners["metalmem"]["subresource"] == "status"
    assert set(owners["metalmem"]["fieldsV1"]["f:status"]["f:conditions"]) == {
        'k:{"type":"MemoryPressure"}'
    }
    # The real server also records "." (the list itself) for the Update that created the list;
    # the fake does not (a documented difference, tests/kubefake.py): compare the entries.
    assert set(owners["llmkube-controller"]["fieldsV1"]["f:status"]["f:conditions"]) - {"."} == {
        'k:{"type":"Available"}'
    }

    # Applying again without observedGeneration removes that field (we stopped owning it).
    obj = apply({**_cond("MemoryPressure", "False", "Normal")}, force=True)
    pressure = next(c for c in obj["status"]["conditions"] if c["type"] == "MemoryPressure")
    assert "observedGeneration" not in pressure and pressure["status"] == "False"
    assert _cond("Available") in obj["status"]["conditions"]

    # A field another manager owns, with another value, is a conflict unless forced.
    with pytest.raises(client.exceptions.ApiException) as err:
        apply(_cond("Available", "False", "Hijacked"))
    assert err.value.status == 409
    assert fake.condition("llm", "a", "Available") == _cond("Available")
    obj = apply(_cond("Available", "False", "Hijacked"), force=True)
    assert _managers(obj)["metalmem"]["fieldsV1"]["f:status"]["f:conditions"].keys() == {
        'k:{"type":"Available"}'
    }, "forced: the fields changed hands; the entry we no longer apply is gone"
    assert [c["type"] for c in obj["status"]["conditions"]] == ["Available"]


def test_apply_needs_a_field_manager(fake: Kube) -> None:
    fake.create(_isvc())
    code, status = call(
        fake, "PATCH", f"{BASE}/a/status", _apply_body(_cond("MemoryPressure")),
        ctype=APPLY_PATCH,
    )  # fmt: skip
    assert code == 422 and "fieldManager" in status["message"]
    code, _ = call(
        fake, "PATCH", f"{BASE}/a/status", _apply_body(_cond("MemoryPressure")),
        ctype=MERGE_PATCH, query="fieldManager=x&force=true",
    )  # fmt: skip
    assert code == 422, "force is only for apply"


# --- validation against the CRD schema ---------------------------------------------------------


@pytest.mark.parametrize(
    "condition",
    [
        {**_cond("MemoryPressure"), "status": "Maybe"},
        {k: v for k, v in _cond("MemoryPressure").items() if k != "reason"},
        {**_cond("MemoryPressure"), "reason": "has spaces"},
        {**_cond("MemoryPressure"), "lastTransitionTime": "yesterday"},
        {**_cond("MemoryPressure"), "observedGeneration": -1},
    ],
    ids=["status-enum", "reason-required", "reason-pattern", "date-time", "minimum"],
)
def test_an_invalid_status_is_422_and_not_stored(fake: Kube, condition: dict[str, Any]) -> None:
    fake.create(_isvc())
    code, status = call(
        fake, "PATCH", f"{BASE}/a/status", _apply_body(condition), ctype=APPLY_PATCH,
        query="fieldManager=metalmem&force=true",
    )  # fmt: skip
    assert code == 422 and status["reason"] == "Invalid", status
    assert status["details"]["causes"][0]["field"].startswith("status.conditions[0]")
    assert "status" not in fake.get("llm", "a")  # type: ignore[operator]
    assert "metalmem" not in _managers(fake.get("llm", "a"))  # type: ignore[arg-type]


def test_unknown_fields_are_pruned(fake: Kube) -> None:
    fake.create(_isvc())
    code, obj = call(
        fake, "PATCH", f"{BASE}/a/status",
        {"status": {"observedGeneration": 3, "conditions": [{**_cond("X"), "extra": 1}]}},
        ctype=MERGE_PATCH,
    )  # fmt: skip
    assert code == 200
    assert "observedGeneration" not in obj["status"]
    assert obj["status"]["conditions"] == [_cond("X")]


def test_a_spec_missing_a_required_field_is_rejected(fake: Kube) -> None:
    fake.create(_isvc())
    code, status = call(fake, "PATCH", f"{BASE}/a", {"spec": {"modelRef": None}},
                        ctype=MERGE_PATCH)  # fmt: skip
    assert code == 422 and "modelRef" in status["message"]


# --- events.k8s.io/v1 ----------------------------------------------------------------------------


def _event(**over: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": "a.1"},
        "eventTime": "2026-01-01T00:00:00.000001Z",
        "reportingController": "metalmem.io/agent",
        "reportingInstance": "node-1",
        "action": "Evict",
        "reason": "Evicted",
        "type": "Warning",
        "note": "n",
        "regarding": {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InferenceService",
                      "name": "a", "namespace": "llm"},
    }  # fmt: skip
    for k, v in over.items():
        if v is None:
            ev.pop(k, None)
        else:
            ev[k] = v
    return ev


@pytest.mark.parametrize(
    "missing", ["eventTime", "reportingController", "reportingInstance", "action", "reason"]
)
def test_an_event_missing_a_required_field_is_422(fake: Kube, missing: str) -> None:
    code, status = call(fake, "POST", EVENTS, _event(**{missing: None}), ctype=None)
    assert code == 422 and status["details"]["causes"][0]["field"] == missing
    assert fake.events("llm") == []


@pytest.mark.parametrize(
    "field,value,code",
    [
        # Not a MicroTime: the real decoder refuses it before validation (400, not 422).
        ("eventTime", "2026-01-01T00:00:00+00:00", 400),  # isoformat() of microsecond 0
        ("eventTime", "2026-01-01T00:00:00.123Z", 400),
        ("type", "Error", 422),
        ("note", "x" * 1025, 422),
        ("reportingController", "not a qualified name!", 422),
    ],
)
def test_an_event_with_an_invalid_field_is_refused(
    fake: Kube, field: str, value: str, code: int
) -> None:
    assert call(fake, "POST", EVENTS, _event(**{field: value}))[0] == code
    assert fake.events("llm") == []


def test_events_are_created_without_content_type_and_series_patched(
    fake: Kube, tmp_path: pathlib.Path
) -> None:
    from kubernetes import client

    api = client.EventsV1Api(_client(fake, tmp_path))
    api.create_namespaced_event(namespace="llm", body=client.EventsV1Event.from_dict(_event()))
    if isinstance(fake, FakeKube):
        assert fake.requests[-1].content_type is None and fake.requests[-1].status == 201
    series = {"series": {"count": 2, "lastObservedTime": "2026-01-01T00:01:00.000000Z"}}
    api.patch_namespaced_event(name="a.1", namespace="llm", body=series,
                               _content_type=MERGE_PATCH)  # fmt: skip
    [stored] = fake.events("llm")
    assert stored["series"]["count"] == 2
    for body in ({"note": "changed"}, {"series": {"count": 1}}):
        code, _ = call(fake, "PATCH", f"{EVENTS}/a.1", body, ctype=MERGE_PATCH)
        assert code == 422, body
    code, _ = call(fake, "POST", EVENTS, _event())
    assert code == 409, "the name exists"


def test_core_v1_events_are_not_served(fake: Kube) -> None:
    """The fake refuses core/v1 events outright so that the agent cannot drift to them; the real
    server serves them (a documented difference), and there the shipped RBAC refuses them."""
    if isinstance(fake, RealKube):
        agent = fake.request("POST", "/api/v1/namespaces/llm/events", _event(),
                             token=fake.ready["agent_token"])  # fmt: skip
        assert agent[0] == 403
        return
    code, _ = call(fake, "POST", "/api/v1/namespaces/llm/events", _event())
    assert code == 404


# --- controls ------------------------------------------------------------------------------------


def test_rbac_from_the_deploy_yaml_is_enforced_with_the_authorizers_message(
    fake_only: FakeKube,
) -> None:
    fake = fake_only
    fake.create(_isvc())
    fake.rbac = Rbac.from_yaml(RBAC_YAML)
    code, _ = call(fake, "GET", f"{BASE}/a")
    assert code == 200
    code, status = call(fake, "DELETE", f"{BASE}/a")
    assert code == 403 and status["reason"] == "Forbidden"
    assert 'cannot delete resource "inferenceservices"' in status["message"]
    code, status = call(fake, "PUT", f"{BASE}/a/status", {"status": {}})
    assert (
        code == 403 and 'cannot update resource "inferenceservices/status"' in (status["message"])
    )
    assert ("delete", GROUP, PLURAL) in fake.used
    code, _ = call(fake, "GET", f"{BASE}/a", token="wrong")
    assert code == 401


def test_an_outage_refuses_connections_and_keeps_the_store(fake_only: FakeKube) -> None:
    fake = fake_only
    fake.create(_isvc())
    port = fake.port
    fake.stop()
    with pytest.raises(ConnectionRefusedError):
        call(fake, "GET", f"{BASE}/a")
    fake.start()
    assert fake.port == port
    code, obj = call(fake, "GET", f"{BASE}/a")
    assert code == 200 and obj["metadata"]["name"] == "a"


def test_stall_holds_requests_until_released(fake_only: FakeKube) -> None:
    fake = fake_only
    fake.create(_isvc())
    answers: list[int] = []
    with fake.stall():
        t = threading.Thread(target=lambda: answers.append(call(fake, "GET", f"{BASE}/a")[0]))
        t.start()
        t.join(0.3)
        assert answers == [] and t.is_alive()
    t.join(5)
    assert answers == [200]


def test_inject_fails_the_matching_request_once(fake_only: FakeKube) -> None:
    fake = fake_only
    fake.create(_isvc())
    fake.inject(409, method="PATCH", path=f"{BASE}/a")
    assert call(fake, "GET", f"{BASE}/a")[0] == 200
    assert call(fake, "PATCH", f"{BASE}/a/status", {"status": {}}, ctype=MERGE_PATCH)[0] == 200
    assert call(fake, "PATCH", f"{BASE}/a", {"spec": {}}, ctype=MERGE_PATCH)[0] == 409
    assert call(fake, "PATCH", f"{BASE}/a", {"spec": {}}, ctype=MERGE_PATCH)[0] == 200


def test_watchers_see_each_change_after_it_is_stored(fake_only: FakeKube) -> None:
    fake = fake_only
    seen: list[tuple[str, Any]] = []
    fake.watch(lambda kind, old, new: seen.append((kind, (new or {}).get("spec", {}).get(
        "suspend"))))  # fmt: skip
    fake.create(_isvc())
    fake.patch("llm", "a", {"spec": {"suspend": True}})
    fake.delete("llm", "a")
    wait_for(lambda: len(seen) == 3, timeout=5, what="three changes")
    assert seen == [("ADDED", False), ("MODIFIED", True), ("DELETED", None)]
