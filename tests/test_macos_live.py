"""The macOS sampler against the OS's own tools, on a real Mac (CI: macos-14, arm64).

system() is compared with `sysctl` and `vm_stat`, processes() with `ps -o rss=` and psutil,
the GPU with `sysctl iogpu.wired_limit_mb` and `ioreg`'s IOAccelerator statistics, and the
dispatch pressure source is opened, waited on and closed. The tools run a moment after the
sampler, so counters that move are compared within a tolerance of RAM; constants (hw.memsize)
exactly. Everything here skips elsewhere; tests/test_darwin_shim.py runs the same darwin.c on
Linux against recorded values.
"""

from __future__ import annotations

import os
import platform
import re
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

import metalmem
from metalmem import Level, Sampler, derive_darwin

pytestmark = pytest.mark.skipif(sys.platform != "darwin", reason="needs macOS")

MIB = 1 << 20

# vm_stat's labels -> derive_darwin's keys (system_cmds vm_stat.c; reference §1.1).
VM_STAT_KEYS = {
    "Pages free": "free",
    "Pages active": "active",
    "Pages inactive": "inactive",
    "Pages speculative": "speculative",
    "Pages throttled": "throttled",
    "Pages wired down": "wired_down",
    "Pages purgeable": "purgeable",
    "File-backed pages": "file_backed",
    "Anonymous pages": "anonymous",
    "Pages stored in compressor": "stored_in_compressor",
    "Pages occupied by compressor": "occupied_by_compressor",
    "Pageins": "pageins",
    "Pageouts": "pageouts",
    "Swapins": "swapins",
    "Swapouts": "swapouts",
}
OS_LEVELS = {1: Level.NORMAL, 2: Level.WARNING, 4: Level.CRITICAL}


def run(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=30).stdout


def sysctl_int(name: str) -> int:
    return int(run("/usr/sbin/sysctl", "-n", name).strip())


def vm_stat() -> tuple[int, dict[str, int]]:
    """(page size, counters) from `vm_stat`, in derive_darwin's vocabulary."""
    text = run("/usr/bin/vm_stat")
    m = re.search(r"page size of (\d+) bytes", text)
    assert m, text
    counters = {}
    for line in text.splitlines()[1:]:
        label, _, value = line.partition(":")
        if label.strip() in VM_STAT_KEYS:
            counters[VM_STAT_KEYS[label.strip()]] = int(value.strip().rstrip("."))
    return int(m.group(1)), counters


@pytest.fixture
def sampler() -> Iterator[Sampler]:
    with Sampler() as s:
        yield s


def test_system_total_is_hw_memsize(sampler: Sampler) -> None:
    assert sampler.system().total == sysctl_int("hw.memsize")


def test_system_matches_vm_stat_within_2_percent_of_ram(sampler: Sampler) -> None:
    m = sampler.system()
    page_size, counters = vm_stat()
    # vm_stat prints vm_kernel_page_size, the unit darwin.c uses: a 4x unit error (Rosetta's
    # 4 KiB getpagesize on a 16 KiB kernel, §1.2) would show in every byte figure below.
    assert page_size in (4096, 16384)
    d = derive_darwin(counters, page_size, m.total)
    tolerance = 0.02 * m.total
    for field in ("available", "wired", "compressed"):
        assert abs(getattr(m, field) - d[field]) <= tolerance, (field, getattr(m, field), d)
    # Cumulative counters: the sample came first, and its slow part is at most 1 s old.
    assert m.pageouts <= d["pageouts"] <= m.pageouts + 0.05 * m.total
    assert m.swapouts <= d["swapouts"] <= m.swapouts + 0.05 * m.total


def test_system_swap_matches_vm_swapusage(sampler: Sampler) -> None:
    m = sampler.system()
    # "total = 1024.00M  used = 0.00M  free = 1024.00M  (encrypted)"
    text = run("/usr/sbin/sysctl", "-n", "vm.swapusage")
    total, used = (float(x) * MIB for x in re.findall(r"(?:total|used) = ([\d.]+)M", text))
    assert m.swap_total is not None and m.swap_used is not None
    assert abs(m.swap_total - total) <= 0.01 * MIB + 1  # sysctl prints 2 decimals of MiB
    assert abs(m.swap_used - used) <= 256 * MIB  # swap moves between the two reads


def test_system_os_level_matches_the_pressure_sysctl(sampler: Sampler) -> None:
    for _ in range(3):  # the level can move between the two reads; it rarely does twice
        level = sampler.system().os_level
        if level is OS_LEVELS.get(sysctl_int("kern.memorystatus_vm_pressure_level")):
            return
    pytest.fail(f"os_level {level} never matched kern.memorystatus_vm_pressure_level")


def test_system_timestamp_is_time_monotonic(sampler: Sampler) -> None:
    before = time.monotonic()
    m = sampler.system()
    assert before - 0.01 <= m.timestamp <= time.monotonic() + 0.01
    assert m.counters_timestamp is not None and m.counters_timestamp <= m.timestamp


def test_system_survives_the_host_statistics_rate_limit(sampler: Sampler) -> None:
    # 50 samples in well under a second: host_statistics64 is read once (§1.3), the
    # unthrottled sysctls every time, and the invariants hold throughout.
    for _ in range(50):
        m = sampler.system()
        assert m.available is not None and m.total is not None
        assert 0 <= m.available <= m.total


def test_gpu_is_metal_or_absent(sampler: Sampler) -> None:
    g = sampler.gpu()
    if g is None:
        assert "gpu" not in sampler.capabilities
        pytest.skip("no Metal device on this runner")
    assert "gpu" in sampler.capabilities and g.name
    assert g.limit is not None and g.limit > 0
    wired_limit_mb = sysctl_int("iogpu.wired_limit_mb") if platform.machine() == "arm64" else 0
    if wired_limit_mb:
        assert g.limit == wired_limit_mb * MIB
    m = sampler.system()
    assert m.gpu_limit == g.limit
    if platform.machine() == "arm64":
        assert g.unified is True


def ioreg_performance_statistics() -> list[dict[str, int]]:
    """Every IOAccelerator's PerformanceStatistics, from `ioreg -a` (a plist), numbers only."""
    import plistlib

    out = subprocess.run(
        ["/usr/sbin/ioreg", "-a", "-r", "-d", "1", "-c", "IOAccelerator"],
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout
    rows = plistlib.loads(out) if out.strip() else []
    return [
        {k: v for k, v in row["PerformanceStatistics"].items() if isinstance(v, int)}
        for row in rows
        if isinstance(row.get("PerformanceStatistics"), dict)
    ]


def test_gpu_used_is_the_ioregistrys_system_wide_figure(sampler: Sampler) -> None:
    # ioreg runs a moment after the sampler: GPU allocations move, so within 256 MiB.
    g = sampler.gpu()
    stats = ioreg_performance_statistics()
    if g is None or not stats:
        pytest.skip("no IOAccelerator with PerformanceStatistics on this runner")
    first = stats[0]
    for field, key in (("used", "In use system memory"), ("allocated", "Alloc system memory")):
        value = getattr(g, field)
        if key not in first:
            assert value is None, (field, value)  # a missing key is unknown, never 0
        else:
            assert value is not None and abs(value - first[key]) <= 256 * MIB, (field, first)


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    # Holds 64 MiB of touched anonymous memory until killed.
    proc = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; b = bytearray(b'x') * (64 << 20); print('ready', flush=True); "
         "time.sleep(60)"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    yield proc
    proc.kill()
    proc.wait()


def test_processes_match_ps_rss_and_psutil_start_time(
    sampler: Sampler, child: subprocess.Popen[bytes]
) -> None:
    psutil = pytest.importorskip("psutil")
    pids = [os.getpid(), child.pid]
    records = sampler.processes(pids)
    for pid in pids:
        p = records[pid]
        assert isinstance(p, metalmem.ProcessMemory), p
        rss = int(run("/bin/ps", "-o", "rss=", "-p", str(pid)).strip()) * 1024
        assert abs(p.rss - rss) <= max(8 * MIB, 0.1 * rss), (pid, p.rss, rss)
        assert abs(p.start_time - psutil.Process(pid).create_time()) <= 1.0
        assert p.footprint is not None and p.peak is not None and p.peak >= p.footprint
        assert p.swap is None and p.anon is None  # proc_pid_rusage has neither
    held = records[child.pid]
    assert isinstance(held, metalmem.ProcessMemory) and held.footprint >= 64 * MIB


def test_processes_report_gone_and_foreign_processes_per_item(sampler: Sampler) -> None:
    gone = subprocess.Popen(["/usr/bin/true"])
    gone.wait()
    records = sampler.processes([gone.pid, 1, os.getpid()])
    assert isinstance(records[gone.pid], metalmem.NoSuchProcess)
    if os.geteuid() != 0:  # launchd belongs to root: same-uid rule (§3.1)
        assert isinstance(records[1], metalmem.AccessDenied)
    assert isinstance(records[os.getpid()], metalmem.ProcessMemory)


def test_sampler_refuses_a_cgroup_scope() -> None:
    with pytest.raises(metalmem.Unsupported):
        Sampler(scope="/sys/fs/cgroup/memory/x")


def test_pressure_events_open_wait_and_close(sampler: Sampler) -> None:
    before = set(os.listdir("/dev/fd"))
    ev = sampler.events()
    fd = ev.fileno()
    with selectors.DefaultSelector() as sel:
        sel.register(ev, selectors.EVENT_READ)
        ready = sel.select(0.5)
    level = ev.read()
    # Nothing is expected on an idle runner, but a real transition is not an error.
    assert (level is None) if not ready else isinstance(level, Level)
    ev.close()
    assert str(fd) not in os.listdir("/dev/fd")
    assert set(os.listdir("/dev/fd")) <= before | {str(fd)}


@pytest.mark.skipif(os.geteuid() != 0, reason="memory_pressure -S writes a root-only sysctl")
def test_pressure_events_deliver_a_simulated_warning(sampler: Sampler) -> None:
    with sampler.events() as ev, selectors.DefaultSelector() as sel:
        sel.register(ev, selectors.EVENT_READ)
        subprocess.run(["/usr/bin/memory_pressure", "-S", "-l", "warn"], check=True, timeout=30)
        try:
            deadline = time.monotonic() + 10
            level = None
            while level is None and (left := deadline - time.monotonic()) > 0:
                if sel.select(left):
                    level = ev.read()
        finally:
            subprocess.run(["/usr/bin/memory_pressure", "-S", "-l", "normal"], timeout=30)
    assert level in (Level.WARNING, Level.CRITICAL)
