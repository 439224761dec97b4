"""The non-run commands' rough edges (issue 18): every bad input exits 2 with one line and no
traceback, `record` shows progress only on a terminal, unmatched targets are named, and the
thresholds in force are shown."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import pathlib
import pty
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from .agentproc import AGENT, AgentProcess
from .helpers import Children, wait_for
from .test_server import VALIDATOR

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux /proc")

NOWHERE = "metalmem-no-such-process-pattern-e1f2"


def agent_cli(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # type: ignore[call-overload,no-any-return]
        [AGENT, *args], capture_output=True, text=True, timeout=60, **kw
    )


def assert_one_line_usage_error(r: subprocess.CompletedProcess[str], *names: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("metalmem-agent: error: "), r.stderr
    assert "Traceback" not in r.stderr
    for name in names:
        assert name in lines[0], (name, lines[0])


@pytest.mark.parametrize(
    ("args", "names"),
    [
        ((), ("missing command", "--help")),
        (("explain", "--discover", "("), ("--discover", "'('")),
        (("snapshot", "--pid", "4294967297"), ("--pid", "4294967297")),
        (("snapshot", "--pid", "2147483647"), ("--pid", "no such process")),
        (("record", "--interval", "99999999999h"), ("--interval", "99999999999h")),
        (("record", "--interval", "9" * 400), ("--interval",)),
        (("status", "--url", "ftp://example.invalid"), ("--url",)),
        (("status", "--url", "http://[::1"), ("--url",)),
        (("status", "--url", "http://127.0.0.1:99999"), ("--url", "99999")),
        (("status", "--url", "http://"), ("--url",)),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, tuple) else None,
)
def test_bad_input_exits_2_with_one_line(args: tuple[str, ...], names: tuple[str, ...]) -> None:
    assert_one_line_usage_error(agent_cli(*args), *names)


class _Answer(http.server.BaseHTTPRequestHandler):
    """Answers every GET with the status and body of the server it belongs to."""

    def do_GET(self) -> None:
        status, body = self.server.answer  # type: ignore[attr-defined]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def other_server() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, b'{"hello": "world"}'),
        (200, b"[1, 2, 3]"),
        (200, b"<html>not json</html>"),
        (200, b'{"schema_version": 1, "system": 5, "processes": [1]}'),
        (404, b"not found"),
    ],
)
def test_status_of_a_server_that_is_not_an_agent_exits_2(
    other_server: http.server.HTTPServer, status: int, body: bytes
) -> None:
    other_server.answer = (status, body)  # type: ignore[attr-defined]
    url = f"http://127.0.0.1:{other_server.server_address[1]}"
    assert_one_line_usage_error(agent_cli("status", "--url", url), "--url")


def test_snapshot_of_a_pid_that_exists_still_works() -> None:
    r = agent_cli("snapshot", "--pid", str(os.getpid()), "--json")
    assert r.returncode == 0, r.stderr
    assert str(os.getpid()) in json.loads(r.stdout)["processes"]


def test_record_shows_progress_on_a_terminal(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "rec.jsonl"
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(
            [AGENT, "record", "--count", "3", "--interval", "50ms", "-o", str(out)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=follower,
        )
        os.close(follower)
        follower = -1
        seen = b""
        while True:  # read until the child closes its end (EIO on Linux) or exits
            ready, _, _ = select.select([leader], [], [], 30)
            assert ready, f"no output from record within 30 s: {seen!r}"
            try:
                chunk = os.read(leader, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        assert proc.wait(30) == 0
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    text = seen.decode()
    assert "recorded 1 of 3 samples" in text and "recorded 3 samples" in text, text
    assert len(out.read_text().splitlines()) == 3


def test_record_is_quiet_when_piped(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "rec.jsonl"
    r = agent_cli("record", "--count", "2", "--interval", "50ms", "-o", str(out))
    assert r.returncode == 0 and r.stderr == "" and r.stdout == ""
    assert len(out.read_text().splitlines()) == 2
    piped = agent_cli("record", "--count", "2", "--interval", "50ms")
    assert piped.stderr == "" and len(piped.stdout.splitlines()) == 2


def _config(tmp_path: pathlib.Path, pid: int) -> pathlib.Path:
    path = tmp_path / "metalmem.toml"
    path.write_text(
        f'[[target]]\nname = "real"\npid = {pid}\n\n'
        f'[[target]]\nname = "typo"\nnamespace = "llm"\ncmdline = "{NOWHERE}"\n'
    )
    return path


def test_explain_and_doctor_name_targets_that_match_nothing(
    tmp_path: pathlib.Path, children: Children
) -> None:
    kid = children.spawn(allocate_mib=4)
    config = _config(tmp_path, kid.pid)
    r = agent_cli("explain", "--config", str(config))
    assert r.returncode == 0, r.stderr
    assert "target llm/typo: configured, but matches no running process" in r.stdout
    doc = json.loads(agent_cli("explain", "--config", str(config), "--json").stdout)
    assert doc["unmatched"] == ["llm/typo"] and [c["key"] for c in doc["ranking"]] == ["real"]

    nothing = tmp_path / "none.toml"
    nothing.write_text(f'[[target]]\nname = "typo"\ncmdline = "{NOWHERE}"\n')
    r = agent_cli("explain", "--config", str(nothing))
    assert "configure [[target]] tables" not in r.stdout
    assert "nothing configured matches a running process" in r.stdout

    d = agent_cli("doctor", "--json", "--config", str(config), "--listen", "127.0.0.1:0")
    check = next(c for c in json.loads(d.stdout)["checks"] if c["check"] == "targets")
    assert check["verdict"] == "warn" and "llm/typo" in check["finding"], check


@contextlib.contextmanager
def _agent(
    tmp_path: pathlib.Path, children: Children
) -> Iterator[tuple[AgentProcess, pathlib.Path]]:
    """A real agent over :func:`_config`: one live target ("real"), one that matches nothing."""
    config = _config(tmp_path, children.spawn(allocate_mib=4).pid)
    args = ["--memory-watchdog-interval", "200ms", "--config", str(config)]
    with AgentProcess(args, tmp_path / "agent.log") as agent:
        wait_for(lambda: "real" in agent.memstats()["processes"], timeout=15, what="target")
        yield agent, config


def test_status_and_log_name_unmatched_targets_and_the_thresholds(
    tmp_path: pathlib.Path, children: Children
) -> None:
    with _agent(tmp_path, children) as (agent, _):
        doc = wait_for(
            lambda: (d := agent.memstats())["unmatched"] and d, timeout=15, what="unmatched"
        )
        assert doc["unmatched"] == ["llm/typo"]
        assert doc["thresholds"]["memory.available"] == {"warning": 0.2, "critical": 0.1}
        assert doc["thresholds"]["pageout.rate"]["critical"] is None  # off by default
        VALIDATOR.validate(doc)
        r = agent_cli("status", "--url", agent.base)
        assert r.returncode == 0, r.stderr
        assert "llm/typo" in r.stdout and "matches no running process" in r.stdout
        assert "thresholds (warning / critical): memory.available 20.0% / 10.0%" in r.stdout
        log = agent.log()
    assert "event=targets_unmatched keys=llm/typo" in log
    started = next(line for line in log.splitlines() if "event=started" in line)
    assert "thresholds=memory.available=0.2/0.1," in started


def test_kube_error_text_is_one_short_line_without_headers() -> None:
    kubernetes = pytest.importorskip("kubernetes")
    import urllib3

    from metalmem.doctor import kube_error_text

    exc = kubernetes.client.ApiException(status=403, reason="Forbidden")
    exc.headers = {"Audit-Id": "abc", "Content-Type": "application/json"}
    exc.body = '{"kind":"Status","message":"forbidden: User cannot get path /version"}'
    assert "Audit-Id" in str(exc)  # what the one-line error used to carry
    assert kube_error_text(exc) == "HTTP 403 Forbidden"
    pool = urllib3.HTTPConnectionPool("127.0.0.1", 1)
    try:
        pool.request("GET", "/version", retries=0)
    except urllib3.exceptions.HTTPError as real:
        text = kube_error_text(real)
    assert "object at 0x" not in text and "\n" not in text and len(text) <= 200
    assert "refused" in text.lower(), text


def test_a_reload_of_an_emptied_config_is_refused(
    tmp_path: pathlib.Path, children: Children
) -> None:
    with _agent(tmp_path, children) as (agent, config):
        before = len(agent.memstats()["processes"])
        config.write_text("")  # valid TOML, but a save caught half-way: keep every target
        agent.signal(signal.SIGHUP)
        wait_for(lambda: "event=config_reload_failed" in agent.log(), timeout=15, what="refusal")
        assert "the file is empty; keeping the running config" in agent.log()
        assert before == 1 and len(agent.memstats()["processes"]) == before  # "real" stays
