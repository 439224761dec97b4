"""Issue 13, one test per finding: the real `metalmem-agent run`, real children, real signals.

Each of these stopped (or would stop) the wrong process, or died silently, before the safety
gate. Every test here failed on the code before it: the marker it waits for (a log line the
fix adds, a skip reason, an exit status) never came, or the wrong child got a signal.
"""

from __future__ import annotations

import json
import pathlib
import signal
import sys
from collections.abc import Sequence

import pytest

from .agentproc import AgentProcess, run_agent
from .helpers import Child, Children, can_choose_pids, reap, spawn_child_at_pid, wait_for
from .test_agent import _critical_thresholds

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux signals and /proc")
needs_pids = pytest.mark.skipif(
    not can_choose_pids(), reason="choosing a pid needs root (ns_last_pid)"
)

CALM = (0.02, 0.01)  # thresholds far below this host: NORMAL


def _target(name: str, pid: int, priority: str, *extra: str) -> str:
    return "\n".join(
        ["[[target]]", f'name = "{name}"', f"pid = {pid}", f'priority = "{priority}"', *extra, ""]
    )


def _config(
    path: pathlib.Path,
    targets: Sequence[str],
    thresholds: tuple[float, float] | None = None,
    *,
    eviction: str = "",
    extra: str = "",
) -> None:
    warning, critical = thresholds if thresholds is not None else _critical_thresholds()
    path.write_text(
        f"[pressure]\nwarning_available = {warning:.6f}\ncritical_available = {critical:.6f}\n"
        'margin = 0.0005\ntransition_period = "30s"\n\n'
        "[eviction]\nmin_managed_share = 0.0\nfloor = 1\nmin_reclaim = 0\n"
        f'settle_timeout = "500ms"\ncooldown = "0s"\n{eviction}\n{extra}\n' + "\n".join(targets)
    )


def _agent(config: pathlib.Path, tmp: pathlib.Path, log: str, *extra: str) -> AgentProcess:
    args = [
        "--eviction-enabled", "--memory-watchdog-interval", "100ms", "--config", str(config),
        "--state-dir", str(tmp / "state"), *extra,
    ]  # fmt: skip
    return AgentProcess(args, tmp / log)


def _stops(agent: AgentProcess, pid: int) -> list[str]:
    return [
        line for line in agent.log().splitlines() if "event=stop " in line and f"pid={pid} " in line
    ]


def _untouched(child: Child) -> None:
    assert child.signals() == [] and not child.has_exited(), child.signals()


# --- 1. pid reuse ------------------------------------------------------------------------------


def _batch_and_keeper(
    tmp_path: pathlib.Path, children: Children
) -> tuple[Child, Child, pathlib.Path, list[str]]:
    """A batch model ``v`` and a high-priority keeper as ``pid =`` targets, the host NORMAL."""
    victim = children.spawn(allocate_mib=16)
    keeper = children.spawn(allocate_mib=8, signal_log=tmp_path / "keeper")
    config = tmp_path / "agent.toml"
    targets = [_target("v", victim.pid, "batch"), _target("keeper", keeper.pid, "high")]
    _config(config, targets, CALM)
    return victim, keeper, config, targets


def _stranger_at(pid: int, tmp_path: pathlib.Path, children: Children) -> Child:
    """An unrelated process that gets ``pid`` (real pid reuse), reaped with the test's."""
    stranger = spawn_child_at_pid(pid, signal_log=tmp_path / "stranger")
    children.pids.append(stranger.pid)
    return stranger


@needs_pids
def test_reload_keeps_the_pin_so_a_reused_pid_is_not_adopted(
    tmp_path: pathlib.Path, children: Children
) -> None:
    victim, keeper, config, targets = _batch_and_keeper(tmp_path, children)
    with _agent(config, tmp_path, "agent.log") as agent:
        wait_for(lambda: "event=target_added key=v " in agent.log(), timeout=10, what="adopted")
        reap(victim.pid)
        stranger = _stranger_at(victim.pid, tmp_path, children)
        # The reload changes the target list (the tracker used to be rebuilt and forget pins)
        # and makes the host CRITICAL: the stranger would be the batch victim.
        third = children.spawn(allocate_mib=4, signal_log=tmp_path / "third")
        _config(config, [*targets, _target("third", third.pid, "critical")])
        agent.signal(signal.SIGHUP)
        wait_for(lambda: "event=target_pid_reused key=v " in agent.log(), timeout=15,
                 what="the reused pid refused")  # fmt: skip
        wait_for(lambda: "reason=floor" in agent.log() or "reason=no_candidates" in agent.log()
                 or _stops(agent, keeper.pid), timeout=15, what="a decision")  # fmt: skip
        _untouched(stranger)
        assert not _stops(agent, stranger.pid)


@needs_pids
def test_restart_reads_the_pins_so_a_reused_pid_is_not_adopted(
    tmp_path: pathlib.Path, children: Children
) -> None:
    victim, keeper, config, targets = _batch_and_keeper(tmp_path, children)
    with _agent(config, tmp_path, "first.log") as agent:
        wait_for(lambda: "event=target_added key=v " in agent.log(), timeout=10, what="adopted")
    pins = json.loads((tmp_path / "state" / "pins.json").read_text())
    assert pins["pins"]["v"]["pid"] == victim.pid
    reap(victim.pid)  # the model exits while the agent is down
    stranger = _stranger_at(victim.pid, tmp_path, children)
    _config(config, targets)  # and the host is CRITICAL when it comes back
    with _agent(config, tmp_path, "second.log") as agent:
        wait_for(lambda: "event=target_pid_reused key=v " in agent.log(), timeout=15,
                 what="the reused pid refused")  # fmt: skip
        wait_for(lambda: "reason=floor" in agent.log(), timeout=15, what="the floor skip")
        _untouched(stranger)
        _untouched(keeper)


@needs_pids
def test_a_pid_absent_at_start_is_never_adopted(tmp_path: pathlib.Path, children: Children) -> None:
    gone = children.spawn()
    free_pid = gone.pid
    reap(free_pid)
    keeper = children.spawn(allocate_mib=8, signal_log=tmp_path / "keeper")
    config = tmp_path / "agent.toml"
    targets = [_target("v", free_pid, "batch"), _target("keeper", keeper.pid, "high")]
    _config(config, targets)
    with _agent(config, tmp_path, "agent.log") as agent:
        wait_for(lambda: "event=target_pid_absent key=v " in agent.log(), timeout=10,
                 what="the absent pid noted")  # fmt: skip
        stranger = _stranger_at(free_pid, tmp_path, children)
        wait_for(lambda: f"event=target_pid_reused key=v pid={free_pid} " in agent.log(),
                 timeout=15, what="the late pid refused at the next refresh")  # fmt: skip
        _untouched(stranger)
        _untouched(keeper)


# --- 2. zombies --------------------------------------------------------------------------------


def _zombie(children: Children, tmp_path: pathlib.Path) -> Child:
    """A child that exited and that we do not reap (its Popen keeps it a zombie)."""
    child = children.spawn(allocate_mib=4)
    child.popen.send_signal(signal.SIGKILL)  # ours and not reaped: the pid is still its own
    stat = pathlib.Path(f"/proc/{child.pid}/stat")
    wait_for(lambda: stat.read_bytes().rsplit(b")", 1)[1][1:2] == b"Z", timeout=10, what="zombie")
    return child


def test_a_zombie_does_not_hold_up_the_floor(tmp_path: pathlib.Path, children: Children) -> None:
    zombie = _zombie(children, tmp_path)
    real = children.spawn(allocate_mib=16, signal_log=tmp_path / "real")
    config = tmp_path / "agent.toml"
    _config(config, [_target("z", zombie.pid, "high"), _target("real", real.pid, "batch")])
    with _agent(config, tmp_path, "agent.log") as agent:
        wait_for(lambda: "reason=floor" in agent.log(), timeout=15, what="the floor skip")
        _untouched(real)
        assert not _stops(agent, real.pid) and not _stops(agent, zombie.pid)


def test_a_stopped_target_left_a_zombie_keeps_its_block(
    tmp_path: pathlib.Path, children: Children
) -> None:
    victim = children.spawn(allocate_mib=16)  # we never reap it: it stays a zombie
    keeper = children.spawn(allocate_mib=8, signal_log=tmp_path / "keeper")
    config = tmp_path / "agent.toml"
    _config(config, [_target("v", victim.pid, "batch"), _target("keeper", keeper.pid, "high")])
    with _agent(config, tmp_path, "agent.log") as agent:
        wait_for(lambda: _stops(agent, victim.pid), timeout=15, what="the eviction")
        wait_for(lambda: "reason=floor" in agent.log(), timeout=15, what="the floor skip after")
        assert len(_stops(agent, victim.pid)) == 1, _stops(agent, victim.pid)
        blocks = json.loads((tmp_path / "state" / "respawn-blocks.json").read_text())
        assert "v" in blocks["blocked"], blocks
        _untouched(keeper)


# --- 3. discovery that matches everything ------------------------------------------------------


@pytest.mark.parametrize("pattern", ["", ".*", "x|", "a{99999999999}", "("])
def test_discover_patterns_that_cannot_be_meant_exit_2(pattern: str) -> None:
    r = run_agent(["--discover", pattern])
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--discover" in lines[0] and "Traceback" not in r.stderr


def test_config_discovery_empty_pattern_exits_2(tmp_path: pathlib.Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[discovery]\npattern = ""\n')
    r = run_agent(["--config", str(config)])
    assert r.returncode == 2 and "discovery.pattern" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_discovery_over_its_cap_is_refused(tmp_path: pathlib.Path, children: Children) -> None:
    for _ in range(3):
        children.spawn(args=["--alias", "capped-model"])
    config = tmp_path / "agent.toml"
    config.write_text('[discovery]\npattern = "python"\nmax_matches = 2\n')
    r = run_agent(["--config", str(config)])
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert "--discover" in line and "more than the cap of 2" in line, r.stderr


# --- 4. Kubernetes metadata not read yet --------------------------------------------------------

kubefake = pytest.importorskip("tests.kubefake")


def _isvc(fake: object, name: str, spec: dict[str, object]) -> None:
    fake.create(  # type: ignore[attr-defined]
        {
            "apiVersion": "inference.llmkube.dev/v1alpha1",
            "kind": "InferenceService",
            "metadata": {"name": name, "namespace": "llm"},
            "spec": {"modelRef": "m", **spec},
        }
    )


def _kube_agent(tmp: pathlib.Path, fake: object, targets: Sequence[str]) -> AgentProcess:
    config = tmp / "agent.toml"
    _config(config, targets)
    kubeconfig = fake.write_kubeconfig(tmp / "kubeconfig", namespace="llm")  # type: ignore[attr-defined]
    args = [
        "--eviction-enabled", "--memory-watchdog-interval", "100ms", "--config", str(config),
        "--kubeconfig", str(kubeconfig), "--state-dir", str(tmp / "state"),
    ]  # fmt: skip
    return AgentProcess(args, tmp / "agent.log", kube=True)


def test_a_protected_object_is_not_stopped_on_the_first_critical_tick(
    tmp_path: pathlib.Path, children: Children
) -> None:
    chat = children.spawn(allocate_mib=16, signal_log=tmp_path / "chat")
    keeper = children.spawn(allocate_mib=8, signal_log=tmp_path / "keeper")
    targets = [
        _target("chat", chat.pid, "batch", 'namespace = "llm"'),
        _target("keeper", keeper.pid, "high", "protected = true"),
    ]
    with kubefake.FakeKube() as fake:
        _isvc(fake, "chat", {"evictionProtection": True})
        with _kube_agent(tmp_path, fake, targets) as agent:
            wait_for(lambda: "reason=all_protected" in agent.log(), timeout=20,
                     what="all protected, once the object was read")  # fmt: skip
            assert not fake.get("llm", "chat")["spec"].get("suspend")
        _untouched(chat)
        _untouched(keeper)


def test_an_object_priority_is_known_before_anything_is_ranked(
    tmp_path: pathlib.Path, children: Children
) -> None:
    chat = children.spawn(allocate_mib=16, signal_log=tmp_path / "chat")
    keeper = children.spawn(allocate_mib=8)
    targets = [
        _target("chat", chat.pid, "batch", 'namespace = "llm"'),
        _target("keeper", keeper.pid, "normal"),
    ]
    with kubefake.FakeKube() as fake:
        _isvc(fake, "chat", {"priority": "critical"})
        with _kube_agent(tmp_path, fake, targets) as agent:
            # The object says critical: the local batch must never have been acted on.
            wait_for(lambda: _stops(agent, keeper.pid), timeout=20, what="keeper evicted")
            assert not fake.get("llm", "chat")["spec"].get("suspend")
            assert not _stops(agent, chat.pid)
        _untouched(chat)


# --- 5. [eviction] grace, booleans --------------------------------------------------------------


def test_eviction_grace_applies_to_targets_without_their_own(
    tmp_path: pathlib.Path, children: Children
) -> None:
    stubborn = children.spawn(allocate_mib=16, ignore_term=True)
    keeper = children.spawn(allocate_mib=8)
    config = tmp_path / "agent.toml"
    _config(
        config,
        [_target("stubborn", stubborn.pid, "batch"), _target("keeper", keeper.pid, "high")],
        eviction='grace = "1s"',
    )
    with _agent(config, tmp_path, "agent.log") as agent:
        wait_for(lambda: _stops(agent, stubborn.pid), timeout=20, what="the forced stop")
        line = _stops(agent, stubborn.pid)[0]
        assert "result=killed" in line and "still running after 1 s; SIGKILL" in line, line


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[discovery]\npattern = "llama-server"\nenabled = "false"\n', "discovery.enabled"),
        ("[agent]\ninterval = 1e300\n", "agent.interval"),
        ('[agent]\ninterval = "600h"\n', "agent.interval"),
        ("[agent]\ninterval = nan\n", "agent.interval"),
        ('[[target]]\nname = "x"\npid = 4242\ngrace = "600h"\n', "grace"),
        ('[eviction]\ngrace = "2h"\n', "grace"),
        ("[pressure]\nhard_signals = true\n", "hard_signals"),
    ],
)
def test_config_values_of_the_wrong_type_or_size_exit_2(
    tmp_path: pathlib.Path, text: str, key: str
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(text)
    r = run_agent(["--config", str(config)])
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0] and "Traceback" not in r.stderr, r.stderr


# --- 6. durations that overflow, a loop that dies -----------------------------------------------


def test_an_interval_past_the_bound_exits_2() -> None:
    r = run_agent(["--memory-watchdog-interval", "600h"])
    assert r.returncode == 2 and "--memory-watchdog-interval" in r.stderr, r.stderr
    assert "3600" in r.stderr


def _healthz_or_gone(agent: AgentProcess) -> int | None:
    try:
        return agent.get("/healthz")[0]
    except OSError:
        return None


def test_a_dead_loop_fails_healthz_and_exits_1(tmp_path: pathlib.Path) -> None:
    args = ["--memory-watchdog-interval", "100ms"]
    agent = AgentProcess(args, tmp_path / "agent.log")
    try:
        wait_for(lambda: agent.get("/healthz")[0] == 200, timeout=10, what="healthy")
        agent.signal(signal.SIGUSR2)  # test hook: the next tick raises, as a bug would
        # The main thread is woken by the loop's death, so the agent may be gone between
        # poll() and the request: a refused connection is "gone" too.
        wait_for(lambda: agent.proc.poll() is not None or _healthz_or_gone(agent) == 503,
                 timeout=10, what="unhealthy or gone")  # fmt: skip
        assert agent.proc.wait(timeout=10) == 1
        assert "event=loop_died" in agent.log() and "event=exit reason=loop_died" in agent.log()
    finally:
        agent.stop()


# --- also found ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    ['{"blocked": {"x": 5}}', "null", "true", "[" * 100_000 + "]" * 100_000, "{not json"],
)
def test_a_bad_state_file_is_moved_aside_with_one_error(
    tmp_path: pathlib.Path, content: str
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "respawn-blocks.json").write_text(content)
    with AgentProcess(["--state-dir", str(state)], tmp_path / "agent.log") as agent:
        wait_for(lambda: agent.get("/readyz")[0] == 200, timeout=10, what="ready")
        errors = [line for line in agent.log().splitlines() if " ERROR " in line]
        assert len(errors) == 1 and "event=state_file_invalid" in errors[0], errors
        assert "Traceback" not in agent.log()
    aside = list(state.glob("respawn-blocks.json.bad-*"))
    assert len(aside) == 1 and aside[0].read_text() == content


def test_no_skip_is_recorded_while_only_the_hold_keeps_critical(
    tmp_path: pathlib.Path, children: Children
) -> None:
    only = children.spawn(allocate_mib=8)
    config = tmp_path / "agent.toml"
    _config(config, [_target("only", only.pid, "batch")])
    with _agent(config, tmp_path, "agent.log") as agent:
        wait_for(lambda: "reason=floor" in agent.log(), timeout=15, what="the floor skip")
        _config(config, [_target("only", only.pid, "batch")], CALM)  # recovered; 30 s hold
        agent.signal(signal.SIGHUP)
        wait_for(lambda: "event=config_reloaded" in agent.log(), timeout=10, what="reload")
        mark = len(agent.log())
        wait_for(lambda: agent.memstats()["assessment"]["raw_level"] == "NORMAL", timeout=10,
                 what="raw NORMAL")  # fmt: skip
        doc = agent.memstats()
        assert doc["assessment"]["level"] == "CRITICAL"  # held by hysteresis
        seq = doc["seq"]
        wait_for(lambda: agent.memstats()["seq"] >= seq + 10, timeout=10, what="ten ticks")
        assert "event=eviction_skipped" not in agent.log()[mark:]
