"""metalmem/systemd.py against real sockets and a real agent: sd_notify datagrams on a unix socket
the test binds (as systemd would), the watchdog withheld while the loop is stalled, and syslog
priorities on log lines when stderr is the journal stream."""

from __future__ import annotations

import io
import logging
import os
import pathlib
import signal
import socket
import sys
from collections.abc import Iterator

import pytest

from metalmem.systemd import JournalPriority, SystemdNotifier, stderr_is_journal

from .agentproc import AgentProcess
from .helpers import wait_for

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="unix datagram sockets, /proc")


class NotifySocket:
    """A bound datagram socket standing in for systemd's notify socket."""

    def __init__(self, path: pathlib.Path | str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path) if isinstance(path, pathlib.Path) else path)
        self.sock.setblocking(False)
        self.received: list[str] = []

    def drain(self) -> list[str]:
        """Every datagram waiting now, appended to :attr:`received`; returns the new ones."""
        new = []
        while True:
            try:
                new.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                break
        self.received.extend(new)
        return new

    def seen(self, field: str) -> bool:
        self.drain()
        return any(field in d.split("\n") for d in self.received)


@pytest.fixture
def notify_socket(tmp_path: pathlib.Path) -> Iterator[tuple[NotifySocket, str]]:
    path = tmp_path / "notify"
    s = NotifySocket(path)
    yield s, str(path)
    s.sock.close()


def test_notify_sends_one_datagram_to_a_path_socket(
    notify_socket: tuple[NotifySocket, str],
) -> None:
    sock, path = notify_socket
    n = SystemdNotifier({"NOTIFY_SOCKET": path})
    assert n.enabled and n.notify("READY=1", "STATUS=ok")
    wait_for(lambda: sock.drain() or sock.received, timeout=5, what="datagram")
    assert sock.received == ["READY=1\nSTATUS=ok"]
    n.close()


def test_notify_reaches_an_abstract_socket() -> None:
    name = f"metalmem-test-{os.getpid()}"
    sock = NotifySocket("\0" + name)
    try:
        n = SystemdNotifier({"NOTIFY_SOCKET": "@" + name})
        assert n.notify("READY=1")
        wait_for(lambda: sock.seen("READY=1"), timeout=5, what="datagram")
        n.close()
    finally:
        sock.sock.close()


def test_notify_without_a_socket_does_nothing_and_a_dead_socket_is_not_fatal(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert not SystemdNotifier({}).notify("READY=1")
    n = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    with caplog.at_level(logging.WARNING, logger="metalmem.agent"):
        assert not n.notify("READY=1") and not n.notify("READY=1")
    assert [r.getMessage().split()[0] for r in caplog.records] == ["event=sd_notify_failed"]


def test_watchdog_usec_is_honoured_only_for_this_pid() -> None:
    assert SystemdNotifier({"WATCHDOG_USEC": "4000000"}).watchdog_interval == 4.0
    mine = {"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}
    assert SystemdNotifier(mine).watchdog_interval == 4.0
    other = {"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}
    assert SystemdNotifier(other).watchdog_interval is None
    assert SystemdNotifier({"WATCHDOG_USEC": "junk"}).watchdog_interval is None


def test_the_agent_is_ready_pings_while_alive_and_stops_pinging_when_stalled(
    tmp_path: pathlib.Path, notify_socket: tuple[NotifySocket, str]
) -> None:
    sock, path = notify_socket
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"}  # a ping every 100 ms
    args = ["--memory-watchdog-interval", "100ms"]
    with AgentProcess(args, tmp_path / "agent.log", env=env) as agent:
        wait_for(lambda: sock.seen("READY=1"), timeout=10, what="READY=1")
        wait_for(lambda: sock.seen("WATCHDOG=1"), timeout=10, what="WATCHDOG=1")
        agent.signal(signal.SIGUSR1)  # test hook: the loop stalls inside its next tick
        wait_for(lambda: agent.get("/healthz")[0] == 503, timeout=10, what="healthz 503")
        wait_for(lambda: "event=sd_watchdog_withheld" in agent.log(), timeout=10, what="withheld")
        sock.drain()
        sock.received.clear()
        # Five ping periods pass (read off the stale heartbeat's own age): no WATCHDOG=1.
        start = agent.memstats()["heartbeat_age"]
        wait_for(lambda: agent.memstats()["heartbeat_age"] >= start + 0.5, timeout=10, what="0.5 s")
        assert not sock.seen("WATCHDOG=1"), sock.received
        agent.signal(signal.SIGUSR1)  # unstall: pings resume
        wait_for(lambda: sock.seen("WATCHDOG=1"), timeout=10, what="WATCHDOG=1 again")
        assert "event=sd_watchdog_resumed" in agent.log()
        assert agent.stop() == 0
    assert sock.seen("STOPPING=1")


def _journal_env(stream: io.TextIOBase | object) -> dict[str, str]:
    st = os.fstat(stream.fileno())  # type: ignore[attr-defined]
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


def test_stderr_is_journal_compares_device_and_inode(tmp_path: pathlib.Path) -> None:
    with open(tmp_path / "a", "w") as a, open(tmp_path / "b", "w") as b:
        assert stderr_is_journal(_journal_env(a), a)
        assert not stderr_is_journal(_journal_env(a), b)  # redirected elsewhere
        assert not stderr_is_journal({"JOURNAL_STREAM": "garbage"}, a)
        assert not stderr_is_journal({}, a)


def test_journal_priority_prefixes_every_line_by_level() -> None:
    fmt = JournalPriority(logging.Formatter("%(levelname)s %(message)s"))

    def line(level: int, msg: str = "event=x") -> str:
        return fmt.format(logging.LogRecord("metalmem", level, __file__, 1, msg, None, None))

    assert line(logging.DEBUG) == "<7>DEBUG event=x"
    assert line(logging.INFO) == "<6>INFO event=x"
    assert line(logging.WARNING) == "<4>WARNING event=x"
    assert line(logging.ERROR) == "<3>ERROR event=x"
    assert line(logging.CRITICAL) == "<2>CRITICAL event=x"
    assert line(logging.ERROR, "a\nb") == "<3>ERROR a\n<3>b"


def test_the_agent_logs_priorities_only_to_the_journal_stream(tmp_path: pathlib.Path) -> None:
    log_path = tmp_path / "agent.log"
    # AgentProcess opens log_path for the child's stderr; name that file as the journal.
    log_path.touch()
    st = os.stat(log_path)
    env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    with AgentProcess(["--memory-watchdog-interval", "200ms"], log_path, env=env) as agent:
        agent.signal(signal.SIGHUP)  # no config file: a warning-free info line
        wait_for(lambda: "config_reload_skipped" in agent.log(), timeout=10, what="reload line")
    lines = [x for x in log_path.read_text().splitlines() if x]
    assert lines and all(x[:3] in ("<6>", "<4>", "<3>", "<7>") for x in lines), lines
    started = next(x for x in lines if "event=started" in x)
    assert started.startswith("<6>")

    plain = tmp_path / "plain.log"
    with AgentProcess(["--memory-watchdog-interval", "200ms"], plain, env=env) as agent:
        pass  # the same variable, but stderr is another file: no prefixes
    assert not any(x.startswith("<") for x in plain.read_text().splitlines())
