"""metalmem.targets: priorities, [[target]] tables, resolution and discovery of real children."""

from __future__ import annotations

import itertools
import logging
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from metalmem import Sampler
from metalmem.targets import (
    KubeRef,
    Priority,
    StopMethod,
    Target,
    TargetSource,
    TargetSpec,
    TargetTracker,
    discover,
    name_from_argv,
    parse_ps_output,
    parse_size,
    parse_target_specs,
    resolve,
)

from .helpers import Child, Children, can_choose_pids, reap, spawn_child_at_pid

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc of real children")


@pytest.fixture
def llama_server(tmp_path: Path) -> str:
    """A path named llama-server that runs Python: a child exec'd through it has that comm."""
    link = tmp_path / "bin" / "llama-server"
    link.parent.mkdir()
    link.symlink_to(os.path.realpath(sys.executable))
    return str(link)


def start_time(sampler: Sampler, pid: int) -> float:
    start = sampler.process(pid).start_time
    assert start is not None
    return start


# --- Priority ------------------------------------------------------------------------------

EVICTION_ORDER = [Priority.BATCH, Priority.LOW, Priority.NORMAL, Priority.HIGH, Priority.CRITICAL]


def test_priority_orders_by_rank_on_every_pair() -> None:
    for (i, a), (j, b) in itertools.permutations(enumerate(EVICTION_ORDER), 2):
        assert (a < b) is (i < j), (a, b)
        assert (a > b) is (i > j), (a, b)
        assert (a <= b) is (i <= j) and (a >= b) is (i >= j)
    assert sorted(reversed(EVICTION_ORDER)) == EVICTION_ORDER
    assert [p.rank for p in EVICTION_ORDER] == [0, 1, 2, 3, 4]
    assert min(Priority) is Priority.BATCH


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("critical", Priority.CRITICAL),
        ("HIGH", Priority.HIGH),
        (" low ", Priority.LOW),
        ("batch", Priority.BATCH),
        ("normal", Priority.NORMAL),
        ("urgent", Priority.NORMAL),
        ("", Priority.NORMAL),
        (None, Priority.NORMAL),
    ],
)
def test_priority_parse_maps_unknown_to_normal(text: str | None, expected: Priority) -> None:
    assert Priority.parse(text) is expected


def test_priority_values_are_the_stable_strings() -> None:
    assert [str(p) for p in EVICTION_ORDER] == ["batch", "low", "normal", "high", "critical"]


# --- [[target]] tables ---------------------------------------------------------------------


def test_parse_target_specs_reads_every_key() -> None:
    [spec, other] = parse_target_specs(
        [
            {
                "name": "qwen3-8b",
                "namespace": "llm",
                "pidfile": "/run/llama/qwen.pid",
                "priority": "low",
                "protected": False,
                "budget": "12GiB",
                "stop_signal": "SIGINT",
                "grace": 2.5,
                "process_group": True,
                "stop_command": "launchctl bootout gui/501/com.example.qwen",
            },
            {"name": "embed", "pid": 4321, "protected": True, "stop_command": ["kill", "{pid}"]},
        ]
    )
    assert spec == TargetSpec(
        name="qwen3-8b",
        namespace="llm",
        pidfile="/run/llama/qwen.pid",
        priority=Priority.LOW,
        budget=12 << 30,
        stop=StopMethod(
            signal=signal.SIGINT,
            grace=2.5,
            process_group=True,
            command=("launchctl", "bootout", "gui/501/com.example.qwen"),
        ),
    )
    assert spec.key == "llm/qwen3-8b"
    assert spec.kube == KubeRef("llm", "qwen3-8b")
    assert other.key == "embed" and other.kube is None
    assert other.priority is Priority.NORMAL and other.protected
    assert other.stop == StopMethod(command=("kill", "{pid}"))
    assert other.stop.command_for(99) == ("kill", "99")
    assert other.stop.signal == signal.SIGTERM and other.stop.grace is None  # [eviction] grace
    assert other.stop.grace_seconds == 10.0


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        ([{"name": "a", "pid": 5, "pids": 6}], "target[0]: unknown key 'pids'"),
        ([{"pid": 5}], "target[0]: name:"),
        ([{"name": "", "pid": 5}], "target[0]: name:"),
        ([{"name": "a/b", "pid": 5}], "target[0]: name:"),
        ([{"name": "a#1", "pid": 5}], "target[0]: name:"),
        ([{"name": "a b", "pid": 5}], "target[0]: name:"),
        ([{"name": "a", "namespace": "x/y", "pid": 5}], "target[0]: namespace:"),
        ([{"name": "a"}], "target[0]: pid/pidfile/cmdline: exactly one is required, got none"),
        ([{"name": "a", "pid": 5, "cmdline": "x"}], "exactly one is required, got pid, cmdline"),
        ([{"name": "a", "pid": 1}], "target[0]: pid:"),
        ([{"name": "a", "pid": True}], "target[0]: pid:"),
        ([{"name": "a", "pid": "5"}], "target[0]: pid:"),
        ([{"name": "a", "pidfile": ""}], "target[0]: pidfile:"),
        ([{"name": "a", "cmdline": "llama-(server"}], "target[0]: cmdline: not a valid regex"),
        ([{"name": "a", "pid": 5, "priority": 3}], "target[0]: priority:"),
        ([{"name": "a", "pid": 5, "protected": "yes"}], "target[0]: protected:"),
        ([{"name": "a", "pid": 5, "budget": -1}], "target[0]: budget:"),
        ([{"name": "a", "pid": 5, "budget": "12 parsecs"}], "target[0]: budget:"),
        ([{"name": "a", "pid": 5, "budget": True}], "target[0]: budget:"),
        ([{"name": "a", "pid": 5, "grace": -1}], "target[0]: grace:"),
        ([{"name": "a", "pid": 5, "grace": float("inf")}], "target[0]: grace:"),
        ([{"name": "a", "pid": 5, "grace": "10s"}], "target[0]: grace:"),
        ([{"name": "a", "pid": 5, "stop_signal": "SIGFOO"}], "target[0]: stop_signal:"),
        ([{"name": "a", "pid": 5, "stop_signal": 0}], "target[0]: stop_signal:"),
        ([{"name": "a", "pid": 5, "process_group": 1}], "target[0]: process_group:"),
        ([{"name": "a", "pid": 5, "stop_command": []}], "target[0]: stop_command:"),
        ([{"name": "a", "pid": 5, "stop_command": [1, 2]}], "target[0]: stop_command:"),
        ([{"name": "a", "pid": 5}, {"name": "a", "pid": 6}], "target[1]: name: duplicate"),
        ([{"name": "a", "pid": 5}, ["not", "a", "table"]], "target[1]: must be a table"),
    ],
)
def test_parse_target_specs_rejects_bad_tables_naming_the_key(
    tables: list[Any], message: str
) -> None:
    with pytest.raises(ValueError) as err:
        parse_target_specs(tables)
    assert message in str(err.value)


def test_parse_target_specs_same_name_in_two_namespaces_is_fine() -> None:
    specs = parse_target_specs(
        [{"name": "a", "namespace": "x", "pid": 5}, {"name": "a", "namespace": "y", "pid": 6}]
    )
    assert [s.key for s in specs] == ["x/a", "y/a"]


def test_parse_target_specs_warns_about_an_unknown_priority(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="metalmem.targets"):
        [spec] = parse_target_specs([{"name": "a", "pid": 5, "priority": "hihg"}])
    assert spec.priority is Priority.NORMAL
    assert "event=unknown_priority" in caplog.text


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (4096, 4096),
        ("4096", 4096),
        ("12GiB", 12 << 30),
        ("12Gi", 12 << 30),
        ("12gib", 12 << 30),
        ("1.5 GiB", 3 << 29),
        ("500M", 500_000_000),
        ("500MB", 500_000_000),
        ("2T", 2 * 10**12),
        ("64KiB", 65536),
        ("7B", 7),
    ],
)
def test_parse_size(value: int | str, expected: int) -> None:
    assert parse_size(value) == expected


@pytest.mark.parametrize("value", [-1, True, "", "GiB", "12 parsecs", "1e9", "-5M", "12XB"])
def test_parse_size_rejects(value: Any) -> None:
    with pytest.raises(ValueError):
        parse_size(value)


# --- resolve -------------------------------------------------------------------------------


@linux_only
def test_resolve_by_pid_carries_identity_and_settings(children: Children, sampler: Sampler) -> None:
    child = children.spawn()
    spec = TargetSpec(name="m", namespace="llm", pid=child.pid, priority=Priority.HIGH,
                      budget=1 << 30, stop=StopMethod(grace=3.0))  # fmt: skip
    [target] = resolve([spec], sampler)
    assert target == Target(
        key="llm/m",
        pid=child.pid,
        start_time=start_time(sampler, child.pid),
        priority=Priority.HIGH,
        protected=False,
        budget=1 << 30,
        stop=StopMethod(grace=3.0),
        kube=KubeRef("llm", "m"),
        source=TargetSource.CONFIG,
    )
    assert target.identity == (child.pid, target.start_time)


@linux_only
def test_resolve_drops_a_process_that_is_gone(children: Children, sampler: Sampler) -> None:
    child = children.spawn()
    reap(child.pid)
    assert resolve([TargetSpec(name="m", pid=child.pid)], sampler) == []


@linux_only
def test_resolve_by_pidfile_reads_it_every_time(
    children: Children, sampler: Sampler, tmp_path: Path
) -> None:
    pidfile = tmp_path / "llama.pid"
    spec = TargetSpec(name="m", pidfile=str(pidfile))
    assert resolve([spec], sampler) == []  # no file yet
    pidfile.write_text("garbage\n")
    assert resolve([spec], sampler) == []
    first = children.spawn()
    pidfile.write_text(f"{first.pid}\n")
    assert [t.pid for t in resolve([spec], sampler)] == [first.pid]
    second = children.spawn()  # the service restarted and rewrote its pidfile
    pidfile.write_text(f"{second.pid}\n")
    assert [t.pid for t in resolve([spec], sampler)] == [second.pid]


@linux_only
def test_resolve_by_cmdline_one_target_per_match(children: Children, sampler: Sampler) -> None:
    marker = f"marker-{uuid.uuid4().hex}"
    spec = TargetSpec(name="m", cmdline=f"{marker} --port 80[0-9]+")
    assert resolve([spec], sampler) == []
    one = children.spawn(args=(marker, "--port", "8080"))
    children.spawn(args=(marker, "--port", "9090"))  # does not match the regex
    [target] = resolve([spec], sampler)
    assert (target.key, target.pid) == ("m", one.pid)  # a single match keeps the plain key
    two = children.spawn(args=(marker, "--port", "8081"))
    targets = resolve([spec], sampler)
    assert {(t.key, t.pid) for t in targets} == {
        (f"m#{one.pid}", one.pid),
        (f"m#{two.pid}", two.pid),
    }


@linux_only
def test_resolve_gives_a_process_named_by_two_specs_to_the_first(
    children: Children, sampler: Sampler
) -> None:
    marker = f"marker-{uuid.uuid4().hex}"
    child = children.spawn(args=(marker,))
    specs = [
        TargetSpec(name="by-cmdline", cmdline=marker),
        TargetSpec(name="by-pid", pid=child.pid),
    ]
    assert [(t.key, t.pid) for t in resolve(specs, sampler)] == [("by-cmdline", child.pid)]


@linux_only
def test_resolve_never_yields_pid_1_self_or_parent(sampler: Sampler) -> None:
    specs = [
        TargetSpec(name="self", pid=os.getpid()),
        TargetSpec(name="parent", pid=os.getppid()),
        TargetSpec(name="anything", cmdline="."),
    ]
    pids = {t.pid for t in resolve(specs, sampler)}
    assert not pids & {0, 1, os.getpid(), os.getppid()}


# --- discovery -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (["llama-server", "--alias", "qwen", "-m", "/m/x.gguf"], "qwen"),
        (["llama-server", "-a", "qwen"], "qwen"),
        (["llama-server", "--alias=qwen"], "qwen"),
        (["llama-server", "-m", "/models/Qwen3-8B-Q4_K_M.gguf"], "Qwen3-8B-Q4_K_M"),
        (["llama-server", "--model", "rel/x.GGUF", "--port", "8080"], "x"),
        (["llama-server", "--model=/m/gemma-00001-of-00002.gguf"], "gemma-00001-of-00002"),
        (
            ["llama-server", "-hf", "ggml-org/gemma-3-1b-it-GGUF:Q4_K_M"],
            "gemma-3-1b-it-GGUF:Q4_K_M",
        ),
        (["llama-server", "-m", "a.gguf", "-m", "b.gguf"], "b"),  # the last flag wins
        (["llama-server", "--alias", "my model/v2#1"], "my_model_v2_1"),
        (["llama-server", "--alias"], None),  # flag without a value
        (["llama-server", "--alias", ""], None),
        (["llama-server", "--port", "8080"], None),
        (["--alias"], None),  # argv[0] is never a flag
        ([], None),
    ],
)
def test_name_from_argv(argv: list[str], name: str | None) -> None:
    assert name_from_argv(argv) == name


@linux_only
def test_discover_names_real_llama_servers(
    children: Children, sampler: Sampler, llama_server: str
) -> None:
    alias = f"alias-{uuid.uuid4().hex[:8]}"
    model = f"Model-{uuid.uuid4().hex[:8]}-Q4_K_M"
    by_alias = children.spawn(executable=llama_server, args=("--alias", alias, "-m", "/x.gguf"))
    by_model = children.spawn(executable=llama_server, args=("-m", f"/models/{model}.gguf"))
    unnamed = children.spawn(executable=llama_server)
    plain = children.spawn(args=("--alias", "not-a-llama-server"))
    found = {t.pid: t for t in discover(sampler)}
    assert found[by_alias.pid].key == alias
    assert found[by_model.pid].key == model
    assert found[unnamed.pid].key == f"llama-server#{unnamed.pid}"
    assert plain.pid not in found
    for child in (by_alias, by_model, unnamed):
        t = found[child.pid]
        assert t.source is TargetSource.DISCOVERY and t.priority is Priority.NORMAL
        assert t.start_time == start_time(sampler, child.pid)
        assert not t.protected and t.kube is None


@linux_only
def test_discover_gives_duplicate_names_a_pid_suffix(
    children: Children, sampler: Sampler, llama_server: str
) -> None:
    alias = f"twin-{uuid.uuid4().hex[:8]}"
    a = children.spawn(executable=llama_server, args=("--alias", alias))
    b = children.spawn(executable=llama_server, args=("--alias", alias))
    keys = {t.pid: t.key for t in discover(sampler)}
    assert keys[a.pid] == f"{alias}#{a.pid}" and keys[b.pid] == f"{alias}#{b.pid}"


@linux_only
def test_discover_pattern_is_a_regex_over_comm_and_exe(
    children: Children, sampler: Sampler, llama_server: str
) -> None:
    child = children.spawn(executable=llama_server, args=("--alias", "x"))
    exe = os.path.basename(os.path.realpath(sys.executable))
    assert child.pid in {t.pid for t in discover(sampler, r"^llama-(server|cli)$")}
    # via /proc/PID/exe; every Python on the host matches too (a test run, benchmarks): no cap
    assert child.pid in {t.pid for t in discover(sampler, "^" + exe + "$", max_matches=10_000)}
    assert child.pid not in {t.pid for t in discover(sampler, r"^ollama$")}


def write_proc_entry(proc: Path, pid: int, comm: str, argv: list[str]) -> None:
    d = proc / str(pid)
    d.mkdir(parents=True)
    (d / "comm").write_text(comm + "\n")
    (d / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in argv))


@linux_only
def test_discover_in_a_captured_tree_skips_pid_1_self_parent_and_kernel_threads(
    children: Children, sampler: Sampler, tmp_path: Path
) -> None:
    proc = tmp_path / "proc"
    child = children.spawn()
    for pid in (1, os.getpid(), os.getppid()):
        write_proc_entry(proc, pid, "llama-server", ["llama-server", "--alias", f"p{pid}"])
    write_proc_entry(proc, child.pid, "llama-server", ["/opt/llama-server", "-a", "ok"])
    (proc / "self").mkdir()  # not a pid
    kthread = children.spawn()  # a comm match with an empty command line: skipped
    write_proc_entry(proc, kthread.pid, "llama-server", [])
    found = discover(sampler, proc_root=str(proc))
    assert [(t.key, t.pid) for t in found] == [("ok", child.pid)]


@linux_only
def _stat(d: Path, comm: str, start: int) -> None:
    (d / "comm").write_text(comm + "\n")
    (d / "stat").write_text(f"1 ({comm}) S " + " ".join(["0"] * 18) + f" {start} 0 0\n")


def test_a_rescan_rereads_a_process_only_when_its_identity_changes(
    children: Children, sampler: Sampler, tmp_path: Path
) -> None:
    # The rescan cache (issue 15): names and argv are re-read when stat's comm (exec,
    # PR_SET_NAME) or start time (the pid reused by another process) changes, and a pid that
    # leaves the listing is forgotten; without a stat nothing is cached.
    proc = tmp_path / "proc"
    child = children.spawn()
    write_proc_entry(proc, child.pid, "bash", ["bash"])
    d = proc / str(child.pid)
    _stat(d, "bash", 100)
    assert discover(sampler, proc_root=str(proc)) == []
    _stat(d, "llama-server", 100)  # exec'd
    (d / "cmdline").write_bytes(b"llama-server\0--alias\0first\0")
    assert [t.key for t in discover(sampler, proc_root=str(proc))] == ["first"]
    (d / "cmdline").write_bytes(b"llama-server\0--alias\0second\0")
    # same comm and start: the same program, its name as first read (documented in _ProcFS)
    assert [t.key for t in discover(sampler, proc_root=str(proc))] == ["first"]
    _stat(d, "llama-server", 200)  # the pid reused by another process of the same name
    assert [t.key for t in discover(sampler, proc_root=str(proc))] == ["second"]
    (d / "cmdline").write_bytes(b"llama-server\0--alias\0third\0")
    (d / "stat").unlink()  # unreadable identity: read afresh every time
    assert [t.key for t in discover(sampler, proc_root=str(proc))] == ["third"]
    (d / "cmdline").write_bytes(b"llama-server\0--alias\0fourth\0")
    assert [t.key for t in discover(sampler, proc_root=str(proc))] == ["fourth"]
    _stat(d, "llama-server", 300)
    assert [t.key for t in discover(sampler, proc_root=str(proc))] == ["fourth"]
    for f in d.iterdir():
        f.unlink()
    d.rmdir()
    assert discover(sampler, proc_root=str(proc)) == []  # gone: forgotten
    write_proc_entry(proc, child.pid, "llama-server", ["llama-server", "--alias", "fifth"])
    _stat(d, "llama-server", 300)
    assert [t.key for t in discover(sampler, proc_root=str(proc))] == ["fifth"]


@linux_only
def test_parse_ps_output_reads_real_ps(children: Children, llama_server: str) -> None:
    child = children.spawn(executable=llama_server, args=("--alias", "via-ps"))
    comm = parse_ps_output(
        subprocess.run(["ps", "-axww", "-o", "pid=,comm="], capture_output=True, text=True).stdout
    )
    args = parse_ps_output(
        subprocess.run(["ps", "-axww", "-o", "pid=,args="], capture_output=True, text=True).stdout
    )
    assert comm[child.pid] == "llama-server"
    assert args[child.pid].split()[-2:] == ["--alias", "via-ps"]
    assert name_from_argv(args[child.pid].split()) == "via-ps"


def test_parse_ps_output_skips_malformed_lines() -> None:
    text = "  1 /sbin/launchd\n\n 85 /Applications/LM Studio.app/x\nPID COMM\n 9 \n-3 x\n"
    assert parse_ps_output(text) == {1: "/sbin/launchd", 85: "/Applications/LM Studio.app/x"}


# --- TargetTracker -------------------------------------------------------------------------


@linux_only
def test_tracker_keeps_identity_and_sees_restarts(
    children: Children, sampler: Sampler, tmp_path: Path, llama_server: str
) -> None:
    pidfile = tmp_path / "svc.pid"
    first = children.spawn()
    pidfile.write_text(str(first.pid))
    alias = f"disc-{uuid.uuid4().hex[:8]}"
    discovered = children.spawn(executable=llama_server, args=("--alias", alias))
    tracker = TargetTracker(sampler, [TargetSpec(name="svc", pidfile=str(pidfile))])

    changes = tracker.refresh()
    keys = {t.key: t for t in changes.targets}
    assert keys["svc"].pid == first.pid and keys[alias].pid == discovered.pid
    assert set(changes.added) == set(changes.targets) and changes.removed == ()

    again = tracker.refresh()
    assert again.added == () and again.removed == ()
    assert all(a is b for a, b in zip(again.targets, changes.targets, strict=True))

    second = children.spawn()  # restart: same key, new process
    pidfile.write_text(str(second.pid))
    reap(first.pid)
    restarted = tracker.refresh()
    assert [(t.key, t.pid) for t in restarted.added] == [("svc", second.pid)]
    assert [(t.key, t.pid) for t in restarted.removed] == [("svc", first.pid)]

    reap(discovered.pid)  # gone: dropped
    gone = tracker.refresh()
    assert [t.key for t in gone.removed] == [alias] and gone.added == ()
    assert tracker.targets == gone.targets


@linux_only
def test_tracker_leaves_a_configured_process_to_its_spec(
    children: Children, sampler: Sampler, llama_server: str
) -> None:
    alias = f"cfg-{uuid.uuid4().hex[:8]}"
    configured = children.spawn(executable=llama_server, args=("--alias", alias))
    other = children.spawn(executable=llama_server, args=("--alias", alias))
    spec = TargetSpec(name=alias, pid=configured.pid, priority=Priority.HIGH)
    targets = {t.pid: t for t in TargetTracker(sampler, [spec]).refresh().targets}
    assert targets[configured.pid].source is TargetSource.CONFIG
    assert targets[configured.pid].key == alias
    assert targets[configured.pid].priority is Priority.HIGH
    # discovered under the same name: it gets its pid as a suffix, keys stay unique
    assert targets[other.pid].key == f"{alias}#{other.pid}"
    assert targets[other.pid].source is TargetSource.DISCOVERY


@linux_only
@pytest.mark.skipif(not can_choose_pids(), reason="choosing a pid needs root (ns_last_pid)")
def test_tracker_does_not_adopt_a_reused_pid_of_a_pid_spec(
    children: Children, sampler: Sampler, caplog: pytest.LogCaptureFixture
) -> None:
    first: Child = children.spawn()
    tracker = TargetTracker(sampler, [TargetSpec(name="m", pid=first.pid)], discover_pattern=None)
    [target] = tracker.refresh().targets
    reap(first.pid)
    second = spawn_child_at_pid(first.pid)
    children.pids.append(second.pid)
    with caplog.at_level(logging.WARNING, logger="metalmem.targets"):
        changes = tracker.refresh()
    assert changes.targets == () and changes.removed == (target,)
    assert "event=target_pid_reused" in caplog.text
    assert resolve([TargetSpec(name="m", pid=first.pid)], sampler)[0].pid == second.pid


def _loadavg(proc: Path, last_pid: int) -> None:
    (proc / "loadavg").write_text(f"0.00 0.01 0.05 1/123 {last_pid}\n")


def test_discovery_rescans_only_when_a_pid_was_allocated(
    children: Children, sampler: Sampler, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue 15: the rescan of the host was a fifth of an idle agent's CPU. While the kernel's
    # last allocated pid (/proc/loadavg) stays, no process started and no pid was reused: the
    # tracker keeps its matches (less those that exited) instead of rescanning.
    import metalmem.targets.tracker as tracker_module

    proc = tmp_path / "proc"
    proc.mkdir()
    a, b = children.spawn(), children.spawn()
    write_proc_entry(proc, a.pid, "llama-server", ["llama-server", "--alias", "a"])
    _stat(proc / str(a.pid), "llama-server", 100)
    _loadavg(proc, 1000)
    tracker = TargetTracker(sampler, discover_pattern="^llama-server$", proc_root=str(proc))
    assert [t.key for t in tracker.refresh().targets] == ["a"]
    write_proc_entry(proc, b.pid, "llama-server", ["llama-server", "--alias", "b"])
    _stat(proc / str(b.pid), "llama-server", 200)
    assert [t.key for t in tracker.refresh().targets] == ["a"]  # no pid allocated: no rescan
    _loadavg(proc, 1001)
    assert sorted(t.key for t in tracker.refresh().targets) == ["a", "b"]
    for f in (proc / str(a.pid)).iterdir():
        f.unlink()
    (proc / str(a.pid)).rmdir()
    assert [t.key for t in tracker.refresh().targets] == ["b"]  # gone without a rescan
    # A process that exec'd into a match takes no new pid: the periodic full rescan finds it.
    (proc / str(b.pid) / "cmdline").write_bytes(b"llama-server\0--alias\0renamed\0")
    _stat(proc / str(b.pid), "llama-server", 300)
    assert [t.key for t in tracker.refresh().targets] == ["b"]
    monkeypatch.setattr(tracker_module, "FULL_RESCAN", 0.0)
    assert [t.key for t in tracker.refresh().targets] == ["renamed"]


@linux_only
def test_the_kernels_last_pid_moves_when_a_process_starts(children: Children) -> None:
    # The fact the gate stands on, on this kernel: starting a process allocates a pid, and
    # /proc/loadavg's fifth field is the last one allocated in our pid namespace.
    def last() -> int:
        return int(Path("/proc/loadavg").read_text().split()[4])

    before = last()
    child = children.spawn()
    after = last()
    assert (after != before and after >= child.pid) or after < before  # (or the pids wrapped)
