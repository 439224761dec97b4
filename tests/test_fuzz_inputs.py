"""Issue 13: no input ends in a traceback. Hypothesis feeds the config loader, `run` and every
other command random values of every type where an operator can type one; each case must end
in exit 0, 1 or 2 with no Python exception escaping (and never a traceback in the output).

The commands run in-process through click's CliRunner, against the real host. `run` is given a
port that is already taken, so a config that is valid builds the whole agent and then stops at
the bind with exit 2: nothing is ever started, sampled in a loop or signalled. Paths the agent
would write to (state dir, record file) are drawn from a few safe choices under a temporary
directory, never at random.
"""

from __future__ import annotations

import http.server
import json
import math
import pathlib
import socket
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from metalmem_cli.main import main

from metalmem.configfile import ConfigError, parse_config

CASES: dict[str, int] = {}  # cases run per test, for the report

# --- a TOML writer (tomllib only reads) ---------------------------------------------------------


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON's escapes are TOML basic-string escapes
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"


SCALARS = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(
        [
            "",
            "0",
            "2s",
            "500ms",
            "1e300",
            "600h",
            "99999999999h",
            "-1s",
            "nan",
            "inf",
            "1.5m",
            "12GiB",
            "-5",
            "a{99999999999}",
            "(",
            ".*",
            "llama-server",
            "batch",
            "critical",
            "SIGTERM",
            "SIGKILL",
            "memory.available",
            "host",
            "127.0.0.1:0",
        ]
    ),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)

SECTION_KEYS = {
    "pressure": [
        "warning_available", "critical_available", "warning_gpu_headroom", "warning_psi_some_pct",
        "critical_swapout_rate", "warning_forecast", "forecast_window", "soft_grace",
        "transition_period", "margin", "hard_signals",
    ],
    "eviction": [
        "mode", "min_managed_share", "floor", "grace", "cooldown", "max_evictions", "window",
        "min_reclaim", "settle_timeout", "settle_share",
    ],
    "discovery": ["pattern", "enabled", "max_matches"],
    "agent": ["interval", "log_format", "log_level", "scope"],
}  # fmt: skip
TARGET_KEYS = [
    "name", "namespace", "pid", "pidfile", "cmdline", "priority", "protected", "budget",
    "stop_signal", "grace", "process_group", "stop_command", "unknown_key",
]  # fmt: skip


@st.composite
def config_texts(draw: st.DrawFn) -> str:
    lines: list[str] = []
    for section, keys in SECTION_KEYS.items():
        if not draw(st.booleans()):
            continue
        lines.append(f"[{section}]")
        for key in draw(st.lists(st.sampled_from([*keys, "bogus"]), max_size=4, unique=True)):
            lines.append(f"{key} = {_toml(draw(VALUES))}")
    for _ in range(draw(st.integers(0, 2))):
        lines.append("[[target]]")
        keys = draw(st.lists(st.sampled_from(TARGET_KEYS), max_size=5, unique=True))
        for key in ["name", *keys] if draw(st.booleans()) else keys:
            lines.append(f"{key} = {_toml(draw(VALUES))}")
    if draw(st.integers(0, 9)) == 0:
        lines.append(draw(st.text(max_size=20)))  # not TOML at all, sometimes
    return "\n".join(lines) + "\n"


FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@FUZZ
@given(text=config_texts())
def test_the_config_loader_never_raises_anything_but_config_error(text: str) -> None:
    CASES["config loader"] = CASES.get("config loader", 0) + 1
    try:
        parse_config(text, "fuzz.toml")
    except ConfigError as exc:
        message = str(exc)
        assert message.startswith("fuzz.toml") and "\n" not in message, message


# --- commands -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def busy_port() -> Iterator[int]:
    """A port that is bound and listening: `run` with it builds everything, then exits 2."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        yield s.getsockname()[1]


@pytest.fixture(scope="module")
def workdir() -> Iterator[pathlib.Path]:
    with tempfile.TemporaryDirectory() as tmp:
        yield pathlib.Path(tmp)


def _invoke(args: list[str]) -> None:
    result = CliRunner().invoke(main, args, catch_exceptions=True)
    output = result.output
    assert result.exit_code in (0, 1, 2), (args, result.exit_code, output)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        args, repr(result.exception), output,
    )  # fmt: skip
    assert "Traceback" not in output, (args, output)
    if result.exit_code == 2:
        errors = [line for line in output.splitlines() if "error" in line.lower()]
        assert len(errors) <= 1, (args, output)


@FUZZ
@given(text=config_texts(), interval=st.one_of(st.none(), SCALARS.map(str)))
def test_run_with_any_config_exits_cleanly(
    busy_port: int, workdir: pathlib.Path, text: str, interval: str | None
) -> None:
    CASES["run"] = CASES.get("run", 0) + 1
    config = workdir / "run.toml"
    config.write_text(text)
    args = [
        "run", "--no-kube", "--listen", f"127.0.0.1:{busy_port}", "--config", str(config),
        "--state-dir", str(workdir / "state"),
    ]  # fmt: skip
    if interval is not None:
        args += ["--memory-watchdog-interval", interval]
    _invoke(args)


TOKENS = st.one_of(
    SCALARS.map(str),
    st.sampled_from(["4294967297", "999999", "-1", "0", "1", "/", "/proc", "/nonexistent", "x"]),
)


@FUZZ
@given(data=st.data())
def test_every_command_with_any_input_exits_cleanly(
    workdir: pathlib.Path, json_server: str, data: st.DataObject
) -> None:
    CASES["commands"] = CASES.get("commands", 0) + 1
    command = data.draw(
        st.sampled_from(["snapshot", "record", "replay", "status", "explain", "doctor"])
    )
    token = data.draw(TOKENS)
    flag = data.draw(st.booleans())
    if command == "snapshot":
        args = ["snapshot", "--pid", token, *(["--json"] if flag else [])]
        if data.draw(st.booleans()):
            args += ["--scope", data.draw(TOKENS)]
    elif command == "record":
        args = ["record", "--count", "1", "--interval", token, "-o", str(workdir / "rec.jsonl")]
    elif command == "replay":
        lines = data.draw(st.lists(VALUES.map(json.dumps) | st.text(max_size=30), max_size=4))
        recording = workdir / "replay.jsonl"
        recording.write_text("\n".join(lines) + "\n")
        args = ["replay", str(recording), *(["--interval", token] if flag else [])]
    elif command == "status":
        url = data.draw(st.sampled_from([json_server, token, "http://127.0.0.1:1", "http://[::1"]))
        args = ["status", "--url", url, *(["--json"] if flag else [])]
    else:
        args = [command, "--discover", token, *(["--json"] if flag else [])]
    _invoke(args)


@pytest.fixture(scope="module")
def json_server() -> Iterator[str]:
    """A server whose every answer is some JSON that is not a /memstats document."""
    bodies = [b"[]", b"null", b'{"assessment": 5}', b'{"system": {"total": "x"}}', b"{}",
              b'{"processes": {"a": 1}}', b'{"evictions": [1, 2]}', b"not json"]  # fmt: skip
    count = [0]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = bodies[count[0] % len(bodies)]
            count[0] += 1
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_report_how_many_cases_ran() -> None:
    """Runs after the fuzz tests in file order: says how many cases each ran."""
    if CASES:
        print("\nfuzz cases: " + ", ".join(f"{k} {v}" for k, v in CASES.items()))
