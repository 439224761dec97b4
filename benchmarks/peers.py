"""The agent beside the peers an operator would otherwise run, in one run on one machine:
CPU, RSS and idle wake-ups of `metalmem-agent run` (1 s interval, 16 targets, scraped every
1 s), Debian's prometheus-node-exporter (only its meminfo, pressure and vmstat collectors,
scraped every 1 s) and earlyoom (Debian's default arguments), all three running at once; then
the agent's cost of discovery at 64 processes.

    python benchmarks/peers.py --json benchmarks/peers.json [--duration 120]

The scraper is a real Prometheus (Debian's package ``prometheus``, which ``make test`` installs
for promtool) with ``scrape_interval: 1s`` over both exporters: its own Accept header
(OpenMetrics first), gzip and kept-alive connections, as in production; it also reports each
exporter's scrape duration and samples. Without it, a Python scraper sends Prometheus 2's
headers over a kept-alive connection instead (said in the report).

Setup: node_exporter, earlyoom and prometheus are installed from Debian (apt-get, as root) when
missing; where that cannot be done the peer is skipped with one line saying why. CPU of each process
and all its threads from a cgroup2 group of its own (benchmarks/soak_agent.py ``CpuMeter``),
RSS from VmRSS at the end. Idle wake-ups: voluntary context switches of every thread over a
window with no scrapes (being preempted on a loaded machine is not a wake-up).

Discovery: two agents in sequence, each with 64 idle children of an executable named
``mmbench-target``: one names them by pid in its config, the other finds them with
``--discover '^mmbench-target$'`` (a rescan every 5 s, cli/agent.py ``TARGET_REFRESH``).
Discovery's share is the difference of their CPU over the second's.

Duration: ``--duration``, else ``METALMEM_BENCH_PEERS_SECONDS``, else 120 s (20 s with
``METALMEM_BENCH_QUICK=1``); the idle window is a tenth of it (at least 5 s).
``METALMEM_BENCH_SKIP`` containing ``peers`` skips it all, ``discovery`` the discovery part.
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
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import QUICK, SKIP, machine  # noqa: E402
from soak_agent import AGENT, CHILD, CpuMeter, _listening_port  # noqa: E402

sys.path.insert(0, str(HERE.parent))
from benchmarks.conftest import _spawn  # noqa: E402

NODE_EXPORTER = ("prometheus-node-exporter", "node_exporter")
NODE_ARGS = [
    "--collector.disable-defaults",
    "--collector.meminfo",
    "--collector.pressure",
    "--collector.vmstat",
]
EARLYOOM_ARGS = ["-r", "3600"]  # Debian's /etc/default/earlyoom
PACKAGES = {
    "node_exporter": "prometheus-node-exporter",
    "earlyoom": "earlyoom",
    "prometheus": "prometheus",
}
# What Prometheus 2.42 sends (scrape.go, acceptHeader): OpenMetrics first, then the text format.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


def _which(names: tuple[str, ...]) -> str | None:
    return next((p for n in names if (p := shutil.which(n))), None)


def ensure(tool: str, names: tuple[str, ...]) -> tuple[str | None, str | None]:
    """(path, None), or (None, the one line saying why the peer is skipped)."""
    found = _which(names)
    if found:
        return found, None
    package = PACKAGES[tool]
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None, f"{tool}: not installed, and apt-get {package} needs root on Debian"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"peers: apt-get install {package}", flush=True)
    for cmd in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package],
    ):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            return None, f"{tool}: apt-get failed: {done.stderr.strip()[-200:]}"
    found = _which(names)
    return (found, None) if found else (None, f"{tool}: installed but not on PATH")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _vmrss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmRSS:"))


def voluntary_switches(pid: int) -> dict[int, int]:
    """Voluntary context switches of every live thread of ``pid`` (its wake-ups), by tid."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/status") as f:
            out[int(tid)] = sum(int(ln.split()[1]) for ln in f if ln.startswith("voluntary_ctxt"))
    return out


def _woken(before: dict[int, int], after: dict[int, int]) -> dict[str, int]:
    """Per thread, the switches in the window (a thread started in it counts from 0)."""
    return {str(t): n - before.get(t, 0) for t, n in sorted(after.items()) if n > before.get(t, 0)}


def _samples(body: str) -> int:
    return sum(1 for ln in body.splitlines() if ln and not ln.startswith("#"))


def _children(
    n: int, executable: str | None = None
) -> contextlib.AbstractContextManager[list[int]]:
    """n idle children (killed and reaped at exit): Python sleepers, or ``executable 3600``."""
    argv = [executable, "3600"] if executable else [sys.executable, "-c", CHILD]
    return contextlib.contextmanager(_spawn)(argv, n)


@contextlib.contextmanager
def _agent(work: pathlib.Path, config: str, extra: list[str]) -> Iterator[tuple[Any, str]]:
    path = work / f"agent-{time.monotonic_ns()}.toml"
    path.write_text(config)
    log = open(work / "agent.log", "ab")  # noqa: SIM115  (closed below)
    proc = subprocess.Popen(
        [AGENT, "run", "--listen", "127.0.0.1:0", "--no-kube", "--config", str(path),
         "--memory-watchdog-interval", "1s", "--log-level", "warning", *extra],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        port = None
        while port is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"agent did not start: {(work / 'agent.log').read_text()}")
            with contextlib.suppress(LookupError, OSError):
                port = _listening_port(proc.pid)
            time.sleep(0.1)
        yield proc, f"http://127.0.0.1:{port}/metrics"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


def side_by_side(work: pathlib.Path, duration: float, idle: float) -> dict[str, Any]:
    """The agent, node_exporter and earlyoom at once; both exporters scraped every 1 s."""
    out: dict[str, Any] = {"duration_s": duration, "idle_window_s": idle, "skipped": {}}
    node, why = ensure("node_exporter", NODE_EXPORTER)
    if why:
        out["skipped"]["node_exporter"] = why
        print(f"peers: skip {why}", flush=True)
    early, why = ensure("earlyoom", ("earlyoom",))
    if why:
        out["skipped"]["earlyoom"] = why
        print(f"peers: skip {why}", flush=True)
    with contextlib.ExitStack() as stack:
        pids = stack.enter_context(_children(16))
        config = "".join(f'[[target]]\nname = "t{i}"\npid = {p}\n\n' for i, p in enumerate(pids))
        agent, agent_url = stack.enter_context(_agent(work, config, []))
        procs: dict[str, subprocess.Popen[bytes]] = {"metalmem": agent}
        urls = {"metalmem": agent_url}
        if node:
            port = _free_port()
            procs["node_exporter"] = subprocess.Popen(
                [node, *NODE_ARGS, f"--web.listen-address=127.0.0.1:{port}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            urls["node_exporter"] = f"http://127.0.0.1:{port}/metrics"
        if early:
            procs["earlyoom"] = subprocess.Popen(
                [early, *EARLYOOM_ARGS], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        for p in procs.values():
            stack.callback(_end, p)
        deadline = time.monotonic() + 30
        for name, url in urls.items():
            while True:
                try:
                    _get(url)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"{name} did not serve {url}") from None
                    time.sleep(0.1)
        meters = {name: CpuMeter(p.pid) for name, p in procs.items()}
        for m in meters.values():
            stack.callback(m.close)
        samples = {name: _samples(_get(url)) for name, url in urls.items()}
        prom, why = ensure("prometheus", ("prometheus",))
        scraper: Any
        if prom:
            scraper = stack.enter_context(_prometheus(prom, work, urls))
            out["scraper"] = "prometheus " + _version(prom)
        else:
            print(f"peers: {why}; a Python scraper sends Prometheus' headers instead", flush=True)
            scraper = stack.enter_context(_python_scraper(urls))
            out["scraper"] = f"python (Prometheus 2.42's headers, kept alive); {why}"
        time.sleep(3.0)  # start-up is not the steady state
        cpu0 = {n: m.seconds() for n, m in meters.items()}
        t0 = time.monotonic()
        time.sleep(duration)
        elapsed = time.monotonic() - t0
        cpu1 = {n: m.seconds() for n, m in meters.items()}
        out["scrapes"] = scraper.report()
        scraper.stop()  # idle: no scrapes from here on
        # Idle: no scrapes; every thread's voluntary switches.
        time.sleep(1.0)
        w0 = {n: voluntary_switches(p.pid) for n, p in procs.items()}
        time.sleep(idle)
        w1 = {n: voluntary_switches(p.pid) for n, p in procs.items()}
        for name, p in procs.items():
            out[name] = {
                "cpu_seconds": round(cpu1[name] - cpu0[name], 6),
                "cpu_pct_of_one_core": round((cpu1[name] - cpu0[name]) / elapsed * 100, 4),
                "cpu_source": meters[name].source,
                "rss_mib": round(_vmrss(p.pid) / 2**20, 2),
                "idle_wakeups_per_s": round(sum(_woken(w0[name], w1[name]).values()) / idle, 2),
                "idle_wakeups_by_thread": _woken(w0[name], w1[name]),
                "samples_per_scrape": samples.get(name),
                "scrape": out["scrapes"].get(name),
            }
        out["scraped_every_s"] = 1.0
    return out


def _version(binary: str) -> str:
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    found = re.search(r"version (\S+)", done.stdout + done.stderr)
    return found.group(1) if found else "?"


class _PromScraper:
    """A real Prometheus scraping each exporter every 1 s (a job per exporter)."""

    def __init__(self, proc: subprocess.Popen[bytes], api: str, jobs: list[str]) -> None:
        self.proc, self.api, self.jobs = proc, api, jobs

    def _query(self, expr: str) -> dict[str, float]:
        url = f"{self.api}/api/v1/query?query={urllib.parse.quote(expr)}"
        doc = json.loads(_get(url))
        return {r["metric"]["job"]: float(r["value"][1]) for r in doc["data"]["result"]}

    def report(self) -> dict[str, Any]:
        """Per job: up, samples per scrape, scrapes in the window and their median duration
        as Prometheus measured it (request to parsed body)."""
        out: dict[str, Any] = {}
        up = self._query("up")
        samples = self._query("scrape_samples_scraped")
        count = self._query("count_over_time(up[1m])")
        took = self._query("quantile_over_time(0.5, scrape_duration_seconds[1m])")
        for job in self.jobs:
            out[job] = {
                "up": up.get(job),
                "samples_per_scrape": samples.get(job),
                "scrapes_last_minute": count.get(job),
                "median_scrape_ms": round(took[job] * 1000, 3) if job in took else None,
            }
        return out

    def stop(self) -> None:
        _end(self.proc)


@contextlib.contextmanager
def _prometheus(binary: str, work: pathlib.Path, urls: dict[str, str]) -> Iterator[_PromScraper]:
    port = _free_port()
    jobs = "".join(
        f"  - job_name: {name}\n    static_configs:\n      - targets: ['{url.split('/')[2]}']\n"
        for name, url in urls.items()
    )
    config = work / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n" + jobs
    )
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={work / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    scraper = _PromScraper(proc, f"http://127.0.0.1:{port}", list(urls))
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                _get(f"{scraper.api}/-/ready")
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("prometheus did not become ready") from None
                time.sleep(0.2)
        yield scraper
    finally:
        scraper.stop()


class _PyScraper:
    """Without Prometheus: one kept-alive connection per exporter, Prometheus' headers, every
    1 s, from a thread."""

    def __init__(self, urls: dict[str, str]) -> None:
        import http.client
        import threading

        self._conns = {
            n: http.client.HTTPConnection(u.split("/")[2], timeout=5) for n, u in urls.items()
        }
        self._stop = threading.Event()
        self._counts = dict.fromkeys(urls, 0)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        headers = {"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"}
        while not self._stop.wait(1.0):
            for name, conn in self._conns.items():
                conn.request("GET", "/metrics", headers=headers)
                conn.getresponse().read()
                self._counts[name] += 1

    def report(self) -> dict[str, Any]:
        return {n: {"scrapes": c} for n, c in self._counts.items()}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        for conn in self._conns.values():
            conn.close()


@contextlib.contextmanager
def _python_scraper(urls: dict[str, str]) -> Iterator[_PyScraper]:
    scraper = _PyScraper(urls)
    try:
        yield scraper
    finally:
        if not scraper._stop.is_set():
            scraper.stop()


def _end(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def discovery(work: pathlib.Path, duration: float) -> dict[str, Any]:
    """The agent at 64 processes named by pid, then the same 64 found by --discover."""
    exe = work / "mmbench-target"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", exe)
    out: dict[str, Any] = {"processes": 64, "duration_s": duration}
    with _children(64, str(exe)) as pids:
        by_pid = "".join(f'[[target]]\nname = "t{i}"\npid = {p}\n\n' for i, p in enumerate(pids))
        runs = {
            "by_pid": (by_pid, []),
            "discovered": ("[discovery]\nmax_matches = 100\n", ["--discover", "^mmbench-target$"]),
        }
        for name, (config, extra) in runs.items():
            with _agent(work, config, extra) as (agent, url):
                meter = CpuMeter(agent.pid)
                try:
                    time.sleep(6.0)  # past the first rescan
                    body = _get(url)
                    targets = re.search(r"^metalmem_targets (\S+)", body, re.M)
                    c0, t0 = meter.seconds(), time.monotonic()
                    next_scrape = t0
                    while time.monotonic() - t0 < duration:
                        _get(url)
                        next_scrape += 1.0
                        time.sleep(max(0.0, next_scrape - time.monotonic()))
                    c1, t1 = meter.seconds(), time.monotonic()
                finally:
                    meter.close()
            out[name] = {
                "targets": float(targets.group(1)) if targets else None,
                "cpu_pct_of_one_core": round((c1 - c0) / (t1 - t0) * 100, 4),
            }
    a, b = out["by_pid"]["cpu_pct_of_one_core"], out["discovered"]["cpu_pct_of_one_core"]
    out["discovery_share_pct"] = round(max(0.0, b - a) / b * 100, 2) if b > 0 else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--json", default="benchmarks/peers.json", help="where to write it")
    ap.add_argument("--duration", type=float, help="seconds side by side (120; quick 20)")
    args = ap.parse_args()
    default = 20.0 if QUICK else 120.0
    duration = args.duration or float(os.environ.get("METALMEM_BENCH_PEERS_SECONDS", default))
    doc: dict[str, Any] = {
        "machine": machine(),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }
    if "peers" in SKIP:
        doc["skipped"] = "METALMEM_BENCH_SKIP contains peers"
    elif not sys.platform.startswith("linux"):
        doc["skipped"] = f"node_exporter's collectors and /proc are Linux; not on {sys.platform}"
    else:
        work = pathlib.Path(tempfile.mkdtemp(prefix="metalmem-peers-"))
        try:
            doc["side_by_side"] = side_by_side(work, duration, max(5.0, duration / 10))
            print(json.dumps(doc["side_by_side"]), flush=True)
            if "discovery" in SKIP:
                doc["discovery"] = {"skipped": "METALMEM_BENCH_SKIP contains discovery"}
            else:
                doc["discovery"] = discovery(work, max(10.0, duration / 2))
                print(json.dumps(doc["discovery"]), flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    doc["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    pathlib.Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
