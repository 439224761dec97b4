"""deploy/: the example config is accepted by `run` as is; the service files say what they must."""

from __future__ import annotations

import configparser
import os
import pathlib
import plistlib
from typing import Any

import pytest
from metalmem_cli.agent import resolve_settings, run
from metalmem_cli.config import load_config

from metalmem.eviction import EvictionMode

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


def test_the_launchd_plist_keeps_the_agent_alive_and_unthrottled() -> None:
    with open(DEPLOY / "launchd" / "io.metalmem.agent.plist", "rb") as f:
        plist = plistlib.load(f)
    assert plist["KeepAlive"] is True and plist["RunAtLoad"] is True
    assert plist["ProcessType"] == "Interactive"
    assert plist["ProgramArguments"][1] == "run"
    assert plist["StandardErrorPath"] and plist["StandardOutPath"]
    # Long enough for an eviction's default grace (10 s) to finish before launchd kills it.
    assert plist["ExitTimeOut"] >= 10


def test_the_systemd_unit_shields_the_agent_from_the_oom_killer() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(DEPLOY / "systemd" / "metalmem.service")
    service = unit["Service"]
    assert service["OOMScoreAdjust"] == "-900"
    assert service["ExecStart"].split()[1] == "run"
    assert "HUP" in service["ExecReload"]
    assert service["Restart"] == "always"
    assert int(service["TimeoutStopSec"]) >= 10


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
