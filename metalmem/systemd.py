"""systemd integration without libsystemd: sd_notify(3) and journal priorities.

``Type=notify`` services tell systemd they are ready (``READY=1``), reloading, stopping, and
alive (``WATCHDOG=1``) with datagrams on the unix socket named by ``$NOTIFY_SOCKET``; the
protocol is a few ``KEY=VALUE`` lines per datagram (sd_notify(3)), so a socket call is all it
takes and no dependency is added. The agent pings the watchdog only while its loop's heartbeat
is fresh (the same bound as ``/healthz``), so a stalled loop stops the pings and systemd
restarts the service after ``WatchdogSec``.

When stderr is connected to the journal (``$JOURNAL_STREAM`` names stderr's device and inode,
systemd.exec(5)), each line gets a ``<N>`` syslog priority prefix (sd-daemon(3)), which
journald strips and stores, so ``journalctl -p warning`` can filter the agent's lines.

Only ``cli/`` reads the environment (STYLE rule 2): this module takes it as an argument, so
``metalmem-agent`` passes the process's and tests (or a host application) their own.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping
from typing import IO

log = logging.getLogger("metalmem.agent")

__all__ = ["JournalPriority", "SystemdNotifier", "stderr_is_journal"]

# logging level -> syslog priority (sd-daemon(3) SD_ERR .. SD_DEBUG).
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


class SystemdNotifier:
    """Sends sd_notify datagrams to ``$NOTIFY_SOCKET``; does nothing when it is unset.

    ``environ`` is read once: ``NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract
    namespace) and ``WATCHDOG_USEC`` (honoured only when ``WATCHDOG_PID`` is unset or names this
    process, as sd_watchdog_enabled(3) does). Send errors are logged once and never raised: the
    agent's job does not depend on systemd hearing it.
    """

    def __init__(self, environ: Mapping[str, str]) -> None:
        path = environ.get("NOTIFY_SOCKET", "")
        self.address: str | bytes | None = None
        if path.startswith("@"):
            self.address = b"\0" + path[1:].encode()
        elif path.startswith("/"):
            self.address = path
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        self.watchdog_interval: float | None = None
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 1e6
        self._sock: socket.socket | None = None
        self._failed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` (``"READY=1"``, ``"STATUS=..."``) as one datagram; true if sent."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.warning("event=sd_notify_failed address=%r error=%r", self.address, exc)
            return False
        if self._failed:
            self._failed = False
            log.info("event=sd_notify_recovered")
        return True

    def start_watchdog(self, healthy: Callable[[], bool]) -> None:
        """Ping ``WATCHDOG=1`` every half ``WatchdogSec`` while ``healthy()`` says so.

        ``healthy`` must be the loop's own liveness (a fresh heartbeat): a thread that pinged
        regardless would keep a stalled agent alive forever. No-op without a watchdog.
        """
        if self.address is None or self.watchdog_interval is None or self._thread is not None:
            return
        period = self.watchdog_interval / 2
        self._thread = threading.Thread(
            target=self._ping, args=(healthy, period), name="metalmem-sd-watchdog", daemon=True
        )
        self._thread.start()

    def _ping(self, healthy: Callable[[], bool], period: float) -> None:
        was_healthy = True
        while not self._stop.wait(period):
            try:
                ok = healthy()
            except Exception:  # a bug in the check must not look like a live loop
                log.exception("event=sd_watchdog_check_failed")
                ok = False
            if ok != was_healthy:
                was_healthy = ok
                if ok:
                    log.info("event=sd_watchdog_resumed")
                else:
                    log.warning("event=sd_watchdog_withheld reason=heartbeat_stale")
            if ok:
                self.notify("WATCHDOG=1")

    def close(self) -> None:
        """Stop the pings (``STOPPING=1`` is the caller's to send first) and the socket."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(1.0)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def stderr_is_journal(environ: Mapping[str, str], stream: IO[str]) -> bool:
    """True when ``stream`` is the journal stream systemd connected (``$JOURNAL_STREAM`` is
    ``DEVICE:INODE`` of it; a redirect of stderr elsewhere keeps the variable but not the
    identity, so it is compared, as systemd.exec(5) says to)."""
    value = environ.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


class JournalPriority(logging.Formatter):
    """Wraps a formatter: each line gets the ``<N>`` syslog priority of its record's level."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        priority = next((p for level, p in _PRIORITIES if record.levelno >= level), 7)
        text = self.inner.format(record)
        # A traceback spans lines; journald reads the prefix per line, so repeat it.
        return "\n".join(f"<{priority}>{line}" for line in text.split("\n"))
