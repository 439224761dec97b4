"""Real llama-server processes: discovery, and what the sampler says of their memory.

Each server loads a model written by the test (``models`` fixture: ``tiny`` 17 MB, ``big``
153 MB); every number the sampler reports is compared with /proc/PID/status, read right after
it, within a tolerance for the pages a live process touches in between.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest

import metalmem
from metalmem.targets import TargetSource, TargetTracker, discover

from .llama import LlamaServer, MiB, proc_status

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="/proc")

SLACK = 4 * MiB  # pages a live server may touch between our two reads


def _start(servers: list[LlamaServer], tmp_path: Path, name: str, *args: str) -> LlamaServer:
    s = LlamaServer([*args, "-c", "512", "-t", "1", "--no-warmup"], tmp_path / f"{name}.log")
    servers.append(s)
    s.wait_healthy()
    return s


def test_discovery_names_each_server_by_alias_or_model_file(
    sampler: metalmem.Sampler, servers: list[LlamaServer], tmp_path: Path, models: dict[str, Path]
) -> None:
    # Names unique on a shared host: other processes called llama-server may run beside us.
    tag = uuid.uuid4().hex[:8]
    model = tmp_path / f"model-{tag}.gguf"
    os.link(models["tiny"], model)
    by_file = _start(servers, tmp_path, "a", "-m", str(model))
    by_alias = _start(servers, tmp_path, "b", "-m", str(model), "--alias", f"chat-{tag}")
    found = {t.key: t for t in discover(sampler, "llama-server")}
    assert found[f"model-{tag}"].pid == by_file.pid
    assert found[f"chat-{tag}"].pid == by_alias.pid
    for t in (found[f"model-{tag}"], found[f"chat-{tag}"]):
        assert t.source is TargetSource.DISCOVERY
        assert t.start_time == sampler.process(t.pid).start_time
    # The tracker sees the same, and a restart under the same key is a new identity.
    tracker = TargetTracker(sampler, [])
    first = {t.key: t for t in tracker.refresh().targets}
    assert first[f"model-{tag}"].pid == by_file.pid
    assert first[f"chat-{tag}"].pid == by_alias.pid
    by_file.stop()
    again = _start(servers, tmp_path, "a2", "-m", str(model))
    changes = tracker.refresh()
    added = [t for t in changes.added if t.key == f"model-{tag}"]
    assert [t.pid for t in added] == [again.pid]
    assert by_file.pid in [t.pid for t in changes.removed]
    assert by_alias.pid not in [t.pid for t in changes.added + changes.removed]


def _compare(sampler: metalmem.Sampler, pid: int) -> tuple[metalmem.ProcessMemory, dict]:
    rec = sampler.process(pid)
    status = proc_status(pid)
    assert rec.rss is not None and abs(rec.rss - status["VmRSS"]) <= SLACK, (rec, status)
    assert rec.anon is not None and abs(rec.anon - status["RssAnon"]) <= SLACK, (rec, status)
    assert rec.footprint is not None
    assert abs(rec.footprint - (status["RssAnon"] + status["VmSwap"])) <= SLACK, (rec, status)
    assert rec.wired == status["VmLck"] + status.get("VmPin", 0), (rec, status)
    return rec, status


def test_mmap_mlock_and_no_mmap_models_against_proc(
    sampler: metalmem.Sampler, servers: list[LlamaServer], tmp_path: Path, models: dict[str, Path]
) -> None:
    """The same 153 MB model three ways: a file mapping (RSS mostly file pages, footprint
    small), locked (wired = VmLck), and read into anonymous memory (footprint = the model).
    This llama.cpp names them ``--load-mode mmap``, ``mmap+mlock`` and ``none``; older builds
    said ``--mlock`` and ``--no-mmap``."""
    size = models["big"].stat().st_size
    mapped = _start(servers, tmp_path, "mmap", "-m", str(models["big"]))
    locked = _start(
        servers, tmp_path, "mlock", "-m", str(models["big"]), "--load-mode", "mmap+mlock"
    )
    copied = _start(servers, tmp_path, "nommap", "-m", str(models["big"]), "--load-mode", "none")
    for s in (mapped, locked, copied):
        s.complete()  # every weight has been used once

    rec, status = _compare(sampler, mapped.pid)
    assert status["RssFile"] >= 0.9 * size, status
    assert rec.footprint is not None and rec.footprint < 0.5 * size, rec
    assert rec.wired == 0

    rec, status = _compare(sampler, locked.pid)
    assert rec.wired is not None and rec.wired >= 0.9 * size, (rec, status)
    assert rec.footprint is not None and rec.footprint < 0.5 * size, rec

    rec, status = _compare(sampler, copied.pid)
    assert status["RssAnon"] >= 0.9 * size and status["RssFile"] < 0.5 * size, status
    assert rec.footprint is not None and rec.footprint >= 0.9 * size, rec
    assert rec.wired == 0
