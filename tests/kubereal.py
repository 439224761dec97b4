"""A handle on the real kube-apiserver of ``make e2e-kube`` (tests/kube_apiserver/main.go).

It offers the parts of :class:`tests.kubefake.FakeKube` that tests use to arrange and inspect
state (``create``, ``patch``, ``get``, ``events``, ``condition``, ``write_kubeconfig``) plus
``request`` for a raw HTTP call, so that the fake's contract tests and the end-to-end tests run
unchanged against either. Arranging goes through the admin identity (system:masters); the
agent's kubeconfig carries the token of the identity deploy/kubernetes/rbac.yaml binds.

:func:`start_server` starts the binary and waits for its one ready line; the pytest session
fixture in tests/conftest.py uses it when ``METALMEM_KUBE_APISERVER`` names the binary.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import pathlib
import signal
import ssl
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import yaml

from .kubefake import CRD_PATH, MERGE_PATCH

GROUP, VERSION, PLURAL = "inference.llmkube.dev", "v1alpha1", "inferenceservices"
RBAC_YAML = pathlib.Path(__file__).parent.parent / "deploy" / "kubernetes" / "rbac.yaml"
AGENT_USER = "system:serviceaccount:metalmem:metalmem-agent"


class RealKube:
    """Admin access to a running kube-apiserver, from the JSON line it printed when ready."""

    def __init__(self, ready: dict[str, Any], proc: subprocess.Popen[bytes] | None = None) -> None:
        self.ready = ready
        self.proc = proc
        parsed = urllib.parse.urlsplit(ready["server"])
        self.host, self.port = parsed.hostname or "127.0.0.1", int(parsed.port or 443)
        self.token = ready["agent_token"]  # what FakeKube.token is: the agent's credential
        self.admin_token = ready["admin_token"]
        self.user = ready["agent_user"]
        self._ssl = ssl.create_default_context(cafile=ready["ca_file"])

    def as_admin(self) -> RealKube:
        """The same server with the admin as the default identity (the fake without RBAC)."""
        other = RealKube(self.ready, self.proc)
        other.token = self.admin_token
        return other

    @property
    def url(self) -> str:
        return str(self.ready["server"])

    # --- raw HTTP ------------------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        ctype: str | None = "application/json",
        query: str = "",
        token: str | None = None,
        raw: bytes | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """One HTTPS request as ``token`` (default: the agent); (status, JSON body)."""
        conn = http.client.HTTPSConnection(self.host, self.port, timeout=10, context=self._ssl)
        headers = {"Authorization": f"Bearer {token or self.token}", "Accept": "application/json"}
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
        if data is not None and ctype:
            headers["Content-Type"] = ctype
        try:
            conn.request(method, path + (f"?{query}" if query else ""), body=data, headers=headers)
            resp = conn.getresponse()
            text = resp.read()
            try:
                doc = json.loads(text or b"{}")
            except ValueError:
                doc = {"message": text.decode(errors="replace")}
            return resp.status, doc if isinstance(doc, dict) else {"items": doc}
        finally:
            conn.close()

    def admin(
        self, method: str, path: str, body: Any = None, *, ctype: str = "application/json",
        query: str = "", ok: tuple[int, ...] = (200, 201),
    ) -> dict[str, Any]:  # fmt: skip
        """A request as the admin that must succeed (``ok``): arranging state, never the test."""
        code, doc = self.request(method, path, body, ctype=ctype, query=query,
                                 token=self.admin_token)  # fmt: skip
        if code not in ok:
            raise AssertionError(f"admin {method} {path}: HTTP {code}: {doc.get('message', doc)}")
        return doc

    # --- the FakeKube surface ------------------------------------------------------------------
    def _path(self, namespace: str, name: str | None = None, sub: str | None = None) -> str:
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
        return path + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")

    def create(self, obj: dict[str, Any], *, manager: str = "kubectl-create") -> dict[str, Any]:
        ns = obj.get("metadata", {}).get("namespace", "default")
        return self.admin("POST", self._path(ns), obj, query=f"fieldManager={manager}")

    def patch(
        self,
        namespace: str,
        name: str,
        body: Any,
        *,
        status: bool = False,
        content_type: str = MERGE_PATCH,
        manager: str = "kubectl-edit",
        force: bool = False,
    ) -> dict[str, Any]:
        query = f"fieldManager={manager}" + ("&force=true" if force else "")
        path = self._path(namespace, name, "status" if status else None)
        return self.admin("PATCH", path, body, ctype=content_type, query=query)

    def update_status(self, obj: dict[str, Any], *, manager: str) -> dict[str, Any]:
        """A controller-runtime ``Status().Update()``: PUT of the whole object it read."""
        meta = obj["metadata"]
        path = self._path(meta["namespace"], meta["name"], "status")
        return self.admin("PUT", path, obj, query=f"fieldManager={manager}")

    def delete(self, namespace: str, name: str) -> None:
        self.admin("DELETE", self._path(namespace, name), ok=(200, 202, 404))

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        code, doc = self.request("GET", self._path(namespace, name), token=self.admin_token)
        if code == 404:
            return None
        if code != 200:
            raise AssertionError(f"get {namespace}/{name}: HTTP {code}: {doc}")
        return doc

    def events(self, namespace: str | None = None) -> list[dict[str, Any]]:
        """events.k8s.io/v1 Events, oldest first (by creation, then name)."""
        path = (f"/apis/events.k8s.io/v1/namespaces/{namespace}/events" if namespace
                else "/apis/events.k8s.io/v1/events")  # fmt: skip
        items = list(self.admin("GET", path).get("items") or [])
        items.sort(key=lambda e: (e["metadata"]["creationTimestamp"], e["metadata"]["name"]))
        return items

    def condition(self, namespace: str, name: str, ctype: str) -> dict[str, Any] | None:
        obj = self.get(namespace, name) or {}
        for c in obj.get("status", {}).get("conditions", []):
            if c.get("type") == ctype:
                return dict(c)
        return None

    def write_kubeconfig(
        self, path: pathlib.Path, *, namespace: str = "default", admin: bool = False
    ) -> pathlib.Path:
        """A kubeconfig for the agent's identity (or the admin's) with the server's CA."""
        ca = pathlib.Path(self.ready["ca_file"]).read_text()
        import base64

        user = "admin" if admin else "metalmem-agent"
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "e2e", "cluster": {
                "server": self.url,
                "certificate-authority-data": base64.b64encode(ca.encode()).decode()}}],
            "users": [{"name": user, "user": {
                "token": self.admin_token if admin else self.token}}],
            "contexts": [{"name": "e2e", "context": {
                "cluster": "e2e", "user": user, "namespace": namespace}}],
            "current-context": "e2e",
        }  # fmt: skip
        path.write_text(yaml.safe_dump(doc))
        path.chmod(0o600)
        return path

    # --- housekeeping --------------------------------------------------------------------------
    def ensure_namespace(self, name: str) -> None:
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        self.admin("POST", "/api/v1/namespaces", body, ok=(201, 409))

    def clear(self, namespace: str) -> None:
        """Remove every InferenceService and Event in ``namespace`` (between tests)."""
        self.admin("DELETE", self._path(namespace), ok=(200,))
        self.admin("DELETE", f"/apis/events.k8s.io/v1/namespaces/{namespace}/events", ok=(200,))
        deadline = time.monotonic() + 30
        while self.admin("GET", self._path(namespace)).get("items"):
            if time.monotonic() > deadline:
                raise AssertionError(f"objects in {namespace} not deleted after 30 s")
            time.sleep(0.05)

    def can_i(self, verb: str, resource: str, namespace: str, *, group: str = GROUP,
              subresource: str = "", user: str = AGENT_USER) -> bool:  # fmt: skip
        """The authorizer's answer for ``user`` (a SubjectAccessReview, as `kubectl auth can-i
        --as` sends)."""
        groups = ["system:serviceaccounts", "system:serviceaccounts:metalmem",
                  "system:authenticated"]  # fmt: skip
        body = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {"user": user, "groups": groups, "resourceAttributes": {
                "namespace": namespace, "verb": verb, "group": group,
                "resource": resource, "subresource": subresource}},
        }  # fmt: skip
        doc = self.admin("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", body)
        return bool(doc.get("status", {}).get("allowed"))


def _kubectl_apply(kubeconfig: pathlib.Path, path: pathlib.Path) -> None:
    subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), "apply", "-f", str(path)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip


def install(kube: RealKube, tmp: pathlib.Path) -> None:
    """What an operator applies: LLMKube's CRD, then our RBAC; the namespace ``llm``.

    With kubectl (Debian's kubernetes-client) where it is installed, else the same documents
    POSTed by the admin."""
    admin_kc = kube.write_kubeconfig(tmp / "admin.kubeconfig", admin=True)
    crd = yaml.safe_load(CRD_PATH.read_text())
    if _have_kubectl():
        _kubectl_apply(admin_kc, CRD_PATH)
        _kubectl_apply(admin_kc, RBAC_YAML)
    else:
        kube.admin("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd,
                   ok=(201, 409))  # fmt: skip
        for doc in yaml.safe_load_all(RBAC_YAML.read_text()):
            if doc:
                kube.admin("POST", _collection(doc), doc, ok=(201, 409))
    name = crd["metadata"]["name"]
    deadline = time.monotonic() + 60
    path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"
    while True:
        conds = kube.admin("GET", path).get("status", {}).get("conditions", [])
        if any(c["type"] == "Established" and c["status"] == "True" for c in conds):
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"CRD {name} not Established after 60 s: {conds}")
        time.sleep(0.1)
    # The group's discovery and the agent's rights follow the CRD and RBAC a moment later.
    while kube.request("GET", f"/apis/{GROUP}/{VERSION}/namespaces/llm/{PLURAL}")[0] != 200:
        if time.monotonic() > deadline:
            raise AssertionError("the agent cannot list inferenceservices 60 s after RBAC")
        time.sleep(0.1)
    kube.ensure_namespace("llm")


def _have_kubectl() -> bool:
    import shutil

    return shutil.which("kubectl") is not None


def _collection(doc: dict[str, Any]) -> str:
    kind, api = doc["kind"], doc["apiVersion"]
    plural = {
        "Namespace": "namespaces",
        "ServiceAccount": "serviceaccounts",
        "ClusterRole": "clusterroles",
        "ClusterRoleBinding": "clusterrolebindings",
    }[kind]
    base = "/api/v1" if api == "v1" else f"/apis/{api}"
    ns = doc.get("metadata", {}).get("namespace")
    return f"{base}/namespaces/{ns}/{plural}" if ns else f"{base}/{plural}"


def start_server(binary: str, log: pathlib.Path, timeout: float = 180.0) -> RealKube:
    """Start the e2e kube-apiserver and wait for its ready line (its stderr goes to ``log``)."""
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [binary], stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL
        )
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    buf = b""
    deadline = time.monotonic() + timeout
    import select

    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(10)
            tail = log.read_text(errors="replace").splitlines()[-15:]
            raise RuntimeError(
                f"kube-apiserver not ready (exit {proc.returncode}); log {log}:\n" + "\n".join(tail)
            )
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if ready:
            buf += os.read(fd, 65536)
    return RealKube(json.loads(buf.split(b"\n", 1)[0]), proc)


def stop_server(kube: RealKube, timeout: float = 60.0) -> int:
    """SIGTERM, as systemd or a test runner would; the exit status (0 is a clean stop)."""
    proc = kube.proc
    assert proc is not None
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        return -9


@contextlib.contextmanager
def grant_removed(kube: RealKube, verb: str, resource: str) -> Iterator[None]:
    """The shipped ClusterRole without ``verb`` on ``resource`` while inside; restored after."""
    path = "/apis/rbac.authorization.k8s.io/v1/clusterroles/metalmem-agent"
    role = kube.admin("GET", path)
    original = json.loads(json.dumps(role["rules"]))
    rules = []
    for rule in role["rules"]:
        if resource in rule["resources"]:
            rule = {**rule, "verbs": [v for v in rule["verbs"] if v != verb]}
        if rule["verbs"]:  # a rule without verbs is invalid: drop it
            rules.append(rule)
    kube.admin("PATCH", path, {"rules": rules}, ctype=MERGE_PATCH)
    try:
        yield
    finally:
        kube.admin("PATCH", path, {"rules": original}, ctype=MERGE_PATCH)
