"""The sampler on this machine, against independent readings (psutil, the /proc files)."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import pathlib
import subprocess
import sys
import time

import psutil
import pytest

import metalmem

from . import procref

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads Linux /proc")


def _meminfo() -> dict[str, int | None]:
    with open("/proc/meminfo", "rb") as f:
        return procref.meminfo(f.read())


def test_system_agrees_with_proc_meminfo() -> None:
    with metalmem.Sampler() as s:
        m = s.system()
    ref = _meminfo()
    assert m.total == ref["total"]
    assert m.available is not None and ref["available"] is not None
    assert abs(m.available - ref["available"]) <= 0.02 * ref["available"]
    assert m.swap_total == ref["swap_total"]
    assert m.wired is not None and m.compressed is not None  # Unevictable, Zswap on 6.x
    assert m.scope == "host" and not m.limited
    assert m.os_level is None  # Linux derives pressure from PSI in the classifier
    assert isinstance(m.timestamp, float) and abs(m.timestamp - time.monotonic()) < 5


def test_system_reads_psi_when_the_kernel_has_it() -> None:
    with metalmem.Sampler() as s:
        m = s.system()
    if not os.path.exists("/proc/pressure/memory"):
        assert m.psi is None
        return
    assert m.psi is not None
    assert m.psi.some_avg10 is not None and 0 <= m.psi.some_avg10 <= 100
    assert m.psi.some_total is not None and m.psi.some_total >= 0


def test_slow_counters_are_refreshed_at_most_once_per_period() -> None:
    with metalmem.Sampler() as s:
        first = s.system()
        second = s.system()
        assert second.counters_timestamp == first.counters_timestamp
        deadline = time.monotonic() + 5
        third = s.system()
        while third.counters_timestamp == first.counters_timestamp:
            assert time.monotonic() < deadline, "slow counters never refreshed"
            time.sleep(0.05)
            third = s.system()
    assert third.counters_timestamp is not None and first.counters_timestamp is not None
    assert third.counters_timestamp - first.counters_timestamp >= 1.0
    assert third.timestamp >= third.counters_timestamp


def test_own_process_agrees_with_status_and_psutil() -> None:
    pid = os.getpid()
    with metalmem.Sampler() as s:
        p = s.processes([pid])[pid]
    assert isinstance(p, metalmem.ProcessMemory)
    with open(f"/proc/{pid}/status", "rb") as f:
        vmrss = procref.kv_kb(f.read())["VmRSS"]
    ps_rss = psutil.Process(pid).memory_info().rss
    assert p.rss is not None
    assert abs(p.rss - vmrss) <= 0.05 * vmrss
    assert abs(p.rss - ps_rss) <= 0.05 * ps_rss
    assert p.footprint is not None and p.anon is not None and p.swap is not None
    assert p.footprint == p.anon + p.swap
    assert p.peak is not None and p.peak >= p.rss * 0.95
    boot = psutil.boot_time()
    assert p.start_time is not None
    assert abs((boot + p.start_time) - psutil.Process(pid).create_time()) < 1.0


def test_repeated_calls_leak_no_memory() -> None:
    """100 000 system() + processes() calls grow RSS by less than 1 MiB."""
    pids = [os.getpid(), 1]

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGESIZE")

    with metalmem.Sampler() as s:
        for _ in range(2000):  # warm up caches, the pid slots and allocator pools
            s.system()
            s.processes(pids)
        gc.collect()
        before = rss()
        for _ in range(100_000):
            s.system()
            s.processes(pids)
        gc.collect()
        after = rss()
    assert after - before < 1024 * 1024, f"grew by {after - before} bytes"


def test_snapshot_json_has_exact_bytes() -> None:
    agent = os.path.join(os.path.dirname(sys.executable), "metalmem-agent")
    out = subprocess.run(
        [agent, "snapshot", "--json", "--pid", str(os.getpid())],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    doc = json.loads(out.stdout)
    ref = _meminfo()
    assert doc["system"]["total"] == ref["total"]
    assert isinstance(doc["system"]["available"], int)
    proc = doc["processes"][str(os.getpid())]
    assert isinstance(proc["rss"], int) and proc["rss"] > 0
    assert doc["gpu"] is None or isinstance(doc["gpu"]["limit"], int)


def test_snapshot_table_and_bad_scope_exit_code() -> None:
    agent = os.path.join(os.path.dirname(sys.executable), "metalmem-agent")
    ok = subprocess.run([agent, "snapshot"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "available" in ok.stdout
    bad = subprocess.run(
        [agent, "snapshot", "--scope", "/no/such/cgroup"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert "--scope" in bad.stderr


@pytest.mark.parametrize("tree", ["rest", "pressure"])
def test_the_reusing_path_builds_exactly_what_the_generic_path_builds(tree: str) -> None:
    # A recorded tree does not change between calls: from the second call on, system()
    # reuses the last record's objects (same generation); only the clocks may differ.
    root = pathlib.Path(__file__).parent / "fixtures" / "proc" / tree
    with metalmem.Sampler(root=str(root)) as s:
        first = s.system()
        again = s.system()
        generic = metalmem.Sampler.system(s)  # the class's method: the generic path
    assert again.psi is not None and again.total is not None
    assert again.psi is first.psi  # reused, not rebuilt
    for record in (first, again):
        assert record._replace(timestamp=0.0, counters_timestamp=0.0) == generic._replace(
            timestamp=0.0, counters_timestamp=0.0
        )


def _rewrite(path: pathlib.Path, old: bytes, new: bytes) -> None:
    """Change a file in place (same inode: the sampler keeps it open and preads it)."""
    data = path.read_bytes()
    assert old in data and len(old) == len(new)
    with open(path, "r+b") as f:
        f.write(data.replace(old, new))


@pytest.mark.skipif(sys.platform != "linux", reason="Linux /proc formats")
def test_a_change_of_any_field_is_seen_by_the_next_call(tmp_path: pathlib.Path) -> None:
    # The reuse must never serve a stale value: each field the C layer does not treat as
    # moving (everything but available, free and the time) is changed once between calls.
    import shutil

    root = tmp_path / "root"
    shutil.copytree(pathlib.Path(__file__).parent / "fixtures" / "proc" / "pressure", root)
    meminfo, psi = root / "proc" / "meminfo", root / "proc" / "pressure" / "memory"
    with metalmem.Sampler(root=str(root)) as s:
        before = s.system()
        s.system()
        text = meminfo.read_bytes()
        line = next(ln for ln in text.splitlines() if ln.startswith(b"Unevictable:"))
        digits = line.split()[1]
        bumped = str(int(digits) + 1).rjust(len(digits)).encode()
        _rewrite(meminfo, line, line.replace(digits, bumped))
        after = s.system()
        assert after.wired == before.wired + 1024
        total_line = next(ln for ln in psi.read_bytes().splitlines() if ln.startswith(b"some"))
        old_total = total_line.rsplit(b"total=", 1)[1]
        new_total = str(int(old_total) + 1).rjust(len(old_total), "0").encode()
        _rewrite(psi, b"total=" + old_total, b"total=" + new_total)
        again = s.system()
        assert again.psi is not None and after.psi is not None
        assert again.psi.some_total == pytest.approx(after.psi.some_total + 1e-6)
        assert again.wired == after.wired


def _sleepers(n: int) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen(["sleep", "600"]) for _ in range(n)]


def _stop(kids: list[subprocess.Popen[bytes]]) -> None:
    for k in kids:
        k.kill()
    for k in kids:
        k.wait()


@pytest.mark.skipif(sys.platform != "linux", reason="Linux /proc fds")
def test_a_batch_larger_than_the_slot_table_keeps_every_pid_pinned() -> None:
    # The table starts with 512 slots; a batch of 600 must grow it rather than cycle through
    # it (which would reopen every pid on every call).
    kids = _sleepers(600)
    try:
        with metalmem.Sampler() as s:
            first = s.processes(k.pid for k in kids)
            second = s.processes(k.pid for k in kids)
            pinned = set()
            for fd in os.listdir("/proc/self/fd"):
                with contextlib.suppress(FileNotFoundError):  # listdir's own fd is gone
                    pinned.add(os.readlink(f"/proc/self/fd/{fd}"))
        for k in kids:
            a, b = first[k.pid], second[k.pid]
            assert isinstance(a, metalmem.ProcessMemory) and isinstance(b, metalmem.ProcessMemory)
            assert a.start_time == b.start_time and b.rss
        assert all(f"/proc/{k.pid}" in pinned for k in kids)
    finally:
        _stop(kids)


EMFILE_CHILD = """
import resource, subprocess, metalmem
kids = [subprocess.Popen(["sleep", "600"]) for _ in range(150)]
try:
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    with metalmem.Sampler() as s:
        for _ in range(3):
            r = s.processes(k.pid for k in kids)
            print(sum(isinstance(v, metalmem.ProcessMemory) for v in r.values()))
finally:
    for k in kids:
        k.kill()
        k.wait()
"""


@pytest.mark.skipif(sys.platform != "linux", reason="Linux /proc fds")
def test_running_out_of_fds_costs_reopens_not_records() -> None:
    # 150 pids need 300 fds; the process may hold 128. Slots are given back as fds run out,
    # and every record still comes back whole.
    out = subprocess.run(
        [sys.executable, "-c", EMFILE_CHILD], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["150", "150", "150"]
