"""Sampler(scope=<cgroup>): the cgroup's limit-based `available` and its own PSI."""

from __future__ import annotations

import pathlib

import pytest

import metalmem

from . import procref

OURS = pathlib.Path(__file__).resolve().parent / "fixtures" / "proc"


def _kv(path: pathlib.Path) -> dict[str, int]:
    out = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(" ")
        out[key] = int(value)
    return out


def _host(root: pathlib.Path) -> dict[str, int | None]:
    return procref.meminfo((root / "proc" / "meminfo").read_bytes())


def test_v1_scope_captured_under_pressure() -> None:
    root = OURS / "pressure"
    v1 = next((root / "sys/fs/cgroup/memory").rglob("memory.usage_in_bytes")).parent
    scope = "/" + str(v1.relative_to(root))
    with metalmem.Sampler(root=str(root), scope=scope) as s:
        m = s.system()
    usage = int((v1 / "memory.usage_in_bytes").read_text())
    limit = int((v1 / "memory.limit_in_bytes").read_text())
    stat = _kv(v1 / "memory.stat")
    host = _host(root)
    assert host["available"] is not None
    expected = min(host["available"], limit - (usage - stat["total_inactive_file"]))
    assert (m.total, m.available, m.free) == (limit, expected, limit - usage)
    assert m.limited and m.scope == scope
    assert m.wired == stat["total_unevictable"]
    assert m.compressed is None  # v1 has no zswap figure per cgroup
    assert (m.pageouts, m.swapouts) == (None, None)  # host counters do not describe a cgroup
    assert m.oom_kills == _kv(v1 / "memory.oom_control")["oom_kill"]
    # PSI comes from the v2 mirror of the same relative path (hybrid hosts), not the host's.
    v2 = root / str(v1.relative_to(root)).replace("/memory/", "/unified/", 1)
    ref = procref.psi((v2 / "memory.pressure").read_bytes())
    assert m.psi is not None
    assert m.psi.some_avg10 == pytest.approx(ref["some"][0]) and m.psi.some_avg10 > 5
    host_psi = procref.psi((root / "proc/pressure/memory").read_bytes())
    assert m.psi.some_total != pytest.approx(host_psi["some"][2] / 1e6)


@pytest.mark.parametrize("group", ["limited", "unlimited"])
def test_v2_scope(group: str) -> None:
    root = OURS / "cgroup2"
    scope = f"/sys/fs/cgroup/llm.slice/{group}"
    with metalmem.Sampler(root=str(root), scope=scope) as s:
        m = s.system()
    host = _host(root)
    assert host["available"] is not None and host["total"] is not None
    if group == "limited":
        # limit 256 MiB, usage 192 MiB, inactive_file 40 MiB -> 104 MiB available
        assert m.total == 256 << 20
        assert m.available == min(host["available"], (256 << 20) - ((192 << 20) - (40 << 20)))
        assert m.free == 64 << 20 and m.limited
    else:
        assert (m.total, m.available) == (host["total"], host["available"])
        assert not m.limited and m.free is None
    assert m.wired == 8 << 20 and m.compressed == 1 << 20
    assert m.oom_kills == 1
    assert m.psi is not None and m.psi.some_avg10 == pytest.approx(12.5)
    assert m.psi.full_total == pytest.approx(2.345678)


def test_scope_that_is_not_a_memory_cgroup(tmp_path: pathlib.Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "sys/fs/cgroup/cpu-only").mkdir(parents=True)
    with pytest.raises(metalmem.Unsupported):
        metalmem.Sampler(root=str(tmp_path), scope="/sys/fs/cgroup/cpu-only")
    with pytest.raises(FileNotFoundError):
        metalmem.Sampler(root=str(tmp_path), scope="/sys/fs/cgroup/missing")


def test_live_cgroup_reports_limit_based_available_and_its_own_psi() -> None:
    """A real child holding 48 MiB in a 128 MiB cgroup: available follows the limit."""
    import subprocess
    import sys

    from . import cgroups
    from .helpers import wait_for

    reason = cgroups.skip_reason()
    if reason:
        pytest.skip(reason)
    limit = 128 << 20
    with cgroups.memory_cgroup(limit) as cg:
        child = cg.popen(
            [
                sys.executable,
                "-c",
                "import sys, time; b = bytearray(b'\\x01') * (48 << 20); print(1, flush=True); "
                "time.sleep(60)",
            ],
            stdout=subprocess.PIPE,
        )
        assert child.stdout is not None and child.stdout.readline() == b"1\n"
        with metalmem.Sampler(scope=cg.scope) as s, metalmem.Sampler() as host_sampler:
            m = wait_for(
                lambda: (x := s.system()).free is not None and x.free <= limit - (48 << 20) and x,
                timeout=5,
                what="usage seen",
            )
            host = host_sampler.system()
        assert m.total == limit and m.limited and m.scope == cg.scope
        assert m.available is not None and host.available is not None
        assert m.available <= limit - (48 << 20) + (8 << 20)  # a little page cache may count
        assert m.available < host.available
        assert m.psi is not None  # the group's own PSI (the v2 mirror on hybrid hosts)
        assert m.oom_kills == 0
