"""The real `metalmem-agent run` process against the contract fake API server.

The agent reads its kubeconfig (pointing at the fake) like an agent on a Mac outside the
cluster; the test plays LLMKube: it created the InferenceService, reports `Available` on it,
and stops the process when it sees `spec.suspend: true`.
"""

from __future__ import annotations

import os
import pathlib
import signal
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from .agentproc import AgentProcess
from .helpers import Children, has_exited, wait_for
from .test_agent import _critical_thresholds

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="Linux signals and /proc"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

kubefake = pytest.importorskip("tests.kubefake")
NS = "llm"
AVAILABLE = {
    "type": "Available",
    "status": "True",
    "reason": "Ready",
    "message": "serving",
    "lastTransitionTime": "2026-01-01T00:00:00Z",
}


@pytest.fixture
def fake() -> Iterator[Any]:
    with kubefake.FakeKube() as f:
        yield f


def _seed(fake: Any, name: str) -> None:
    fake.create(
        {
            "apiVersion": "inference.llmkube.dev/v1alpha1",
            "kind": "InferenceService",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"modelRef": "llama"},
        }
    )
    fake.patch(
        NS, name, {"status": {"conditions": [AVAILABLE]}}, status=True, manager="llmkube-controller"
    )


def _imported_modules(log: str) -> set[str]:
    """Module names from `python -X importtime` lines in the agent's log."""
    return {
        line.rsplit("|", 1)[1].strip()
        for line in log.splitlines()
        if line.startswith("import time:") and "|" in line
    }


IMPORTTIME = (sys.executable, "-X", "importtime", "-m", "metalmem_cli")


def test_no_kube_never_imports_kubernetes(tmp_path: pathlib.Path, fake: Any) -> None:
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)
    env = {"KUBECONFIG": str(kubeconfig)}  # a cluster is right there: --no-kube still wins
    with AgentProcess([], tmp_path / "off.log", env=env, prefix=IMPORTTIME) as agent:
        wait_for(lambda: agent.get("/readyz")[0] == 200, timeout=10, what="readyz")
        modules = _imported_modules(agent.log())
    assert "metalmem_cli.agent" in modules  # the probe sees the agent's own imports
    assert not any(m == "kubernetes" or m.startswith("kubernetes.") for m in modules)
    assert "event=kube_disabled reason=--no-kube" in agent.log()

    args = ["--kubeconfig", str(kubeconfig)]
    with AgentProcess(args, tmp_path / "on.log", kube=True, prefix=IMPORTTIME) as agent:
        wait_for(lambda: agent.get("/readyz")[0] == 200, timeout=10, what="readyz")
        modules = _imported_modules(agent.log())
    # Only kubernetes' config loaders (issue 15: RSS): no API classes, no models, no pydantic.
    assert {"kubernetes.config.kube_config", "kubernetes.client.configuration"} <= modules
    assert not {"kubernetes.client.models", "kubernetes.client.api", "pydantic"} & modules


def test_explicit_kube_with_an_unusable_kubeconfig_exits_2(tmp_path: pathlib.Path) -> None:
    from .agentproc import run_agent

    bad = tmp_path / "kubeconfig"
    bad.write_text("this: is: not: a kubeconfig\n")
    r = run_agent(["--kube", "--kubeconfig", str(bad)])
    # run_agent adds --no-kube first; the later --kube wins, as click reads flags in order.
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("metalmem-agent: error: ") and "--kubeconfig" in line


def _config(path: pathlib.Path, warning: float, critical: float, chat: int, keeper: int) -> None:
    path.write_text(
        f"[pressure]\nwarning_available = {warning:.6f}\ncritical_available = {critical:.6f}\n"
        'margin = 0.0005\ntransition_period = "1s"\n\n'
        "[eviction]\nmin_managed_share = 0.0\nfloor = 1\nmin_reclaim = 0\n"
        'settle_timeout = "1s"\ncooldown = "10m"\n\n'
        f'[[target]]\nname = "chat"\nnamespace = "{NS}"\npid = {chat}\npriority = "batch"\n'
        'grace = "5s"\n\n'
        f'[[target]]\nname = "keeper"\npid = {keeper}\npriority = "high"\n'
    )


def test_critical_suspends_through_the_owner_then_normal_resumes(
    tmp_path: pathlib.Path, fake: Any, children: Children
) -> None:
    _seed(fake, "chat")
    chat = children.spawn(allocate_mib=32)
    keeper = children.spawn(allocate_mib=8)
    owner_stops: list[int] = []

    def owner(kind: str, old: Any, new: Any) -> None:
        # LLMKube's metal agent: a suspended InferenceService has its process torn down.
        suspended = new and new["metadata"]["name"] == "chat" and new["spec"].get("suspend")
        if suspended is True and chat.pid not in owner_stops:
            owner_stops.append(chat.pid)
            os.kill(chat.pid, signal.SIGTERM)

    fake.watch(owner)
    warning, critical = _critical_thresholds()
    config = tmp_path / "agent.toml"
    _config(config, warning, critical, chat.pid, keeper.pid)
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)
    args = [
        "--eviction-enabled",
        "--memory-watchdog-interval", "100ms",
        "--config", str(config),
        "--kubeconfig", str(kubeconfig),
        "--node-name", "node-1",
        "--state-dir", str(tmp_path / "state"),
    ]  # fmt: skip
    with AgentProcess(args, tmp_path / "agent.log", kube=True) as agent:
        wait_for(
            lambda: (fake.get(NS, "chat") or {}).get("spec", {}).get("suspend") is True,
            timeout=30,
            what="spec.suspend",
        )
        obj = fake.get(NS, "chat")
        assert "metalmem.io/suspended" in obj["metadata"]["annotations"]
        wait_for(lambda: has_exited(chat.pid), timeout=10, what="the owner's stop")
        wait_for(
            lambda: (
                (c := fake.condition(NS, "chat", "MemoryPressure")) is not None
                and c["reason"] == "Evicted"
            ),
            timeout=15,
            what="the Evicted condition",
        )
        cond = fake.condition(NS, "chat", "MemoryPressure")
        assert cond["status"] == "True" and "available" in cond["message"]
        assert fake.condition(NS, "chat", "Available") == AVAILABLE
        assert owner_stops == [chat.pid] and not has_exited(keeper.pid)

        # Pressure goes away: a reload (new mtime) with thresholds far below this host.
        _config(config, 0.02, 0.01, chat.pid, keeper.pid)
        wait_for(
            lambda: (fake.get(NS, "chat") or {}).get("spec", {}).get("suspend") is False,
            timeout=30,
            what="the resume",
        )
        obj = fake.get(NS, "chat")
        assert "metalmem.io/suspended" not in (obj["metadata"].get("annotations") or {})
        wait_for(
            lambda: fake.condition(NS, "chat", "MemoryPressure")["status"] == "False",
            timeout=15,
            what="the condition back to False",
        )
        assert fake.condition(NS, "chat", "MemoryPressure")["reason"] == "Normal"
        assert fake.condition(NS, "chat", "Available") == AVAILABLE
        assert agent.stop() == 0

    events = [e for e in fake.events(NS) if e["regarding"]["name"] == "chat"]
    reasons = [e["reason"] for e in events]
    for wanted in ("MemoryPressureLevelChanged", "Suspended", "Evicted", "Resumed"):
        assert wanted in reasons, reasons
    assert {e["reportingController"] for e in events} == {"metalmem.io/agent"}
    assert {e["reportingInstance"] for e in events} == {"node-1"}
