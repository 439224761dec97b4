"""`metalmem-agent doctor`: check this host for what metalmem needs, with a verdict per check.

Three steps, kept apart so that every verdict can be tested on any machine:

1. :func:`gather_facts` reads the host once into a :class:`HostFacts` record: the real
   :class:`metalmem.Sampler` (memory, GPU, a PSI trigger), sysctls on macOS, ``/proc`` on Linux,
   the targets' command lines and model files, a bind on the HTTP port and, only when asked,
   one GET of Kubernetes' ``/version``.
2. The checks of :data:`CHECKS` are pure functions of those facts, one row each, so the macOS
   rows are tested on Linux over facts recorded from real Macs (reference/macos-memory.md §4.5).
3. :func:`render_table` and :func:`report_to_dict` print them (``docs/doctor.schema.json``);
   the command exits 1 if any check fails, 2 for bad input.

macOS sysctls are read by running ``sysctl -n NAME`` rather than through ctypes
``sysctlbyname``: doctor runs once, so one fork per name costs nothing that matters; the value is
then exactly what the operator sees when typing the command the fix line shows; and ``sysctl``
knows each name's C type, which ctypes would have to be told name by name. The sampler keeps
reading the same sysctls in C on the hot path.
"""

from __future__ import annotations

import dataclasses
import enum
import errno as errno_mod
import math
import os
import plistlib
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, cast

import click

import metalmem
from metalmem.configfile import Config, ConfigError, load_config
from metalmem.kube.api import FIELD_MANAGER
from metalmem.kube.objects import condition_owners
from metalmem.kube.options import DEFAULT_RESOURCE, Resource
from metalmem.level import Level
from metalmem.pressure import Classifier, PressurePolicy
from metalmem.sampler import GpuMemory, ProcessMemory, Sampler, SystemMemory
from metalmem.targets import TargetTracker, check_pattern, parse_ps_output

from .agent import DEFAULT_LISTEN, ListenType
from .common import EXIT_FAILURE, EXIT_OK, human_bytes, unmatched_targets
from .gguf import GgufError, context_from_argv, kv_cache_bytes, read_header

__all__ = [
    "BOOT_PLIST_LABEL",
    "CHECKS",
    "AgentProcess",
    "BootPlist",
    "CgroupLayout",
    "Check",
    "DoctorOptions",
    "Finding",
    "HostFacts",
    "KubeProbe",
    "ModelFile",
    "PortProbe",
    "UnsizedTarget",
    "Verdict",
    "cgroup_layout",
    "doctor",
    "gather_facts",
    "is_agent_argv",
    "model_paths",
    "model_size",
    "recommended_wired_limit_mb",
    "render_table",
    "report_to_dict",
    "run_checks",
]

MiB = 1 << 20
BOOT_PLIST_LABEL = "io.metalmem.iogpu-wired-limit"
"""The launchd daemon of deploy/macos/ that sets ``iogpu.wired_limit_mb`` at boot."""
LAUNCHD_DIR = "/Library/LaunchDaemons"
MODEL_HEADROOM = 0.9
"""A model above this share of the GPU ceiling leaves too little room for its KV cache and
compute buffers: mlx-lm's ``wired_limit()`` warns past 0.9 x max_recommended_working_set_size
(reference/macos-memory.md §4.4)."""
KUBE_TIMEOUT = 3.0  # seconds for GET /version: a cheap reachability probe, not a health check
HOLDER_TIMEOUT = 1.0  # seconds to ask a port's holder for /metrics: it may not speak HTTP
SYSCTL_TIMEOUT = 5.0

DARWIN = frozenset({"darwin"})
LINUX = frozenset({"linux"})
EVERYWHERE = DARWIN | LINUX


class Verdict(enum.StrEnum):
    """A check's outcome; the values are the stable strings of the table and the JSON."""

    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclasses.dataclass(frozen=True, slots=True)
class Finding:
    """One check's verdict, a one-line finding and the exact fix (``None``: nothing to do)."""

    check: str
    verdict: Verdict
    finding: str
    fix: str | None = None


# --- facts ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class ModelFile:
    """A model file named on a target's command line; ``size`` in bytes, ``None`` if unknown
    (``error`` says why: missing, unreadable, a relative path with no known cwd). For a GGUF
    file, ``kv_cache`` is the F16 KV cache its header implies at ``context`` tokens (the
    command line's ``-c``, else the model's trained context; ``cli/gguf.py``), ``None`` where
    the header does not tell."""

    target: str
    path: str
    size: int | None
    error: str | None = None
    kv_cache: int | None = None
    context: int | None = None

    @property
    def need(self) -> int | None:
        """Bytes it needs resident: the weights plus the KV cache where known."""
        return None if self.size is None else self.size + (self.kv_cache or 0)


@dataclasses.dataclass(frozen=True, slots=True)
class AgentProcess:
    """A running ``metalmem-agent run``: its nice value and (Linux) ``oom_score_adj``."""

    pid: int
    nice: int | None
    oom_score_adj: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class PortProbe:
    """Whether ``host:port`` could be bound: ``error`` is ``None`` when it is free.

    ``holder`` names a metalmem agent (``metalmem <version>``) found answering /metrics there.
    """

    host: str
    port: int
    error: str | None = None
    errno: int | None = None
    holder: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class KubeProbe:
    """The Kubernetes reachability probe: where the config came from, the server and its
    ``gitVersion``, or the error that stopped it."""

    source: str | None
    server: str | None
    version: str | None
    error: str | None = None
    objects: int | None = None  # objects of the resource listed (None: not listed)
    condition_writers: tuple[str, ...] = ()  # other field managers of MemoryPressure
    list_error: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class BootPlist:
    """The installed launchd daemon of deploy/macos/: whether it is there and the value of
    ``iogpu.wired_limit_mb`` it sets at boot (``None`` when unreadable: ``error``)."""

    path: str
    present: bool
    value_mb: int | None = None
    error: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class UnsizedTarget:
    """A process a target names whose memory the sampler could not read: ``denied`` when the
    OS refused (another user's process and the agent is not root), ``adopted`` whether it
    became a target at all (macOS refuses even its start time, so it does not), ``owner_uid``
    its owner (``None`` if unknown), ``error`` what the sampler said. ``key`` is the target's,
    or the process's command name when it was not adopted."""

    key: str
    pid: int
    denied: bool
    owner_uid: int | None
    error: str
    adopted: bool = True


@dataclasses.dataclass(frozen=True, slots=True)
class CgroupLayout:
    """Which cgroup hierarchies are mounted: ``version`` is ``v2``, ``v1``, ``hybrid`` (v1
    controllers plus a cgroup2 mount) or ``none``; ``memory`` where the memory controller is
    (``v1``, ``v2`` or ``None``)."""

    version: str
    memory: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class HostFacts:
    """Everything the checks look at, read once. ``None`` means unknown or not applicable.

    ``psi_trigger_error`` is ``None`` when a PSI trigger could be opened (Linux);
    ``wired_limit_mb`` is ``iogpu.wired_limit_mb`` (macOS 14+, 0 = the default policy);
    ``managed_footprint`` the sum of the targets' footprints; ``unsized`` the live targets
    without one and ``agent_uid`` the effective uid doctor runs as (the agent's, when run as it).
    """

    platform: str
    scope: str = "host"
    system: SystemMemory | None = None
    gpu: GpuMemory | None = None
    sample_error: str | None = None
    pressure: PressurePolicy = dataclasses.field(default_factory=PressurePolicy)
    wired_limit_mb: int | None = None
    wired_collector_disabled: int | None = None
    boot_plist: BootPlist | None = None
    psi_trigger_error: str | None = None
    psi_trigger_errno: int | None = None
    event_sources: tuple[str, ...] | None = None
    cgroup: CgroupLayout | None = None
    nvidia_driver: bool = False
    targets: int = 0
    unmatched: tuple[str, ...] = ()
    managed_footprint: int | None = None
    unsized: tuple[UnsizedTarget, ...] = ()
    agent_uid: int | None = None
    models: tuple[ModelFile, ...] = ()
    agents: tuple[AgentProcess, ...] = ()
    port: PortProbe | None = None
    kube: KubeProbe | None = None


# --- pure helpers --------------------------------------------------------------------------


def recommended_wired_limit_mb(total: int, baseline: int, warning_available: float) -> int:
    """The largest ``iogpu.wired_limit_mb`` that keeps a GPU filled to its ceiling from
    pushing the host below metalmem's WARNING threshold (docs/dedicated-hosts.md).

    ``total`` is RAM and ``baseline`` what the host uses with no model loaded, in bytes;
    ``warning_available`` the WARNING fraction. Wired memory counts as used, so the GPU
    ceiling plus the baseline must stay within ``total - ceil(w * total)``: the same threshold
    the planner aims back above (``Planner.needed_bytes``). Whole MiB, never below 0.
    """
    room = total - math.ceil(warning_available * total) - baseline
    return max(0, room // MiB)


_SPLIT_GGUF = re.compile(r"^(?P<stem>.*)-(?P<part>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)
_MODEL_FLAGS = ("-m", "--model")


def model_paths(argv: Sequence[str]) -> tuple[str, ...]:
    """The model files a command line names: every ``-m``/``--model`` value (``FLAG PATH`` or
    ``FLAG=PATH``) and every other argument ending in ``.gguf``, in order, without repeats."""
    found: list[str] = []
    args = list(argv[1:])
    for i, arg in enumerate(args):
        value = None
        for flag in _MODEL_FLAGS:
            if arg == flag and i + 1 < len(args):
                value = args[i + 1]
            elif arg.startswith(flag + "="):
                value = arg[len(flag) + 1 :]
        if value is None and arg.lower().endswith(".gguf") and not arg.startswith("-"):
            value = arg
        if value and value not in found:
            found.append(value)
    return tuple(found)


def model_size(path: str) -> int:
    """Bytes a model occupies on disk: a file's size, every part of a split GGUF
    (``name-00001-of-00003.gguf``, llama.cpp loads all parts from the first), or the regular
    files directly inside a directory (safetensors shards). Raises ``OSError``."""
    match = _SPLIT_GGUF.match(os.path.basename(path))
    if match is not None:
        directory = os.path.dirname(path)
        stem, count = match.group("stem"), int(match.group("count"))
        total = 0
        for part in range(1, count + 1):
            total += os.stat(
                os.path.join(directory, f"{stem}-{part:05d}-of-{count:05d}.gguf")
            ).st_size
        return total
    if os.path.isdir(path):
        with os.scandir(path) as entries:
            return sum(e.stat().st_size for e in entries if e.is_file())
    return os.stat(path).st_size


def is_agent_argv(argv: Sequence[str]) -> bool:
    """Whether a command line is ``metalmem-agent run`` (also ``python -m metalmem_cli run``)."""
    for i, arg in enumerate(argv):
        if os.path.basename(arg) == "metalmem-agent" or arg == "metalmem_cli":
            return i + 1 < len(argv) and argv[i + 1] == "run"
    return False


def cgroup_layout(mountinfo: str) -> CgroupLayout:
    """The cgroup layout from ``/proc/self/mountinfo`` text (proc(5): the filesystem type and
    the super options follow the ``-`` separator). Malformed lines are skipped."""
    v1 = v1_memory = v2 = False
    for line in mountinfo.splitlines():
        _, sep, tail = line.partition(" - ")
        fields = tail.split()
        if not sep or len(fields) < 3:
            continue
        fstype, options = fields[0], fields[2].split(",")
        if fstype == "cgroup2":
            v2 = True
        elif fstype == "cgroup":
            v1 = True
            v1_memory = v1_memory or "memory" in options
    version = "hybrid" if v1 and v2 else "v1" if v1 else "v2" if v2 else "none"
    memory = "v1" if v1_memory else "v2" if v2 else None
    return CgroupLayout(version, memory)


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%"


def gpu_ceiling(facts: HostFacts) -> tuple[int | None, str]:
    """Bytes the GPU may use and where that figure comes from."""
    if facts.wired_limit_mb:
        return facts.wired_limit_mb * MiB, f"iogpu.wired_limit_mb={facts.wired_limit_mb}"
    if facts.gpu is not None and facts.gpu.limit:
        what = "recommendedMaxWorkingSetSize" if facts.platform == "darwin" else "NVML total"
        return facts.gpu.limit, what
    if facts.system is not None and facts.system.gpu_limit:
        return facts.system.gpu_limit, "the sampler's GPU limit"
    return None, "unknown"


def baseline(facts: HostFacts) -> int | None:
    """Memory in use apart from the managed targets: ``total - available - footprints``."""
    s = facts.system
    if s is None or s.total is None or s.available is None:
        return None
    return max(0, s.total - s.available - (facts.managed_footprint or 0))


# --- checks --------------------------------------------------------------------------------

Result = tuple[Verdict, str, str | None]
DOC = "docs/dedicated-hosts.md"


def check_sampler(facts: HostFacts) -> Result:
    """Without a sample nothing else is known: the native module must work here."""
    s = facts.system
    if facts.sample_error is not None or s is None:
        return (
            Verdict.FAIL,
            f"the native sampler cannot sample this host: {facts.sample_error}",
            "reinstall the package so that its native module is rebuilt: "
            "pip install --force-reinstall --no-deps metalmem",
        )
    return (
        Verdict.OK,
        f"{facts.platform} sampler, scope {s.scope}: {human_bytes(s.total)} total, "
        f"{human_bytes(s.available)} available",
        None,
    )


def check_pressure(facts: HostFacts) -> Result:
    """The classifier's verdict on one sample with the config's thresholds: short now?"""
    s = facts.system
    if s is None:
        return Verdict.WARN, "no sample, so no assessment", "see the sampler check"
    a = Classifier(facts.pressure).assess(s, s.timestamp)
    if a.top_reason is not None:
        top = a.top_reason.message
    elif s.total and s.available is not None:
        top = f"{human_bytes(s.available)} of {human_bytes(s.total)} available"
    else:
        top = "no signal votes above NORMAL"
    finding = f"{a.level.name} now: {top}"
    if a.level == Level.NORMAL:
        return Verdict.OK, finding, None
    fix = (
        "find what holds the memory: metalmem-agent snapshot, then metalmem-agent explain "
        "--config PATH for the eviction ranking (docs/troubleshooting.md)"
    )
    return (Verdict.WARN if a.level == Level.WARNING else Verdict.FAIL), finding, fix


def check_wired_limit(facts: HostFacts) -> Result:
    """Can a GPU filled to its ceiling, plus what else runs, push the host below WARNING?"""
    ceiling, source = gpu_ceiling(facts)
    s = facts.system
    if facts.wired_limit_mb is None and ceiling is None:
        return (
            Verdict.WARN,
            "no iogpu.wired_limit_mb and no Metal working-set size: the GPU ceiling is unknown "
            "(macOS 13 has debug.iogpu.wired_limit in bytes; Intel Macs have neither)",
            "none for metalmem; on macOS 14 or later run: sysctl iogpu.wired_limit_mb",
        )
    if ceiling is None or s is None or s.total is None:
        return (
            Verdict.WARN,
            f"GPU ceiling from {source}; RAM unknown, nothing to compare",
            "see the sampler check",
        )
    total = s.total
    base = baseline(facts)
    rec = recommended_wired_limit_mb(total, base or 0, facts.pressure.warning_available)
    persist = f"; make it survive a reboot with deploy/macos/{BOOT_PLIST_LABEL}.plist ({DOC})"
    what = (
        "default policy (0)"
        if not facts.wired_limit_mb
        else f"iogpu.wired_limit_mb={facts.wired_limit_mb}"
    )
    finding = (
        f"{what}: the GPU may wire {human_bytes(ceiling)} = {_pct(ceiling, total)} of "
        f"{human_bytes(total)} RAM ({source})"
    )
    if ceiling >= total:
        return (
            Verdict.FAIL,
            f"{finding}: nothing is left for macOS, which hangs or panics when the GPU fills it",
            f"sudo sysctl iogpu.wired_limit_mb={rec}{persist}",
        )
    room = total - math.ceil(facts.pressure.warning_available * total)
    if base is not None and ceiling + base > room:
        return (
            Verdict.WARN,
            f"{finding}; with the {human_bytes(base)} the host uses besides its models, a full "
            f"GPU leaves less than {facts.pressure.warning_available:.0%} available: WARNING",
            f"sudo sysctl iogpu.wired_limit_mb={rec}{persist}",
        )
    return Verdict.OK, finding, None


def check_wired_limit_boot(facts: HostFacts) -> Result:
    """A hand-set ``iogpu.wired_limit_mb`` is gone after a reboot unless a boot daemon sets it."""
    limit, plist = facts.wired_limit_mb, facts.boot_plist
    install = (
        f"install deploy/macos/{BOOT_PLIST_LABEL}.plist as {DOC} shows "
        f"(sudo cp, PlistBuddy Set, sudo launchctl bootstrap system)"
    )
    if limit is None:
        return Verdict.OK, "this macOS has no iogpu.wired_limit_mb: nothing to persist", None
    if plist is None or not plist.present:
        if limit == 0:
            return Verdict.OK, "default policy (0) and no boot daemon: nothing to persist", None
        return (
            Verdict.WARN,
            f"iogpu.wired_limit_mb={limit} is set now but nothing sets it at boot: the next "
            "reboot brings back the default",
            install,
        )
    if plist.error is not None or plist.value_mb is None:
        return Verdict.WARN, f"{plist.path}: cannot read it: {plist.error}", install
    if plist.value_mb != limit:
        return (
            Verdict.WARN,
            f"{plist.path} sets iogpu.wired_limit_mb={plist.value_mb} at boot but the kernel has "
            f"{limit} now (daemon not loaded, or changed by hand since)",
            f"sudo launchctl kickstart -k system/{BOOT_PLIST_LABEL} to apply {plist.value_mb}, "
            "or edit the plist's value",
        )
    return Verdict.OK, f"{plist.path} sets iogpu.wired_limit_mb={limit} at boot", None


def check_wired_collector(facts: HostFacts) -> Result:
    """``iogpu.disable_wired_collector=1`` keeps idle GPU memory wired; reported to hang a Mac."""
    value = facts.wired_collector_disabled
    if value is None:
        return Verdict.OK, "iogpu.disable_wired_collector does not exist on this macOS", None
    if value == 0:
        return (
            Verdict.OK,
            "iogpu.disable_wired_collector=0: macOS may unwire idle GPU memory (slower first "
            "token after idle on macOS 26, llama.cpp PR #17766)",
            None,
        )
    return (
        Verdict.WARN,
        f"iogpu.disable_wired_collector={value}: idle GPU memory stays wired; this made an M1 "
        "MacBook Air hang (ggml-org/llama.vscode#12)",
        f"sudo sysctl iogpu.disable_wired_collector=0, unless this is a dedicated host where "
        f"you measured the benefit ({DOC})",
    )


def check_model_fit(facts: HostFacts) -> Result:
    """Does the largest model on the targets' command lines fit the ceiling, with KV room?"""
    sized = [m for m in facts.models if m.size is not None]
    unknown = [m for m in facts.models if m.size is None]
    if not facts.models:
        return (
            Verdict.OK,
            f"no model file on the command lines of {facts.targets} target(s): nothing to compare",
            None,
        )
    ceiling, source = gpu_ceiling(facts)
    s = facts.system
    if ceiling is None and s is not None and s.total is not None:
        ceiling = s.total - math.ceil(facts.pressure.warning_available * s.total)
        source = "RAM less the WARNING threshold"
    if not sized or ceiling is None:
        why = "; ".join(f"{m.path}: {m.error}" for m in unknown) or "the ceiling is unknown"
        return (
            Verdict.WARN,
            f"cannot size the models: {why}",
            "give the model servers absolute model paths that this user can read",
        )
    largest = max(sized, key=lambda m: m.need or 0)
    size = largest.need or 0
    together = sum(m.need or 0 for m in sized)
    head = f"largest model {largest.path} ({largest.target}) is {human_bytes(largest.size or 0)}"
    if largest.kv_cache is not None:
        head += (
            f" plus a {human_bytes(largest.kv_cache)} KV cache at {largest.context} tokens "
            "(its GGUF header)"
        )
    need_mb = math.ceil(size / MODEL_HEADROOM / MiB)
    on_mac = facts.platform == "darwin"
    if on_mac:
        failure = "kIOGPUCommandBufferCallbackErrorOutOfMemory"
        room = f"give the GPU at least {need_mb} MiB if RAM allows: sudo sysctl "
        room += f"iogpu.wired_limit_mb={need_mb} ({DOC})"
    elif facts.gpu is not None:
        failure = "CUDA out-of-memory errors, or layers left on the CPU"
        room = "offload fewer layers to this GPU (llama-server -ngl N) or split it across GPUs"
    else:
        failure = "swapping or the OOM killer"
        room = "serve it on a host with more memory"
    if size > ceiling:
        return (
            Verdict.FAIL,
            f"{head}, more than the ceiling {human_bytes(ceiling)} ({source}): it cannot be "
            f"resident; expect {failure}",
            f"use a smaller quantization, or {room}",
        )
    if size > MODEL_HEADROOM * ceiling:
        return (
            Verdict.WARN,
            f"{head}, over {MODEL_HEADROOM:.0%} of the ceiling {human_bytes(ceiling)} "
            f"({source}): little room is left for the KV cache",
            f"a shorter context (-c), a smaller quantization, or {room}",
        )
    if together > ceiling:
        return (
            Verdict.WARN,
            f"the {len(sized)} models together need {human_bytes(together)}, more than the "
            f"ceiling {human_bytes(ceiling)} ({source}): they cannot all be resident at once",
            "give the targets priorities so that metalmem stops the right one first "
            "(docs/configuration.md), or serve fewer models",
        )
    return Verdict.OK, f"{head}: fits the ceiling {human_bytes(ceiling)} ({source})", None


def check_swap(facts: HostFacts) -> Result:
    """Swap in use means something was pushed to disk; no swap on Linux means no slow phase."""
    s = facts.system
    if s is None:
        return Verdict.WARN, "no sample: swap unknown", "see the sampler check"
    since = f"{human_bytes(s.swapouts)} swapped out since boot" if s.swapouts is not None else None
    fix_used = (
        "find the process that grew (metalmem-agent snapshot --pid PID, or Activity Monitor's "
        "Memory column on macOS); if it is a model, serve fewer or smaller models"
    )
    if s.swap_used:
        return (
            Verdict.WARN,
            f"{human_bytes(s.swap_used)} of {human_bytes(s.swap_total)} swap in use"
            + (f"; {since}" if since else "")
            + ": pages of a model there make it slow",
            fix_used,
        )
    if s.swap_used is None and s.swapouts:
        return Verdict.WARN, f"swap in use now unknown; {since}", fix_used
    if facts.platform == "linux" and s.swap_total == 0:
        return (
            Verdict.WARN,
            "no swap: pressure rises too abruptly for anyone to act before the kernel OOM "
            "killer (systemd-oomd calls swap highly recommended)",
            "add a swap file: sudo fallocate -l SIZE /swapfile && sudo chmod 600 /swapfile && "
            "sudo mkswap /swapfile && sudo swapon /swapfile",
        )
    if s.swap_used is None and s.swapouts is None:
        return (
            Verdict.WARN,
            "swap use unknown on this host",
            "check it by hand: sysctl vm.swapusage (macOS), swapon --show (Linux)",
        )
    now = "none in use now" if s.swap_used == 0 else "use now unknown"
    return Verdict.OK, f"swap: {now}" + (f"; {since}" if since else ""), None


def check_psi(facts: HostFacts) -> Result:
    """PSI is the Linux pressure signal; without it the psi.* signals are off."""
    s = facts.system
    psi = s.psi if s is not None else None
    if psi is None:
        return (
            Verdict.WARN,
            "no PSI (/proc/pressure/memory): the psi.some and psi.full signals are off",
            "boot with psi=1 on the kernel command line (kernels built with "
            "CONFIG_PSI_DEFAULT_DISABLED need it), e.g. in GRUB_CMDLINE_LINUX",
        )
    return (
        Verdict.OK,
        f"PSI memory some avg10 {psi.some_avg10}%, full avg10 {psi.full_avg10}%",
        None,
    )


def check_psi_trigger(facts: HostFacts) -> Result:
    """Whether the kernel lets the agent wake on pressure instead of only polling."""
    err, code = facts.psi_trigger_error, facts.psi_trigger_errno
    if err is None:
        return (
            Verdict.OK,
            "a PSI trigger (2 s window) opened: the loop wakes on pressure, not only on its timer",
            None,
        )
    finding = f"the kernel refused a PSI trigger ({err}): the agent falls back to polling"
    if code == errno_mod.EINVAL:
        fix = (
            "give the agent CAP_SYS_RESOURCE (systemd: AmbientCapabilities=CAP_SYS_RESOURCE), "
            "or use a kernel >= 6.4, which lets unprivileged users open 2 s windows"
        )
    elif code in (errno_mod.EACCES, errno_mod.EPERM):
        fix = (
            f"make {facts.scope if facts.scope != 'host' else '/proc/pressure/memory'} writable "
            "for the agent's user (a delegated cgroup: chown its memory.pressure), or run as root"
        )
    elif code in (errno_mod.ENOTSUP, errno_mod.EOPNOTSUPP, errno_mod.ENOENT):
        fix = "boot with psi=1 on the kernel command line"
    else:
        fix = "see the PSI section of docs/troubleshooting.md"
    return Verdict.WARN, finding, fix


_SOURCE_TEXT = {
    "psi": "PSI triggers",
    "v1_pressure_level": "cgroup v1 memory.pressure_level",
    "v1_usage": "cgroup v1 usage thresholds at the WARNING and CRITICAL available memory",
    "watch": "a headroom-paced poll of available memory (no kernel notification for it here)",
}


def check_events(facts: HostFacts) -> Result:
    """What wakes the loop between ticks; without any, only the adaptive interval does."""
    sources = facts.event_sources
    if sources is None:
        return Verdict.WARN, "event sources unknown", None
    if not sources:
        return (
            Verdict.WARN,
            "no event source: the loop only polls, its interval shortening as headroom "
            "shrinks (down to 100 ms)",
            "see psi.trigger; a cgroup v1 scope needs a writable cgroup.event_control",
        )
    return Verdict.OK, "the loop wakes on " + "; ".join(_SOURCE_TEXT[s] for s in sources), None


def check_cgroup(facts: HostFacts) -> Result:
    """Which cgroup files a ``--scope`` reads depends on the hierarchy version."""
    layout = facts.cgroup
    if layout is None:
        return (
            Verdict.WARN,
            "cannot read /proc/self/mountinfo",
            "run doctor where /proc is mounted (inside the agent's container or host)",
        )
    where = {"v1": "cgroup v1", "v2": "cgroup v2", None: "no"}[layout.memory]
    finding = f"cgroup {layout.version} ({where} memory controller)"
    if facts.scope == "host" or layout.memory == "v2":
        return Verdict.OK, finding + "; the host scope does not depend on it", None
    return (
        Verdict.WARN,
        f"{finding}: scope {facts.scope} reads v1 files (memory.limit_in_bytes); memory.max, "
        "memory.high and memory.events exist only in v2",
        "boot with systemd.unified_cgroup_hierarchy=1 for a pure v2 host, or keep the v1 view",
    )


def check_nvml(facts: HostFacts) -> Result:
    """The GPU signal on Linux needs NVML; a driver without it is a silent gap."""
    g = facts.gpu
    if g is not None:
        return (
            Verdict.OK,
            f"NVML: {g.name or 'GPU 0'}, {human_bytes(g.used)} of {human_bytes(g.limit)} used",
            None,
        )
    if facts.nvidia_driver:
        return (
            Verdict.WARN,
            "an NVIDIA driver is loaded but libnvidia-ml.so.1 cannot be opened: the gpu.headroom "
            "signal is off",
            "install the NVML library that matches the driver (it ships with nvidia-smi) so "
            "that libnvidia-ml.so.1 is on the loader path",
        )
    return (
        Verdict.OK,
        "no NVIDIA driver (/proc/driver/nvidia): no GPU signal, as expected on this host",
        None,
    )


def check_agent_priority(facts: HostFacts) -> Result:
    """An agent that runs niced (or OOM-preferred) may act too late, or not at all."""
    if not facts.agents:
        return Verdict.OK, "no running `metalmem-agent run` found to check", None
    worse = [a for a in facts.agents if (a.nice or 0) > 0 or (a.oom_score_adj or 0) > 0]
    described = ", ".join(
        f"pid {a.pid} nice {a.nice}"
        + (f" oom_score_adj {a.oom_score_adj}" if a.oom_score_adj is not None else "")
        for a in facts.agents
    )
    if not worse:
        return Verdict.OK, f"agent {described}", None
    fix = (
        "run it from deploy/launchd/io.metalmem.agent.plist (ProcessType Interactive, no Nice "
        "key); now: sudo renice -n 0 -p PID"
        if facts.platform == "darwin"
        else "run it from deploy/systemd/metalmem.service (OOMScoreAdjust=-900, no Nice=); "
        "now: sudo renice -n 0 -p PID"
    )
    return (
        Verdict.WARN,
        f"agent {described}: under pressure it gets the CPU last (or is the OOM killer's "
        "preferred victim), so it may act too late",
        fix,
    )


def check_port(facts: HostFacts) -> Result:
    """The agent exits 2 at start when its HTTP address is taken."""
    p = facts.port
    if p is None:
        return Verdict.WARN, "not probed", "run doctor with --listen HOST:PORT"
    address = f"[{p.host}]:{p.port}" if ":" in p.host else f"{p.host}:{p.port}"
    if p.error is None:
        return Verdict.OK, f"{address} is free for the agent's HTTP server", None
    if p.holder is not None:
        return (
            Verdict.WARN,
            f"{address} is in use by a running {p.holder}",
            "nothing, if that is the agent you meant; a second one needs another --listen",
        )
    if p.errno == errno_mod.EADDRINUSE:
        finder = (
            f"lsof -nP -iTCP:{p.port} -sTCP:LISTEN"
            if facts.platform == "darwin"
            else f"ss -ltnp 'sport = :{p.port}'"
        )
        fix = f"find the owner with {finder}, or start the agent with --listen HOST:OTHER_PORT"
    elif p.errno == errno_mod.EACCES:
        fix = "use a port above 1023, or run the agent as root"
    else:
        fix = "use --listen with an address of this machine, e.g. 127.0.0.1:9438"
    return Verdict.FAIL, f"cannot listen on {address}: {p.error}", fix


def check_targets(facts: HostFacts) -> Result:
    """A configured target that matches nothing is dropped silently by resolution: say so."""
    if facts.unmatched:
        names = ", ".join(facts.unmatched)
        return (
            Verdict.WARN,
            f"configured target(s) {names} match no running process "
            f"({facts.targets} target(s) found)",
            "check each [[target]]'s cmdline pattern (pgrep -af PATTERN), pidfile or pid",
        )
    if facts.targets == 0:
        return Verdict.OK, "no targets configured or discovered: metalmem only reports", None
    return Verdict.OK, f"{facts.targets} target(s) found, every configured one matched", None


def check_kube(facts: HostFacts) -> Result:
    """Kubernetes reporting is only as good as the config and the API server's reachability."""
    k = facts.kube
    if k is None:
        return Verdict.OK, "not requested", None
    if k.error is None:
        found = f"Kubernetes {k.version} at {k.server} answered GET /version (config: {k.source})"
        if k.condition_writers:
            return (
                Verdict.WARN,
                f"{found}; another field manager writes the MemoryPressure condition metalmem "
                f"writes: {', '.join(k.condition_writers)}",
                "turn off LLMKube's own memory watchdog on the metal agent "
                "(--memory-watchdog-interval=0); docs/kubernetes.md, other writers",
            )
        if k.objects is not None:
            found += f"; no other writer of MemoryPressure on {k.objects} object(s)"
        elif k.list_error is not None:
            found += f"; objects not listed ({k.list_error})"
        return Verdict.OK, found, None
    if k.source is None and "not installed" in k.error:
        fix = "pip install 'metalmem[kube]'"
    elif k.server is None:
        fix = (
            "run inside the cluster with a service account, or pass --kubeconfig PATH "
            "(docs/kubernetes.md)"
        )
    else:
        fix = f"check that {k.server} is reachable from this host and the context is right"
    return Verdict.FAIL, f"Kubernetes unreachable: {k.error}", fix


def check_targets_sized(facts: HostFacts) -> Result:
    """A target whose memory cannot be read is never evicted (docs/configuration.md, "Targets
    the agent cannot size"): with every target so, the agent protects nothing."""
    if not facts.unsized:
        if not facts.targets:
            return Verdict.OK, "no targets configured or discovered", None
        return Verdict.OK, f"all {facts.targets} target(s) sized", None
    names = ", ".join(
        f"{u.key} (pid {u.pid}, uid {'?' if u.owner_uid is None else u.owner_uid}"
        f"{'' if u.adopted else ', not adopted'})"
        for u in facts.unsized
    )
    named = facts.targets + sum(1 for u in facts.unsized if not u.adopted)
    sized = named - len(facts.unsized)
    verdict = Verdict.FAIL if sized == 0 else Verdict.WARN
    finding = f"{len(facts.unsized)} of {named} target process(es) unsized, never evicted: {names}"
    denied = [u for u in facts.unsized if u.denied]
    if denied and facts.agent_uid != 0:
        call = "proc_pid_rusage" if facts.platform == "darwin" else "/proc/PID"
        owners = sorted({u.owner_uid for u in denied if u.owner_uid is not None})
        finding += (
            f"; the agent runs as uid {facts.agent_uid}, not root, and the OS refuses it "
            f"another user's process ({call}: EPERM), to size and to stop alike"
        )
        uids = f" (uid {', '.join(map(str, owners))})" if owners else ""
        fix = (
            "run the agent as root: sudo cp deploy/launchd/io.metalmem.agent.plist "
            "/Library/LaunchDaemons/ && sudo launchctl bootstrap system "
            "/Library/LaunchDaemons/io.metalmem.agent.plist; or as the targets' user"
            f"{uids}: add UserName to that plist"
            if facts.platform == "darwin"
            else "run the agent as root (deploy/systemd/metalmem.service); or as the targets' "
            f"user{uids}: add User= to that unit"
        )
        return verdict, finding, fix
    errors = "; ".join(f"{u.key}: {u.error}" for u in facts.unsized)
    return verdict, f"{finding} ({errors})", "metalmem-agent snapshot --pid PID shows each error"


class Check(NamedTuple):
    """One row of :data:`CHECKS`: a stable name, where it applies, and the pure check."""

    name: str
    platforms: frozenset[str]
    run: Callable[[HostFacts], Result]
    applies: Callable[[HostFacts], bool] = lambda facts: True


CHECKS: tuple[Check, ...] = (
    Check("sampler", EVERYWHERE, check_sampler),
    Check("memory.pressure", EVERYWHERE, check_pressure),
    Check("gpu.wired_limit", DARWIN, check_wired_limit),
    Check("gpu.wired_limit.boot", DARWIN, check_wired_limit_boot),
    Check("gpu.wired_collector", DARWIN, check_wired_collector),
    Check("gpu.nvml", LINUX, check_nvml),
    Check("gpu.model_fit", EVERYWHERE, check_model_fit),
    Check("swap", EVERYWHERE, check_swap),
    Check("psi", LINUX, check_psi),
    Check("psi.trigger", LINUX, check_psi_trigger),
    Check("events", LINUX, check_events),
    Check("cgroup", LINUX, check_cgroup),
    Check("targets.sized", EVERYWHERE, check_targets_sized),
    Check("agent.priority", EVERYWHERE, check_agent_priority),
    Check("targets", EVERYWHERE, check_targets),
    Check("http.port", EVERYWHERE, check_port),
    Check("kube", EVERYWHERE, check_kube, lambda facts: facts.kube is not None),
)
"""Every check, in output order. A new check is a pure function of :class:`HostFacts` plus a
row here (and, if it needs a new fact, a field and a line in :func:`gather_facts`)."""


def run_checks(facts: HostFacts) -> tuple[Finding, ...]:
    """The verdict of every check that applies to the facts' platform."""
    return tuple(
        Finding(row.name, *row.run(facts))
        for row in CHECKS
        if facts.platform in row.platforms and row.applies(facts)
    )


# --- output --------------------------------------------------------------------------------


def exit_code(findings: Iterable[Finding]) -> int:
    """1 when any check failed, else 0."""
    return EXIT_FAILURE if any(f.verdict == Verdict.FAIL for f in findings) else EXIT_OK


def report_to_dict(facts: HostFacts, findings: Sequence[Finding]) -> dict[str, Any]:
    """The JSON document of ``doctor --json`` (docs/doctor.schema.json)."""
    counts = {v.value: sum(1 for f in findings if f.verdict == v) for v in Verdict}
    return {
        "version": metalmem.__version__,
        "platform": facts.platform,
        "checks": [
            {"check": f.check, "verdict": f.verdict.value, "finding": f.finding, "fix": f.fix}
            for f in findings
        ],
        "summary": {**counts, "exit_code": exit_code(findings)},
    }


def render_table(findings: Sequence[Finding]) -> str:
    """An aligned table for people: check, verdict, finding; the fix on the next line."""
    width = max([len("CHECK"), *(len(f.check) for f in findings)])
    lines = [f"{'CHECK':<{width}}  VERDICT  FINDING"]
    for f in findings:
        lines.append(f"{f.check:<{width}}  {f.verdict.value:<7}  {f.finding}")
        if f.fix is not None:
            lines.append(f"{'':<{width}}  {'':<7}  fix: {f.fix}")
    counts = [f"{sum(1 for f in findings if f.verdict == v)} {v.value}" for v in Verdict]
    lines.append(", ".join(counts))
    return "\n".join(lines)


# --- gathering -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class DoctorOptions:
    """What to check, resolved from the flags and the config file."""

    scope: str = "host"
    listen: tuple[str, int] = ("127.0.0.1", 9438)
    config: Config | None = None
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
            if isinstance(rec, metalmem.AccessDenied):
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
        if isinstance(s, metalmem.AccessDenied):
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


def probe_port(host: str, port: int) -> PortProbe:
    """Bind and listen on ``host:port`` the way the agent's server does (SO_REUSEADDR, as
    ``socketserver`` sets it); on EADDRINUSE ask the holder for /metrics to see whether it
    is a metalmem agent."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return PortProbe(host, port, f"cannot resolve {host!r}: {exc.strerror}", None)
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
            sock.listen(1)
        except OSError as exc:
            holder = _holder(host, port) if exc.errno == errno_mod.EADDRINUSE else None
            return PortProbe(host, port, exc.strerror or str(exc), exc.errno, holder)
    return PortProbe(host, port)


_BUILD_INFO = re.compile(r'^metalmem_build_info\{[^}]*version="([^"]*)"', re.MULTILINE)


def _holder(host: str, port: int) -> str | None:
    """``metalmem <version>`` if a metalmem agent serves /metrics on the port, else ``None``."""
    connect = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    netloc = f"[{connect}]:{port}" if ":" in connect else f"{connect}:{port}"
    try:
        with urllib.request.urlopen(f"http://{netloc}/metrics", timeout=HOLDER_TIMEOUT) as r:
            text = r.read(1 << 20).decode("utf-8", errors="replace")
    except (OSError, ValueError, urllib.error.URLError):
        return None  # not HTTP, not answering in time, or not ours: an unknown holder
    match = _BUILD_INFO.search(text)
    return f"metalmem agent {match.group(1)}" if match else None


def probe_kube(
    kubeconfig: str | None,
    context: str | None,
    resource: str = DEFAULT_RESOURCE,
    namespace: str | None = None,
) -> KubeProbe:
    """Load the Kubernetes config (in-cluster first unless a kubeconfig or context is named,
    never the loader that prints to stdout) and GET /version with a 3 s timeout, no retries;
    then list the objects of ``resource`` (in ``namespace``, else every namespace) and name the
    field managers other than metalmem that write the ``MemoryPressure`` condition.

    The ``kubernetes`` package is imported only here (STYLE rule 1: heavy imports are lazy).
    """
    try:
        from kubernetes import client, config
    except ImportError as exc:
        return KubeProbe(None, None, None, f"the kubernetes package is not installed ({exc})")
    cfg = client.Configuration()
    source = None
    # The loaders raise ConfigException, yaml errors, OSError, TypeError or KeyError for a bad
    # file; whichever it is, this probe's answer is the same: the config does not load.
    try:
        if kubeconfig is None and context is None:
            try:
                config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
                source = "in-cluster service account"
            except config.ConfigException:
                source = None
        if source is None:
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig,
                context=context,
                client_configuration=cfg,
                persist_config=False,
            )
            source = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
    except Exception as exc:
        detail = " ".join(str(exc).split())[:200]
        return KubeProbe(source, None, None, f"no usable config: {type(exc).__name__}: {detail}")
    cfg.retries = 0
    try:
        with client.ApiClient(cfg) as api:
            info = client.VersionApi(api).get_code(_request_timeout=KUBE_TIMEOUT)
    except Exception as exc:  # urllib3 errors, ApiException: all mean "not reachable"
        reason = kube_error_text(exc)
        return KubeProbe(source, cfg.host, None, f"GET {cfg.host}/version: {reason}")
    version = getattr(info, "git_version", None)
    r = Resource.parse(resource)
    try:
        with client.ApiClient(cfg) as api:
            custom = client.CustomObjectsApi(api)
            where: dict[str, Any] = {"group": r.group, "version": r.version, "plural": r.plural,
                     "_request_timeout": KUBE_TIMEOUT}  # fmt: skip
            doc: Any = (
                custom.list_namespaced_custom_object(namespace=namespace, **where)
                if namespace
                else custom.list_cluster_custom_object(**where)
            )
    except Exception as exc:  # 403, 404 (no such resource), unreachable: not a verdict
        return KubeProbe(source, cfg.host, version, list_error=f"list {r}: {kube_error_text(exc)}")
    items = [o for o in (doc or {}).get("items") or () if isinstance(o, dict)]
    writers = set().union(*(condition_owners(o) for o in items)) - {FIELD_MANAGER}
    return KubeProbe(source, cfg.host, version, objects=len(items),
                     condition_writers=tuple(sorted(writers)))  # fmt: skip


_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>:?\s*")


def kube_error_text(exc: BaseException) -> str:
    """One short line for a failed API call: ``HTTP 403 Forbidden`` for an ApiException (whose
    str() carries every response header and the body), the innermost cause without Python
    object reprs for a urllib3 error."""
    status, reason = getattr(exc, "status", None), getattr(exc, "reason", None)
    if isinstance(status, int) and isinstance(reason, str):
        return f"HTTP {status} {reason}"
    inner = reason if isinstance(reason, BaseException) else exc
    text = _OBJECT_REPR.sub("", str(inner) or type(inner).__name__)
    text = " ".join(text.split())
    return text if len(text) <= 200 else text[:197] + "..."


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
    config = options.config
    pressure = config.pressure if config is not None else PressurePolicy()
    system = gpu = sample_error = None
    try:
        system = sampler.system()
    except (metalmem.Error, OSError) as exc:
        sample_error = f"{type(exc).__name__}: {exc}"
    try:
        gpu = sampler.gpu()
    except (metalmem.Error, OSError):
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
        except (metalmem.Error, OSError) as exc:
            facts.update(psi_trigger_error=str(exc), psi_trigger_errno=exc.errno, event_sources=())
        try:
            with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
                facts["cgroup"] = cgroup_layout(f.read())
        except OSError:
            facts["cgroup"] = None
        facts["nvidia_driver"] = os.path.exists("/proc/driver/nvidia/version")

    specs = config.targets if config is not None else ()
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


# --- the command ---------------------------------------------------------------------------


def _options(
    config_path: str | None,
    discover: str | None,
    scope: str | None,
    listen: tuple[str, int] | None,
    kube: bool,
    kubeconfig: str | None,
    kube_context: str | None,
) -> DoctorOptions:
    """Flags (and their METALMEM_* variables) over the config file over defaults, as `run`
    resolves them, so doctor checks what the agent would use; bad input exits 2."""
    config = None
    if config_path is not None:
        try:
            config = load_config(config_path)
        except ConfigError as exc:
            raise click.BadParameter(str(exc), param_hint="'--config'") from None
    agent: Mapping[str, Any] = config.agent if config is not None else {}
    kube_file: Mapping[str, Any] = config.kube if config is not None else {}
    if listen is None:
        raw = agent.get("listen", DEFAULT_LISTEN)
        try:
            listen = ListenType().convert(raw, None, None)
        except click.BadParameter as exc:
            raise click.BadParameter(
                f"{config_path}: agent.listen: {exc.message}", param_hint="'--config'"
            ) from None
    if discover is None and config is not None:
        discover = config.discover
    if discover is not None:
        try:
            check_pattern(discover, "pattern")
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--discover'") from None
    scope = scope or str(agent.get("scope", "host"))
    assert listen is not None
    try:
        Resource.parse(str(kube_file.get("resource") or DEFAULT_RESOURCE))
    except ValueError as exc:
        raise click.BadParameter(f"{config_path}: kube.{exc}", param_hint="'--config'") from None
    return DoctorOptions(
        scope=scope,
        listen=listen,
        config=config,
        discover=discover,
        kube=kube or kube_file.get("enabled") is True,
        kubeconfig=kubeconfig or kube_file.get("kubeconfig"),
        kube_context=kube_context or kube_file.get("context"),
        kube_resource=str(kube_file.get("resource") or DEFAULT_RESOURCE),
        kube_namespace=kube_file.get("namespace"),
    )


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    envvar="METALMEM_CONFIG",
    help="The agent's TOML config: targets, thresholds, [agent] listen/scope, [kube].",
)
@click.option(
    "--discover",
    default=None,
    envvar="METALMEM_DISCOVER",
    help="Also check processes whose executable matches REGEX (their model files).",
)
@click.option(
    "--scope",
    default=None,
    envvar="METALMEM_SCOPE",
    help="'host' or a cgroup directory, as for `run`. [default: host]",
)
@click.option(
    "--listen",
    type=ListenType(),
    default=None,
    envvar="METALMEM_LISTEN",
    help=f"The agent's HTTP address: is it free? [default: {DEFAULT_LISTEN}]",
)
@click.option(
    "--kube",
    is_flag=True,
    default=False,
    envvar="METALMEM_KUBE",
    help="Also check that Kubernetes is reachable (GET /version, 3 s).",
)
@click.option(
    "--kubeconfig",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    envvar="METALMEM_KUBECONFIG",
    help="Path to a kubeconfig file (default: in-cluster, then ~/.kube/config).",
)
@click.option(
    "--kube-context",
    "kube_context",
    default=None,
    envvar="METALMEM_KUBE_CONTEXT",
    help="The kubeconfig context.",
)
def doctor(
    as_json: bool,
    config_path: str | None,
    discover: str | None,
    scope: str | None,
    listen: tuple[str, int] | None,
    kube: bool,
    kubeconfig: str | None,
    kube_context: str | None,
) -> None:
    """Check this host for what metalmem needs and print a verdict per check.

    Each check says ok, warn or fail, what it found and the exact fix. Exit status: 0 when
    no check fails, 1 when one does, 2 for bad input.
    """
    options = _options(config_path, discover, scope, listen, kube, kubeconfig, kube_context)
    try:
        sampler = Sampler(scope=options.scope)
    except (metalmem.Error, OSError) as exc:
        raise click.BadParameter(str(exc), param_hint="'--scope'") from None
    with sampler:
        facts = gather_facts(options, sampler)
    findings = run_checks(facts)
    if as_json:
        import json

        click.echo(json.dumps(report_to_dict(facts, findings), indent=2))
    else:
        click.echo(render_table(findings))
    sys.exit(exit_code(findings))
