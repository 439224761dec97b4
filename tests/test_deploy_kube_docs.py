"""The two Kubernetes doc fixes of issue 16, each checked.

- `kubectl auth can-i VERB inferenceservices/status` asks about an *object named "status"*;
  the subresource is `--subresource=status`. Every `auth can-i` in the docs that is about the
  status says so.
- deploy/kubernetes/README.md step 2 builds the agent's kubeconfig from your own context. Run
  here for real (kubectl config commands do not contact a server): a source kubeconfig that
  names its CA **by file** still yields a kubeconfig whose CA is that file's content; one with
  no CA stops with a message instead of writing a kubeconfig without one.
"""

from __future__ import annotations

import base64
import os
import pathlib
import re
import shutil
import subprocess

import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parent.parent
README = REPO / "deploy" / "kubernetes" / "README.md"
DOCS = [README, *sorted((REPO / "docs").glob("*.md"))]
CA = b"-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"


def test_every_can_i_on_the_status_names_the_subresource() -> None:
    found = 0
    for path in DOCS:
        text = path.read_text().replace("\\\n", " ")
        for line in text.splitlines():
            if "auth can-i" not in line:
                continue
            found += 1
            assert not re.search(r"\b\w+/status\b", line), f"{path.name}: {line.strip()}"
            if "status" in line:
                assert "--subresource=status" in line, f"{path.name}: {line.strip()}"
    assert found >= 3


def _step2() -> str:
    """The sh block of README step 2 that writes the kubeconfig."""
    blocks = re.findall(r"```sh \{cluster\}\n(.*?)```", README.read_text(), re.DOTALL)
    (block,) = [b for b in blocks if "set-cluster" in b]
    return "\n".join(line.strip() for line in block.splitlines())


def _source(path: pathlib.Path, cluster: dict[str, str]) -> pathlib.Path:
    doc = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://203.0.113.10:6443", **cluster}}],
        "users": [{"name": "me", "user": {"token": "mine"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "me"}}],
        "current-context": "x",
    }  # fmt: skip
    path.write_text(yaml.safe_dump(doc))
    return path


def _run_step2(tmp: pathlib.Path, source: pathlib.Path) -> subprocess.CompletedProcess[str]:
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    env = dict(os.environ, HOME=str(home), KUBECONFIG=str(source), TOKEN="agent-token")
    script = _step2().replace("/tmp/ca.crt", str(tmp / "ca.crt"))
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=env,
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip


@pytest.mark.parametrize("form", ["file", "data"])
def test_step2_keeps_the_ca_whether_named_by_file_or_inline(
    tmp_path: pathlib.Path, form: str
) -> None:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed (Debian: kubernetes-client; make test-tools)")
    ca_file = tmp_path / "cluster-ca.crt"
    ca_file.write_bytes(CA)
    cluster = (
        {"certificate-authority": str(ca_file)}
        if form == "file"
        else {"certificate-authority-data": base64.b64encode(CA).decode()}
    )
    out = _run_step2(tmp_path, _source(tmp_path / "source", cluster))
    assert out.returncode == 0, out.stderr
    kc = yaml.safe_load((tmp_path / "home" / ".config" / "metalmem" / "kubeconfig").read_text())
    (c,) = kc["clusters"]
    assert base64.b64decode(c["cluster"]["certificate-authority-data"]) == CA
    assert c["cluster"]["server"] == "https://203.0.113.10:6443"
    assert kc["users"][0]["user"]["token"] == "agent-token"


def test_step2_without_any_ca_stops_loudly(tmp_path: pathlib.Path) -> None:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed (Debian: kubernetes-client; make test-tools)")
    out = _run_step2(tmp_path, _source(tmp_path / "source", {}))
    assert out.returncode != 0 and "no CA for x" in out.stderr, out.stderr
    assert not (tmp_path / "home" / ".config" / "metalmem" / "kubeconfig").exists()
