"""Run the real `metalmem-agent run` as a child process on a free port, for black-box tests."""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from .helpers import wait_for

AGENT = os.path.join(os.path.dirname(sys.executable), "metalmem-agent")
_STARTED = re.compile(r"event=started .*listen=(\S+):(\d+)")


class AgentProcess:
    """One `metalmem-agent run --listen 127.0.0.1:0 ...`; its log goes to ``log_path``.

    ``--no-kube`` is added unless ``kube``; ``prefix`` replaces the console script (e.g.
    ``python -X importtime -m metalmem_cli``)."""

    def __init__(
        self,
        args: Sequence[str],
        log_path: pathlib.Path,
        *,
        env: dict[str, str] | None = None,
        ready_timeout: float = 30.0,
        kube: bool = False,
        prefix: Sequence[str] = (AGENT,),
    ) -> None:
        self.log_path = log_path
        full_env = {**os.environ, **(env or {})}
        full_env.setdefault("METALMEM_TEST_HOOKS", "1")
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        argv = [*prefix, "run", "--listen", "127.0.0.1:0", *([] if kube else ["--no-kube"]), *args]
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=full_env)
        match = wait_for(self._started, timeout=ready_timeout, what="the agent's started line")
        self.base = f"http://127.0.0.1:{match.group(2)}"

    def _started(self) -> re.Match[str] | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"agent exited {self.proc.returncode}:\n{self.log()}")
        return _STARTED.search(self.log())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, *, accept: str | None = None) -> tuple[int, str, str]:
        """(status, content type, body) of one GET; HTTP errors are returned, not raised."""
        req = urllib.request.Request(self.base + path)
        if accept:
            req.add_header("Accept", accept)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()

    def memstats(self) -> dict[str, Any]:
        status, _, body = self.get("/memstats")
        assert status == 200, body
        doc: dict[str, Any] = json.loads(body)
        return doc

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; returns the exit status (kills it if it overstays)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> AgentProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_agent(
    args: Sequence[str], *, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `metalmem-agent run ARGS` expecting it to exit by itself (bad input)."""
    return subprocess.run(
        [AGENT, "run", "--no-kube", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )
