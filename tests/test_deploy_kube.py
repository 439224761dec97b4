"""deploy/kubernetes/: every manifest is what `kubectl apply` accepts, the DaemonSet's pod spec
has what a node guardian needs, and the PrometheusRule is the rules file, generated.

`kubectl apply --dry-run=client` still maps each document's kind to a resource through API
discovery (and, unless --validate=false, downloads the server's OpenAPI schema): it is pointed
at the API double (tests/kubefake.py serves discovery for these kinds; no token, since kubectl
sends none over plain HTTP) with --validate=false, so what is checked is the YAML, each kind's
mapping and the objects kubectl builds, not the fields against the real schemas.
"""

from __future__ import annotations

import importlib.util
import pathlib
import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from .kubefake import FakeKube

KUBE = pathlib.Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
MANIFESTS = sorted(KUBE.glob("*.yaml"))


def _docs(path: pathlib.Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _daemonset() -> dict[str, Any]:
    (ds,) = [d for d in _docs(KUBE / "daemonset.yaml") if d["kind"] == "DaemonSet"]
    return ds


def test_every_manifest_applies_with_kubectl_dry_run(tmp_path: pathlib.Path) -> None:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed (Debian: kubernetes-client; make test-tools)")
    expected = sum(len(_docs(p)) for p in MANIFESTS)
    with FakeKube(token=None) as fake:
        kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig")
        files = [arg for p in MANIFESTS for arg in ("-f", str(p))]
        out = subprocess.run(
            ["kubectl", "--kubeconfig", str(kubeconfig), "apply", "--dry-run=client",
             "--validate=false", *files],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert out.returncode == 0, out.stderr
    created = [line for line in out.stdout.splitlines() if line.endswith("created (dry run)")]
    assert len(created) == expected, out.stdout
    for kind in ("daemonset.apps/metalmem-agent", "service/metalmem",
                 "servicemonitor.monitoring.coreos.com/metalmem",
                 "prometheusrule.monitoring.coreos.com/metalmem"):  # fmt: skip
        assert f"{kind} created (dry run)" in out.stdout


def test_the_daemonset_pod_spec_is_a_node_guardian() -> None:
    ds = _daemonset()
    pod = ds["spec"]["template"]["spec"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= ds["spec"]["template"]["metadata"][
        "labels"].items()  # fmt: skip
    assert pod["hostPID"] is True
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["serviceAccountName"] in {d["metadata"]["name"] for d in _docs(KUBE / "rbac.yaml")
                                         if d["kind"] == "ServiceAccount"}  # fmt: skip
    (agent,) = pod["containers"]
    sc = agent["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    # exactly the systemd unit's capabilities
    unit = (KUBE.parent / "systemd" / "metalmem.service").read_text()
    caps = re.search(r"^CapabilityBoundingSet=(.*)$", unit, re.MULTILINE)
    assert caps is not None
    assert sorted(sc["capabilities"]["add"]) == sorted(
        c.removeprefix("CAP_") for c in caps.group(1).split()
    )
    assert agent["resources"]["requests"]["memory"] and agent["resources"]["limits"]["memory"]
    assert agent["resources"]["requests"]["cpu"]
    port = {p["name"]: p["containerPort"] for p in agent["ports"]}["metrics"]
    assert f"--listen=0.0.0.0:{port}" in agent["args"] and "--scope=host" in agent["args"]
    assert agent["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert agent["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    state = next(a.split("=", 1)[1] for a in agent["args"] if a.startswith("--state-dir="))
    mounts = {m["mountPath"]: m["name"] for m in agent["volumeMounts"]}
    assert state in mounts, "the state directory is writable under the read-only root"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "hostPath" in volumes[mounts[state]], "state survives a pod restart"


def test_service_and_servicemonitor_select_the_agents() -> None:
    labels = _daemonset()["spec"]["template"]["metadata"]["labels"]
    (svc,) = _docs(KUBE / "service.yaml")
    (mon,) = _docs(KUBE / "servicemonitor.yaml")
    assert svc["spec"]["selector"].items() <= labels.items()
    assert mon["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert [e["port"] for e in mon["spec"]["endpoints"]] == [p["name"] for p in
                                                             svc["spec"]["ports"]]  # fmt: skip
    rules = (KUBE.parent / "prometheus" / "metalmem-rules.yml").read_text()
    assert 'job="metalmem"' in rules and svc["metadata"]["name"] == "metalmem", (
        "the scrape job is named after the Service; the rules select job=metalmem"
    )


def test_the_prometheusrule_is_generated_from_the_rules_file() -> None:
    spec = importlib.util.spec_from_file_location("prometheusrule", KUBE / "prometheusrule.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    rules_file = KUBE.parent / "prometheus" / "metalmem-rules.yml"
    assert (KUBE / "prometheusrule.yaml").read_text() == gen.render(rules_file.read_text()), (
        "out of date: python3 deploy/kubernetes/prometheusrule.py > "
        "deploy/kubernetes/prometheusrule.yaml"
    )
    (rule,) = _docs(KUBE / "prometheusrule.yaml")
    assert rule["spec"]["groups"] == yaml.safe_load(rules_file.read_text())["groups"]
