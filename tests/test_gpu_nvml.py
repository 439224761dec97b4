"""NVML path of the Linux sampler, checked against the driver's own tools on a GPU host.

Skipped where ``libnvidia-ml.so.1`` cannot be loaded (CI, this build machine). On a GPU host
the figures must match ``nvidia-smi`` (and pynvml where installed), and ``used`` must follow a
real allocation made by a child process and fall back when that child is gone.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import sys

import pytest

from metalmem import Sampler
from tests.helpers import wait_for

MiB = 1 << 20
GiB = 1 << 30


def _nvml_reason() -> str | None:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return "no NVML (libnvidia-ml.so.1) on this machine: runs on a GPU host"
    if shutil.which("nvidia-smi") is None:
        return "NVML present but no nvidia-smi to compare with"
    return None


pytestmark = pytest.mark.skipif(_nvml_reason() is not None, reason=str(_nvml_reason()))


def smi() -> tuple[str, int, int]:
    """Name, total and used bytes of GPU 0 as nvidia-smi reports them (MiB granularity)."""
    out = subprocess.run(
        [
            "nvidia-smi",
            "-i",
            "0",
            "--query-gpu=name,memory.total,memory.used",
            "--format=csv,noheader,nounits",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
    name, total, used = (s.strip() for s in out.split(","))
    return name, int(total) * MiB, int(used) * MiB


def test_gpu_agrees_with_nvidia_smi() -> None:
    with Sampler() as s:
        assert "gpu" in s.capabilities
        g = s.gpu()
        assert g is not None
        name, total, used = smi()
        assert g.name == name
        assert g.unified is False
        assert g.limit is not None and g.used is not None
        # nvidia-smi floors to MiB.
        assert total <= g.limit < total + MiB
        assert abs(g.used - used) <= 256 * MiB
        assert g.allocated is None or g.allocated >= g.used
        m = s.system()
        assert m.gpu_limit == g.limit


def test_gpu_agrees_with_pynvml() -> None:
    pynvml = pytest.importorskip("pynvml")
    pynvml.nvmlInit()
    try:
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        ref = pynvml.nvmlDeviceGetMemoryInfo(h)
    finally:
        pynvml.nvmlShutdown()
    with Sampler() as s:
        g = s.gpu()
    assert g is not None and g.limit == ref.total


ALLOCATE = """
import sys, torch
x = torch.empty(2 << 30, dtype=torch.uint8, device="cuda")
torch.cuda.synchronize()
print("ready", flush=True)
sys.stdin.read()
"""


def test_gpu_used_follows_a_real_allocation() -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        pytest.skip("no torch to allocate GPU memory with")
    with Sampler() as s:
        before = s.gpu()
        assert before is not None and before.used is not None
        child = subprocess.Popen(
            [sys.executable, "-c", ALLOCATE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
            wait_for(
                lambda: (
                    (g := s.gpu()) is not None
                    and g.used is not None
                    and g.used >= before.used + 2 * GiB
                ),
                timeout=20,
                what="gpu().used to grow by the child's 2 GiB",
            )
            # system() reads NVML at most once a second; it must catch up within a few.
            wait_for(
                lambda: (
                    (m := s.system()).gpu_used is not None and m.gpu_used >= before.used + 2 * GiB
                ),
                timeout=5,
                what="system().gpu_used to catch up",
            )
        finally:
            child.kill()
            child.wait(timeout=30)
        wait_for(
            lambda: (
                (g := s.gpu()) is not None and g.used is not None and g.used < before.used + GiB
            ),
            timeout=20,
            what="gpu().used to fall back after the child exited",
        )
