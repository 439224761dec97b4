"""The Python side of the macOS path, tested on any host.

derive_darwin against every real-Mac sample in ``shared/fixtures/macos-vm-samples.json``
(recorded vm_stat counters, two with what Activity Monitor showed), hypothesis for its
invariants, and sampler.py's mapping from a native ``struct mm_system``/``mm_proc`` filled with
recorded macOS values to the public records. The structs are real cffi structs laid out by the
header: the only stand-in is the native call that would have filled them on a Mac.
"""

from __future__ import annotations

import errno
import json
import pathlib
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import metalmem
from metalmem import Level, derive_darwin
from metalmem import sampler as sampler_mod

SAMPLES_PATH = (
    pathlib.Path(__file__).resolve().parent / "fixtures" / "shared" / "macos-vm-samples.json"
)
SAMPLES: list[dict[str, Any]] = json.loads(SAMPLES_PATH.read_text())
BY_ID = {s["id"]: s for s in SAMPLES}
GIB = 1 << 30

REQUIRED = (
    "free",
    "active",
    "inactive",
    "speculative",
    "wired_down",
    "purgeable",
    "file_backed",
    "anonymous",
    "occupied_by_compressor",
)
PARTS = ("available", "used", "app", "wired", "compressed", "cached", "free", "total")


def _derive(sample: dict[str, Any], total: int | None = None) -> dict[str, Any]:
    return derive_darwin(sample, sample["page_size"], total)


def _psutil_available(sample: dict[str, Any]) -> int:
    """psutil's macOS available: inactive + free, its free including speculative (§1.5)."""
    return (sample["inactive"] + sample["free"] + sample["speculative"]) * sample["page_size"]


def _assert_invariants(d: dict[str, Any]) -> None:
    for key in PARTS:
        assert isinstance(d[key], int) and d[key] >= 0, (key, d[key])
    assert d["app"] + d["wired"] + d["compressed"] == d["used"]
    assert d["used"] + d["available"] == d["total"]
    assert d["free"] <= d["available"] and d["cached"] <= d["available"]


# --- every recorded sample ------------------------------------------------------------------


def test_samples_cover_intel_apple_silicon_and_activity_monitor() -> None:
    assert len(SAMPLES) >= 9
    assert {s["page_size"] for s in SAMPLES} == {4096, 16384}
    assert sum(1 for s in SAMPLES if s["activity_monitor"]) == 2


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s["id"])
def test_derive_darwin_follows_the_formula_on_every_sample(sample: dict[str, Any]) -> None:
    missing = [k for k in REQUIRED if k not in sample]
    if missing:
        # A truncated capture: refused by name, never filled with a made-up 0.
        with pytest.raises(ValueError, match=re.escape(str(missing))):
            _derive(sample, sample["memsize_bytes"])
        return
    ps = sample["page_size"]
    d = _derive(sample, sample["memsize_bytes"])
    _assert_invariants(d)
    # Real counters never need the clamp: each part is exactly its vm_stat line.
    assert d["wired"] == sample["wired_down"] * ps
    assert d["compressed"] == sample["occupied_by_compressor"] * ps
    assert d["app"] == (sample["anonymous"] - sample["purgeable"]) * ps
    assert d["cached"] == (sample["file_backed"] + sample["purgeable"]) * ps
    assert d["free"] == sample["free"] * ps
    if sample["memsize_bytes"] is not None:
        assert d["total"] == sample["memsize_bytes"]
    for key in ("pageins", "pageouts", "swapins", "swapouts"):
        assert d[key] == (sample[key] * ps if key in sample else None)


@pytest.mark.parametrize("sample", [s for s in SAMPLES if "anonymous" in s], ids=lambda s: s["id"])
def test_vm_stat_pageable_pages_split_into_anonymous_and_file_backed(
    sample: dict[str, Any],
) -> None:
    # xnu vm_stats(): internal and external count the pageable queues, so on a full vm_stat
    # anonymous + file-backed = active + inactive + speculative (+ throttled). The Activity
    # Monitor test below relies on it to complete a truncated capture.
    pageable = sample["active"] + sample["inactive"] + sample["speculative"]
    assert sample["anonymous"] + sample["file_backed"] == pageable + sample.get("throttled", 0)


@pytest.mark.parametrize(
    "sample",
    [s for s in SAMPLES if s["memsize_bytes"] and all(k in s for k in REQUIRED)],
    ids=lambda s: s["id"],
)
def test_derive_darwin_page_sum_total_falls_short_of_memsize_by_under_2_percent(
    sample: dict[str, Any],
) -> None:
    derived = _derive(sample)
    _assert_invariants(derived)
    memsize = sample["memsize_bytes"]
    # Pages in no queue (firmware, kernel, in transit) are missing from the sum: 0.7 % of
    # 128 GiB and 1.6 % of 32 GiB on these Macs.
    assert 0.98 * memsize <= derived["total"] <= memsize
    assert derived["used"] == _derive(sample, memsize)["used"]


def test_derive_darwin_matches_activity_monitor_memory_used_within_3_percent() -> None:
    # kemalandic/edgecontrol#17: a 128 GiB Mac that Activity Monitor showed as 63 % used.
    sample = BY_ID["edgecontrol-17-128g"]
    assert sample["activity_monitor"]["memory_used_pct"] == "63%"
    d = _derive(sample, sample["memsize_bytes"])
    ours = d["used"] / d["total"]
    psutil_used = 1 - _psutil_available(sample) / d["total"]
    assert abs(ours - 0.63) <= 0.03  # measured: 0.613
    assert abs(ours - 0.63) < abs(psutil_used - 0.63)  # psutil: 0.489
    assert d["available"] < _psutil_available(sample)


def test_derive_darwin_matches_activity_monitor_cached_files_within_3_percent() -> None:
    # puppetlabs/facter-ng#229: "Physical Memory: 32.00 GB, Memory Used: 17.39 GB, Cached
    # Files: 5.74 GB" (Activity Monitor's GB are GiB). The capture stops before the anonymous
    # and compressor lines: anonymous follows from the pageable identity tested above, the
    # compressor is unknown, so it is given as 0 and "used" becomes a lower bound.
    sample = dict(BY_ID["facter-ng-229-pr"])
    am = sample["activity_monitor"]
    assert am["cached_files"] == "5.74 GB" and am["memory_used"] == "17.39 GB"
    total = sample["memsize_bytes"]
    with pytest.raises(ValueError, match="anonymous"):
        _derive(sample, total)
    sample["anonymous"] = (
        sample["active"] + sample["inactive"] + sample["speculative"] - sample["file_backed"]
    )
    sample["occupied_by_compressor"] = 0
    d = _derive(sample, total)
    _assert_invariants(d)
    assert abs(d["cached"] - 5.74 * GIB) <= 0.03 * total  # measured: 5.84 GiB, 0.3 % of RAM
    assert d["used"] <= 17.39 * GIB  # 14.4 GiB before the compressor's share


def test_derive_darwin_matches_top_physmem_wired_and_compressor() -> None:
    # The same moment seen by vm_stat and by top: "2019M wired, 2398M compressor".
    sample = BY_ID["mini2-openclaw-2026-05-24"]
    m = re.search(r"\((\d+)M wired, (\d+)M compressor\)", sample["top_physmem"])
    assert m is not None
    top_wired, top_compressor = (int(x) << 20 for x in m.groups())
    d = _derive(sample, sample["memsize_bytes"])
    assert abs(d["compressed"] - top_compressor) <= 1 << 20  # 2397.6 MiB: top rounds
    assert abs(d["wired"] - top_wired) <= 0.02 * top_wired  # 1995.6 MiB, 1.2 % apart


def test_derive_darwin_is_more_conservative_than_psutil_on_a_starved_mac() -> None:
    # hmcl-4876: 3,857 free pages, the compressor holding 1.94 M pages in 0.44 M.
    sample = BY_ID["hmcl-4876"]
    d = _derive(sample)
    assert round(d["available"] / GIB, 1) == 4.8
    assert round(_psutil_available(sample) / GIB, 1) == 6.8


def test_derive_darwin_ignores_unknown_counters() -> None:
    # macOS 26.6 added "Pages tagged*" lines; vm_stat also prints fault counters.
    sample = BY_ID["waired-835-m5pro-48g"]
    assert "tagged" in sample
    plain = {k: sample[k] for k in REQUIRED}
    assert _derive(sample) == {
        **derive_darwin(plain, sample["page_size"], None),
        **{
            k: sample[k] * sample["page_size"]
            for k in ("pageins", "pageouts", "swapins", "swapouts")
        },
    }


# --- invalid input -------------------------------------------------------------------------


def _counters(**overrides: Any) -> dict[str, Any]:
    base = {k: BY_ID["mini2-openclaw-2026-05-24"][k] for k in REQUIRED}
    base.update(overrides)
    return base


@pytest.mark.parametrize(
    ("counters", "page_size", "total", "message"),
    [
        (_counters(anonymous=-1), 16384, None, "'anonymous'"),
        (_counters(free=1.5), 16384, None, "'free'"),
        (_counters(wired_down=True), 16384, None, "'wired_down'"),
        (_counters(pageouts="12"), 16384, None, "'pageouts'"),
        (_counters(), 0, None, "page_size"),
        (_counters(), 16384.0, None, "page_size"),
        (_counters(), 16384, -1, "total"),
        ({k: 1 for k in REQUIRED if k != "occupied_by_compressor"}, 16384, None, "occupied"),
    ],
)
def test_derive_darwin_rejects_invalid_input_by_name(
    counters: dict[str, Any], page_size: Any, total: Any, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        derive_darwin(counters, page_size, total)


# --- invariants for arbitrary counters ---------------------------------------------------------

U64 = st.integers(min_value=0, max_value=2**64 - 1)
SMALL = st.integers(min_value=0, max_value=2**24)  # realistic page counts (up to 256 GiB)


@given(
    counters=st.fixed_dictionaries(
        {k: U64 | SMALL for k in REQUIRED},
        optional={k: U64 for k in ("pageins", "pageouts", "swapins", "swapouts", "throttled")},
    ),
    page_size=st.sampled_from([4096, 16384]) | st.integers(min_value=1, max_value=1 << 16),
    total=st.none() | st.integers(min_value=0, max_value=2**80),
)
def test_derive_darwin_invariants_hold_for_any_counters(
    counters: dict[str, int], page_size: int, total: int | None
) -> None:
    d = derive_darwin(counters, page_size, total)
    _assert_invariants(d)
    if total is not None:
        assert d["total"] == total
    for key in ("pageins", "pageouts", "swapins", "swapouts"):
        assert d[key] == (counters[key] * page_size if key in counters else None)


@given(counters=st.fixed_dictionaries({k: SMALL for k in REQUIRED}), extra=SMALL)
def test_derive_darwin_available_falls_by_exactly_what_is_wired(
    counters: dict[str, int], extra: int
) -> None:
    # A model wiring `extra` pages (Metal buffers): with RAM to spare (2^24-page counters never
    # fill 2^50 bytes, so nothing is clamped), available drops by exactly that many bytes.
    total = 2**50
    before = derive_darwin(counters, 16384, total)
    after = derive_darwin({**counters, "wired_down": counters["wired_down"] + extra}, 16384, total)
    assert before["available"] - after["available"] == extra * 16384
    assert (
        after["app"]
        == before["app"]
        == max(counters["anonymous"] - counters["purgeable"], 0) * 16384
    )


# --- sampler.py: struct mm_system / mm_proc -> records ---------------------------------------

ffi = sampler_mod.ffi
lib = sampler_mod.lib

# The vm_* fields of struct mm_system in header order, and their vm_stat labels.
VM_FIELDS = {
    "vm_free": "free",
    "vm_active": "active",
    "vm_inactive": "inactive",
    "vm_speculative": "speculative",
    "vm_throttled": "throttled",
    "vm_wired": "wired_down",
    "vm_purgeable": "purgeable",
    "vm_external": "file_backed",
    "vm_internal": "anonymous",
    "vm_compressor_stored": "stored_in_compressor",
    "vm_compressor_occupied": "occupied_by_compressor",
    "vm_pageins": "pageins",
    "vm_pageouts": "pageouts",
    "vm_swapins": "swapins",
    "vm_swapouts": "swapouts",
}
DARWIN_PHAVE = (
    lib.MM_PHAVE_START | lib.MM_PHAVE_RSS | lib.MM_PHAVE_FOOTPRINT | lib.MM_PHAVE_WIRED
    | lib.MM_PHAVE_PEAK
)  # fmt: skip
# ollama/ollama#1627 (reference §4.5): an M1 Pro reported recommendedMaxWorkingSetSize 22906 MB.
M1_PRO_WORKING_SET = 22906 << 20


def _darwin_struct(sample: dict[str, Any], have: int, **fields: Any) -> tuple[Any, ...]:
    """A struct mm_system as darwin.c fills it from these counters, unpacked as sampler.py
    unpacks it."""
    raw = ffi.new("struct mm_system *")
    raw.have = have | lib.MM_HAVE_VM_PAGES
    raw.page_size = sample["page_size"]
    for field, label in VM_FIELDS.items():
        setattr(raw, field, sample.get(label, 0))
    raw.sampled_at = 1000.25
    raw.slow_at = 999.75
    for name, value in fields.items():
        setattr(raw, name, value)
    return sampler_mod._SYS.unpack_from(ffi.buffer(raw))


def test_system_from_raw_maps_a_recorded_mac_sample() -> None:
    sample = BY_ID["mini2-openclaw-2026-05-24"]
    have = (
        lib.MM_HAVE_TOTAL | lib.MM_HAVE_OS_LEVEL | lib.MM_HAVE_VM_EVENTS | lib.MM_HAVE_GPU_LIMIT
        | lib.MM_HAVE_GPU_USED
    )  # fmt: skip
    raw = _darwin_struct(
        sample, have, total=sample["memsize_bytes"], os_level=1,
        gpu_limit=M1_PRO_WORKING_SET, gpu_used=3 << 30,
    )  # fmt: skip
    m = sampler_mod.system_from_raw(raw, "host")
    d = derive_darwin(sample, sample["page_size"], sample["memsize_bytes"])
    ps = sample["page_size"]
    assert m.total == 34359738368
    assert (m.available, m.free, m.wired, m.compressed) == (
        d["available"], d["free"], d["wired"], d["compressed"],
    )  # fmt: skip
    assert m.wired == 127718 * ps and m.compressed == 153447 * ps
    assert m.pageouts == 847858 * ps and m.swapouts == 0
    assert m.os_level is Level.NORMAL
    assert (m.gpu_limit, m.gpu_used) == (M1_PRO_WORKING_SET, 3 << 30)
    # What macOS cannot provide is None, never 0: no PSI, no OOM counter, no cgroup limit.
    assert m.psi is None and m.oom_kills is None and m.limited is False
    assert m.swap_total is None and m.swap_used is None  # MM_HAVE_SWAP clear
    assert (m.scope, m.timestamp, m.counters_timestamp) == ("host", 1000.25, 999.75)


@pytest.mark.parametrize(
    ("raw_level", "level"),
    [(1, Level.NORMAL), (2, Level.WARNING), (4, Level.CRITICAL), (3, None), (0, None)],
)
def test_system_from_raw_maps_kern_memorystatus_vm_pressure_level(
    raw_level: int, level: Level | None
) -> None:
    sample = BY_ID["mini2-openclaw-2026-05-24"]
    m = sampler_mod.system_from_raw(
        _darwin_struct(sample, lib.MM_HAVE_OS_LEVEL, os_level=raw_level), "host"
    )
    assert m.os_level is level
    unread = sampler_mod.system_from_raw(_darwin_struct(sample, 0, os_level=4), "host")
    assert unread.os_level is None  # sysctl failed: the bit is clear, the value unread


def test_system_from_raw_reports_none_for_missing_sysctls() -> None:
    # hw.memsize, vm.swapusage, the pressure level and the GPU all unread; only the page
    # counters (which mm_system cannot do without) came back, without the event counters.
    sample = BY_ID["wazuh-22113-intel"]
    m = sampler_mod.system_from_raw(
        _darwin_struct(sample, 0, total=123, swap_total=5, gpu_limit=7, os_level=1), "host"
    )
    d = derive_darwin(sample, sample["page_size"], None)
    assert m.total == d["total"] == 8387868 * 4096  # summed from the page queues
    assert m.available == d["available"]
    assert m.pageouts is None and m.swapouts is None
    assert m.swap_total is None and m.swap_used is None
    assert m.os_level is None and m.gpu_limit is None and m.gpu_used is None


def test_system_from_raw_maps_swap_from_xsw_usage() -> None:
    sample = BY_ID["facter-ng-229-fixture"]
    m = sampler_mod.system_from_raw(
        _darwin_struct(
            sample, lib.MM_HAVE_SWAP | lib.MM_HAVE_VM_EVENTS, swap_total=2 << 30,
            swap_used=1_492_123_648,
        ), "host",
    )  # fmt: skip
    assert (m.swap_total, m.swap_used) == (2 << 30, 1_492_123_648)
    assert m.swapouts == 10972484 * 4096  # pages swapped out through compressor segments


def _proc_struct(**fields: Any) -> tuple[Any, ...]:
    raw = ffi.new("struct mm_proc *")
    for name, value in fields.items():
        setattr(raw, name, value)
    return sampler_mod._PROC.unpack_from(ffi.buffer(raw))


def test_process_from_raw_maps_a_darwin_record() -> None:
    # ml-explore/mlx#3350 (reference §3.4): a 108 GB footprint, 106 GB of it IOAccelerator.
    raw = _proc_struct(
        pid=4242, have=DARWIN_PHAVE, rss=2_300_000_000, footprint=108_000_000_000,
        wired=106_000_000_000, peak=110_000_000_000, start_time=1_786_000_000.5,
        sampled_at=56.0, detail_at=55.5,
    )  # fmt: skip
    p = sampler_mod.process_from_raw(raw)
    assert isinstance(p, metalmem.ProcessMemory)
    assert (p.pid, p.start_time, p.rss, p.footprint, p.wired, p.peak) == (
        4242, 1_786_000_000.5, 2_300_000_000, 108_000_000_000, 106_000_000_000, 110_000_000_000,
    )  # fmt: skip
    assert p.swap is None and p.anon is None  # proc_pid_rusage has neither
    assert (p.timestamp, p.detail_timestamp) == (56.0, 55.5)


@pytest.mark.parametrize(
    ("err", "exc_type"),
    [
        (errno.ESRCH, metalmem.NoSuchProcess),  # proc_pidinfo on a gone pid
        (errno.EPERM, metalmem.AccessDenied),  # another uid's process, not root (§3.1)
        (errno.EACCES, metalmem.AccessDenied),
        (errno.ENOTSUP, metalmem.Unsupported),
    ],
)
def test_process_from_raw_maps_errno_to_the_public_exceptions(
    err: int, exc_type: type[metalmem.Error]
) -> None:
    result = sampler_mod.process_from_raw(_proc_struct(pid=77, err=err, call=0))
    assert type(result) is exc_type
    assert result.pid == 77 and result.errno == err


def test_process_from_raw_keeps_other_errno_as_oserror() -> None:
    result = sampler_mod.process_from_raw(_proc_struct(pid=77, err=errno.EIO, call=0))
    assert type(result) is OSError and result.errno == errno.EIO
