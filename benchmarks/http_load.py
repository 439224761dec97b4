"""The agent's HTTP server under hostile and busy clients (issue 18), against a real
`metalmem-agent run` (1 s interval, no targets, no Kubernetes):

1. /healthz latency over fresh connections, alone (baseline);
2. the same while 300 slowloris clients hold connections (each sends part of a request head,
   then one header line every 2 s, and reconnects when the server cuts it at its head
   deadline);
3. RSS of the agent before and after 10 requests of 99 headers x 65 kB (the issue's attack);
4. `wrk -t2 -c8 -d10s` on /healthz and /metrics (Debian's wrk; skipped when absent).

    python benchmarks/http_load.py [--json benchmarks/http_load.json] [--slow 300]

It prints Markdown rows for docs/performance.md and writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import machine

AGENT = os.path.join(os.path.dirname(sys.executable), "metalmem-agent")
_STARTED = re.compile(r"event=started .*listen=\S+:(\d+)")


def start_agent(log: pathlib.Path) -> tuple[subprocess.Popen[bytes], int]:
    out = open(log, "wb")  # noqa: SIM115 - the child owns it for its lifetime
    argv = [
        AGENT,
        "run",
        "--no-kube",
        "--listen",
        "127.0.0.1:0",
        "--memory-watchdog-interval",
        "1s",
    ]
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = _STARTED.search(log.read_text(errors="replace"))
        if match:
            return proc, int(match.group(1))
        if proc.poll() is not None:
            raise SystemExit(f"agent exited {proc.returncode}: {log.read_text()}")
        time.sleep(0.05)
    raise SystemExit("agent did not start in 30 s")


def get(port: int, path: str, head: bytes = b"") -> tuple[int, float]:
    """(status, seconds) of one GET over a fresh connection; status 0 when it failed."""
    t0 = time.perf_counter()
    data = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            with contextlib.suppress(OSError):  # a refused head is answered before it is sent
                s.sendall(b"GET %s HTTP/1.0\r\n%s\r\n" % (path.encode(), head))
            while chunk := s.recv(65536):
                data += chunk
    except OSError:
        if not data:
            return 0, time.perf_counter() - t0
    code = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return code, time.perf_counter() - t0


def latency(port: int, n: int) -> dict[str, Any]:
    codes, times = [], []
    for _ in range(n):
        code, dt = get(port, "/healthz")
        codes.append(code)
        times.append(dt * 1e3)
    times.sort()
    return {
        "requests": n,
        "ok": codes.count(200),
        "p50_ms": statistics.median(times),
        "p95_ms": times[int(0.95 * (n - 1))],
        "p99_ms": times[int(0.99 * (n - 1))],
        "max_ms": times[-1],
    }


class Slowloris:
    """``n`` clients that keep a request head open, reconnecting when cut off."""

    def __init__(self, port: int, n: int) -> None:
        self.port, self.n = port, n
        self.socks: list[socket.socket | None] = [None] * n
        self.reconnects = 0
        self.refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _connect(self, i: int) -> None:
        try:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            s.sendall(b"GET /healthz HTTP/1.0\r\n")
            self.socks[i] = s
        except OSError:
            self.socks[i] = None
            self.refused += 1

    def start(self) -> None:
        for i in range(self.n):
            self._connect(i)
        self._thread.start()

    def open(self) -> int:
        return sum(s is not None for s in self.socks)

    def _run(self) -> None:
        while not self._stop.wait(2.0):
            for i, s in enumerate(self.socks):
                try:
                    if s is None:
                        raise OSError
                    s.sendall(b"X-Slow: 1\r\n")
                except OSError:
                    if s is not None:
                        s.close()
                    self.reconnects += 1
                    self._connect(i)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for s in self.socks:
            if s is not None:
                s.close()


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kb / 1024


def big_headers(port: int, pid: int) -> dict[str, Any]:
    before = rss_mib(pid)
    head = b"".join(b"X-%d: %s\r\n" % (i, b"h" * 65000) for i in range(99))
    codes = []
    for _ in range(10):
        with contextlib.suppress(OSError):
            codes.append(get(port, "/healthz", head)[0])
    time.sleep(0.5)
    return {"rss_before_mib": before, "rss_after_mib": rss_mib(pid), "codes": sorted(set(codes))}


def wrk(port: int, path: str, seconds: int) -> dict[str, Any] | None:
    exe = shutil.which("wrk")
    if exe is None:
        return None
    argv = [exe, "-t2", "-c8", f"-d{seconds}s", "--latency", f"http://127.0.0.1:{port}{path}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    pcts = dict(re.findall(r"^\s+(50|90|99)%\s+(\S+)", out, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock_err = re.search(r"Socket errors: (.*)", out)
    return {
        "path": path,
        "requests_per_s": float(rps.group(1)) if rps else None,
        "p50": pcts.get("50"),
        "p90": pcts.get("90"),
        "p99": pcts.get("99"),
        "non_2xx": int(errors.group(1)) if errors else 0,
        "socket_errors": sock_err.group(1) if sock_err else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--json", default="benchmarks/http_load.json")
    ap.add_argument("--slow", type=int, default=300, help="slowloris connections")
    ap.add_argument("--requests", type=int, default=200, help="/healthz probes per phase")
    ap.add_argument("--wrk-seconds", type=int, default=10)
    args = ap.parse_args()
    doc: dict[str, Any] = {"machine": machine(), "slowloris": args.slow}
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_agent(pathlib.Path(tmp) / "agent.log")
        try:
            get(port, "/healthz")  # warm up
            doc["baseline"] = latency(port, args.requests)
            slow = Slowloris(port, args.slow)
            slow.start()
            time.sleep(1.0)
            doc["under_slowloris"] = latency(port, args.requests)
            doc["under_slowloris"]["slowloris_open"] = slow.open()
            doc["under_slowloris"]["slowloris_refused"] = slow.refused
            slow.stop()
            doc["big_headers"] = big_headers(port, proc.pid)
            doc["wrk"] = [
                r for p in ("/healthz", "/metrics") if (r := wrk(port, p, args.wrk_seconds))
            ]
            doc["rss_end_mib"] = rss_mib(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    pathlib.Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    m = doc["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}")
    print("| Load | /healthz p50 | p95 | p99 | max | answered 200 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, row in (
        ("alone", doc["baseline"]),
        (
            f"{doc['under_slowloris']['slowloris_open']} slowloris clients held",
            doc["under_slowloris"],
        ),
    ):
        print(
            f"| {name} | {row['p50_ms']:.2f} ms | {row['p95_ms']:.2f} ms | {row['p99_ms']:.2f} ms"
            f" | {row['max_ms']:.2f} ms | {row['ok']} of {row['requests']} |"
        )
    for r in doc["wrk"]:
        print(
            f"wrk -t2 -c8 {r['path']}: {r['requests_per_s']:.0f} requests/s, p50 {r['p50']}, "
            f"p90 {r['p90']}, p99 {r['p99']}, non-2xx {r['non_2xx']}, "
            f"socket errors {r['socket_errors']}"
        )
    b = doc["big_headers"]
    print(
        f"10 requests of 99 x 65 kB headers: answered {b['codes']}, RSS {b['rss_before_mib']:.1f}"
        f" -> {b['rss_after_mib']:.1f} MiB"
    )


if __name__ == "__main__":
    main()
