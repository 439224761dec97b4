"""deploy/: the example config is accepted by `run` as is; the service files say what they must."""

from __future__ import annotations

import configparser
import pathlib
import plistlib

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
