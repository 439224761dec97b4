"""csrc/darwin.c executed on Linux, through the public Sampler, against a shim of Apple's APIs.

``make test-darwin-shim`` builds darwin.c unchanged against tests/darwin_shim (Mach, sysctl,
libproc, dispatch, and dlopen'ed libobjc/Metal/IOKit/CoreFoundation, whose types are checked
against Apple's headers) and runs this file with that build as ``metalmem._native``. The shim
replays values recorded on real Macs (tests/fixtures/shared/macos-vm-samples.json, the reference's
figures, IOAccelerator dictionaries printed by ``ioreg``) and the failures the real calls have.
What each test asserts comes from those recordings, not from darwin.c. Elsewhere this file skips.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import pathlib
import selectors
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from typing import Any

import pytest

import metalmem
from metalmem import Level, Sampler
from metalmem import sampler as sampler_mod

lib: Any = sampler_mod.lib
ffi: Any = sampler_mod.ffi
if not hasattr(lib, "shim_reset"):
    pytest.skip(
        "runs on the shim build of darwin.c: make test-darwin-shim", allow_module_level=True
    )

SAMPLES: list[dict[str, Any]] = json.loads(
    (pathlib.Path(__file__).parent / "fixtures" / "shared" / "macos-vm-samples.json").read_text()
)
# The captures with every counter vm_stat prints (the others are cut short).
FULL_IDS = {
    "ollama-7255-m1",
    "wazuh-22113-intel",
    "waired-835-m4-cache-small",
    "waired-835-m5pro-48g",
    "facter-ng-229-fixture",
    "mini2-openclaw-2026-05-24",
}
FULL = [s for s in SAMPLES if s["id"] in FULL_IDS]
MIB, GIB = 1 << 20, 1 << 30
KERN_PROTECTION_FAILURE, KERN_INVALID_ARGUMENT, KERN_FAILURE = 2, 4, 5
KERN_RESOURCE_SHORTAGE, KERN_NO_ACCESS = 6, 8
WARN, CRITICAL, NORMAL = 0x02, 0x04, 0x01

# `ioreg -r -d 1 -w 0 -c IOAccelerator`, "PerformanceStatistics", as posted in exelban/stats#1094
# (MacBook Pro 16" M1 Pro, AGXAcceleratorG13X, macOS Monterey 12.6).
M1_PRO_MONTEREY = {
    "TiledSceneBytes": 1572864,
    "Alloc system memory": 1214005248,
    "Tiler Utilization %": 2,
    "recoveryCount": 0,
    "Renderer Utilization %": 2,
    "SplitSceneCount": 0,
    "Allocated PB Size": 17956864,
    "Device Utilization %": 2,
    "In use system memory": 340983808,
}
# The keys exelban/stats (Modules/GPU/reader.swift) reads from Intel and AMD accelerators:
# utilization and clocks, no system-memory figures. Values are placeholders of the right type.
INTEL_AMD_SHAPE = {
    "GPU Activity(%)": 12,
    "Temperature(C)": 48,
    "Fan Speed(%)": 30,
    "Core Clock(MHz)": 1100,
    "Memory Clock(MHz)": 1750,
}


@pytest.fixture(autouse=True)
def shim() -> Iterator[Any]:
    """A fresh recorded Mac for every test; afterwards nothing darwin.c opened is left open."""
    lib.shim_reset()
    yield lib
    gone = (lib.shim_objects_live(), lib.shim_io_objects_live(),
            lib.shim_cf_objects_live(), lib.shim_handles_live(), lib.shim_ports_live(),
            lib.shim_pressure_sources())  # fmt: skip
    lib.shim_reset()
    assert gone == (0, 0, 0, 0, 0, 0), "objects, io, cf, dl handles, ports, sources still live"


def load_sample(sample: dict[str, Any], *, memsize: int | None = None) -> None:
    """Put a recorded vm_stat into host_statistics64 and the unthrottled vm.page_* sysctls."""
    lib.shim_page_size(sample["page_size"])
    free, spec = sample["free"], sample["speculative"]
    fields = {
        "free_count": free + spec,  # the kernel's free_count includes speculative (§1.1)
        "active_count": sample["active"],
        "inactive_count": sample["inactive"],
        "speculative_count": spec,
        "throttled_count": sample.get("throttled", 0),
        "wire_count": sample["wired_down"],
        "purgeable_count": sample["purgeable"],
        "external_page_count": sample["file_backed"],
        "internal_page_count": sample["anonymous"],
        "compressor_page_count": sample["occupied_by_compressor"],
        "total_uncompressed_pages_in_compressor": sample["stored_in_compressor"],
        "pageins": sample["pageins"],
        "pageouts": sample["pageouts"],
        "swapins": sample["swapins"],
        "swapouts": sample["swapouts"],
    }
    for name, value in fields.items():
        assert lib.shim_vm_set(name.encode(), value) == 0, name
    for name, value in (("free", free), ("speculative", spec), ("purgeable", sample["purgeable"]),
                        ("pageable_internal", sample["anonymous"]),
                        ("pageable_external", sample["file_backed"])):  # fmt: skip
        lib.shim_sysctl_set(f"vm.page_{name}_count".encode(), value, 4)
    total = memsize or sample["memsize_bytes"]
    if total:
        lib.shim_sysctl_set(b"hw.memsize", total, 8)
    else:
        lib.shim_sysctl_remove(b"hw.memsize")


def set_accel(stats: dict[str, Any], service: int = 0) -> None:
    for key, value in stats.items():
        if isinstance(value, str):
            lib.shim_accel_string(service, key.encode(), value.encode())
        elif isinstance(value, float):
            lib.shim_accel_float(service, key.encode(), value)
        else:
            lib.shim_accel_number(service, key.encode(), value)


def swapusage(total: int, avail: int, used: int, *, size: int = 32) -> None:
    buf = (total.to_bytes(8, "little") + avail.to_bytes(8, "little") + used.to_bytes(8, "little")
           + (16384).to_bytes(4, "little") + (1).to_bytes(4, "little"))  # fmt: skip
    lib.shim_sysctl_set_bytes(b"vm.swapusage", buf[:size], size)


def advance(seconds: float = 1.0) -> None:
    """Move CLOCK_UPTIME_RAW past darwin.c's slow period without sleeping."""
    lib.shim_clock_advance(seconds)


# --- system() -------------------------------------------------------------------------------


@pytest.mark.parametrize("sample", FULL, ids=lambda s: s["id"])
def test_system_replays_every_full_recorded_mac(sample: dict[str, Any]) -> None:
    ps = sample["page_size"]
    load_sample(sample)  # hw.memsize as recorded; absent where the capture has none
    with Sampler() as s:
        m = s.system()
    # Each figure is its vm_stat line in bytes (reference §1.1, docs/wired-memory.md §1).
    assert m.wired == sample["wired_down"] * ps
    assert m.compressed == sample["occupied_by_compressor"] * ps
    assert m.free == sample["free"] * ps
    assert m.pageouts == sample["pageouts"] * ps
    assert m.swapouts == sample["swapouts"] * ps
    queued = ("free", "active", "inactive", "speculative", "wired_down")  # derive_darwin's sum
    page_sum = (sum(sample.get(k, 0) for k in queued) + sample["occupied_by_compressor"]) * ps
    assert m.total == (sample["memsize_bytes"] or page_sum)
    app = (sample["anonymous"] - sample["purgeable"]) * ps
    assert m.available == m.total - app - m.wired - m.compressed
    assert m.os_level is Level.NORMAL and m.psi is None and m.oom_kills is None


def test_system_total_is_the_page_sum_without_hw_memsize() -> None:
    sample = next(s for s in FULL if s["id"] == "ollama-7255-m1")
    load_sample(sample)  # its capture has no memsize: the sysctl is absent
    with Sampler() as s:
        m = s.system()
    # The notes put this M1 at 16 GB; the page queues sum to ~15.3 GiB (pages in no queue).
    assert m.total is not None and 15 * GIB < m.total < 16 * GIB


def test_system_reads_fast_counters_every_call_and_host_statistics_once_a_period() -> None:
    with Sampler() as s:
        first = s.system()
        calls = lib.shim_host_statistics_calls()
        lib.shim_sysctl_set(b"vm.page_free_count", 1000, 4)
        lib.shim_vm_set(b"wire_count", 200000)
        second = s.system()
        assert second.free == 1000 * 16384  # unthrottled sysctl: seen at once
        assert second.wired == first.wired  # host_statistics64: not asked again yet
        assert lib.shim_host_statistics_calls() == calls
        advance(1.0)
        third = s.system()
    assert lib.shim_host_statistics_calls() == calls + 1
    assert third.wired == 200000 * 16384
    assert third.counters_timestamp is not None and third.counters_timestamp > first.timestamp


def test_system_falls_back_to_host_statistics_when_a_fast_sysctl_is_missing() -> None:
    lib.shim_sysctl_remove(b"vm.page_purgeable_count")
    lib.shim_sysctl_set(b"vm.page_free_count", 1, 4)  # would be used if the group were whole
    with Sampler() as s:
        m = s.system()
    assert m.free == 355378 * 16384  # host_statistics64's free_count - speculative


@pytest.mark.parametrize(
    "name", ["free", "speculative", "pageable_internal", "pageable_external", "purgeable"]
)
def test_system_uses_no_fast_counter_unless_all_five_are_there(name: str) -> None:
    # All five or none, so one sample never mixes two sources for one group of pages.
    names = ("free", "speculative", "pageable_internal", "pageable_external", "purgeable")
    for other in names:
        lib.shim_sysctl_remove(f"vm.page_{other}_count".encode())
    with Sampler() as s:
        m = s.system()
        baseline = (m.free, m.available, m.wired, m.compressed)
    for other in names:  # values host_statistics64 does not have: any use would show
        if other != name:
            lib.shim_sysctl_set(f"vm.page_{other}_count".encode(), 7, 4)
    with Sampler() as s:
        m = s.system()
    assert (m.free, m.available, m.wired, m.compressed) == baseline


def test_system_clamps_a_torn_read_with_more_speculative_than_free_pages() -> None:
    lib.shim_vm_set(b"free_count", 10)
    lib.shim_vm_set(b"speculative_count", 20)
    lib.shim_sysctl_remove(b"vm.page_free_count")  # host_statistics64's figures are used
    with Sampler() as s:
        assert s.system().free == 0


def test_system_total_is_unknown_to_the_kernel_when_hw_memsize_is_zero() -> None:
    lib.shim_sysctl_set(b"hw.memsize", 0, 8)
    with Sampler() as s:
        m = s.system()
    assert m.total is not None and 15 * GIB < m.total < 16 * GIB  # the page sum instead


def test_system_keeps_swap_unknown_when_vm_swapusage_cannot_be_read() -> None:
    lib.shim_sysctl_fail(b"vm.swapusage", errno.EPERM)
    with Sampler() as s:
        m = s.system()
    assert (m.swap_total, m.swap_used) == (None, None)


def test_system_keeps_the_fast_counters_fresh_while_host_statistics_is_rate_limited() -> None:
    with Sampler() as s:
        before = s.system()
        lib.shim_vm_set(b"wire_count", 300000)
        lib.shim_host_statistics_rate_limit(-1)  # other callers used this window's quota
        lib.shim_sysctl_set(b"vm.page_free_count", 2000, 4)
        advance(1.0)
        stale = s.system()
        assert stale.wired == before.wired  # the kernel's cached reply, as xnu serves it
        assert stale.free == 2000 * 16384
        lib.shim_host_statistics_rate_limit(0)
        advance(1.0)
        fresh = s.system()
    assert fresh.wired == 300000 * 16384


@pytest.mark.parametrize(
    ("kr", "expected", "err"),
    [
        (KERN_NO_ACCESS, metalmem.AccessDenied, errno.EPERM),
        (KERN_PROTECTION_FAILURE, metalmem.AccessDenied, errno.EPERM),
        (KERN_INVALID_ARGUMENT, OSError, errno.EINVAL),
        (KERN_RESOURCE_SHORTAGE, OSError, errno.ENOMEM),
        (KERN_FAILURE, OSError, errno.EIO),
    ],
)
def test_system_raises_a_host_statistics_kern_error(kr: int, expected: type, err: int) -> None:
    lib.shim_host_statistics_result(kr)
    with Sampler() as s, pytest.raises(expected) as info:
        s.system()
    assert info.value.errno == err
    assert "host_statistics64" in str(info.value)


def test_system_accepts_an_older_kernel_that_fills_only_rev1() -> None:
    # A kernel older than the SDK answers with its own revision's count (xnu host.c); REV1
    # has every field darwin.c reads.
    lib.shim_host_statistics_revision(1)
    with Sampler() as s:
        m = s.system()
    assert m.wired == 143109 * 16384 and m.compressed == 55586 * 16384


def test_system_refuses_a_rev0_reply_that_lacks_the_compressor() -> None:
    lib.shim_host_statistics_revision(0)
    with Sampler() as s, pytest.raises(metalmem.Unsupported):
        s.system()


def test_system_reports_none_for_what_sysctl_cannot_read() -> None:
    lib.shim_sysctl_remove(b"vm.swapusage")
    lib.shim_sysctl_fail(b"kern.memorystatus_vm_pressure_level", errno.EPERM)
    with Sampler() as s:
        m = s.system()
    assert (m.swap_total, m.swap_used, m.os_level) == (None, None, None)
    assert m.available is not None  # the rest of the sample stands


@pytest.mark.parametrize(
    ("raw", "level"),
    [(1, Level.NORMAL), (2, Level.WARNING), (4, Level.CRITICAL), (3, None), (1 << 31, None)],
)
def test_system_maps_kern_memorystatus_vm_pressure_level(raw: int, level: Level | None) -> None:
    lib.shim_sysctl_set(b"kern.memorystatus_vm_pressure_level", raw, 4)
    with Sampler() as s:
        assert s.system().os_level is level


@pytest.mark.parametrize(
    ("total", "used", "size", "expected"),
    [
        (2 * GIB, 512 * MIB, 32, (2 * GIB, 512 * MIB)),
        (0, 0, 32, (0, 0)),  # no swap file yet: a real 0, not unknown
        (GIB, 2 * GIB, 32, (None, None)),  # used above total: not a reading to trust
        (GIB, 0, 24, (None, None)),  # another struct size is another ABI
    ],
)
def test_system_reads_vm_swapusage(
    total: int, used: int, size: int, expected: tuple[int | None, int | None]
) -> None:
    swapusage(total, max(0, total - used), used, size=size)
    with Sampler() as s:
        m = s.system()
    assert (m.swap_total, m.swap_used) == expected


def test_system_page_counters_are_in_kernel_pages_even_at_4_kib() -> None:
    intel = next(s for s in FULL if s["id"] == "wazuh-22113-intel")
    load_sample(intel, memsize=32 * GIB)
    with Sampler() as s:
        assert s.system().wired == intel["wired_down"] * 4096


def test_system_refuses_a_sysctl_of_an_unexpected_width() -> None:
    lib.shim_sysctl_set_bytes(b"kern.memorystatus_vm_pressure_level", b"\x01\x00", 2)
    with Sampler() as s:
        assert s.system().os_level is None


def test_system_survives_a_failing_clock() -> None:
    lib.shim_clock_fail(1)
    with Sampler() as s:
        m = s.system()
    assert m.timestamp == 0.0 and m.available is not None


def test_sampler_refuses_a_cgroup_scope() -> None:
    with pytest.raises(metalmem.Unsupported, match="cgroup"):
        Sampler(scope="/sys/fs/cgroup/x")


def test_sampler_open_reports_an_allocation_failure() -> None:
    lib.shim_libc_fail(b"calloc", errno.ENOMEM, 0)
    with pytest.raises(OSError) as info:
        Sampler()
    assert info.value.errno == errno.ENOMEM


# --- gpu() ----------------------------------------------------------------------------------


def test_gpu_reads_an_ioaccelerator_dictionary_recorded_on_an_m1_pro() -> None:
    lib.shim_accel_clear()
    lib.shim_accel_add(1)
    set_accel(M1_PRO_MONTEREY)
    with Sampler() as s:
        g = s.gpu()
        m = s.system()
    assert g is not None
    assert g.used == 340983808  # "In use system memory": the whole system's GPU allocations
    assert g.allocated == 1214005248  # "Alloc system memory"
    assert g.limit == 11453251584  # recommendedMaxWorkingSetSize with iogpu.wired_limit_mb 0
    assert (g.name, g.unified) == ("Apple M1", True)
    assert m.gpu_used == 340983808 and m.gpu_limit == g.limit
    # The agent's own device object never feeds the signal (docs/wired-memory.md §9).
    assert lib.shim_metal_calls(b"currentAllocatedSize") == 0
    assert lib.shim_metal_calls(b"?") == 0  # no selector the fake does not know


def test_gpu_headroom_fires_for_metal_buffers_held_by_another_process() -> None:
    # The case, on the 16 GB M1 (ceiling 10.7 GiB): llama-server holds 10.5 GiB of
    # Metal buffers. The IORegistry sees them; the agent's own device (currentAllocatedSize,
    # 1 MiB here) would not, and neither would all wired memory (2.2 GiB) as a fallback.
    lib.shim_accel_number(0, b"In use system memory", 10_500 * MIB)
    with Sampler() as s:
        m = s.system()
    a = metalmem.Classifier(metalmem.PressurePolicy()).assess(m)
    votes = {r.signal: r.level for r in a.reasons}
    assert votes == {metalmem.Signal.GPU_HEADROOM: Level.CRITICAL}, a.reasons
    assert a.level is Level.CRITICAL and a.actionable  # a hard signal: acts at once


@pytest.mark.parametrize("missing", ["In use system memory", "Alloc system memory"])
def test_gpu_reports_none_for_each_missing_key(missing: str) -> None:
    lib.shim_accel_clear()
    lib.shim_accel_add(1)
    set_accel({k: v for k, v in M1_PRO_MONTEREY.items() if k != missing})
    with Sampler() as s:
        g = s.gpu()
        m = s.system()
    assert g is not None
    assert g.used == (None if missing == "In use system memory" else 340983808)
    assert g.allocated == (None if missing == "Alloc system memory" else 1214005248)
    assert m.gpu_used == g.used


def test_gpu_reports_none_for_an_intel_or_amd_shaped_dictionary() -> None:
    lib.shim_accel_clear()
    lib.shim_accel_add(1)
    set_accel(INTEL_AMD_SHAPE)
    with Sampler() as s:
        g = s.gpu()
    assert g is not None and (g.used, g.allocated) == (None, None)
    assert g.limit == 11453251584


@pytest.mark.parametrize(
    "value", ["340983808", -1, 1.5], ids=["a string", "negative", "not an integer"]
)
def test_gpu_reports_none_for_a_value_that_is_not_a_byte_count(value: Any) -> None:
    set_accel({"In use system memory": value})
    with Sampler() as s:
        g = s.gpu()
    assert g is not None and g.used is None and g.allocated == 1214005248


def test_gpu_accepts_a_whole_float() -> None:
    set_accel({"In use system memory": 4096.0})
    with Sampler() as s:
        g = s.gpu()
    assert g is not None and g.used == 4096


def test_gpu_takes_the_first_accelerator_that_has_statistics() -> None:
    lib.shim_accel_clear()
    lib.shim_accel_add(0)
    lib.shim_accel_add(1)
    set_accel(M1_PRO_MONTEREY, service=1)
    lib.shim_accel_add(1)
    set_accel({"In use system memory": 7}, service=2)
    with Sampler() as s:
        g = s.gpu()
    assert g is not None and g.used == 340983808


@pytest.mark.parametrize(
    "absent",
    ["no PerformanceStatistics", "not a dictionary", "no IOKit", "no CoreFoundation",
     "no IORegistryEntryCreateCFProperty", "no CFNumberGetValue", "matching fails",
     "CFStringCreateWithCString fails"],
)  # fmt: skip
def test_gpu_used_is_unknown_without_the_ioregistry(absent: str) -> None:
    if absent == "no PerformanceStatistics":
        lib.shim_accel_clear()
        lib.shim_accel_add(0)
    elif absent == "not a dictionary":
        lib.shim_accel_stats_not_a_dictionary(0)
    elif absent.startswith("no I") or absent.startswith("no CF"):
        name = absent[3:]
        if name in ("IOKit", "CoreFoundation"):
            lib.shim_library(name.encode(), 0)
        else:
            lib.shim_symbol(name.encode(), 0)
    elif absent == "matching fails":
        lib.shim_accel_matching_result(KERN_FAILURE)
    else:
        lib.shim_cf_string_fail(1)
    with Sampler() as s:
        g = s.gpu()
        m = s.system()
        caps = s.capabilities
    assert g is not None and (g.used, g.allocated) == (None, None)  # never a made-up 0
    assert g.limit == 11453251584 and "gpu" in caps  # Metal still answers
    assert m.gpu_used is None


def test_gpu_without_metal_still_reads_the_ioregistry_and_the_wired_limit() -> None:
    lib.shim_library(b"Metal", 0)
    lib.shim_sysctl_set(b"iogpu.wired_limit_mb", 26624, 4)  # ollama#1826's setting
    with Sampler() as s:
        g = s.gpu()
        caps = s.capabilities
    assert g is not None and "gpu" in caps
    assert (g.name, g.unified) == (None, None)
    assert g.limit == 26624 * MIB and g.used == 340983808


def test_gpu_is_none_without_metal_or_ioregistry() -> None:
    lib.shim_library(b"Metal", 0)
    lib.shim_library(b"IOKit", 0)
    with Sampler() as s:
        assert s.gpu() is None
        assert "gpu" not in s.capabilities
        m = s.system()
    assert m.gpu_limit is None and m.gpu_used is None


def test_gpu_other_indexes_do_not_exist() -> None:
    with Sampler() as s:
        assert s.gpu(1) is None


@pytest.mark.parametrize(
    ("sysctls", "expected"),
    [
        ({"iogpu.wired_limit_mb": 57344}, 57344 * MIB),  # vllm-metal#234's setting
        ({"iogpu.wired_limit_mb": 0}, 11453251584),  # 0: the default policy (§4.5)
        ({"iogpu.wired_limit_mb": None, "debug.iogpu.wired_limit": 20 * GIB}, 20 * GIB),
        ({"iogpu.wired_limit_mb": None}, 11453251584),  # macOS 12: neither sysctl
        ({"iogpu.wired_limit_mb": None, "debug.iogpu.wired_limit": 0}, 11453251584),
        ({"iogpu.wired_limit_mb": 1 << 50}, 11453251584),  # overflows bytes: not believed
    ],
)
def test_gpu_limit_follows_the_wired_limit_sysctls(
    sysctls: dict[str, int | None], expected: int
) -> None:
    for name, value in sysctls.items():
        if value is None:
            lib.shim_sysctl_remove(name.encode())
        else:
            lib.shim_sysctl_set(name.encode(), value, 8 if value >= 1 << 32 else 4)
    with Sampler() as s:
        g = s.gpu()
    assert g is not None and g.limit == expected


@pytest.mark.parametrize(
    ("case", "name", "unified", "limit"),
    [
        ("default device", "Apple M1", True, 11453251584),
        ("only listed", "Apple M1", True, 11453251584),  # a CLI process: no default device
        ("none listed", None, None, None),
        ("device list is NULL", None, None, None),
        ("no recommendedMaxWorkingSetSize", "Apple M1", True, None),  # macOS < 10.12
        ("no hasUnifiedMemory", "Apple M1", None, 11453251584),
        ("no name", None, True, 11453251584),
        ("not unified", "AMD Radeon Pro 5500M", False, 4 * GIB),
    ],
)
def test_gpu_metal_device_properties(
    case: str, name: str | None, unified: bool | None, limit: int | None
) -> None:
    lib.shim_sysctl_remove(b"iogpu.wired_limit_mb")
    if case == "only listed":
        lib.shim_metal_devices(0, 1)
    elif case == "none listed":
        lib.shim_metal_devices(0, 0)
    elif case == "device list is NULL":
        lib.shim_metal_devices(0, -1)
    elif case.startswith("no "):
        lib.shim_metal_responds(case[3:].encode(), 0)
    elif case == "not unified":
        lib.shim_metal_values(4 * GIB, 0, b"AMD Radeon Pro 5500M")
    with Sampler() as s:
        g = s.gpu()
    assert g is not None  # the IORegistry answers in every case
    assert (g.name, g.unified, g.limit) == (name, unified, limit)
    assert g.used == 340983808


@pytest.mark.parametrize(
    "missing",
    ["libobjc", "sel_registerName", "objc_msgSend", "MTLCreateSystemDefaultDevice"],
)
def test_gpu_metal_absent_when_the_runtime_is_incomplete(missing: str) -> None:
    if missing == "libobjc":
        lib.shim_library(b"libobjc", 0)
    else:
        lib.shim_symbol(missing.encode(), 0)
    with Sampler() as s:
        g = s.gpu()
    assert g is not None and g.name is None and g.limit is None
    assert g.used == 340983808


def test_gpu_without_mtlcopyalldevices_uses_the_default_device() -> None:
    lib.shim_symbol(b"MTLCopyAllDevices", 0)
    with Sampler() as s:
        g = s.gpu()
    assert g is not None and g.name == "Apple M1"


# --- processes() ----------------------------------------------------------------------------


def test_processes_replay_a_recorded_mlx_server() -> None:
    # ml-explore/mlx#3350: `footprint -p` of an MLX server, 108 GB of which 106 GB was
    # "IOAccelerator (graphics)" (§3.4): its Metal buffers are in phys_footprint.
    pid = 4242
    lib.shim_proc_set(pid, os.geteuid(), 1_780_000_000, 250_000, 2 * GIB, 108 * GIB, 0, 110 * GIB)
    with Sampler() as s:
        p = s.process(pid)
    assert p.start_time == 1_780_000_000.25
    assert (p.rss, p.footprint, p.wired, p.peak) == (2 * GIB, 108 * GIB, 0, 110 * GIB)
    assert p.swap is None and p.anon is None  # proc_pid_rusage has neither


@pytest.mark.parametrize(
    ("call", "err", "expected"),
    [
        (1, errno.EPERM, metalmem.AccessDenied),
        (1, errno.ESRCH, metalmem.NoSuchProcess),
        (0, errno.ESRCH, metalmem.NoSuchProcess),
        (0, errno.EPERM, metalmem.AccessDenied),
        (1, 0, OSError),  # a failure without errno: EIO
        (0, -1, OSError),  # a short proc_bsdinfo: EIO, as psutil treats it
    ],
)
def test_processes_map_each_libproc_failure(call: int, err: int, expected: type) -> None:
    lib.shim_proc_set(4243, os.geteuid(), 1, 0, MIB, MIB, 0, MIB)
    lib.shim_proc_fail(4243, call, err)
    with Sampler() as s:
        out = s.processes([4243, os.getpid()])
    assert type(out[4243]) is expected or (expected is OSError and isinstance(out[4243], OSError))
    if expected is OSError:
        assert out[4243].errno == errno.EIO  # type: ignore[union-attr]
    assert isinstance(out[os.getpid()], metalmem.ProcessMemory)  # the batch stands


def test_processes_another_users_process_needs_root() -> None:
    # PROC_PIDTBSDINFO and proc_pid_rusage: the caller's uid or root (§3.1; xnu proc_info.c).
    # Answer as uid 501 (a Mac's first user) about a process of root's.
    lib.shim_proc_set(4244, 0, 1, 0, MIB, MIB, 0, MIB)
    lib.shim_caller_uid(501)
    with Sampler() as s:
        denied = s.processes([4244])[4244]
        lib.shim_caller_uid(0)
        allowed = s.processes([4244])[4244]
    assert isinstance(denied, metalmem.AccessDenied) and denied.pid == 4244
    assert "proc_pidinfo" in str(denied)
    assert isinstance(allowed, metalmem.ProcessMemory)


def test_doctor_names_targets_a_non_root_agent_cannot_read(
    children: Any, tmp_path: pathlib.Path
) -> None:
    # The case: the agent runs as uid 501 and llama-server as another user. The
    # tracker cannot adopt it (no start time), and doctor must say why and how to fix it.
    from metalmem.configfile import load_config
    from metalmem.doctor import DoctorOptions, Verdict, gather_facts, run_checks

    child = children.spawn()
    lib.shim_proc_set(child.pid, 502, 1_780_000_000, 0, GIB, 40 * GIB, 0, 41 * GIB)
    lib.shim_caller_uid(501)
    config = tmp_path / "metalmem.toml"
    config.write_text(f'[[target]]\nname = "llama"\npid = {child.pid}\n')
    with Sampler() as s:
        facts = gather_facts(
            DoctorOptions(listen=("127.0.0.1", 0), targets=tuple(load_config(str(config)).targets)),
            s,
            platform="darwin",
            sysctl={}.get,
            launchd_dir=str(tmp_path),
            geteuid=lambda: 501,
        )
    f = {f.check: f for f in run_checks(facts)}["targets.sized"]
    assert facts.targets == 0  # not adopted: this was the silent case
    assert f.verdict is Verdict.FAIL, f
    assert f"pid {child.pid}" in f.finding and "not adopted" in f.finding
    assert "EPERM" in f.finding and f.fix is not None and "LaunchDaemons" in f.fix


def test_processes_of_real_children_and_a_gone_one(children: Any) -> None:
    psutil = pytest.importorskip("psutil")
    held = children.spawn(allocate_mib=64)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with Sampler() as s:
        out = s.processes([held.pid, gone.pid, 0, -5])
    p = out[held.pid]
    assert isinstance(p, metalmem.ProcessMemory)
    assert p.start_time is not None
    assert abs(p.start_time - psutil.Process(held.pid).create_time()) <= 0.02
    assert p.footprint is not None and p.footprint >= 64 * MIB
    for pid in (gone.pid, 0, -5):
        assert isinstance(out[pid], metalmem.NoSuchProcess)


# --- events() -------------------------------------------------------------------------------


def _wait_level(ev: metalmem.PressureEvents, timeout: float = 5.0) -> Level | None:
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(ev, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if sel.select(left):
                return ev.read()
    return None


@pytest.mark.parametrize(
    ("flags", "level"),
    [(WARN, Level.WARNING), (CRITICAL, Level.CRITICAL), (NORMAL, Level.NORMAL),
     (WARN | CRITICAL, Level.CRITICAL)],
)  # fmt: skip
def test_events_deliver_the_dispatch_pressure_level(flags: int, level: Level) -> None:
    with Sampler() as s, s.events() as ev:
        assert ev.read() is None  # nothing pending yet
        assert lib.shim_pressure_fire(flags) == 1
        assert _wait_level(ev) is level


def _pending(fd: int) -> int:
    buf = bytearray(4)
    fcntl.ioctl(fd, termios.FIONREAD, buf)
    return int.from_bytes(buf, sys.byteorder)


def test_events_drain_to_the_highest_level_even_when_the_pipe_is_full() -> None:
    with Sampler() as s, s.events() as ev:
        # More one-byte events than the 64 KiB pipe holds: the handler drops what does not fit
        # (EAGAIN) and the reader, draining later, still sees the highest level.
        lib.shim_pressure_fire(WARN)
        lib.shim_pressure_fire(CRITICAL)
        for _ in range(70_000):
            lib.shim_pressure_fire(NORMAL)
        deadline = time.monotonic() + 20
        while lib.shim_dispatch_pending() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert lib.shim_dispatch_pending() == 0  # every handler ran
        assert _pending(ev.fileno()) == 65536  # and the pipe is full: the rest hit EAGAIN
        assert ev.read() is Level.CRITICAL
        assert ev.read() is None


def test_events_retry_a_read_and_a_write_interrupted_by_a_signal() -> None:
    with Sampler() as s, s.events() as ev:
        lib.shim_libc_fail(b"write", errno.EINTR, 0)
        lib.shim_pressure_fire(WARN)
        lib.shim_libc_fail(b"read", errno.EINTR, 0)
        assert _wait_level(ev) is Level.WARNING


def test_events_close_cancels_the_source_and_closes_the_fd() -> None:
    with Sampler() as s:
        ev = s.events()
        fd = ev.fileno()
        assert lib.shim_pressure_sources() == 1
        ev.close()
        ev.close()  # idempotent
        assert lib.shim_pressure_sources() == 0
        assert lib.shim_pressure_fire(WARN) == 0
    with pytest.raises(OSError):
        os.fstat(fd)


def test_events_have_only_the_dispatch_source_and_no_thresholds_to_arm() -> None:
    # The OS decides when the dispatch source fires: arm() says so, and there is no PSI.
    with Sampler() as s, s.events() as ev:
        assert ev.sources == frozenset({"dispatch"})
        assert ev.psi_error == errno.ENOTSUP
        assert ev.polls == 0
        with pytest.raises(metalmem.Unsupported):
            ev.arm(2 << 30, 1 << 30)
        with pytest.raises(metalmem.Unsupported):
            ev.arm(2 << 30, 1 << 30, paced_by_reader=True)
        assert ev.watch() is None  # nothing to poll: the watchdog ticks on its own timer


@pytest.mark.parametrize(
    ("fail", "expected", "err"),
    [
        (("dispatch", "queue"), OSError, errno.ENOMEM),
        (("dispatch", "semaphore"), OSError, errno.ENOMEM),
        (("dispatch", "source"), metalmem.Unsupported, errno.ENOTSUP),
        (("libc", "pipe"), OSError, errno.EMFILE),
        (("libc", "fcntl"), OSError, errno.EBADF),
        (("libc", "fcntl", 1), OSError, errno.EBADF),  # F_SETFL
        (("libc", "fcntl", 2), OSError, errno.EBADF),  # F_SETFD
        (("libc", "fcntl", 3), OSError, errno.EBADF),  # the write end's F_GETFL
        (("libc", "calloc"), OSError, errno.ENOMEM),
    ],
)
def test_events_open_reports_each_failure(fail: tuple[Any, ...], expected: type, err: int) -> None:
    with Sampler() as s:
        if fail[0] == "dispatch":
            lib.shim_dispatch_fail(fail[1].encode())
        else:
            lib.shim_libc_fail(fail[1].encode(), err, fail[2] if len(fail) > 2 else 0)
        with pytest.raises(expected) as info:
            s.events()
    assert info.value.errno == err
    assert lib.shim_pressure_sources() == 0


# --- the whole Sampler surface --------------------------------------------------------------


def test_every_public_sampler_method_on_the_darwin_backend() -> None:
    assert sampler_mod.PLATFORM == "darwin"
    assert lib.mm_slow_period() == 1.0
    with Sampler() as s:
        assert s.capabilities == frozenset({"gpu", "events"})
        m = s.system()
        assert isinstance(m, metalmem.SystemMemory) and m.scope == "host" and not m.limited
        assert isinstance(s.process(os.getpid()), metalmem.ProcessMemory)
        assert isinstance(s.gpu(), metalmem.GpuMemory)
        with s.events() as ev:
            assert ev.fileno() >= 0
    with pytest.raises(ValueError, match="closed"):
        s.gpu()
    assert isinstance(metalmem.system_memory(), metalmem.SystemMemory)
    assert metalmem.process_memory(os.getpid()).pid == os.getpid()
    # The module-level sampler holds its handle for the process's life: released here so the
    # fixture can check that nothing leaked.
    assert sampler_mod._shared is not None
    sampler_mod._shared.close()
    sampler_mod._shared = None
    # The Linux text parsers do not exist here: refused as a whole.
    assert sampler_mod.parse_proc_file("meminfo", b"MemTotal: 1 kB\n") is None
    assert sampler_mod.parse_proc_file("statm", b"1 1 1 1 0 1 0\n") is None
    for kind in ("vmstat", "psi", "status", "stat"):
        assert sampler_mod.parse_proc_file(kind, b"") is None
    err = ffi.new("struct mm_error *")
    out = ffi.new("mm_handle **")
    assert lib.mm_open(b"/", b"", out, err) == 0
    count = ffi.new("uint32_t *")
    assert lib.mm_gpu_count(out[0], count) == 0 and count[0] == 1
    lib.mm_close(out[0])
    lib.mm_close(ffi.NULL)  # idempotent on NULL
    lib.mm_events_close(ffi.NULL)
    assert ffi.string(lib.mm_call_name(99)) == b"unknown"


def test_gpu_count_is_zero_without_a_gpu() -> None:
    lib.shim_library(b"Metal", 0)
    lib.shim_library(b"CoreFoundation", 0)
    err = ffi.new("struct mm_error *")
    out = ffi.new("mm_handle **")
    assert lib.mm_open(b"/", ffi.NULL, out, err) == 0
    count = ffi.new("uint32_t *")
    assert lib.mm_gpu_count(out[0], count) == -errno.ENOTSUP and count[0] == 0
    lib.mm_close(out[0])
