"""The promised public surface (psutil's test_contracts): names, types, None-ness per platform."""

from __future__ import annotations

import pickle
import subprocess
import sys

import metalmem

PUBLIC = {
    "AccessDenied",
    "Agent",
    "AgentConfig",
    "Assessment",
    "Candidate",
    "CandidateState",
    "Classifier",
    "ConfigError",
    "Error",
    "EvictionMode",
    "EvictionPolicy",
    "GpuMemory",
    "KubeRef",
    "Level",
    "NoSuchProcess",
    "PSI",
    "Plan",
    "Planner",
    "PressureEvents",
    "PressurePolicy",
    "Priority",
    "ProcessMemory",
    "Reason",
    "Reclaim",
    "ReplayError",
    "Sampler",
    "Signal",
    "SkipReason",
    "StopAction",
    "StopMethod",
    "StopRecord",
    "StopResult",
    "SystemMemory",
    "Target",
    "TargetChanges",
    "TargetSource",
    "TargetSpec",
    "TargetTracker",
    "TimelineEntry",
    "Unsupported",
    "__version__",
    "assessment_to_dict",
    "derive_darwin",
    "discover",
    "parse_duration",
    "parse_line",
    "parse_target_specs",
    "process_memory",
    "record_line",
    "resolve",
    "run",
    "stop",
    "system_memory",
    "threshold_bytes",
    "wait_for_reclaim",
}


def test_all_is_exactly_the_documented_names() -> None:
    assert set(metalmem.__all__) == PUBLIC
    for name in metalmem.__all__:
        assert hasattr(metalmem, name), name


def test_importing_has_no_side_effects() -> None:
    code = (
        "import sys, threading, metalmem; "
        "assert 'kubernetes' not in sys.modules; "
        "assert 'metalmem.doctor' not in sys.modules; "
        "assert threading.active_count() == 1; "
        "import metalmem.sampler as s; assert s._shared is None"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# What an embedding host pays only when it builds the guardian: the CLI's parser, the metrics
# client, Kubernetes, the agent's HTTP server and the agent itself.
HEAVY = ("click", "prometheus_client", "kubernetes", "wsgiref.simple_server", "metalmem.server",
         "metalmem.metrics", "metalmem.agent", "metalmem_cli")  # fmt: skip


def test_importing_metalmem_imports_nothing_heavy_until_the_agent_is_used() -> None:
    code = (
        "import sys, metalmem; "
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules)); "
        "metalmem.Agent; metalmem.AgentConfig; "
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, timeout=60, capture_output=True, text=True
    ).stdout.splitlines()
    assert out[0] == "[]", out
    # The probe can see a module arrive; even then the server and metrics client wait for an
    # Agent to be built.
    assert out[1] == "['metalmem.agent']", out


def test_levels_are_ordered_ints() -> None:
    L = metalmem.Level
    assert L.NORMAL < L.WARNING < L.CRITICAL
    assert [int(x) for x in (L.NORMAL, L.WARNING, L.CRITICAL)] == [0, 1, 2]


def test_system_memory_field_types() -> None:
    with metalmem.Sampler() as s:
        m = s.system()
    for field in (
        "total",
        "available",
        "free",
        "wired",
        "compressed",
        "swap_total",
        "swap_used",
        "pageouts",
        "swapouts",
        "oom_kills",
        "gpu_limit",
        "gpu_used",
    ):
        value = getattr(m, field)
        assert value is None or (type(value) is int and value >= 0), field
    assert m.os_level is None or isinstance(m.os_level, metalmem.Level)
    assert m.psi is None or isinstance(m.psi, metalmem.PSI)
    if metalmem.sampler.PLATFORM == "linux":  # the backend: darwin.c also runs on Linux
        assert m.os_level is None  # the kernel has no such level; PSI stands in
    assert m.total is not None and m.available is not None


def test_process_memory_field_types() -> None:
    import os

    p = metalmem.process_memory(os.getpid())
    assert p.pid == os.getpid()
    for field in ("rss", "footprint", "wired", "swap", "peak", "anon"):
        value = getattr(p, field)
        assert value is None or (type(value) is int and value >= 0), field
    assert isinstance(p.start_time, float)


def test_exceptions_are_data_and_pickle() -> None:
    exc = metalmem.NoSuchProcess("gone", pid=42, errno=3)
    assert isinstance(exc, metalmem.Error)
    assert type(exc).__module__ == "metalmem"
    again = pickle.loads(pickle.dumps(exc))
    assert type(again) is metalmem.NoSuchProcess
    assert (again.pid, again.msg, again.errno) == (42, "gone", 3)
    assert str(again) == str(exc) == "gone (pid=42, errno=3)"
    assert issubclass(metalmem.AccessDenied, metalmem.Error)
    assert issubclass(metalmem.Unsupported, metalmem.Error)
