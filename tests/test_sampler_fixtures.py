"""The Linux sampler over captured /proc trees and hostile bytes.

Every value must be exact (equal to an independent pure-Python reading of the same bytes,
tests/procref.py) or None; a broken file yields None or a clear metalmem.Error, never a
crash, a partial object or a wrong number.
"""

from __future__ import annotations

import math
import os
import pathlib
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import metalmem
from metalmem.sampler import parse_proc_file

from . import procref

SHARED = pathlib.Path(__file__).resolve().parent / "fixtures" / "shared" / "procfs"
OURS = pathlib.Path(__file__).resolve().parent / "fixtures" / "proc"
PAGE = os.sysconf("SC_PAGESIZE")
TICKS = os.sysconf("SC_CLK_TCK")


def roots() -> list[pathlib.Path]:
    found = sorted(p for p in SHARED.glob("root*") if p.is_dir())
    found += sorted(p for p in OURS.glob("*") if p.is_dir())
    return found


ROOTS = roots()


def _read(path: pathlib.Path) -> bytes | None:
    return path.read_bytes() if path.is_file() else None


@pytest.mark.parametrize("root", ROOTS, ids=lambda p: p.name)
def test_system_matches_reference_reading(root: pathlib.Path) -> None:
    with metalmem.Sampler(root=str(root)) as s:
        m = s.system()
    meminfo = _read(root / "proc" / "meminfo")
    expected = procref.meminfo(meminfo) if meminfo is not None else {}
    for field in ("total", "available", "free", "wired", "compressed", "swap_total", "swap_used"):
        assert getattr(m, field) == expected.get(field), field
    vmstat = _read(root / "proc" / "vmstat")
    if vmstat is None:
        assert (m.pageouts, m.swapouts, m.oom_kills) == (None, None, None)
    else:
        kv = dict(line.split(b" ", 1) for line in procref.complete_lines(vmstat) if b" " in line)
        pswpout = kv.get(b"pswpout")
        anon, file = kv.get(b"workingset_refault_anon"), kv.get(b"workingset_refault_file")
        if anon is not None and file is not None:
            refaults: int | None = int(anon) + int(file)
        else:
            one = kv.get(b"workingset_refault")
            refaults = int(one) if one is not None and anon is None and file is None else None
        assert m.pageouts == (refaults * PAGE if refaults is not None else None)
        assert m.swapouts == (int(pswpout) * PAGE if pswpout else None)
    pressure = _read(root / "proc" / "pressure" / "memory")
    if pressure is None:
        assert m.psi is None
    else:
        ref = procref.psi(pressure)
        assert m.psi is not None
        for kind in ("some", "full"):
            a10, a60, total = ref[kind]
            assert getattr(m.psi, f"{kind}_avg10") == pytest.approx(a10)
            assert getattr(m.psi, f"{kind}_avg60") == pytest.approx(a60)
            assert getattr(m.psi, f"{kind}_total") == pytest.approx(total / 1e6)
    assert m.scope == "host" and m.os_level is None


def test_system_values_from_the_captures_by_hand() -> None:
    """A few numbers read off the files by eye, so the reference itself is checked too."""
    with metalmem.Sampler(root=str(SHARED / "root1")) as s:
        m1 = s.system()
    assert m1.total == 15666184 * 1024
    assert m1.available is None  # root1 predates MemAvailable: None, not an estimate
    assert m1.compressed == 22414 * 1024
    assert m1.psi is not None and m1.psi.full_avg60 == pytest.approx(3.0)
    with metalmem.Sampler(root=str(SHARED / "root7")) as s:
        m7 = s.system()  # starts with a 2.4-style table header
    assert (m7.total, m7.available) == (254472 * 1024, 210156 * 1024)
    with metalmem.Sampler(root=str(SHARED / "root8")) as s:
        m8 = s.system()  # cut short after 4 keys
    assert m8.available == 127880216 * 1024
    assert (m8.wired, m8.swap_total, m8.swap_used) == (None, None, None)
    with metalmem.Sampler(root=str(SHARED / "root2")) as s:
        m2 = s.system()
    assert m2.swap_used == (4194300 - 3155360) * 1024


def _pid_dirs() -> list[tuple[pathlib.Path, int]]:
    out = []
    for root in ROOTS:
        for d in sorted((root / "proc").iterdir()):
            if d.is_dir() and d.name.isdigit():
                out.append((root, int(d.name)))
    return out


@pytest.mark.parametrize(("root", "pid"), _pid_dirs(), ids=lambda v: str(v))
def test_process_matches_reference_or_is_a_clear_error(root: pathlib.Path, pid: int) -> None:
    d = root / "proc" / str(pid)
    with metalmem.Sampler(root=str(root)) as s:
        result = s.processes([pid])[pid]
    statm, status, stat = _read(d / "statm"), _read(d / "status"), _read(d / "stat")
    if statm is None or stat is None or procref.stat_start_ticks(stat) is None:
        assert isinstance(result, metalmem.Error)
        return
    assert isinstance(result, metalmem.ProcessMemory), result
    ref_statm = procref.statm(statm, PAGE)
    assert ref_statm is not None
    assert (result.rss, result.anon) == ref_statm
    ticks = procref.stat_start_ticks(stat)
    assert ticks is not None and result.start_time == pytest.approx(ticks / TICKS)
    ref_status = procref.status(status) if status is not None else {}
    assert result.swap == ref_status.get("swap")
    assert result.peak == ref_status.get("peak")
    assert result.wired == ref_status.get("wired")
    if result.anon is not None and result.swap is not None:
        assert result.footprint == result.anon + result.swap
    else:
        assert result.footprint is None


def test_process_traps_from_the_captures() -> None:
    # root1 26231: statm's shared is 2^64-1 > resident: rss exact, anon/footprint unknown.
    with metalmem.Sampler(root=str(SHARED / "root1")) as s:
        procs = s.processes([26231, 26233, 584])
    p = procs[26231]
    assert isinstance(p, metalmem.ProcessMemory)
    assert p.rss == 12547 * PAGE and p.anon is None and p.footprint is None
    # 26233 has no stat, status or statm at all; 584 has only a stat.
    assert isinstance(procs[26233], metalmem.NoSuchProcess)
    assert isinstance(procs[584], metalmem.NoSuchProcess)


@pytest.mark.parametrize(
    ("path", "ticks"),
    [
        ("root1/proc/584/stat", 10839175),  # comm "(a b ) ( c d) )" and a junk second line
        ("root1/proc/26232/stat", 5),  # int64 boundary values in other fields
        ("root9/proc/68927/stat", 114413973),  # comm with parentheses
        ("root10/proc/1/stat", 25),  # illumos LX zone: only 39 fields, 22 among them
        ("root11/proc/1/stat", "ref"),
    ],
)
def test_stat_start_time_after_the_last_paren(path: str, ticks: int | str | None) -> None:
    data = (SHARED / path).read_bytes()
    parsed = parse_proc_file("stat", data)
    expected = procref.stat_start_ticks(data) if ticks in ("ref", None) else ticks
    if expected is None:
        assert parsed is None
    else:
        assert parsed == {"start_time": pytest.approx(int(expected) / 100)}


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"MemTotal:",
        b"MemTotal: 100",  # no newline: a cut-off line never yields a shortened number
        b"MemTotal: 18446744073709551615 kB\n",  # overflows when scaled: dropped
        b"MemTotal: -5 kB\n",
        b"MemTotal: 12x kB\n",
        b"MemTotal: 100 kB\nMemAvailable: 200 kB\n",  # available > total: garbled
        b"MemTotal: 100 kB\nMemTotal: 999 kB\n",  # the first one wins
        b"\x00\xff\n:::\nMemFree:\t\t7 kB\n",
        b"SwapTotal: 10 kB\nSwapFree: 20 kB\n",  # free > total: no swap figures
    ],
)
def test_meminfo_hostile_inputs(data: bytes) -> None:
    parsed = parse_proc_file("meminfo", data)
    assert parsed is not None
    ref = {k: v for k, v in procref.meminfo(data).items() if v is not None}
    assert parsed == ref


@pytest.mark.parametrize(
    "data",
    [
        b"some avg10=0.00 avg60=0.00 avg300=0.00 total=0",  # no newline
        b"some avg10=101.00 avg60=0.00 avg300=0.00 total=0\n",
        b"some avg10=1.5 avg60=2 avg300=3 total=-1\n",
        b"full avg10=1. avg60=2 avg300=3 total=4\n",
        b"some avg60=2 avg10=1 avg300=3 total=4\n",
        b"some avg10=1 avg60=2 avg300=3 total=4 extra\n",
    ],
)
def test_psi_hostile_inputs(data: bytes) -> None:
    parsed = parse_proc_file("psi", data)
    assert parsed == {}


def test_truncated_and_garbled_trees(tmp_path: pathlib.Path) -> None:
    """A tree whose files were cut mid-number or replaced by junk: None or exact."""
    shutil.copytree(SHARED / "root11", tmp_path / "r", symlinks=True)
    proc = tmp_path / "r" / "proc"
    text = (proc / "meminfo").read_bytes()
    cut = text.index(b"MemAvailable:") + len(b"MemAvailable:   6324")
    (proc / "meminfo").write_bytes(text[:cut])
    (proc / "vmstat").write_bytes(b"\xde\xad\xbe\xef" * 100)
    with metalmem.Sampler(root=str(tmp_path / "r")) as s:
        m = s.system()
    assert m.total == 65429972 * 1024 and m.free == 31539768 * 1024
    assert m.available is None  # cut mid-number: not 6324 kB
    assert (m.pageouts, m.swapouts) == (None, None)


def test_missing_root_is_a_clear_error(tmp_path: pathlib.Path) -> None:
    with pytest.raises(OSError, match="open root"):
        metalmem.Sampler(root=str(tmp_path / "nothing-here"))


# --- hypothesis: arbitrary and near-valid bytes --------------------------------------------

_KEYS = [
    "MemTotal",
    "MemFree",
    "MemAvailable",
    "Unevictable",
    "Zswap",
    "SwapTotal",
    "SwapFree",
    "VmSwap",
    "VmHWM",
    "VmLck",
    "VmPin",
    "VmRSS",
    "Junk",
]
_num = st.one_of(st.integers(0, 2**70), st.sampled_from([0, 2**64 - 1, 2**54, 2**54 - 1]))
_line = st.tuples(
    st.sampled_from(_KEYS),
    st.sampled_from([":", ": ", ":\t", " :"]),
    _num,
    st.sampled_from([" kB", "", " kb", "kB", " kB junk"]),
)


@st.composite
def kv_files(draw: st.DrawFn) -> bytes:
    lines = draw(st.lists(_line, max_size=12))
    text = "".join(f"{k}{sep}{v}{unit}\n" for k, sep, v, unit in lines).encode()
    cut = draw(st.integers(0, len(text)))
    return text[:cut] if draw(st.booleans()) else text


_settings = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_settings
@given(st.one_of(st.binary(max_size=600), kv_files()))
def test_meminfo_arbitrary_bytes_exact_or_none(data: bytes) -> None:
    parsed = parse_proc_file("meminfo", data)
    assert parsed is not None
    ref = {k: v for k, v in procref.meminfo(data).items() if v is not None}
    assert parsed == ref


@_settings
@given(st.one_of(st.binary(max_size=600), kv_files()))
def test_status_arbitrary_bytes_exact_or_none(data: bytes) -> None:
    parsed = parse_proc_file("status", data)
    assert parsed is not None
    ref = {k: v for k, v in procref.status(data).items() if v is not None}
    assert parsed == ref


_dec = st.one_of(
    st.integers(0, 120).map(str),
    st.floats(0, 120).map(lambda f: f"{f:.2f}"),
    st.sampled_from(["1.", ".5", "-1", "1e3", "nan"]),
)


@st.composite
def psi_files(draw: st.DrawFn) -> bytes:
    out = []
    for kind in draw(st.lists(st.sampled_from(["some", "full", "other"]), max_size=3)):
        a, b, c = draw(_dec), draw(_dec), draw(_dec)
        total = draw(st.one_of(st.integers(0, 2**65).map(str), st.sampled_from(["-3", "x"])))
        out.append(f"{kind} avg10={a} avg60={b} avg300={c} total={total}\n")
    text = "".join(out).encode()
    return text[: draw(st.integers(0, len(text)))] if draw(st.booleans()) else text


@_settings
@given(st.one_of(st.binary(max_size=300), psi_files()))
def test_psi_arbitrary_bytes_exact_or_none(data: bytes) -> None:
    parsed = parse_proc_file("psi", data)
    assert parsed is not None
    ref = procref.psi(data)
    psi = parsed.get("psi")
    for kind in ("some", "full"):
        got = None if psi is None else getattr(psi, f"{kind}_avg10")
        if kind not in ref:
            assert got is None
            continue
        a10, a60, total = ref[kind]
        assert psi is not None
        assert math.isclose(getattr(psi, f"{kind}_avg10"), a10, rel_tol=1e-12, abs_tol=1e-12)
        assert math.isclose(getattr(psi, f"{kind}_avg60"), a60, rel_tol=1e-12, abs_tol=1e-12)
        assert getattr(psi, f"{kind}_total") == pytest.approx(total / 1e6, rel=1e-12)


@st.composite
def stat_files(draw: st.DrawFn) -> bytes:
    comm = draw(st.text(alphabet="ab )( \n", max_size=8))
    fields = draw(
        st.lists(
            st.one_of(st.integers(-(2**63), 2**66).map(str), st.sampled_from(["", "S", "x1"])),
            min_size=15,
            max_size=45,
        )
    )
    text = f"{draw(st.integers(1, 99999))} ({comm}) " + " ".join(fields)
    text += draw(st.sampled_from(["\n", "", "\n#junk\n", " \n"]))
    return text.encode()


@_settings
@given(st.one_of(st.binary(max_size=400), stat_files()))
def test_stat_arbitrary_bytes_exact_or_none(data: bytes) -> None:
    parsed = parse_proc_file("stat", data)
    ref = procref.stat_start_ticks(data)
    if parsed is not None:
        assert ref is not None
        assert parsed["start_time"] == pytest.approx(ref / 100, rel=1e-12)


@st.composite
def statm_files(draw: st.DrawFn) -> bytes:
    nums = draw(
        st.lists(
            st.one_of(st.integers(0, 2**66).map(str), st.sampled_from(["x", "-1"])), max_size=8
        )
    )
    sep = draw(st.sampled_from([" ", "\t", "  ", " x"]))
    return (sep.join(nums) + draw(st.sampled_from(["\n", ""]))).encode()


@_settings
@given(st.one_of(st.binary(max_size=200), statm_files()))
def test_statm_arbitrary_bytes_exact_or_none(data: bytes) -> None:
    parsed = parse_proc_file("statm", data)
    ref = procref.statm(data, 4096)
    if parsed is None:
        return
    assert ref is not None
    rss, anon = ref
    assert parsed.get("rss") == rss
    assert parsed.get("anon") == anon
