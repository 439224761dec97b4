"""The agent's config file: every section maps into validated library objects; every error
names the file, the key and the line."""

from __future__ import annotations

import pathlib

import pytest

from metalmem.configfile import ConfigError, load_config, parse_config
from metalmem.eviction import EvictionMode
from metalmem.targets import Priority

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "deploy" / "metalmem.toml"


def test_the_example_config_loads_as_is() -> None:
    cfg = load_config(str(EXAMPLE))
    assert cfg.pressure.warning_available == 0.20 and cfg.pressure.transition_period == 30.0
    assert cfg.eviction.mode == EvictionMode.DRY_RUN
    assert cfg.eviction.window == 600.0 and cfg.eviction.min_reclaim == 256 << 20
    assert [s.key for s in cfg.targets] == ["llm/chat", "batch-embeddings"]
    assert cfg.targets[0].priority == Priority.HIGH and cfg.targets[0].budget == 40 << 30
    assert cfg.targets[1].stop.grace == 5.0 and cfg.targets[1].stop.process_group
    assert cfg.discover == "llama-server"


def test_an_empty_file_gives_the_defaults() -> None:
    cfg = parse_config("")
    assert cfg.eviction.mode == EvictionMode.OBSERVE and cfg.targets == ()
    assert cfg.discover is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[pressure]\nwarning_available = 0.2\nbogus = 1\n",
            "x.toml:3: unknown key pressure.bogus",
        ),
        ("[eviction]\n\nmode = 'enforce'\nfloor2 = 1\n", "x.toml:4: unknown key eviction.floor2"),
        ("colour = 'red'\n", "x.toml:1: unknown key colour"),
        ("[discovery]\nregex = 'x'\n", "x.toml:2: unknown key discovery.regex"),
        ("[[target]]\nname = 'a'\npid = 5\nfoo = 1\n", "x.toml:4: target[0]: unknown key 'foo'"),
        ("[pressure]\ntransition_period = 'soon'\n", "x.toml:2: pressure.transition_period"),
        (
            "[pressure]\nwarning_available = 0.1\ncritical_available = 0.2\n",
            "x.toml: [pressure]: PressurePolicy.critical_available",
        ),
        ("[eviction]\nmode = 'yolo'\n", "x.toml: [eviction]:"),
        ("[eviction]\nmin_reclaim = 'lots'\n", "x.toml:2: eviction.min_reclaim"),
        ("[discovery]\npattern = '('\n", "x.toml:2: discovery.pattern"),
        ("[pressure\n", "x.toml: not valid TOML"),
        (
            "[eviction]\ngrace = 1\n[[target]]\nname = 'a'\npid = 5\n[[target]]\nname = 'b'\n"
            "pid = 6\ngrace = -1\n",
            "x.toml:9: target[1]: grace",
        ),
        ("pressure = 3\n", "x.toml:1: [pressure] must be a table"),
    ],
)
def test_errors_name_the_file_key_and_line(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "x.toml")
    message = str(info.value)
    assert message.startswith(expected), message
    assert "\n" not in message


def test_an_unreadable_file_is_a_config_error(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "missing.toml"))
    bad = tmp_path / "bin.toml"
    bad.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(bad))


def test_false_turns_an_optional_signal_off_and_required_keys_refuse_it() -> None:
    c = parse_config("[pressure]\nwarning_psi_some_pct = false\ncritical_forecast = false\n")
    assert c.pressure.warning_psi_some_pct is None and c.pressure.critical_forecast is None
    with pytest.raises(ConfigError, match="warning_available"):
        parse_config("[pressure]\nwarning_available = false\n")


def test_agent_and_kube_sections_are_kept_with_their_lines() -> None:
    text = '[agent]\ninterval = "5s"\n\n[kube]\nenabled = true\n'
    c = parse_config(text, "a.toml")
    assert c.agent == {"interval": "5s"} and c.kube == {"enabled": True}
    assert c.given == {"agent.interval", "kube.enabled"}
    assert c.where["kube.enabled"] == "a.toml:5"
    with pytest.raises(ConfigError, match=r"a.toml:2: unknown key agent.intervl"):
        parse_config('[agent]\nintervl = "5s"\n', "a.toml")


def test_an_agent_config_from_the_file_names_the_line_of_a_bad_value(
    tmp_path: pathlib.Path,
) -> None:
    import metalmem

    c = metalmem.AgentConfig.from_file(str(EXAMPLE))
    assert c.listen == ("127.0.0.1", 9438) and c.discover == "llama-server"
    assert c.eviction.mode == EvictionMode.DRY_RUN and c.kube is False
    bad = tmp_path / "bad.toml"
    bad.write_text('[agent]\nscope = "host"\n\nlisten = "nowhere"\n')
    with pytest.raises(ConfigError) as info:
        metalmem.AgentConfig.from_file(str(bad))
    assert str(info.value).startswith(f"{bad}:4: agent.listen: "), info.value
    assert info.value.key == "agent.listen"
