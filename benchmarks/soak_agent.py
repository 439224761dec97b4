"""Soak the real agent: RSS and CPU of `metalmem-agent run` over minutes, with live targets.

    python benchmarks/soak_agent.py --duration 300 --interval 1s --targets 16
    python benchmarks/soak_agent.py --duration 60 --interval 100ms --targets 16 --json out.json

Starts ``--targets`` idle child processes of its own, names each in a config file by pid,
runs the agent in observe mode on a free port (``--no-kube``), scrapes /metrics once per
``--scrape`` seconds like Prometheus would, and reads the agent's RSS (VmRSS) and CPU time
(utime + stime from /proc/PID/stat) every ``--every`` seconds. Reports: RSS at the first and
last reading, the growth over the second half (after warm-up), CPU seconds per minute and as a
share of one core. Linux only (it reads /proc). Exit 0; the numbers are the result.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

AGENT = os.path.join(os.path.dirname(sys.executable), "metalmem-agent")
CHILD = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_DFL)\ntime.sleep(3600)\n"


def rss_and_cpu(pid: int) -> tuple[int, float]:
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return rss, (int(fields[11]) + int(fields[12])) / ticks


def soak(
    duration: float, interval: str, targets: int, every: float, scrape: float, extra: list[str]
) -> dict[str, Any]:
    work = pathlib.Path(tempfile.mkdtemp(prefix="metalmem-soak-"))
    kids = [subprocess.Popen([sys.executable, "-c", CHILD]) for _ in range(targets)]
    config = work / "agent.toml"
    config.write_text(
        "".join(
            f'[[target]]\nname = "t{i}"\npid = {k.pid}\npriority = "normal"\n\n'
            for i, k in enumerate(kids)
        )
    )
    log = open(work / "agent.log", "wb")  # noqa: SIM115
    agent = subprocess.Popen(
        [AGENT, "run", "--listen", "127.0.0.1:0", "--no-kube", "--config", str(config),
         "--memory-watchdog-interval", interval, "--log-level", "warning", *extra],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        port = None
        while port is None and time.monotonic() < deadline:
            time.sleep(0.1)
            m = re.search(rb"listen=\S+:(\d+)", (work / "agent.log").read_bytes())
            port = int(m.group(1)) if m else None
            if agent.poll() is not None:
                raise SystemExit(f"agent exited: {(work / 'agent.log').read_text()}")
        if port is None:
            # --log-level warning hides the started line: find the port from /proc instead.
            port = _listening_port(agent.pid)
        url = f"http://127.0.0.1:{port}/metrics"
        readings: list[tuple[float, int, float]] = []
        start = time.monotonic()
        next_read = next_scrape = start
        while (now := time.monotonic()) - start < duration:
            if now >= next_scrape:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    resp.read()
                next_scrape += scrape
            if now >= next_read:
                rss, cpu = rss_and_cpu(agent.pid)
                readings.append((now - start, rss, cpu))
                print(f"t={now - start:6.1f}s rss={rss / 2**20:6.2f} MiB cpu={cpu:7.2f}s",
                      flush=True)  # fmt: skip
                next_read += every
            time.sleep(max(0.0, min(next_read, next_scrape) - time.monotonic()))
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=30)
        for k in kids:
            k.kill()
            k.wait()
        log.close()
    t0, rss0, cpu0 = readings[0]
    t1, rss1, cpu1 = readings[-1]
    half = [r for r in readings if r[0] >= (t1 - t0) / 2]
    cpu_per_min = (cpu1 - cpu0) / (t1 - t0) * 60
    return {
        "machine": os.uname().machine,
        "interval": interval,
        "targets": targets,
        "duration_s": round(t1 - t0, 1),
        "rss_first_mib": round(rss0 / 2**20, 2),
        "rss_last_mib": round(rss1 / 2**20, 2),
        "rss_max_mib": round(max(r[1] for r in readings) / 2**20, 2),
        "rss_growth_second_half_kib": round((half[-1][1] - half[0][1]) / 1024, 1),
        "cpu_seconds_per_minute": round(cpu_per_min, 4),
        "cpu_share_of_one_core_pct": round(cpu_per_min / 60 * 100, 4),
        "exit_status": agent.returncode,
    }


def _listening_port(pid: int) -> int:
    inodes = {
        os.readlink(f"/proc/{pid}/fd/{fd}")[8:-1]
        for fd in os.listdir(f"/proc/{pid}/fd")
        if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    }
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if parts[9] in inodes and parts[3] == "0A":  # LISTEN
                return int(parts[1].split(":")[1], 16)
    raise SystemExit("cannot find the agent's port")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=300.0, help="seconds (default 300)")
    ap.add_argument("--interval", default="1s", help="the agent's watchdog interval")
    ap.add_argument("--targets", type=int, default=16)
    ap.add_argument("--every", type=float, default=10.0, help="seconds between readings")
    ap.add_argument("--scrape", type=float, default=15.0, help="seconds between /metrics scrapes")
    ap.add_argument("--json", help="also write the result here")
    ap.add_argument("extra", nargs="*", help="more `run` arguments (after --)")
    args = ap.parse_args()
    if not os.path.exists("/proc/self/stat"):
        raise SystemExit("soak_agent.py reads /proc: Linux only")
    result = soak(args.duration, args.interval, args.targets, args.every, args.scrape, args.extra)
    print(json.dumps(result, indent=2))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
