"""`make check-darwin` fails where it should: each test breaks a throwaway copy of darwin.c in
one way a macOS build would break, and runs the check exactly as the Makefile does on it.

The first test runs the same command on the untouched file, so a failure below is the
mutation's, not a broken toolchain's. One target and no cffi module keep each run to about a
second; the full check runs in `make test` before pytest.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("ziglang", reason="check-darwin needs zig (pip install ziglang)")

CSRC = pathlib.Path(__file__).resolve().parents[1] / "csrc"
DARWIN_C = CSRC / "darwin.c"


def run_check(source: pathlib.Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CSRC / "check_darwin.py"), "--source", str(source), *extra],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def mutate(tmp_path: pathlib.Path, old: str, new: str) -> pathlib.Path:
    """A copy of darwin.c with `old` (which must occur exactly once) replaced by `new`."""
    text = DARWIN_C.read_text()
    assert text.count(old) == 1, f"darwin.c changed: {old!r} no longer occurs once"
    copy = tmp_path / "darwin.c"
    copy.write_text(text.replace(old, new))
    return copy


FAST = ("--target", "aarch64-macos.11.0", "--no-cffi")


def test_check_darwin_passes_on_the_real_source() -> None:
    r = run_check(DARWIN_C, *FAST)
    assert r.returncode == 0, r.stderr
    assert "ok aarch64-macos.11.0" in r.stdout


def test_check_darwin_fails_on_a_wrongly_typed_proc_pid_rusage_buffer(
    tmp_path: pathlib.Path,
) -> None:
    # proc_pid_rusage takes rusage_info_t * (void **): a struct pointer without the cast is
    # the classic mistake, and only Apple's prototype can reject it.
    copy = mutate(tmp_path, "RUSAGE_INFO_V4, (rusage_info_t *)&ri)", "RUSAGE_INFO_V4, &ri)")
    r = run_check(copy, *FAST)
    assert r.returncode == 1
    assert "incompatible pointer types" in r.stderr and "proc_pid_rusage" in r.stderr


def test_check_darwin_fails_on_a_wrongly_typed_host_statistics64_call(
    tmp_path: pathlib.Path,
) -> None:
    copy = mutate(
        tmp_path,
        "HOST_VM_INFO64, (host_info64_t)&vm, &count)",
        "HOST_VM_INFO64, (host_info64_t)&vm, count)",
    )
    r = run_check(copy, *FAST)
    assert r.returncode == 1
    assert "host_statistics64" in r.stderr


def test_check_darwin_fails_on_a_direct_metal_call(tmp_path: pathlib.Path) -> None:
    # Metal must come through dlopen: a link-time reference makes the module unloadable where
    # Metal is absent, and zig's libSystem-only link refuses it.
    copy = mutate(
        tmp_path,
        'create = (create_device_fn)dlsym(m->framework, "MTLCreateSystemDefaultDevice");',
        "extern id MTLCreateSystemDefaultDevice(void);\n    create = MTLCreateSystemDefaultDevice;",
    )
    r = run_check(copy, *FAST)
    assert r.returncode == 1
    assert "undefined symbol: _MTLCreateSystemDefaultDevice" in r.stderr


def test_check_darwin_fails_when_a_contract_function_is_missing(tmp_path: pathlib.Path) -> None:
    copy = mutate(
        tmp_path,
        "int mm_gpu_count(mm_handle *h, uint32_t *count)\n",
        "int mm_gpu_count_renamed(mm_handle *h, uint32_t *count);\n"
        "int mm_gpu_count_renamed(mm_handle *h, uint32_t *count)\n",
    )
    r = run_check(copy, "--target", "x86_64-macos.10.13")  # with the cffi module this time
    assert r.returncode == 1
    assert "lacks ['_mm_gpu_count']" in r.stderr
    assert "non-Python symbols unresolved: ['_mm_gpu_count']" in r.stderr


def test_check_darwin_fails_on_an_api_newer_than_the_deployment_target() -> None:
    # clock_gettime(CLOCK_UPTIME_RAW) is macOS 10.12+: building for 10.9 must be refused.
    r = run_check(DARWIN_C, "--target", "x86_64-macos.10.9", "--no-cffi")
    assert r.returncode == 1
    assert "only available on macOS 10.12 or newer" in r.stderr
