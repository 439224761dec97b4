"""metalmem.kube.api and .rest against the contract fake: what goes on the wire, what failures
mean, and what building an :class:`Api` imports (issue 15: only kubernetes' config loaders)."""

from __future__ import annotations

import contextlib
import pathlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from metalmem.kube.api import APPLY_PATCH, MERGE_PATCH, Api, CallFailed, WriteResult
from metalmem.kube.events import microtime
from metalmem.kube.options import DEFAULT_RESOURCE, KubeOptions, Resource
from metalmem.kube.rest import _no_proxy
from metalmem.targets import KubeRef

from .kubefake import FakeKube

pytest.importorskip("kubernetes")

NS = "llm"
RESOURCE = Resource.parse(DEFAULT_RESOURCE)
PATH = f"/apis/{RESOURCE.group}/{RESOURCE.version}/namespaces/{NS}/{RESOURCE.plural}"


@pytest.fixture
def fake() -> Iterator[FakeKube]:
    with FakeKube() as f:
        yield f


@pytest.fixture
def api(fake: FakeKube, tmp_path: pathlib.Path) -> Iterator[Api]:
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)
    a = Api(KubeOptions(kubeconfig=str(kubeconfig), request_timeout=1.0), RESOURCE)
    yield a
    a.close()


def _seed(fake: FakeKube, name: str) -> dict[str, Any]:
    return fake.create({
        "apiVersion": RESOURCE.api_version, "kind": "InferenceService",
        "metadata": {"name": name, "namespace": NS}, "spec": {"modelRef": "llama"},
    })  # fmt: skip


def _event(name: str, unix: float) -> dict[str, Any]:
    return {
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": name, "namespace": NS}, "eventTime": microtime(unix),
        "reportingController": "metalmem.io/agent", "reportingInstance": "node-1",
        "action": "Observe", "reason": "MemoryPressure", "type": "Warning", "note": "n",
        "regarding": {"apiVersion": RESOURCE.api_version, "kind": "InferenceService",
                      "name": "a", "namespace": NS},
    }  # fmt: skip


def test_each_call_sends_what_the_api_expects(fake: FakeKube, api: Api) -> None:
    _seed(fake, "a")
    assert api.get(KubeRef(NS, "a"))["metadata"]["name"] == "a"
    assert [o["metadata"]["name"] for o in api.list(NS)] == ["a"]
    cond = {"type": "MemoryPressure", "status": "False", "reason": "Normal", "message": "ok",
            "lastTransitionTime": "2026-01-01T00:00:00Z"}  # fmt: skip
    meta = {"name": "a", "namespace": NS}
    body = {"apiVersion": RESOURCE.api_version, "kind": "InferenceService", "metadata": meta,
            "status": {"conditions": [cond]}}  # fmt: skip
    obj = api.apply_status(KubeRef(NS, "a"), body)
    assert obj["status"]["conditions"] == [cond]
    obj = api.merge_patch(KubeRef(NS, "a"), {"metadata": {"annotations": {"x": "1"}}})
    assert obj["metadata"]["annotations"] == {"x": "1"}
    # A whole second: microsecond 0, which isoformat() would have dropped (a 400 then).
    api.create_event(NS, _event("a.1", 1_800_000_000.0))
    series = {"series": {"count": 2, "lastObservedTime": microtime(1_800_000_001.5)}}
    api.patch_event(NS, "a.1", series)
    [event] = fake.events(NS)
    assert event["eventTime"] == "2027-01-15T08:00:00.000000Z"
    assert event["series"]["count"] == 2

    wire = [(r.method, r.path, r.query, r.content_type, r.status) for r in fake.requests]
    assert wire == [
        ("GET", f"{PATH}/a", {}, None, 200),
        ("GET", PATH, {}, None, 200),
        ("PATCH", f"{PATH}/a/status", {"fieldManager": "metalmem", "force": "true"},
         APPLY_PATCH, 200),
        ("PATCH", f"{PATH}/a", {"fieldManager": "metalmem"}, MERGE_PATCH, 200),
        ("POST", f"/apis/events.k8s.io/v1/namespaces/{NS}/events", {}, "application/json", 201),
        ("PATCH", f"/apis/events.k8s.io/v1/namespaces/{NS}/events/a.1", {}, MERGE_PATCH, 200),
    ]  # fmt: skip
    managers = {m["manager"] for m in fake.get(NS, "a")["metadata"]["managedFields"]}
    assert managers == {"kubectl-create", "metalmem"}


def test_failures_map_to_results_and_transience(fake: FakeKube, api: Api) -> None:
    ref = KubeRef(NS, "a")
    with pytest.raises(CallFailed) as info:
        api.get(ref)
    assert (info.value.result, info.value.code, info.value.transient) == (
        WriteResult.NOT_FOUND, 404, False)  # fmt: skip
    assert info.value.message.startswith("get inferenceservices: HTTP 404 Not Found: ")
    assert '"a" not found' in info.value.message  # the Status message, not the raw body
    _seed(fake, "a")
    stale = {"metadata": {"resourceVersion": "1", "annotations": {"x": "1"}}}
    with pytest.raises(CallFailed) as info:
        api.merge_patch(ref, stale)
    assert (info.value.result, info.value.code, info.value.transient) == (
        WriteResult.CONFLICT, 409, False)  # fmt: skip
    for code in (429, 500, 503):
        fake.inject(code, method="GET", path=f"{PATH}/a")
        with pytest.raises(CallFailed) as info:
            api.get(ref)
        assert (info.value.result, info.value.code, info.value.transient) == (
            WriteResult.ERROR, code, True)  # fmt: skip
    fake.inject(403, method="GET", path=f"{PATH}/a")
    with pytest.raises(CallFailed) as info:
        api.get(ref)
    assert (info.value.result, info.value.transient) == (WriteResult.FORBIDDEN, False)
    assert api.get(ref)["metadata"]["name"] == "a", "a failure leaves the client usable"


def test_outage_stall_and_recovery(fake: FakeKube, api: Api) -> None:
    _seed(fake, "a")
    ref = KubeRef(NS, "a")
    api.get(ref)  # a kept connection, which a restart drops: the next call opens another
    fake.stop()
    fake.start()
    for _ in range(2):
        assert api.merge_patch(ref, {"metadata": {"annotations": {"x": "0"}}})
        fake.stop()
        fake.start()
    fake.stop()
    with pytest.raises(CallFailed) as info:
        api.get(ref)
    assert info.value.transient and info.value.code is None
    assert "ConnectionRefusedError" in info.value.message
    fake.start()
    assert api.get(ref)["metadata"]["name"] == "a"
    with fake.stall():
        t0 = time.monotonic()
        with pytest.raises(CallFailed) as info:
            api.merge_patch(ref, {"metadata": {"annotations": {"x": "1"}}})
        took = time.monotonic() - t0
    assert info.value.transient and "timed out" in info.value.message
    assert 0.9 < took < 3.0, f"request_timeout 1 s bounds the call: {took:.2f} s"
    assert api.get(ref)["metadata"]["name"] == "a"


def test_a_connection_is_kept_and_threads_share_the_client(fake: FakeKube, api: Api) -> None:
    _seed(fake, "a")
    ref = KubeRef(NS, "a")
    for _ in range(5):
        api.get(ref)
    assert len(api._rest._idle) == 1, "five calls in a row: one connection, kept"
    errors: list[BaseException] = []

    def calls() -> None:
        try:
            for _ in range(20):
                assert api.get(ref)["metadata"]["name"] == "a"
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=calls) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert 1 <= len(api._rest._idle) <= 3
    assert sum(1 for r in fake.requests if r.method == "GET") == 65


def test_a_wrong_token_is_401(fake: FakeKube, tmp_path: pathlib.Path) -> None:
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)
    kubeconfig.write_text(kubeconfig.read_text().replace(str(fake.token), "wrong"))
    api = Api(KubeOptions(kubeconfig=str(kubeconfig)), RESOURCE)
    with pytest.raises(CallFailed) as info:
        api.list(NS)
    assert (info.value.code, info.value.transient) == (401, False)
    api.close()


# Builds an Api in a fresh interpreter: what it imports and what it costs in RSS; then the full
# kubernetes package imports and works beside it (tests and doctor import it).
PROBE = """
import json, sys
from metalmem.kube.api import Api
from metalmem.kube.options import DEFAULT_RESOURCE, KubeOptions, Resource

def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS:"))

before = rss()
api = Api(KubeOptions(kubeconfig=sys.argv[1]), Resource.parse(DEFAULT_RESOURCE))
n = len(api.list("llm"))
lean = rss() - before
modules = sorted(m for m in sys.modules if m.split(".")[0] in ("kubernetes", "pydantic"))

import kubernetes
from kubernetes import client, config
full_client = config.new_client_from_config(sys.argv[1])
items = client.CustomObjectsApi(full_client).list_namespaced_custom_object(
    "inference.llmkube.dev", "v1alpha1", "llm", "inferenceservices")["items"]
again = Api(KubeOptions(kubeconfig=sys.argv[1]), Resource.parse(DEFAULT_RESOURCE))
print(json.dumps({"n": n, "lean": lean, "full": rss() - before, "modules": modules,
                  "version": kubernetes.__version__, "client": type(full_client).__name__,
                  "items": len(items), "again": len(again.list("llm"))}))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="VmRSS from /proc/self/status")
def test_building_the_api_imports_only_the_config_loaders(
    fake: FakeKube, tmp_path: pathlib.Path
) -> None:
    _seed(fake, "a")
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(kubeconfig)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    import json

    doc = json.loads(out.stdout)
    assert doc["n"] == 1
    modules = doc["modules"]
    assert "kubernetes.config.kube_config" in modules
    assert "kubernetes" not in modules, "the stub package left sys.modules"
    assert not [m for m in modules if m.startswith(("kubernetes.client.models", "pydantic"))]
    assert not [m for m in modules if m.startswith(("kubernetes.client.api", "kubernetes.watch"))]
    # Measured on x86_64 (Python 3.11, kubernetes 37): lean ~15 MiB, full ~40 MiB.
    assert doc["lean"] < 20 * 2**20, f"lean load: {doc['lean'] / 2**20:.1f} MiB"
    assert doc["full"] > doc["lean"] + 8 * 2**20, "the probe sees what the full import costs"
    assert doc["client"] == "ApiClient", "kube_config's ApiClient is the real one afterwards"
    assert (doc["items"], doc["again"]) == (1, 1)


class ConnectProxy:
    """A real HTTP CONNECT proxy on loopback (what ``proxy-url`` names): it records each
    CONNECT line, answers 200 and relays bytes both ways."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(4096)
            if not chunk:
                client.close()
                return
            head += chunk
        line = head.split(b"\r\n", 1)[0].decode()
        self.lines.append(line)
        host, _, port = line.split()[1].rpartition(":")
        upstream = socket.create_connection((host, int(port)))
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=_relay, args=(a, b), daemon=True).start()


def _relay(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def test_a_proxy_url_tunnels_the_calls(fake: FakeKube, tmp_path: pathlib.Path) -> None:
    _seed(fake, "a")
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)
    doc = yaml.safe_load(kubeconfig.read_text())
    proxy = ConnectProxy()
    try:
        doc["clusters"][0]["cluster"]["proxy-url"] = f"http://127.0.0.1:{proxy.port}"
        kubeconfig.write_text(yaml.safe_dump(doc))
        api = Api(KubeOptions(kubeconfig=str(kubeconfig)), RESOURCE)
        assert [o["metadata"]["name"] for o in api.list(NS)] == ["a"]
        assert api.get(KubeRef(NS, "a"))["metadata"]["name"] == "a"
        api.close()
    finally:
        proxy.close()
    assert [line.rsplit(" ", 1)[0] for line in proxy.lines] == [f"CONNECT 127.0.0.1:{fake.port}"], (
        "one tunnel, kept for both calls"
    )
    assert len(fake.requests) == 2


@pytest.mark.parametrize(
    "rules,bypassed",
    [
        ("", False),
        ("*", True),
        ("example.com", True),  # and its subdomains
        (".example.com", True),
        ("api.example.com:6443", True),
        ("api.example.com:443", False),
        ("other.com, 10.0.0.0/8", False),
        ("xample.com", False),
    ],
)
def test_no_proxy_rules(rules: str, bypassed: bool) -> None:
    assert _no_proxy(rules, "api.example.com", 6443) is bypassed


def test_no_proxy_networks() -> None:
    assert _no_proxy("10.0.0.0/8", "10.96.0.1", 443)
    assert _no_proxy(" 10.96.0.1 ", "10.96.0.1", 443)
    assert not _no_proxy("10.0.0.0/8", "192.168.1.1", 443)
