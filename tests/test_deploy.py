"""deploy/: the example config is accepted by `run` as is; the service files say what they must."""

from __future__ import annotations

import configparser
import os
import pathlib
import plistlib
import re
import shutil
import subprocess
import sys
from typing import Any

import pytest
from metalmem_cli.agent import resolve_settings, run

from metalmem.configfile import load_config
from metalmem.eviction import EvictionMode

from .helpers import Children, has_exited, wait_for

DEPLOY = pathlib.Path(__file__).resolve().parent.parent / "deploy"


def test_the_example_config_is_what_run_accepts() -> None:
    path = str(DEPLOY / "metalmem.toml")
    ctx = run.make_context("run", ["--config", path])
    settings = resolve_settings(ctx, ctx.params, load_config(path))
    assert settings.listen == ("127.0.0.1", 9438)
    assert settings.interval == 2.0
    assert settings.eviction.mode is EvictionMode.DRY_RUN
    assert [t.name for t in settings.targets] == ["chat", "batch-embeddings"]
    assert settings.discover == "llama-server"
    assert settings.kube is False


PLIST = DEPLOY / "launchd" / "io.metalmem.agent.plist"
UNIT = DEPLOY / "systemd" / "metalmem.service"

# launchd.plist(5): the top-level keys and KeepAlive's condition keys it documents.
LAUNCHD_KEYS = frozenset(
    {"Label", "Disabled", "UserName", "GroupName", "inetdCompatibility", "LimitLoadToHosts",
     "LimitLoadFromHosts", "LimitLoadToSessionType", "AssociatedBundleIdentifiers", "Program",
     "ProgramArguments", "EnableGlobbing", "EnableTransactions", "EnablePressuredExit",
     "OnDemand", "ServiceIPC", "KeepAlive", "RunAtLoad", "RootDirectory", "WorkingDirectory",
     "EnvironmentVariables", "Umask", "TimeOut", "ExitTimeOut", "ThrottleInterval",
     "InitGroups", "WatchPaths", "QueueDirectories", "StartOnMount", "StartInterval",
     "StartCalendarInterval", "StandardInPath", "StandardOutPath", "StandardErrorPath", "Debug",
     "WaitForDebugger", "SoftResourceLimits", "HardResourceLimits", "Nice", "ProcessType",
     "AbandonProcessGroup", "LowPriorityIO", "LowPriorityBackgroundIO", "MaterializeDatalessFiles",
     "LaunchOnlyOnce", "MachServices", "Sockets", "LaunchEvents", "SessionCreate",
     "LegacyTimers"}
)  # fmt: skip
KEEPALIVE_KEYS = frozenset(
    {"SuccessfulExit", "NetworkState", "PathState", "OtherJobEnabled", "Crashed",
     "AfterInitialCompletion"}
)  # fmt: skip
# Directories on every Mac, Apple Silicon and Intel alike (/usr/local/bin is not one).
MAC_DIRS = frozenset({"/Library/Logs", "/Library/Application Support", "/etc", "/usr/bin"})


def _plist_install_dirs(text: str) -> set[str]:
    """The directories the plist's install steps create (``sudo mkdir -p A B``)."""
    made: set[str] = set()
    for line in text.splitlines():
        words = line.split()
        if words[:3] == ["sudo", "mkdir", "-p"]:
            made.update(words[3:])
    return made


def test_the_launchd_plist_keeps_the_agent_alive_and_unthrottled() -> None:
    with open(PLIST, "rb") as f:
        plist = plistlib.load(f)
    assert set(plist) <= LAUNCHD_KEYS, set(plist) - LAUNCHD_KEYS
    assert plist["RunAtLoad"] is True
    assert plist["ProcessType"] == "Interactive"
    assert plist["ProgramArguments"][1] == "run"
    # Long enough for an eviction's default grace (10 s) to finish before launchd kills it.
    assert plist["ExitTimeOut"] >= 10


def test_the_launchd_plist_restarts_a_crash_but_not_a_bad_config() -> None:
    with open(PLIST, "rb") as f:
        keep = plistlib.load(f)["KeepAlive"]
    # A dict of documented conditions: True (or SuccessfulExit=false) would restart exit 2
    # every ThrottleInterval; launchd has no per-status rule.
    assert isinstance(keep, dict) and set(keep) <= KEEPALIVE_KEYS, keep
    assert keep.get("Crashed") is True
    assert keep.get("SuccessfulExit") is not False


def test_the_launchd_paths_exist_on_apple_silicon_and_intel() -> None:
    text = PLIST.read_text()
    with open(PLIST, "rb") as f:
        plist = plistlib.load(f)
    made = _plist_install_dirs(text)
    assert "/usr/local/bin" in made  # absent on a fresh Apple Silicon Mac
    args = plist["ProgramArguments"]
    for path in (args[0], args[args.index("--config") + 1]):
        assert os.path.dirname(path) in made, path
    assert f'ln -sf "$(command -v metalmem-agent)" {args[0]}' in text
    # launchd opens the log itself and does not create its directory.
    for key in ("StandardOutPath", "StandardErrorPath"):
        assert os.path.dirname(plist[key]) in MAC_DIRS, plist[key]
    # The agent makes its state directory (parents included) at start.
    state = args[args.index("--state-dir") + 1]
    assert os.path.dirname(state) in MAC_DIRS
    for path in (*args, plist["StandardOutPath"]):
        assert not path.startswith(("/usr/local/etc", "/usr/local/var", "/opt/homebrew")), path


def _unit() -> configparser.SectionProxy:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(UNIT)
    return unit["Service"]


def test_the_systemd_unit_shields_the_agent_from_the_oom_killer() -> None:
    service = _unit()
    assert service["OOMScoreAdjust"] == "-900"
    assert service["ExecStart"].split()[1] == "run"
    assert "HUP" in service["ExecReload"]
    assert int(service["TimeoutStopSec"]) >= 10


def test_the_systemd_unit_is_notify_with_a_watchdog_and_no_restart_on_bad_input() -> None:
    service = _unit()
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert int(service["WatchdogSec"]) >= 10  # > HEALTH_FACTOR x the default 2 s interval
    assert service["Restart"] == "always"
    assert service["RestartPreventExitStatus"].split() == ["2"]  # EXIT_USAGE
    assert set(service["CapabilityBoundingSet"].split()) == {
        "CAP_KILL",
        "CAP_SYS_PTRACE",
        "CAP_DAC_READ_SEARCH",
    }


SECURITY_SCORE = 2.6  # systemd-analyze security, systemd 252 (Debian 12); was 9.0 UNSAFE


@pytest.fixture
def unit_copy(tmp_path: pathlib.Path) -> pathlib.Path:
    """The shipped unit with ExecStart pointing at this checkout's metalmem-agent (verify
    checks that the binary exists); nothing else changed."""
    agent = shutil.which("metalmem-agent", path=os.path.dirname(sys.executable))
    assert agent is not None
    text = UNIT.read_text().replace("/usr/local/bin/metalmem-agent", agent)
    copy = tmp_path / "metalmem.service"
    copy.write_text(text)
    return copy


def _systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze not installed (Debian package systemd; `make test` as root)")
    return path


def test_systemd_analyze_verify_accepts_the_unit(unit_copy: pathlib.Path) -> None:
    r = subprocess.run(
        [_systemd_analyze(), "verify", str(unit_copy)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "metalmem.service" not in r.stderr, r.stderr  # no warning names our unit


def test_systemd_analyze_security_rates_the_unit_ok(unit_copy: pathlib.Path) -> None:
    # --offline=true reviews the file itself: no running systemd (PID 1) is needed.
    argv = [_systemd_analyze(), "security", "--offline=true", "--no-pager"]
    r = subprocess.run([*argv, str(unit_copy)], capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for metalmem\.service: (\d+\.\d) (\w+)", r.stdout)
    assert match, r.stdout + r.stderr
    assert float(match.group(1)) <= SECURITY_SCORE and match.group(2) == "OK", match.group(0)
    # --threshold counts tenths: the same bound, as systemd's exit status.
    gate = [*argv, f"--threshold={round(SECURITY_SCORE * 10)}", str(unit_copy)]
    assert subprocess.run(gate, capture_output=True, timeout=60).returncode == 0


def test_defaults_without_flags_env_or_file(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in os.environ if k.startswith("METALMEM_")]:
        monkeypatch.delenv(name)
    ctx = run.make_context("run", [])
    settings = resolve_settings(ctx, ctx.params, None)
    assert settings.listen == ("127.0.0.1", 9438)
    assert settings.interval == 2.0 and settings.scope == "host"
    assert settings.eviction.mode is EvictionMode.OBSERVE
    assert (settings.pressure.warning_available, settings.pressure.critical_available) == (
        0.20,
        0.10,
    )
    assert (settings.log_format, settings.log_level, settings.kube) == ("text", "info", None)


def test_precedence_flag_over_env_over_file_over_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    path = tmp_path / "a.toml"
    path.write_text('[agent]\ninterval = "5s"\nlisten = "0.0.0.0:9500"\n\n[pressure]\n'
                    'warning_available = 0.3\n')  # fmt: skip
    config = load_config(str(path))

    def resolve(args: list[str], env: dict[str, str]) -> Any:
        for k in [k for k in os.environ if k.startswith("METALMEM_")]:
            monkeypatch.delenv(k)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        ctx = run.make_context("run", args)
        return resolve_settings(ctx, ctx.params, config)

    s = resolve([], {})
    assert (s.interval, s.listen, s.pressure.warning_available) == (5.0, ("0.0.0.0", 9500), 0.3)
    s = resolve([], {"METALMEM_MEMORY_WATCHDOG_INTERVAL": "3s", "METALMEM_LISTEN": "[::1]:1"})
    assert (s.interval, s.listen) == (3.0, ("::1", 1))
    s = resolve(
        ["--memory-watchdog-interval", "1s", "--memory-pressure-warning", "0.4"],
        {"METALMEM_MEMORY_WATCHDOG_INTERVAL": "3s", "METALMEM_MEMORY_PRESSURE_WARNING": "0.35"},
    )
    assert (s.interval, s.pressure.warning_available) == (1.0, 0.4)
    s = resolve([], {"METALMEM_MEMORY_PRESSURE_WARNING": "0.35"})
    assert s.pressure.warning_available == 0.35
    s = resolve(["--eviction-enabled", "--dry-run"], {})
    assert s.eviction.mode is EvictionMode.DRY_RUN
    s = resolve([], {"METALMEM_EVICTION_ENABLED": "1"})
    assert s.eviction.mode is EvictionMode.ENFORCE


_STOP = """
import sys, metalmem
from metalmem.targets import TargetSpec, TargetTracker
with metalmem.Sampler() as s:
    (t,) = TargetTracker(s, [TargetSpec(name="victim", pid=int(sys.argv[1]))]).refresh().targets
    print(metalmem.stop(t, sampler=s).result.value)
"""


def _as_nobody(caps: str | None, *argv: str) -> subprocess.CompletedProcess[str]:
    extra = [f"--inh-caps={caps}", f"--ambient-caps={caps}"] if caps else []
    setpriv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *extra]
    return subprocess.run([*setpriv, *argv], capture_output=True, text=True, timeout=60)


def test_the_units_capabilities_let_an_unprivileged_agent_stop_a_root_process(
    children: Children,
) -> None:
    """What DynamicUser + AmbientCapabilities give the agent, reproduced with setpriv: the
    bounding set of the shipped unit is enough to stop another user's process (and without it
    the stop is denied), so the sandbox does not silently disarm eviction."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv (util-linux) to run as another user")
    if _as_nobody(None, sys.executable, "-c", "import metalmem").returncode != 0:
        pytest.skip("this checkout is not readable by the nobody user")
    names = _unit()["CapabilityBoundingSet"].split()
    caps = ",".join("+" + n.removeprefix("CAP_").lower() for n in names)
    victim = children.spawn()
    denied = _as_nobody(None, sys.executable, "-c", _STOP, str(victim.pid))
    assert denied.stdout.strip() == "denied", denied.stdout + denied.stderr
    assert not has_exited(victim.pid)
    stopped = _as_nobody(caps, sys.executable, "-c", _STOP, str(victim.pid))
    assert stopped.stdout.strip() == "terminated", stopped.stdout + stopped.stderr
    wait_for(lambda: has_exited(victim.pid), timeout=10, what="the victim's exit")
