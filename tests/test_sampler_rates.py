"""Each per-process figure is read at the rate it changes (csrc/linux.c, issue 15), and is
still equal to its /proc source: rss/anon from statm every call; swap 0 while /proc/swaps shows
none in use, else VmSwap; wired and peak from status every ~10 s, peak raised to rss between."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import time

import pytest

import metalmem

from . import procref

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads Linux /proc")

ROOT1 = pathlib.Path(__file__).resolve().parent / "fixtures" / "shared" / "procfs" / "root1"
PID = 26231  # VmSwap 660 kB, VmHWM 8028 kB; root1's swaps shows 176 kB in use
SWAPS_HEADER = b"Filename\t\t\t\tType\t\tSize\tUsed\tPriority\n"


def _root(tmp_path: pathlib.Path) -> pathlib.Path:
    root = tmp_path / "root1"
    shutil.copytree(ROOT1, root)
    return root


def _rewrite(path: pathlib.Path, old: bytes, new: bytes) -> None:
    """Change a file in place, same length (the sampler keeps some files open and preads)."""
    data = path.read_bytes()
    assert old in data and len(old) == len(new)
    with open(path, "r+b") as f:
        f.write(data.replace(old, new))


def _status(root: pathlib.Path) -> dict[str, int | None]:
    return procref.status((root / "proc" / str(PID) / "status").read_bytes())


def _proc(s: metalmem.Sampler) -> metalmem.ProcessMemory:
    p = s.processes([PID])[PID]
    assert isinstance(p, metalmem.ProcessMemory), p
    return p


def test_swap_is_vmswap_while_swap_is_in_use(tmp_path: pathlib.Path) -> None:
    root = _root(tmp_path)
    with metalmem.Sampler(root=str(root)) as s:
        assert _proc(s).swap == _status(root)["swap"] == 660 * 1024


@pytest.mark.parametrize(
    "swaps",
    [
        SWAPS_HEADER,  # no swap area at all
        SWAPS_HEADER + b"/dev/dm-2                               partition\t131068\t0\t-2\n",
        SWAPS_HEADER + b"/swap\\040file partition\t1024\t0\t-2\n/dev/zram0 partition\t8\t0\t100\n",
    ],
    ids=["no-areas", "area-unused", "two-unused"],
)
def test_swap_is_zero_while_no_swap_area_holds_a_page(tmp_path: pathlib.Path, swaps: bytes) -> None:
    # Nothing can be swapped out while no area holds a page, so status is not consulted for
    # it: the (stale, captured) VmSwap of 660 kB is not reported.
    root = _root(tmp_path)
    (root / "proc" / "swaps").write_bytes(swaps)
    with metalmem.Sampler(root=str(root)) as s:
        p = _proc(s)
    assert p.swap == 0
    assert p.peak == _status(root)["peak"]  # status was still read, for wired and peak
    assert p.wired == _status(root)["wired"]


@pytest.mark.parametrize(
    "swaps",
    [None, b"", SWAPS_HEADER + b"garbage without columns\n"],
    ids=["missing", "empty", "garbled"],
)
def test_unknown_swap_use_reads_vmswap(tmp_path: pathlib.Path, swaps: bytes | None) -> None:
    root = _root(tmp_path)
    if swaps is None:
        (root / "proc" / "swaps").unlink()
    else:
        (root / "proc" / "swaps").write_bytes(swaps)
    with metalmem.Sampler(root=str(root)) as s:
        assert _proc(s).swap == 660 * 1024


def test_swap_coming_into_use_is_read_within_a_second(tmp_path: pathlib.Path) -> None:
    root = _root(tmp_path)
    swaps = root / "proc" / "swaps"
    in_use = swaps.read_bytes()
    swaps.write_bytes(in_use.replace(b"\t176\t", b"\t  0\t"))
    with metalmem.Sampler(root=str(root)) as s:
        assert _proc(s).swap == 0
        swaps.write_bytes(in_use)
        deadline = time.monotonic() + 5.0
        while (p := _proc(s)).swap != 660 * 1024:
            assert time.monotonic() < deadline, "VmSwap never read after swap came into use"
            time.sleep(0.05)
        assert p.detail_timestamp is not None and p.detail_timestamp <= p.timestamp


def test_status_is_not_reread_every_call_while_no_swap_is_in_use(tmp_path: pathlib.Path) -> None:
    root = _root(tmp_path)
    (root / "proc" / "swaps").write_bytes(SWAPS_HEADER)
    status = root / "proc" / str(PID) / "status"
    # resident 1000 pages, below VmHWM as on a real kernel (the capture's statm is a trap)
    (root / "proc" / str(PID) / "statm").write_bytes(b"149919 1000 200 19864 0 14531 0\n")
    with metalmem.Sampler(root=str(root)) as s:
        first = _proc(s)
        assert first.peak == 8028 * 1024
        # VmHWM 8028 -> 9028 kB: seen only when status is read again (~9.4 s for this pid)
        _rewrite(status, b"8028 kB", b"9028 kB")
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            p = _proc(s)
            assert p.peak == first.peak and p.detail_timestamp == first.detail_timestamp
            time.sleep(0.1)
        deadline = time.monotonic() + 20.0
        while (p := _proc(s)).peak != 9028 * 1024:
            assert time.monotonic() < deadline, "status never read again"
            time.sleep(0.2)
    assert p.detail_timestamp is not None and first.detail_timestamp is not None
    assert 4.0 <= p.detail_timestamp - first.detail_timestamp <= 16.0


GROWER = """
import sys
sys.stdout.write("ready\\n"); sys.stdout.flush()
sys.stdin.readline()
block = bytearray(64 << 20)  # touched: 64 MiB more resident
for i in range(0, len(block), 4096):
    block[i] = 1
sys.stdout.write("grown\\n"); sys.stdout.flush()
sys.stdin.readline()
"""


def test_peak_follows_rss_between_status_reads() -> None:
    # A process that grows right after its status was read: the next call (status not due)
    # still reports peak >= rss, equal to the kernel's VmHWM read just after.
    child = subprocess.Popen(
        [sys.executable, "-c", GROWER], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        assert child.stdout.readline() == b"ready\n"
        with metalmem.Sampler() as s:
            before = s.processes([child.pid])[child.pid]
            assert isinstance(before, metalmem.ProcessMemory)
            child.stdin.write(b"\n")
            child.stdin.flush()
            assert child.stdout.readline() == b"grown\n"
            after = s.processes([child.pid])[child.pid]
            statm = (pathlib.Path("/proc") / str(child.pid) / "statm").read_bytes()
            status = (pathlib.Path("/proc") / str(child.pid) / "status").read_bytes()
        assert isinstance(after, metalmem.ProcessMemory)
        assert after.detail_timestamp == before.detail_timestamp  # status was not re-read
        ref = procref.statm(statm, os.sysconf("SC_PAGESIZE"))
        assert ref is not None and (after.rss, after.anon) == ref
        hwm = procref.status(status)["peak"]
        assert after.rss is not None and after.peak is not None and hwm is not None
        assert after.rss >= (before.rss or 0) + (60 << 20)
        assert after.peak >= after.rss
        assert after.peak == hwm  # grown and idle: the kernel's high-water mark is its rss
    finally:
        child.kill()
        child.wait()
