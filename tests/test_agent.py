"""The agent, black-box: the real `metalmem-agent run` process, real HTTP, real signals."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import jsonschema
import pytest
from prometheus_client.parser import text_string_to_metric_families

from metalmem.sampler import Sampler

from .agentproc import AGENT, AgentProcess, run_agent
from .helpers import Children, has_exited, wait_for
from .test_metrics import ISSUE_NAMES
from .test_watchdog_eviction import _critical_now

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux signals and /proc")

MiB = 1 << 20
ROOT = pathlib.Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "docs" / "memstats.schema.json").read_text())

# Issue 6, section 3 (and issue 7's two): every one must be a family in /metrics (a value the
# platform cannot provide, like the GPU here, leaves the family without samples, not a 0).
REQUIRED = ISSUE_NAMES


def families(body: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(body)}


def family_name(name: str) -> str:
    """The parser names a counter family without its ``_total`` suffix."""
    return name.removesuffix("_total")


def sample_value(body: str, name: str, **labels: str) -> float | None:
    """The sum of ``name``'s samples with these labels (others free); None if there is none.
    Summed: counters with known labels are exported from 0, so the first match may be 0."""
    found = [
        float(s.value)
        for fam in text_string_to_metric_families(body)
        for s in fam.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    return sum(found) if found else None


def metrics(agent: AgentProcess) -> str:
    status, _, body = agent.get("/metrics")
    assert status == 200
    return body


def write_config(path: pathlib.Path, text: str) -> pathlib.Path:
    path.write_text(text)
    return path


def _target_tables(pids: dict[str, tuple[int, str]]) -> str:
    return "".join(
        f'\n[[target]]\nname = "{name}"\npid = {pid}\npriority = "{priority}"\ngrace = "2s"\n'
        for name, (pid, priority) in pids.items()
    )


# --- bad input ------------------------------------------------------------------------------


def _bad_cases(tmp: pathlib.Path) -> list[tuple[list[str], dict[str, str], str]]:
    a_file = write_config(tmp / "plain-file", "x")
    bad_toml = write_config(tmp / "bad.toml", "[pressure\nwarning_available = 0.2\n")
    unknown = write_config(tmp / "unknown.toml", "[pressure]\nwarning_available = 0.3\nbogus = 1\n")
    bad_interval = write_config(tmp / "interval.toml", '[agent]\ninterval = "soon"\n')
    inverted = write_config(
        tmp / "inverted.toml", "[pressure]\nwarning_available = 0.1\ncritical_available = 0.2\n"
    )
    return [
        (["--memory-pressure-warning", "0.1", "--memory-pressure-critical", "0.2"], {},
         "--memory-pressure-warning"),
        (["--memory-pressure-warning", "0.2", "--memory-pressure-critical", "0.2"], {},
         "--memory-pressure-critical"),
        (["--memory-pressure-warning", "1.5"], {}, "--memory-pressure-warning"),
        (["--memory-pressure-critical", "0"], {}, "--memory-pressure-critical"),
        (["--memory-watchdog-interval", "2x"], {}, "--memory-watchdog-interval"),
        (["--memory-watchdog-interval", "-1s"], {}, "--memory-watchdog-interval"),
        ([], {"METALMEM_MEMORY_WATCHDOG_INTERVAL": "soon"}, "--memory-watchdog-interval"),
        ([], {"METALMEM_MEMORY_PRESSURE_WARNING": "2"}, "--memory-pressure-warning"),
        (["--listen", "nonsense"], {}, "--listen"),
        (["--listen", "127.0.0.1:99999"], {}, "--listen"),
        (["--scope", str(tmp / "no-such-cgroup")], {}, "--scope"),
        (["--state-dir", str(a_file)], {}, "--state-dir"),
        (["--record", str(tmp)], {}, "--record"),
        (["--log-level", "loud"], {}, "--log-level"),
        (["--log-format", "xml"], {}, "--log-format"),
        (["--discover", "(unclosed"], {}, "--discover"),
        (["--config", str(tmp / "missing.toml")], {}, str(tmp / "missing.toml")),
        (["--config", str(bad_toml)], {}, str(bad_toml)),
        (["--config", str(unknown)], {}, f"{unknown}:3"),
        (["--config", str(bad_interval)], {}, "agent.interval"),
        (["--config", str(inverted)], {}, str(inverted)),
    ]  # fmt: skip


def test_every_bad_input_exits_2_with_one_line_naming_it(tmp_path: pathlib.Path) -> None:
    for args, env, named in _bad_cases(tmp_path):
        r = run_agent(args, env=env)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2, (args, env, r.stderr)
        assert len(lines) == 1 and lines[0].startswith("metalmem-agent: error: "), r.stderr
        assert named in lines[0], (args, env, lines[0])


def test_a_port_in_use_exits_2_naming_the_address() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        r = run_agent(["--listen", f"127.0.0.1:{port}"])
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("metalmem-agent: error: ") and "--listen" in last
    assert f"127.0.0.1:{port}" in last


# --- endpoints ------------------------------------------------------------------------------


def test_endpoints_metrics_memstats_health(tmp_path: pathlib.Path, children: Children) -> None:
    kid = children.spawn(allocate_mib=8)
    config = write_config(tmp_path / "agent.toml", _target_tables({"svc": (kid.pid, "normal")}))
    args = ["--memory-watchdog-interval", "200ms", "--config", str(config)]
    with AgentProcess(args, tmp_path / "agent.log") as agent:
        wait_for(lambda: agent.get("/readyz")[0] == 200, timeout=10, what="readyz")
        wait_for(lambda: "svc" in agent.memstats()["processes"], timeout=10, what="target")
        body = metrics(agent)
        fams = families(body)
        missing = [n for n in REQUIRED if family_name(n) not in fams]
        assert not missing, missing
        total = sample_value(body, "metalmem_memory_total_bytes")
        with Sampler() as s:
            assert total == s.system().total
        footprint = sample_value(body, "metalmem_process_footprint_bytes", target="svc")
        assert footprint is not None and footprint >= 8 * MiB
        assert not any("pid" in s.labels for f in fams.values() for s in f.samples)
        states = {s.labels["level"]: s.value for s in fams["metalmem_pressure_state"].samples}
        assert sorted(states.values()) == [0, 0, 1]

        status, ctype, om = agent.get("/metrics", accept="application/openmetrics-text")
        assert status == 200 and ctype.startswith("application/openmetrics-text")
        assert om.rstrip().endswith("# EOF")

        doc = agent.memstats()
        jsonschema.validate(doc, SCHEMA)
        assert doc["processes"]["svc"]["pid"] == kid.pid

        assert agent.get("/healthz")[0] == 200
        assert agent.get("/nope")[0] == 404

        # The test hook holds the loop inside a tick: the heartbeat goes stale.
        agent.signal(signal.SIGUSR1)
        status, _, reason = wait_for(
            lambda: (r := agent.get("/healthz"))[0] == 503 and r, timeout=10, what="503"
        )
        assert "heartbeat" in reason
        agent.signal(signal.SIGUSR1)
        wait_for(lambda: agent.get("/healthz")[0] == 200, timeout=10, what="healthy again")
        assert agent.stop() == 0
    assert "event=stopped" in agent.log()


def test_sigterm_exits_0_promptly(tmp_path: pathlib.Path) -> None:
    agent = AgentProcess(["--memory-watchdog-interval", "10s"], tmp_path / "agent.log")
    agent.signal(signal.SIGTERM)
    assert agent.proc.wait(timeout=5) == 0
    agent.stop()


def test_interval_0_keeps_metrics_without_the_loop(tmp_path: pathlib.Path) -> None:
    with AgentProcess(["--memory-watchdog-interval", "0"], tmp_path / "agent.log") as agent:
        assert agent.get("/healthz")[0] == 200
        body = metrics(agent)
        assert sample_value(body, "metalmem_memory_total_bytes")
        assert agent.get("/readyz")[0] == 200


# --- reload ---------------------------------------------------------------------------------


def test_sighup_with_a_broken_config_keeps_the_old_one(tmp_path: pathlib.Path) -> None:
    config = write_config(tmp_path / "agent.toml", '[eviction]\nmode = "dry-run"\n')
    args = ["--memory-watchdog-interval", "200ms", "--config", str(config)]
    with AgentProcess(args, tmp_path / "agent.log") as agent:
        wait_for(lambda: agent.memstats()["mode"] == "dry-run", timeout=10, what="dry-run")
        config.write_text('[eviction]\nmode = "enforce"\nbogus = 1\n')
        agent.signal(signal.SIGHUP)
        wait_for(
            lambda: (sample_value(metrics(agent), "metalmem_config_reloads_total", result="failure")
                     or 0) >= 1,
            timeout=10,
            what="a failed reload counted",
        )  # fmt: skip
        assert "event=config_reload_failed" in agent.log()
        assert agent.memstats()["mode"] == "dry-run"
        assert agent.get("/healthz")[0] == 200
        # A valid change is picked up by its new mtime alone.
        config.write_text('[eviction]\nmode = "enforce"\n')
        wait_for(lambda: agent.memstats()["mode"] == "enforce", timeout=10, what="enforce")
        assert sample_value(metrics(agent), "metalmem_config_reloads_total", result="success")


# --- eviction end to end ----------------------------------------------------------------------


def _critical_thresholds() -> tuple[float, float]:
    """(warning, critical) fractions just above what this host has available: it reads
    CRITICAL (hard), as for the in-process eviction tests."""
    with Sampler() as s:
        p = _critical_now(s)
    return p.warning_available, p.critical_available


def _enforcing(config: pathlib.Path, state: pathlib.Path, *extra: str) -> list[str]:
    """`run` arguments that enforce eviction every 100 ms with this host CRITICAL."""
    warning, critical = _critical_thresholds()
    return [
        "--eviction-enabled",
        "--memory-watchdog-interval", "100ms",
        "--memory-pressure-warning", f"{warning:.6f}",
        "--memory-pressure-critical", f"{critical:.6f}",
        "--config", str(config),
        "--state-dir", str(state),
        *extra,
    ]  # fmt: skip


def test_enforce_evicts_the_batch_child_and_only_it(
    tmp_path: pathlib.Path, children: Children
) -> None:
    kids = {p: children.spawn(allocate_mib=32) for p in ("batch", "normal", "high")}
    config = write_config(
        tmp_path / "agent.toml",
        "[pressure]\nmargin = 0.0005\n\n[eviction]\nmin_managed_share = 0.0\nfloor = 1\n"
        'cooldown = "10m"\nmax_evictions = 1\nmin_reclaim = 0\nsettle_timeout = "1s"\n'
        + _target_tables({p: (k.pid, p) for p, k in kids.items()}),
    )
    args = _enforcing(config, tmp_path / "state")
    with AgentProcess(args, tmp_path / "agent.log") as agent:
        wait_for(
            lambda: sample_value(metrics(agent), "metalmem_evictions_total", result="terminated"),
            timeout=30,
            what="one terminated eviction",
        )
        wait_for(lambda: has_exited(kids["batch"].pid), timeout=10, what="batch exit")
        seq = agent.memstats()["seq"]
        wait_for(lambda: agent.memstats()["seq"] >= seq + 10, timeout=10, what="more ticks")
        body = metrics(agent)
        total = sum(
            s.value
            for s in families(body)["metalmem_evictions"].samples
            if s.name == "metalmem_evictions_total"
        )
        assert total == 1
        doc = agent.memstats()
        assert [e["key"] for e in doc["evictions"]] == ["batch"]
        assert doc["evictions"][0]["result"] == "terminated"
        assert "batch" in doc["blocked"]
        assert not has_exited(kids["normal"].pid) and not has_exited(kids["high"].pid)
        status = subprocess.run(
            [AGENT, "status", "--url", agent.base], capture_output=True, text=True, timeout=30
        )
        assert f"evicted batch pid {kids['batch'].pid}: terminated" in status.stdout
        assert "respawn blocked: batch" in status.stdout
        assert agent.stop() == 0


def test_sigterm_during_a_stop_lets_it_finish_and_keeps_the_block(
    tmp_path: pathlib.Path, children: Children
) -> None:
    stubborn = children.spawn(allocate_mib=16, ignore_term=True)
    keeper = children.spawn(allocate_mib=16)
    config = write_config(
        tmp_path / "agent.toml",
        "[pressure]\nmargin = 0.0005\n\n[eviction]\nmin_managed_share = 0.0\nfloor = 1\n"
        'min_reclaim = 0\nsettle_timeout = "1s"\n'
        + _target_tables({"stubborn": (stubborn.pid, "batch"), "keeper": (keeper.pid, "high")}),
    )
    state = tmp_path / "state"
    args = _enforcing(config, state, "--log-format", "json")
    agent = AgentProcess(args, tmp_path / "agent.log")
    try:
        wait_for(lambda: '"event":"evict"' in agent.log(), timeout=30, what="the stop to begin")
        agent.signal(signal.SIGTERM)  # in the middle of the 2 s grace: the child ignores TERM
        assert agent.proc.wait(timeout=2 + 2 + 5) == 0
    finally:
        agent.stop()
    assert has_exited(stubborn.pid) and not has_exited(keeper.pid)
    blocks = json.loads((state / "respawn-blocks.json").read_text())
    assert list(blocks["blocked"]) == ["stubborn"]
    lines = [json.loads(line) for line in agent.log().splitlines() if line.strip()]
    events = [d.get("event") for d in lines]
    assert "started" in events and "evict" in events and events[-1] == "stopped"
    stopped = next(d for d in lines if d.get("event") == "stop")
    assert stopped["key"] == "stubborn" and stopped["result"] == "killed"
    assert stopped["steps"] == "SIGTERM,SIGKILL"


@pytest.mark.skipif(sys.platform != "linux", reason="inotify, /proc/PID/task")
def test_idle_agent_main_and_http_threads_do_not_wake(tmp_path: pathlib.Path) -> None:
    # Issue 15: the main thread waits on signals, the loop's death and inotify on the config's
    # directory, the HTTP thread on its socket: idle, neither wakes (they polled every 1 s and
    # 0.25 s). Without the loop (interval 0) nothing else runs, so no thread may wake at all.
    # A config change is still picked up at once.
    config = tmp_path / "agent.toml"
    config.write_text("")
    agent = AgentProcess(["--config", str(config), "--memory-watchdog-interval", "0"],
                         tmp_path / "agent.log")  # fmt: skip
    try:
        wait_for(lambda: agent.get("/healthz")[0] == 200, timeout=20, what="healthy")
        time.sleep(0.5)
        before = _thread_switches(agent.proc.pid)
        time.sleep(3.0)
        after = _thread_switches(agent.proc.pid)
        woke = {t: after[t] - before.get(t, 0) for t in after if after[t] - before.get(t, 0) > 1}
        assert len(after) >= 2 and woke == {}, (before, after)
        config.write_text('[eviction]\nmode = "dry-run"\n')
        wait_for(lambda: agent.memstats()["mode"] == "dry-run", timeout=5, what="reload")
    finally:
        agent.stop()


def _thread_switches(pid: int) -> dict[int, int]:
    out = {}
    for tid in map(int, os.listdir(f"/proc/{pid}/task")):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/status") as f:
            # voluntary only: being preempted on a loaded machine is not a wake-up
            out[tid] = sum(int(ln.split()[1]) for ln in f if ln.startswith("voluntary_ctxt"))
    return out
