"""What doctor knows about the host: the records the checks read, and the pure parsers
that make some of them (model paths and sizes, the agent's command line, cgroup mounts)."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence

from ..pressure import PressurePolicy
from ..sampler import GpuMemory, SystemMemory

MiB = 1 << 20
BOOT_PLIST_LABEL = "io.metalmem.iogpu-wired-limit"
"""The launchd daemon of deploy/macos/ that sets ``iogpu.wired_limit_mb`` at boot."""
LAUNCHD_DIR = "/Library/LaunchDaemons"


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
