"""Reading the host once into :class:`HostFacts`: the sampler, sysctls and the boot plist on
macOS, ``/proc`` on Linux, the targets' command lines and model files, and the probes."""

from __future__ import annotations

import dataclasses
import os
import plistlib
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

from ..errors import AccessDenied, Error
from ..kube.options import DEFAULT_RESOURCE
from ..pressure import PressurePolicy
from ..sampler import ProcessMemory, Sampler
from ..targets import TargetSpec, TargetTracker, parse_ps_output, unmatched_targets
from .facts import (
    BOOT_PLIST_LABEL,
    LAUNCHD_DIR,
    AgentProcess,
    BootPlist,
    HostFacts,
    ModelFile,
    UnsizedTarget,
    cgroup_layout,
    is_agent_argv,
    model_paths,
    model_size,
)
from .gguf import GgufError, context_from_argv, kv_cache_bytes, read_header
from .probes import probe_kube, probe_port

SYSCTL_TIMEOUT = 5.0


@dataclasses.dataclass(frozen=True, slots=True)
class DoctorOptions:
    """What to check: the agent's settings as the CLI resolved them (flags over the config
    file), so doctor looks at what `run` would use: its thresholds, ``[[target]]`` specs,
    discovery pattern, scope, listen address and Kubernetes settings."""

    scope: str = "host"
    listen: tuple[str, int] = ("127.0.0.1", 9438)
    pressure: PressurePolicy = dataclasses.field(default_factory=PressurePolicy)
    targets: tuple[TargetSpec, ...] = ()
    discover: str | None = None
    kube: bool = False
    kubeconfig: str | None = None
    kube_context: str | None = None
    kube_resource: str = DEFAULT_RESOURCE
    kube_namespace: str | None = None


def read_sysctl(name: str) -> str | None:
    """``sysctl -n NAME`` (macOS), stripped; ``None`` when the name does not exist."""
    try:
        done = subprocess.run(
            ["sysctl", "-n", name],
            capture_output=True,
            text=True,
            timeout=SYSCTL_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else None


def _int_or_none(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def read_boot_plist(path: str) -> BootPlist:
    """The installed boot daemon at ``path`` and the value it sets, from its arguments."""
    if not os.path.exists(path):
        return BootPlist(path, False)
    try:
        with open(path, "rb") as f:
            doc = plistlib.load(f)
        args = doc["ProgramArguments"]
    except (OSError, plistlib.InvalidFileException, KeyError, TypeError, ValueError) as exc:
        return BootPlist(path, True, None, f"{type(exc).__name__}: {exc}")
    for arg in args if isinstance(args, list) else ():
        if isinstance(arg, str) and arg.startswith("iogpu.wired_limit_mb="):
            value = _int_or_none(arg.partition("=")[2])
            if value is not None:
                return BootPlist(path, True, value)
    return BootPlist(path, True, None, "no iogpu.wired_limit_mb=N in ProgramArguments")


def _process_table(platform: str) -> dict[int, tuple[str, ...]]:
    """Every readable process's command line: /proc on Linux, one ``ps`` run on macOS."""
    table: dict[int, tuple[str, ...]] = {}
    if platform == "linux":
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    raw = f.read()
            except OSError:
                continue  # exited while we looked, or hidden
            if raw:
                table[int(entry)] = tuple(os.fsdecode(a) for a in raw.rstrip(b"\0").split(b"\0"))
        return table
    try:
        out = subprocess.run(
            ["ps", "-axww", "-o", "pid=,args="],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=SYSCTL_TIMEOUT,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return table
    return {pid: tuple(args.split()) for pid, args in parse_ps_output(out).items()}


def _cwd(platform: str, pid: int) -> str | None:
    if platform != "linux":
        return None  # macOS: no /proc; relative model paths stay unsized
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None


def _models(
    platform: str, key: str, pid: int, argv: Sequence[str], seen: set[str]
) -> list[ModelFile]:
    out = []
    for path in model_paths(argv):
        if not os.path.isabs(path):
            cwd = _cwd(platform, pid)
            if cwd is None:
                out.append(ModelFile(key, path, None, "relative path, process cwd unknown"))
                continue
            path = os.path.join(cwd, path)
        if path in seen:
            continue
        seen.add(path)
        try:
            size = model_size(path)
        except OSError as exc:
            out.append(ModelFile(key, path, None, exc.strerror or str(exc)))
            continue
        kv = None
        if path.lower().endswith(".gguf") and os.path.isfile(path):
            try:
                kv = kv_cache_bytes(read_header(path), context_from_argv(argv))
            except (OSError, GgufError):
                kv = None  # the size alone still tells something
        out.append(ModelFile(key, path, size, None, *(kv or (None, None))))
    return out


def _owner_uid(platform: str, pid: int) -> int | None:
    """The uid owning ``pid``: /proc/PID's owner on Linux, ``ps -o uid=`` on macOS."""
    try:
        if platform == "linux":
            return os.stat(f"/proc/{pid}").st_uid
        out = subprocess.run(
            ["ps", "-o", "uid=", "-p", str(pid)],
            capture_output=True,
            text=True,
            timeout=SYSCTL_TIMEOUT,
            check=True,
        ).stdout
        return int(out.strip())
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


class _DenialRecorder:
    """The sampler as the target tracker sees it, noting each pid the OS refused to read.

    The tracker leaves such a process out (without its start time it has no identity, so it
    cannot be a target: macOS refuses PROC_PIDTBSDINFO for another user's process); doctor
    names it instead of reporting that there is nothing to manage.
    """

    def __init__(self, sampler: Sampler) -> None:
        self._sampler = sampler
        self.denied: dict[int, str] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sampler, name)

    def processes(self, pids: Iterable[int]) -> dict[int, Any]:
        out = self._sampler.processes(pids)
        for pid, rec in out.items():
            if isinstance(rec, AccessDenied):
                self.denied[pid] = str(rec)
        return out


def _unsized(
    platform: str,
    targets: Sequence[Any],
    samples: Mapping[int, Any],
    denied: Mapping[int, str],
    table: Mapping[int, Sequence[str]],
) -> tuple[UnsizedTarget, ...]:
    out = []
    adopted = {t.pid for t in targets}
    for t in targets:
        s = samples.get(t.pid)
        if isinstance(s, AccessDenied):
            out.append(UnsizedTarget(t.key, t.pid, True, _owner_uid(platform, t.pid), str(s)))
        elif isinstance(s, ProcessMemory) and s.footprint is None:
            owner = _owner_uid(platform, t.pid)
            out.append(UnsizedTarget(t.key, t.pid, False, owner, "footprint unknown"))
    for pid, error in sorted(denied.items()):
        if pid not in adopted:
            argv = table.get(pid) or (f"pid {pid}",)
            name = os.path.basename(argv[0])
            out.append(UnsizedTarget(name, pid, True, _owner_uid(platform, pid), error, False))
    return tuple(out)


def _agents(platform: str, table: Mapping[int, Sequence[str]]) -> tuple[AgentProcess, ...]:
    found = []
    for pid, argv in sorted(table.items()):
        if pid == os.getpid() or not is_agent_argv(argv):
            continue
        try:
            nice: int | None = os.getpriority(os.PRIO_PROCESS, pid)
        except OSError:
            nice = None
        adj = None
        if platform == "linux":
            try:
                with open(f"/proc/{pid}/oom_score_adj") as f:
                    adj = int(f.read().strip())
            except (OSError, ValueError):
                adj = None
        found.append(AgentProcess(pid, nice, adj))
    return tuple(found)


def gather_facts(
    options: DoctorOptions,
    sampler: Sampler,
    *,
    platform: str = sys.platform,
    sysctl: Callable[[str], str | None] = read_sysctl,
    launchd_dir: str = LAUNCHD_DIR,
    geteuid: Callable[[], int] = os.geteuid,
) -> HostFacts:
    """Read every fact the checks need, once; never raises for the host's sake.

    ``sampler`` is the real :class:`metalmem.Sampler` (tests of the macOS rows pass a double
    built from recorded values); ``sysctl`` reads one macOS sysctl as text; ``geteuid`` is
    the uid the agent is taken to run as.
    """
    pressure = options.pressure
    system = gpu = sample_error = None
    try:
        system = sampler.system()
    except (Error, OSError) as exc:
        sample_error = f"{type(exc).__name__}: {exc}"
    try:
        gpu = sampler.gpu()
    except (Error, OSError):
        gpu = None  # the GPU signal is off either way; the nvml/wired checks say so
    facts: dict[str, Any] = {}
    if platform == "darwin":
        plist_path = os.path.join(launchd_dir, f"{BOOT_PLIST_LABEL}.plist")
        facts.update(
            wired_limit_mb=_int_or_none(sysctl("iogpu.wired_limit_mb")),
            wired_collector_disabled=_int_or_none(sysctl("iogpu.disable_wired_collector")),
            boot_plist=read_boot_plist(plist_path),
        )
    if platform == "linux":
        try:
            with sampler.events() as ev:
                if system is not None and system.total:
                    ev.arm(
                        int(pressure.warning_available * system.total),
                        int(pressure.critical_available * system.total),
                    )
                facts["event_sources"] = tuple(sorted(ev.sources))
                if ev.psi_error is not None:
                    code = ev.psi_error
                    facts.update(psi_trigger_error=os.strerror(code), psi_trigger_errno=code)
        except (Error, OSError) as exc:
            facts.update(psi_trigger_error=str(exc), psi_trigger_errno=exc.errno, event_sources=())
        try:
            with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
                facts["cgroup"] = cgroup_layout(f.read())
        except OSError:
            facts["cgroup"] = None
        facts["nvidia_driver"] = os.path.exists("/proc/driver/nvidia/version")

    specs = options.targets
    recorder = _DenialRecorder(sampler)
    tracker = TargetTracker(cast(Sampler, recorder), specs, discover_pattern=options.discover)
    targets = tracker.refresh().targets
    samples = sampler.processes(t.pid for t in targets) if targets else {}
    footprints = [
        p.footprint
        for p in samples.values()
        if isinstance(p, ProcessMemory) and p.footprint is not None
    ]
    table = _process_table(platform)
    models: list[ModelFile] = []
    seen: set[str] = set()
    for t in targets:
        argv = table.get(t.pid)
        if argv:
            models.extend(_models(platform, t.key, t.pid, argv, seen))
    port = probe_port(*options.listen)
    kube = None
    if options.kube:
        kube = probe_kube(
            options.kubeconfig, options.kube_context, options.kube_resource, options.kube_namespace
        )
    return HostFacts(
        platform=platform,
        scope=options.scope,
        system=system,
        gpu=gpu,
        sample_error=sample_error,
        pressure=pressure,
        targets=len(targets),
        unmatched=tuple(unmatched_targets(specs, targets)),
        managed_footprint=sum(footprints) if footprints else None,
        unsized=_unsized(platform, targets, samples, recorder.denied, table),
        agent_uid=geteuid(),
        models=tuple(models),
        agents=_agents(platform, table),
        port=port,
        kube=kube,
        **facts,
    )
