"""Soak the real agent: RSS and CPU of `metalmem-agent run` over minutes, with live targets.

    python benchmarks/soak_agent.py --duration 300 --interval 1s --targets 16
    python benchmarks/soak_agent.py --duration 60 --interval 100ms --targets 16 --json out.json
    python benchmarks/soak_agent.py --duration 60 --interval 1s --kube   # against tests/kubefake

Starts ``--targets`` idle child processes of its own, names each in a config file by pid,
runs the agent in observe mode on a free port (``--no-kube``, or with ``--kube`` against the
contract fake API server of tests/kubefake.py, one InferenceService per target), waits
``--warmup`` seconds, then scrapes /metrics once per ``--scrape`` seconds like Prometheus
would, and reads the agent's RSS (VmRSS) and CPU time every ``--every`` seconds. Reports: RSS
at the first and last reading, the growth over the second half (after warm-up), CPU seconds
per minute and as a share of one core.

CPU time covers every thread the agent ever ran (HTTP request threads end after each scrape):
read from a cgroup2 group of its own (``cpu.stat`` usage_usec, microseconds) where this user
may create one, else from /proc/PID/stat (10 ms ticks; on macOS psutil). Exit 0; the numbers
are the result.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

AGENT = os.path.join(os.path.dirname(sys.executable), "metalmem-agent")
ROOT = pathlib.Path(__file__).resolve().parent.parent
CHILD = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_DFL)\ntime.sleep(3600)\n"
KUBE_NAMESPACE = "bench"
_groups = itertools.count()


class CpuMeter:
    """CPU seconds of one process and all its threads, dead or alive.

    A cgroup2 group of its own gives microseconds (``cpu.stat`` counts exited threads too);
    without one, /proc/PID/stat's utime + stime (clock ticks, also counting exited threads)
    or psutil on macOS.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.group: pathlib.Path | None = None
        self.source = "proc-stat-ticks" if os.path.exists("/proc/self/stat") else "psutil"
        for base in (pathlib.Path("/sys/fs/cgroup/unified"), pathlib.Path("/sys/fs/cgroup")):
            if not (base / "cgroup.procs").exists() or not (base / "cpu.stat").exists():
                continue
            group = base / f"metalmem-soak-{os.getpid()}-{next(_groups)}"
            try:
                group.mkdir()
            except OSError:
                continue
            try:
                (group / "cgroup.procs").write_text(str(pid))
            except OSError:
                group.rmdir()
                continue
            self.group, self.source = group, "cgroup2-cpu.stat-usec"
            break

    def seconds(self) -> float:
        if self.group is not None:
            for line in (self.group / "cpu.stat").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "usage_usec":
                    return int(value) / 1e6
        if self.source == "psutil":
            import psutil

            t = psutil.Process(self.pid).cpu_times()
            return float(t.user + t.system)
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self, timeout: float = 10.0) -> None:
        """Remove the group once the (exited, reaped) process has left it."""
        if self.group is None:
            return
        deadline = time.monotonic() + timeout
        while (self.group / "cgroup.procs").read_text().strip():
            if time.monotonic() > deadline:
                return  # leave it: something of ours is still inside
            time.sleep(0.05)
        with contextlib.suppress(OSError):
            self.group.rmdir()


def rss_and_cpu(pid: int) -> tuple[int, float]:
    """(VmRSS bytes, utime + stime seconds) from /proc (Linux)."""
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return rss, (int(fields[11]) + int(fields[12])) / ticks


def _rss(pid: int) -> int:
    if os.path.exists(f"/proc/{pid}/status"):
        return rss_and_cpu(pid)[0]
    import psutil

    return int(psutil.Process(pid).memory_info().rss)


@contextlib.contextmanager
def _fake_kube(work: pathlib.Path, targets: int) -> Iterator[tuple[Any, pathlib.Path]]:
    """tests/kubefake.py serving one InferenceService per target; yields (fake, kubeconfig)."""
    sys.path.insert(0, str(ROOT))
    try:
        from tests.kubefake import FakeKube
    finally:
        sys.path.remove(str(ROOT))
    with FakeKube() as fake:
        for i in range(targets):
            fake.create(
                {
                    "apiVersion": fake.crd.api_version,
                    "kind": "InferenceService",
                    "metadata": {"name": f"t{i}", "namespace": KUBE_NAMESPACE},
                    "spec": {"modelRef": "bench-model"},
                }
            )
        yield fake, fake.write_kubeconfig(work / "kubeconfig", namespace=KUBE_NAMESPACE)


def _metric(body: str, name: str) -> float:
    """Sum of every sample named ``name`` in a text exposition (0 when absent)."""
    total = 0.0
    for line in body.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in (" ", "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def soak(
    duration: float,
    interval: str,
    targets: int,
    every: float,
    scrape: float,
    extra: list[str],
    *,
    kube: bool = False,
    warmup: float = 5.0,
    quiet: bool = False,
) -> dict[str, Any]:
    work = pathlib.Path(tempfile.mkdtemp(prefix="metalmem-soak-"))
    kids = [subprocess.Popen([sys.executable, "-c", CHILD]) for _ in range(targets)]
    namespace = f'namespace = "{KUBE_NAMESPACE}"\n' if kube else ""
    config = work / "agent.toml"
    config.write_text(
        "".join(
            f'[[target]]\nname = "t{i}"\n{namespace}pid = {k.pid}\npriority = "normal"\n\n'
            for i, k in enumerate(kids)
        )
    )
    with contextlib.ExitStack() as stack:
        kube_args = ["--no-kube"]
        fake = None
        if kube:
            fake, kubeconfig = stack.enter_context(_fake_kube(work, targets))
            kube_args = ["--kube", "--kubeconfig", str(kubeconfig)]
        log = stack.enter_context(open(work / "agent.log", "wb"))
        agent = subprocess.Popen(
            [AGENT, "run", "--listen", "127.0.0.1:0", *kube_args, "--config", str(config),
             "--memory-watchdog-interval", interval, "--log-level", "warning", *extra],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        meter = CpuMeter(agent.pid)
        try:
            result = _measure(agent, meter, work, duration, every, scrape, warmup, quiet)
            if fake is not None:
                result["kube_requests"] = len(fake.requests)
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=30)
            meter.close()
            for k in kids:
                k.kill()
                k.wait()
    shutil.rmtree(work, ignore_errors=True)  # kept (with the agent's log) when it failed
    result.update(
        machine=os.uname().machine,
        interval=interval,
        targets=targets,
        kube=kube,
        cpu_source=meter.source,
        exit_status=agent.returncode,
    )
    return result


def _measure(
    agent: subprocess.Popen[bytes],
    meter: CpuMeter,
    work: pathlib.Path,
    duration: float,
    every: float,
    scrape: float,
    warmup: float,
    quiet: bool,
) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    port = None
    while port is None and time.monotonic() < deadline:
        time.sleep(0.1)
        m = re.search(rb"listen=\S+:(\d+)", (work / "agent.log").read_bytes())
        port = int(m.group(1)) if m else None
        if agent.poll() is not None:
            raise SystemExit(f"agent exited: {(work / 'agent.log').read_text()}")
        with contextlib.suppress(LookupError, OSError):
            # --log-level warning hides the started line: find the port from the socket.
            port = port or _listening_port(agent.pid)
    if port is None:
        raise SystemExit(f"the agent did not listen within 30 s: {work / 'agent.log'}")
    url = f"http://127.0.0.1:{port}/metrics"
    time.sleep(warmup)  # start-up (imports, the first Kubernetes reads) is not the steady state
    readings: list[tuple[float, int, float]] = []
    body = ""
    start = time.monotonic()
    next_read = next_scrape = start
    ticks0 = None
    while (now := time.monotonic()) - start < duration:
        if now >= next_scrape:
            with urllib.request.urlopen(url, timeout=5) as resp:
                body = resp.read().decode()
            ticks0 = _metric(body, "metalmem_ticks_total") if ticks0 is None else ticks0
            next_scrape += scrape
        if now >= next_read:
            rss, cpu = _rss(agent.pid), meter.seconds()
            readings.append((now - start, rss, cpu))
            if not quiet:
                print(f"t={now - start:6.1f}s rss={rss / 2**20:6.2f} MiB cpu={cpu:8.3f}s",
                      flush=True)  # fmt: skip
            next_read += every
        time.sleep(max(0.0, min(next_read, next_scrape, start + duration) - time.monotonic()))
    rss, cpu = _rss(agent.pid), meter.seconds()
    readings.append((time.monotonic() - start, rss, cpu))
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = resp.read().decode()
    t0, rss0, cpu0 = readings[0]
    t1, rss1, cpu1 = readings[-1]
    half = [r for r in readings if r[0] >= (t1 - t0) / 2]
    cpu_per_min = (cpu1 - cpu0) / (t1 - t0) * 60
    return {
        "duration_s": round(t1 - t0, 1),
        "warmup_s": warmup,
        "rss_first_mib": round(rss0 / 2**20, 2),
        "rss_last_mib": round(rss1 / 2**20, 2),
        "rss_max_mib": round(max(r[1] for r in readings) / 2**20, 2),
        "rss_growth_second_half_kib": round((half[-1][1] - half[0][1]) / 1024, 1),
        "cpu_seconds": round(cpu1 - cpu0, 6),
        "cpu_seconds_per_minute": round(cpu_per_min, 4),
        "cpu_share_of_one_core_pct": round(cpu_per_min / 60 * 100, 4),
        "ticks": int(_metric(body, "metalmem_ticks_total") - (ticks0 or 0)),
        "pressure_events": int(_metric(body, "metalmem_pressure_events_total")),
        "kube_writes": int(_metric(body, "metalmem_kube_writes_total")),
    }


def _listening_port(pid: int) -> int:
    if not os.path.exists(f"/proc/{pid}/fd"):
        import psutil

        for conn in psutil.Process(pid).net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN:
                return int(conn.laddr.port)
        raise LookupError("the agent does not listen yet")
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:"):
                inodes.add(link[8:-1])
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if parts[9] in inodes and parts[3] == "0A":  # LISTEN
                return int(parts[1].split(":")[1], 16)
    raise LookupError("the agent does not listen yet")


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=300.0, help="seconds (default 300)")
    ap.add_argument("--interval", default="1s", help="the agent's watchdog interval")
    ap.add_argument("--targets", type=int, default=16)
    ap.add_argument("--every", type=float, default=10.0, help="seconds between readings")
    ap.add_argument("--scrape", type=float, default=15.0, help="seconds between /metrics scrapes")
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds before the first reading")
    ap.add_argument("--kube", action="store_true", help="report to tests/kubefake.py's fake API")
    ap.add_argument("--json", help="also write the result here")
    ap.add_argument("extra", nargs="*", help="more `run` arguments (after --)")
    args = ap.parse_args()
    if not os.path.exists("/proc/self/stat"):
        try:
            import psutil  # noqa: F401
        except ImportError:
            raise SystemExit("soak_agent.py reads /proc (Linux) or needs psutil") from None
    result = soak(
        args.duration,
        args.interval,
        args.targets,
        args.every,
        args.scrape,
        args.extra,
        kube=args.kube,
        warmup=args.warmup,
    )
    print(json.dumps(result, indent=2))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
