"""`status` against a real running agent, and `explain` over real child processes."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from .agentproc import AGENT, AgentProcess
from .helpers import Children, wait_for

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux /proc")


def agent_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AGENT, *args], capture_output=True, text=True, timeout=60)


def _config(path: pathlib.Path, targets: dict[str, tuple[int, str]]) -> pathlib.Path:
    path.write_text(
        "".join(
            f'[[target]]\nname = "{n}"\npid = {pid}\npriority = "{prio}"\n\n'
            for n, (pid, prio) in targets.items()
        )
    )
    return path


def test_status_summarises_a_running_agent(tmp_path: pathlib.Path, children: Children) -> None:
    kid = children.spawn(allocate_mib=16)
    config = _config(tmp_path / "a.toml", {"chat": (kid.pid, "high")})
    args = ["--memory-watchdog-interval", "200ms", "--config", str(config)]
    with AgentProcess(args, tmp_path / "agent.log") as agent:
        wait_for(lambda: "chat" in agent.memstats()["processes"], timeout=10, what="target")
        r = agent_cli("status", "--url", agent.base)
        assert r.returncode == 0, r.stderr
        assert (
            r.stdout.startswith("level NORMAL")
            or r.stdout.startswith("level WARNING")
            or (r.stdout.startswith("level CRITICAL"))
        )
        assert "mode observe" in r.stdout
        row = next(line for line in r.stdout.splitlines() if line.startswith("chat "))
        assert str(kid.pid) in row and "high" in row and "MiB" in row
        as_json = agent_cli("status", "--url", agent.base, "--json")
        assert json.loads(as_json.stdout)["processes"]["chat"]["pid"] == kid.pid


def test_status_of_no_agent_fails_with_one_line() -> None:
    r = agent_cli("status", "--url", "http://127.0.0.1:1")
    assert r.returncode == 1
    assert r.stderr.startswith("metalmem-agent: error: cannot reach http://127.0.0.1:1/memstats")
    assert "Connection refused" in r.stderr and "urlopen" not in r.stderr  # no Python reprs
    assert len(r.stderr.strip().splitlines()) == 1


def test_explain_ranks_the_configured_targets(tmp_path: pathlib.Path, children: Children) -> None:
    kids = {p: children.spawn(allocate_mib=8) for p in ("batch", "normal", "high")}
    config = _config(tmp_path / "a.toml", {p: (k.pid, p) for p, k in kids.items()})
    r = agent_cli("explain", "--config", str(config), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [row["key"] for row in doc["ranking"]] == ["batch", "normal", "high"]
    assert [row["pid"] for row in doc["ranking"]] == [
        kids[p].pid for p in ("batch", "normal", "high")
    ]
    assert all(row["footprint"] and row["footprint"] >= 8 << 20 for row in doc["ranking"])
    table = agent_cli("explain", "--config", str(config))
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    order = [next(i for i, line in enumerate(lines) if f" {p} " in line) for p in kids]
    assert order == sorted(order)


def test_explain_without_targets_says_so() -> None:
    r = agent_cli("explain", "--discover", "^no-such-process-name$")
    assert r.returncode == 0, r.stderr
    assert "no managed targets" in r.stdout


def test_explain_refuses_a_bad_config(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[eviction]\nmode = 'sometimes'\n")
    r = agent_cli("explain", "--config", str(bad))
    assert r.returncode == 2
    assert str(bad) in r.stderr and len(r.stderr.strip().splitlines()) == 1
