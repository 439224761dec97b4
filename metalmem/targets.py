"""Managed targets: the inference processes metalmem may stop, and where they come from.

A :class:`Target` is one running process, named by ``(pid, start_time)`` for its whole lifetime
(``start_time`` from the sampler: seconds since boot on Linux), plus what the eviction planner
needs to know about it: a stable ``key``, a :class:`Priority`, whether it is protected, its
declared budget and how to stop it. Two sources produce targets:

- static configuration: :class:`TargetSpec` records, one per ``[[target]]`` table of the agent's
  TOML file, checked by :func:`parse_target_specs` (the CLI reads the file; library code never
  does, STYLE rule 2) and turned into live targets by :func:`resolve`;
- discovery (:func:`discover`): running processes whose executable name matches a regex
  (``llama-server`` by default), named from ``--alias`` or the model file in their command line.

A target whose process is gone is dropped; a restarted process is a new identity even under the
same key. :class:`TargetTracker` re-resolves both sources and reports what changed.

Processes are listed from ``<proc_root>`` (``<sampler.root>/proc`` unless given, so tests can
point both at a captured tree) on Linux, and from ``ps`` on macOS, which has no ``/proc``.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, cast

from .errors import NoSuchProcess
from .limits import MAX_GRACE, check_duration
from .llamaargs import flag_value
from .pins import Pin, PinStore
from .sampler import Sampler
from .unload import UNLOAD_KEYS, RouterModels, UnloadAction, is_router, parse_unload, router_url

__all__ = [
    "DEFAULT_DISCOVERY_PATTERN",
    "DEFAULT_MAX_MATCHES",
    "KubeRef",
    "Metadata",
    "Priority",
    "StopMethod",
    "Target",
    "TargetChanges",
    "TargetSource",
    "TargetSpec",
    "TargetTracker",
    "TooManyMatches",
    "check_pattern",
    "discover",
    "name_from_argv",
    "parse_ps_output",
    "parse_size",
    "parse_target_specs",
    "resolve",
]

log = logging.getLogger(__name__)

DEFAULT_DISCOVERY_PATTERN = "llama-server"
DEFAULT_GRACE = 10.0  # seconds; LLMKube and llama-swap both wait 10 s (reference/peers.md)


# signal.valid_signals() builds ~60 enum members per call (~0.5 ms): a rescan built one
# StopMethod per discovered process, so this was most of discovery's cost at 64 (issue 15).
_VALID_SIGNALS = frozenset(int(s) for s in signal.valid_signals())


class Priority(enum.StrEnum):
    """How much a target matters; the lowest rank is evicted first.

    The values are the stable strings of config files, labels and logs. Comparisons between
    priorities follow :attr:`rank` (``BATCH < LOW < NORMAL < HIGH < CRITICAL``), not the
    alphabet, so ``min(priorities)`` is the first to go.
    """

    BATCH = "batch"
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        """0 for batch up to 4 for critical."""
        return _RANKS[self]

    @classmethod
    def parse(cls, value: str | None) -> Priority:
        """The priority named by ``value`` (any case, surrounding blanks ignored); an unknown or
        missing name means :attr:`NORMAL`, as issue 5 asks (a label typo must not make a model
        the first victim, nor make it untouchable)."""
        if value is None:
            return cls.NORMAL
        try:
            return cls(value.strip().lower())
        except ValueError:
            return cls.NORMAL

    def _rank_of(self, other: object) -> int | None:
        if isinstance(other, Priority):
            return other.rank
        if isinstance(other, str) and other in _BY_VALUE:
            return _BY_VALUE[other].rank
        return None

    def __lt__(self, other: str) -> bool:
        rank = self._rank_of(other)
        return NotImplemented if rank is None else self.rank < rank

    def __le__(self, other: str) -> bool:
        rank = self._rank_of(other)
        return NotImplemented if rank is None else self.rank <= rank

    def __gt__(self, other: str) -> bool:
        rank = self._rank_of(other)
        return NotImplemented if rank is None else self.rank > rank

    def __ge__(self, other: str) -> bool:
        rank = self._rank_of(other)
        return NotImplemented if rank is None else self.rank >= rank


_RANKS = {p: i for i, p in enumerate(Priority)}
_BY_VALUE = {p.value: p for p in Priority}


class TargetSource(enum.StrEnum):
    """Where a target came from."""

    CONFIG = "config"
    DISCOVERY = "discovery"


class Metadata(enum.StrEnum):
    """Where a target's priority and protection come from (issue 13: a Kubernetes target is
    not eligible until its object was read)."""

    LOCAL = "local"
    """The config file or discovery: the target has no object, or Kubernetes reporting is off,
    or its object does not exist."""
    READ = "read"
    """Its object's spec, read within the refresh period."""
    LAST_KNOWN = "last_known"
    """Its object's spec as last read (kept in the state dir), while the API is unreachable."""
    PENDING = "pending"
    """It has an object that is about to be read for the first time: no target is stopped
    until it is (its priority is unknown, so any other victim could be the wrong one)."""
    UNKNOWN = "unknown"
    """Its object could not be read and nothing was kept from an earlier read: it is never
    stopped, the others may be."""


@dataclass(frozen=True, slots=True)
class StopMethod:
    """How to stop a target gracefully before it is killed.

    ``signal`` is sent first (through the pidfd on Linux), or ``command`` is run instead (no
    shell; every argument equal to or containing ``{pid}`` gets the target's pid), e.g.
    ``("launchctl", "bootout", "gui/501/com.example.llama")``. ``grace`` seconds later a
    process that has not exited gets SIGKILL; ``None`` means the policy's ``[eviction] grace``
    (issue 13: a per-target default of 10 s used to shadow it). ``process_group`` sends both
    signals to the target's process group when the target leads it (see
    :func:`metalmem.process.stop`). ``unload`` stops one model of a shared server through its
    HTTP API instead (:mod:`metalmem.unload`), the signal being its fallback.
    """

    signal: int = signal.SIGTERM
    grace: float | None = None
    process_group: bool = False
    command: tuple[str, ...] | None = None
    unload: UnloadAction | None = None

    def __post_init__(self) -> None:
        if isinstance(self.signal, bool) or not isinstance(self.signal, int):
            raise ValueError(f"stop_signal: must be a signal number or name, got {self.signal!r}")
        if self.signal not in _VALID_SIGNALS:
            raise ValueError(f"stop_signal: {self.signal} is not a valid signal here")
        if self.grace is not None:
            object.__setattr__(
                self, "grace", check_duration("grace", self.grace, maximum=MAX_GRACE)
            )
        if not isinstance(self.process_group, bool):
            raise ValueError(f"process_group: must be true or false, got {self.process_group!r}")
        if self.command is not None and (
            not isinstance(self.command, tuple)
            or not self.command
            or not all(isinstance(a, str) and a for a in self.command)
        ):
            raise ValueError(
                f"stop_command: must be a non-empty argument list, got {self.command!r}"
            )
        if self.unload is not None:
            if not isinstance(self.unload, UnloadAction):
                raise ValueError(f"unload: must be an UnloadAction, got {self.unload!r}")
            if self.command is not None:
                raise ValueError("unload: cannot be combined with stop_command (choose one)")
            if self.process_group:
                raise ValueError(
                    "unload: cannot be combined with process_group (an unload stops one model)"
                )

    @property
    def grace_seconds(self) -> float:
        """``grace``, or :data:`DEFAULT_GRACE` where the target sets none (the watchdog fills
        in ``[eviction] grace`` before a stop, see :meth:`with_default_grace`)."""
        return DEFAULT_GRACE if self.grace is None else self.grace

    def with_default_grace(self, grace: float) -> StopMethod:
        """This method with ``grace`` where it sets none of its own."""
        return self if self.grace is not None else replace(self, grace=grace)

    def command_for(self, pid: int) -> tuple[str, ...] | None:
        """``command`` with ``{pid}`` replaced by ``pid``; ``None`` when stopping by signal."""
        if self.command is None:
            return None
        return tuple(arg.replace("{pid}", str(pid)) for arg in self.command)


@dataclass(frozen=True, slots=True)
class KubeRef:
    """The Kubernetes object a target serves (an InferenceService): namespace and name."""

    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Target:
    """One managed process. ``(pid, start_time)`` is its identity; ``key`` is the stable name
    (``namespace/name`` or ``name``) under which metrics, events and the respawn block track it.

    ``budget`` is the footprint it is expected to need in bytes (``None``: not declared);
    ``kube`` is set for targets that map to a Kubernetes object; ``metadata`` says where
    ``priority`` and ``protected`` come from.
    """

    key: str
    pid: int
    start_time: float
    priority: Priority = Priority.NORMAL
    protected: bool = False
    budget: int | None = None
    stop: StopMethod = field(default_factory=StopMethod)
    kube: KubeRef | None = None
    source: TargetSource = TargetSource.CONFIG
    metadata: Metadata = Metadata.LOCAL

    @property
    def identity(self) -> tuple[int, float]:
        """``(pid, start_time)``: names this process and no other, for its whole lifetime."""
        return (self.pid, self.start_time)


# --- static configuration ------------------------------------------------------------------

_NAME_RE = re.compile(r"[^\s/#]+")  # "/" joins namespace/name, "#" marks a per-pid suffix


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """One ``[[target]]`` table: how to find a process and how to treat it.

    Exactly one of ``pid``, ``pidfile`` (a file holding the pid, read at every resolution, as
    service managers rewrite it on restart) or ``cmdline`` (a regex searched in the command
    line, arguments joined by spaces) says which process it is. A spec with a ``namespace``
    maps to the Kubernetes object ``namespace/name``. Raises ``ValueError`` naming the field.
    """

    name: str
    namespace: str | None = None
    pid: int | None = None
    pidfile: str | None = None
    cmdline: str | None = None
    priority: Priority = Priority.NORMAL
    protected: bool = False
    budget: int | None = None
    stop: StopMethod = field(default_factory=StopMethod)

    def __post_init__(self) -> None:
        for fname in ("name", "namespace"):
            value = getattr(self, fname)
            if value is None and fname == "namespace":
                continue
            if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
                raise ValueError(
                    f"{fname}: must be a non-empty name without blanks, '/' or '#', got {value!r}"
                )
        chosen = [k for k in ("pid", "pidfile", "cmdline") if getattr(self, k) is not None]
        if len(chosen) != 1:
            raise ValueError(
                "pid/pidfile/cmdline: exactly one is required, got "
                + (", ".join(chosen) if chosen else "none")
            )
        if self.pid is not None and (
            isinstance(self.pid, bool) or not isinstance(self.pid, int) or self.pid <= 1
        ):
            raise ValueError(f"pid: must be an integer > 1, got {self.pid!r}")
        if self.pidfile is not None and (not isinstance(self.pidfile, str) or not self.pidfile):
            raise ValueError(f"pidfile: must be a path, got {self.pidfile!r}")
        if self.cmdline is not None:
            check_pattern(self.cmdline, "cmdline")
        if not isinstance(self.priority, Priority):
            raise ValueError(f"priority: must be a Priority, got {self.priority!r}")
        if not isinstance(self.protected, bool):
            raise ValueError(f"protected: must be true or false, got {self.protected!r}")
        if self.budget is not None and (
            isinstance(self.budget, bool) or not isinstance(self.budget, int) or self.budget < 0
        ):
            raise ValueError(f"budget: must be bytes >= 0, got {self.budget!r}")
        if not isinstance(self.stop, StopMethod):
            raise ValueError(f"stop: must be a StopMethod, got {self.stop!r}")

    @property
    def key(self) -> str:
        """``namespace/name``, or ``name`` alone."""
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    @property
    def kube(self) -> KubeRef | None:
        """The Kubernetes object this spec names, when it has a namespace."""
        return KubeRef(self.namespace, self.name) if self.namespace else None


_SPEC_KEYS = frozenset(
    {
        "name",
        "namespace",
        "pid",
        "pidfile",
        "cmdline",
        "priority",
        "protected",
        "budget",
        "stop_signal",
        "grace",
        "process_group",
        "stop_command",
        *UNLOAD_KEYS,
    }
)

# Kubernetes quantity suffixes: decimal K/M/G/T(B), binary Ki/Mi/Gi/Ti(B).
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(?:([KMGT])(i?)B?|B)?\s*", re.IGNORECASE)
_SIZE_POWER = {"k": 1, "m": 2, "g": 3, "t": 4}


def parse_size(value: int | str) -> int:
    """Bytes from an integer or a string like ``"12GiB"``, ``"500M"``, ``"4096"``.

    ``K``/``M``/``G``/``T`` (optionally with ``B``) are decimal and ``Ki``/``Mi``/``Gi``/``Ti``
    binary, as in Kubernetes quantities. Raises ``ValueError`` for anything else.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"not a size: {value!r}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"not a size: {value!r}")
    m = _SIZE_RE.fullmatch(value)
    if m is None:
        raise ValueError(f"not a size: {value!r}")
    number, unit, binary = m.groups()
    base = 1024 if binary else 1000
    power = _SIZE_POWER[unit.lower()] if unit else 0
    return int(float(number) * base**power)


def _parse_signal(value: int | str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"not a signal: {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        name = value.strip().upper()
        if not name.startswith("SIG"):
            name = "SIG" + name
        try:
            return int(signal.Signals[name])
        except KeyError:
            pass
    raise ValueError(f"not a signal: {value!r}")


def _parse_command(value: str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(shlex.split(value))
    if isinstance(value, list | tuple) and all(isinstance(a, str) for a in value):
        return tuple(value)
    raise ValueError(f"not a command: {value!r}")


def _spec_from_table(table: Mapping[str, Any]) -> TargetSpec:
    unknown = sorted(set(table) - _SPEC_KEYS)
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} (known: {', '.join(sorted(_SPEC_KEYS))})")
    stop_kwargs: dict[str, Any] = {}
    converters: tuple[tuple[str, str, Any], ...] = (
        ("stop_signal", "signal", _parse_signal),
        ("grace", "grace", None),
        ("process_group", "process_group", None),
        ("stop_command", "command", _parse_command),
    )
    for key, attr, convert in converters:
        if key in table:
            try:
                stop_kwargs[attr] = convert(table[key]) if convert else table[key]
            except ValueError as exc:
                raise ValueError(f"{key}: {exc}") from None
    name = table.get("name")
    action = parse_unload(table, name if isinstance(name, str) else None)
    if action is not None:
        stop_kwargs["unload"] = action
    budget = table.get("budget")
    if budget is not None:
        try:
            budget = parse_size(budget)
        except ValueError as exc:
            raise ValueError(f"budget: {exc}") from None
    priority = table.get("priority")
    if priority is not None and not isinstance(priority, str):
        raise ValueError(f"priority: must be a name, got {priority!r}")
    parsed = Priority.parse(priority)
    if priority is not None and parsed.value != priority.strip().lower():
        log.warning("event=unknown_priority name=%s priority=%r using=normal", table.get("name"),
                    priority)  # fmt: skip
    return TargetSpec(
        name=table.get("name"),  # type: ignore[arg-type]  # checked in __post_init__
        namespace=table.get("namespace"),
        pid=table.get("pid"),
        pidfile=table.get("pidfile"),
        cmdline=table.get("cmdline"),
        priority=parsed,
        protected=table.get("protected", False),
        budget=budget,
        stop=StopMethod(**stop_kwargs),
    )


def parse_target_specs(tables: Sequence[Mapping[str, Any]]) -> list[TargetSpec]:
    """Check the ``[[target]]`` tables of a parsed TOML document and build their specs.

    Pure: the caller reads and parses the file (``tomllib``). Raises ``ValueError`` whose
    message starts ``target[i]`` (0-based table index) and names the offending key: an unknown
    key, a wrong type or value, or a key (``namespace/name``) used twice. An unknown priority
    becomes ``normal`` with a warning (issue 5).
    """
    specs: list[TargetSpec] = []
    seen: set[str] = set()
    for i, table in enumerate(tables):
        if not isinstance(table, Mapping):
            raise ValueError(f"target[{i}]: must be a table, got {type(table).__name__}")
        try:
            spec = _spec_from_table(table)
        except ValueError as exc:
            raise ValueError(f"target[{i}]: {exc}") from None
        if spec.key in seen:
            raise ValueError(f"target[{i}]: name: duplicate target {spec.key!r}")
        seen.add(spec.key)
        specs.append(spec)
    return specs


# --- patterns --------------------------------------------------------------------------------

DEFAULT_MAX_MATCHES = 16
"""Discovery (and each ``cmdline`` spec) may match at most this many processes: an inference
host runs a handful of servers (a router's model instances included); a pattern that matches
more is matching things it should not (issue 13: ``--discover ""`` managed the whole host)."""


class TooManyMatches(ValueError):
    """A pattern matched more processes than the cap allows."""


def check_pattern(pattern: object, what: str) -> re.Pattern[str]:
    """Compile a process-matching regex, refusing one that cannot be meant.

    Refused, with ``ValueError`` naming ``what``: a non-string, an empty pattern, an invalid
    one (including repetition counts too large to compile), and any pattern that matches the
    empty string (``""``, ``.*``, ``x|``): such a pattern matches every process on the host.
    """
    if not isinstance(pattern, str) or not pattern.strip():
        raise ValueError(f"{what}: must be a non-empty regex, got {pattern!r}")
    try:
        regex = re.compile(pattern)
    except (re.error, OverflowError, RecursionError, ValueError) as exc:
        raise ValueError(f"{what}: not a valid regex {pattern!r}: {exc}") from None
    if regex.search("") is not None:
        raise ValueError(
            f"{what}: {pattern!r} matches the empty string, so it would match every process; "
            "name the executable (e.g. 'llama-server')"
        )
    return regex


# --- process tables ------------------------------------------------------------------------


class _ProcessTable(Protocol):
    def pids(self) -> Iterable[int]: ...
    def argv(self, pid: int) -> tuple[str, ...] | None: ...
    def names(self, pid: int) -> tuple[str, ...]: ...
    def ppid(self, pid: int) -> int | None: ...


# root -> pid -> [identity, the names, argv (_UNREAD: not read yet)]: what the last rescan
# learnt about each process, valid while its identity (comm and start time) is unchanged.
_KNOWN: dict[str, dict[int, list[Any]]] = {}
_UNREAD = object()


def _stat_identity(raw: bytes) -> tuple[bytes, bytes] | None:
    """(comm, start time in ticks) from /proc/PID/stat: comm between the first '(' and the
    last ')' (a name may hold either), the start time 20 fields after that ')'."""
    left, right = raw.find(b"("), raw.rfind(b")")
    if left < 0 or right < left:
        return None
    fields = raw[right + 1 :].split()
    if len(fields) < 20:
        return None
    return raw[left + 1 : right], fields[19]


class _ProcFS:
    """Linux: ``/proc/<pid>/{cmdline,comm,exe,stat}`` under ``root``; a process that vanishes
    or hides while being read is skipped, as it would be a moment later anyway.

    A rescan reads each process's ``stat`` (one small read: its comm and start time) and
    resolves the ``exe`` link and reads ``cmdline`` only when either changed since the last
    scan: exec and PR_SET_NAME change comm, and a pid reused by another process changes the
    start time, so an unchanged pair is the same process running the same program (issue
    15: the readlink per process and the cmdline per match were most of a rescan). A pid
    that leaves the listing leaves the cache; without a readable stat nothing is cached. Left
    stale: a command line rewritten in place (setproctitle) keeps the name first read."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._known = _KNOWN.setdefault(root, {})
        self._checked: set[int] = set()  # pids whose identity this scan compared

    def pids(self) -> Iterator[int]:
        try:
            entries = os.listdir(self.root)
        except OSError as exc:
            log.warning("event=proc_scan_failed root=%s error=%s", self.root, exc)
            return
        pids = [int(e) for e in entries if e.isdigit()]
        if self._known:
            alive = set(pids)
            for gone in [p for p in self._known if p not in alive]:
                del self._known[gone]
        yield from pids

    def _read(self, pid: int, name: str, size: int = 65536) -> bytes | None:
        try:
            fd = os.open(f"{self.root}/{pid}/{name}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            chunks = [os.read(fd, size)]
            while len(chunks[-1]) == size:  # comm and stat take one read
                chunks.append(os.read(fd, size))
            return b"".join(chunks)
        except OSError:
            return None
        finally:
            os.close(fd)

    def argv(self, pid: int) -> tuple[str, ...] | None:
        known = self._known.get(pid) if pid in self._checked else None
        if known is not None and known[2] is not _UNREAD:
            return cast(tuple[str, ...] | None, known[2])
        raw = self._read(pid, "cmdline")
        # kernel threads and zombies have an empty command line
        argv = tuple(os.fsdecode(a) for a in raw.rstrip(b"\0").split(b"\0")) if raw else None
        if known is not None:
            known[2] = argv
        return argv

    def names(self, pid: int) -> tuple[str, ...]:
        """``comm`` (the executable's basename as exec'd, cut to 15 bytes) and the basename
        of the ``exe`` link, where readable."""
        stat = self._read(pid, "stat", 4096)
        identity = _stat_identity(stat) if stat else None
        known = self._known.get(pid)
        if identity is not None and known is not None and known[0] == identity:
            self._checked.add(pid)
            return cast(tuple[str, ...], known[1])
        comm = identity[0] if identity is not None else (self._read(pid, "comm", 64) or b"")
        out = []
        if comm.rstrip(b"\n"):
            out.append(os.fsdecode(comm.rstrip(b"\n")))
        with contextlib.suppress(OSError):  # another user's process without CAP_SYS_PTRACE
            out.append(os.path.basename(os.readlink(os.path.join(self.root, str(pid), "exe"))))
        names = tuple(out)
        if identity is not None:
            self._known[pid] = [identity, names, _UNREAD]
            self._checked.add(pid)
        else:
            self._known.pop(pid, None)
        return names

    def ppid(self, pid: int) -> int | None:
        """The parent's pid: field 4 of ``stat``, after the last ``)`` (a hostile name cannot
        forge it)."""
        raw = self._read(pid, "stat")
        if not raw:
            return None
        fields = raw[raw.rfind(b")") + 1 :].split()
        return int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None


class _PsTable:
    """macOS (and any system with a POSIX ``ps``): one snapshot from two ``ps`` runs.

    ``ps`` prints the command line joined by spaces, so an argument that itself contains a
    blank is split in two here; names from ``--alias``/``-m`` are then cut at the blank.
    """

    def __init__(self) -> None:
        self._comm = parse_ps_output(_run_ps("comm"))
        self._args = parse_ps_output(_run_ps("args"))

    def pids(self) -> Iterable[int]:
        return self._args.keys()

    def argv(self, pid: int) -> tuple[str, ...] | None:
        args = self._args.get(pid)
        return tuple(args.split()) if args else None

    def names(self, pid: int) -> tuple[str, ...]:
        comm = self._comm.get(pid)
        return (os.path.basename(comm),) if comm else ()

    def ppid(self, pid: int) -> int | None:
        return None  # router instances are mapped on Linux only


def _run_ps(column: str) -> str:
    return subprocess.run(
        ["ps", "-axww", "-o", f"pid=,{column}="],
        check=True,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=10,
    ).stdout


def parse_ps_output(text: str) -> dict[int, str]:
    """``{pid: rest of line}`` from ``ps -o pid=,<column>=`` output; malformed lines skipped."""
    out: dict[int, str] = {}
    for line in text.splitlines():
        head, _, rest = line.strip().partition(" ")
        if head.isdigit() and rest.strip():
            out[int(head)] = rest.strip()
    return out


def _table(sampler: Sampler, proc_root: str | None) -> _ProcessTable:
    if proc_root is not None:
        return _ProcFS(proc_root)
    if sys.platform == "linux":
        return _ProcFS(os.path.join(sampler.root, "proc"))
    return _PsTable()


def _never_target(pid: int) -> bool:
    """pid 0/1, ourselves and our parent are never targets (STYLE rule 15)."""
    return pid <= 1 or pid == os.getpid() or pid == os.getppid()


def _is_agent(argv: Sequence[str]) -> bool:
    """Another metalmem agent (a second instance, ``status`` or ``explain``) is never a target."""
    return any(os.path.basename(a).startswith("metalmem-agent") for a in argv[:2])


def _start_times(sampler: Sampler, pids: Iterable[int]) -> dict[int, float]:
    """Start times of the pids that are alive and readable; the rest are left out (a target
    whose identity cannot be read cannot be stopped safely)."""
    out: dict[int, float] = {}
    for pid, rec in sampler.processes(sorted(set(pids))).items():
        if isinstance(rec, NoSuchProcess):
            continue
        if isinstance(rec, BaseException):  # AccessDenied, or an OSError naming the call
            log.debug("event=target_unreadable pid=%d error=%s", pid, rec)
            continue
        if rec.start_time is None:
            log.debug("event=target_unreadable pid=%d error=no start time", pid)
            continue
        out[pid] = rec.start_time
    return out


def _read_pidfile(path: str) -> int | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            text = f.read(64).strip()
    except OSError as exc:
        log.debug("event=pidfile_unreadable path=%s error=%s", path, exc)
        return None
    if not text.isdigit():
        log.debug("event=pidfile_invalid path=%s content=%r", path, text)
        return None
    return int(text)


def _with_unique_keys(candidates: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """``(key, pid)`` pairs where every key that occurs more than once gets ``#pid``."""
    counts: dict[str, int] = {}
    for key, _ in candidates:
        counts[key] = counts.get(key, 0) + 1
    return [(f"{key}#{pid}" if counts[key] > 1 else key, pid) for key, pid in candidates]


def resolve(
    specs: Sequence[TargetSpec],
    sampler: Sampler,
    *,
    proc_root: str | None = None,
    max_matches: int = DEFAULT_MAX_MATCHES,
) -> list[Target]:
    """The live targets the specs name right now, in spec order.

    ``pid`` is taken as is, ``pidfile`` is read now, ``cmdline`` is searched in every process's
    command line (arguments joined by single spaces). A spec that names no live process yields
    no target. A ``cmdline`` that matches several processes yields one target per process, each
    keyed ``key#pid`` so keys stay unique (one match keeps the plain key, so a respawn block by
    key holds across restarts); one that matches more than ``max_matches`` yields none
    (logged). A process named by several specs is the first one's target
    only. pid 0/1, this process and its parent never match.
    """
    wanted: list[tuple[TargetSpec, str, int]] = []
    table: _ProcessTable | None = None
    for spec in specs:
        if spec.pid is not None:
            wanted.append((spec, spec.key, spec.pid))
        elif spec.pidfile is not None:
            pid = _read_pidfile(spec.pidfile)
            if pid is not None:
                wanted.append((spec, spec.key, pid))
        elif spec.cmdline is not None:
            if table is None:
                table = _table(sampler, proc_root)
            pattern = re.compile(spec.cmdline)
            matches = []
            for pid in sorted(table.pids()):
                if _never_target(pid):
                    continue
                argv = table.argv(pid)
                if argv and not _is_agent(argv) and pattern.search(" ".join(argv)):
                    matches.append((spec.key, pid))
            if len(matches) > max_matches:
                log.error(
                    "event=target_refused key=%s cmdline=%r matches=%d max=%d",
                    spec.key, spec.cmdline, len(matches), max_matches,
                )  # fmt: skip
                continue
            wanted.extend((spec, key, pid) for key, pid in _with_unique_keys(matches))
    # One process, one target: when several specs name the same process, the first wins
    # (counting it twice would double its footprint in the planner's guard).
    first_by_pid: dict[int, tuple[TargetSpec, str, int]] = {}
    for w in wanted:
        if _never_target(w[2]):
            continue
        if w[2] in first_by_pid:
            log.debug("event=target_duplicate key=%s pid=%d kept=%s", w[1], w[2],
                      first_by_pid[w[2]][1])  # fmt: skip
            continue
        first_by_pid[w[2]] = w
    wanted = list(first_by_pid.values())
    starts = _start_times(sampler, (pid for _, _, pid in wanted))
    return [
        Target(
            key=key,
            pid=pid,
            start_time=starts[pid],
            priority=spec.priority,
            protected=spec.protected,
            budget=spec.budget,
            stop=spec.stop,
            kube=spec.kube,
            source=TargetSource.CONFIG,
        )
        for spec, key, pid in wanted
        if pid in starts
    ]


# --- discovery -----------------------------------------------------------------------------

_ALIAS_FLAGS = ("--alias", "-a")
_MODEL_FLAGS = ("--model", "-m")
_HF_FLAGS = ("--hf-repo", "-hf", "-hfr")


def name_from_argv(argv: Sequence[str]) -> str | None:
    """A target name from a llama-server command line, or ``None``.

    In order: ``--alias``/``-a NAME``; the model file of ``--model``/``-m PATH`` without
    directories and ``.gguf``; the repository of ``--hf-repo``/``-hf OWNER/REPO[:QUANT]``.
    Characters that cannot appear in a key (blanks, ``/``, ``#``) become ``_``.
    """
    args = argv[1:]
    name = flag_value(args, _ALIAS_FLAGS)
    if not name:
        model = flag_value(args, _MODEL_FLAGS)
        if model:
            name = os.path.basename(model.rstrip("/"))
            if name.lower().endswith(".gguf"):
                name = name[: -len(".gguf")]
    if not name:
        repo = flag_value(args, _HF_FLAGS)
        if repo:
            name = repo.rstrip("/").rsplit("/", 1)[-1]
    if not name:
        return None
    return _safe_name(name)


def _safe_name(name: str) -> str:
    return re.sub(r"[\s/#]", "_", name)


def discover(
    sampler: Sampler,
    pattern: str = DEFAULT_DISCOVERY_PATTERN,
    *,
    proc_root: str | None = None,
    priority: Priority = Priority.NORMAL,
    stop: StopMethod | None = None,
    max_matches: int | None = DEFAULT_MAX_MATCHES,
    routers: RouterModels | None = None,
) -> list[Target]:
    """Running processes whose executable name matches ``pattern``, as targets, by pid.

    The regex is searched (``re.search``) in ``comm`` and in the basename of the executable
    (Linux ``/proc/PID/exe``; macOS ``ps -o comm``). Note that Linux cuts ``comm`` to 15
    bytes. Each target is named by :func:`name_from_argv`, else ``comm#pid``; names that occur
    twice get ``#pid``. Kernel threads, zombies, pid 0/1, this process, its parent and other
    metalmem agents are never discovered. A pattern that :func:`check_pattern` refuses raises
    ``ValueError``; more than ``max_matches`` processes raise :class:`TooManyMatches`.

    With ``routers`` (Linux), a llama-server in router mode (:func:`metalmem.unload.is_router`)
    is not a target itself: each of its matched child instances that its ``GET /models``
    names as a loaded model is one, keyed by the model id and stopped by unloading it
    (``POST /models/unload``, :mod:`metalmem.unload`).
    """
    regex = check_pattern(pattern, "discovery pattern")
    table = _table(sampler, proc_root)
    found: list[tuple[str, int]] = []
    for pid in sorted(table.pids()):
        if _never_target(pid):
            continue
        names = table.names(pid)
        if not any(regex.search(n) for n in names):
            continue
        argv = table.argv(pid)
        if not argv or _is_agent(argv):
            continue
        name = name_from_argv(argv)
        found.append((name or f"{_safe_name(names[0])}#{pid}", pid))
    if max_matches is not None and len(found) > max_matches:
        raise TooManyMatches(
            f"discovery pattern {pattern!r} matches {len(found)} processes, more than the "
            f"cap of {max_matches} ([discovery] max_matches): narrow the pattern or raise the cap"
        )
    base = stop if stop is not None else StopMethod()
    methods: dict[int, StopMethod] = {}
    if routers is not None:
        found, methods = _router_models(table, found, routers, base)
    found = _with_unique_keys(found)
    starts = _start_times(sampler, (pid for _, pid in found))
    return [
        Target(
            key=key,
            pid=pid,
            start_time=starts[pid],
            priority=priority,
            stop=methods.get(pid, base),
            source=TargetSource.DISCOVERY,
        )
        for key, pid in found
        if pid in starts
    ]


def _router_models(
    table: _ProcessTable,
    found: list[tuple[str, int]],
    routers: RouterModels,
    base: StopMethod,
) -> tuple[list[tuple[str, int]], dict[int, StopMethod]]:
    """``found`` without its routers and with their instances keyed by model id, and the
    unload stop of each instance."""
    argvs = {pid: table.argv(pid) or () for _, pid in found}
    if not any(is_router(argv, True) for argv in argvs.values()):
        return found, {}  # the common case: every server names its model; no parent read
    parents = {pid: table.ppid(pid) for pid in argvs}
    with_kids = set(parents.values())
    router_pids = {pid for pid, argv in argvs.items() if is_router(argv, pid in with_kids)}
    if not router_pids:
        return found, {}
    parents = {pid: parent for pid, parent in parents.items() if pid not in router_pids}
    names: dict[int, str] = {}
    methods: dict[int, StopMethod] = {}
    for router in sorted(router_pids):
        url = router_url(argvs[router])
        kids = {pid: argvs[pid] for pid, parent in parents.items() if parent == router}
        for pid, model in routers.models(router, url, kids).items():
            names[pid] = _safe_name(model)
            action = UnloadAction("llama-server", url, model)
            methods[pid] = replace(base, unload=action, command=None, process_group=False)
    kept = [(names.get(pid, key), pid) for key, pid in found if pid not in router_pids]
    return kept, methods


# --- tracking ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TargetChanges:
    """The result of one :meth:`TargetTracker.refresh`: all targets, and what changed."""

    targets: tuple[Target, ...]
    added: tuple[Target, ...]
    removed: tuple[Target, ...]


class TargetTracker:
    """Keeps the managed targets current: configured ones first, then discovered ones.

    A target whose key, identity and settings are unchanged stays the same object across
    refreshes; a process that exited is removed, and a restarted one is added as a new identity
    (the old one removed), even under the same key. A discovered process that a spec already
    names is left to the spec; a discovered key equal to a configured one gets ``#pid``.

    A spec that gives a bare ``pid`` is adopted through its :class:`~metalmem.pins.Pin`: the
    identity it had when the spec was first seen, kept across :meth:`configure` (a reload) and,
    with a state dir, across restarts. A pid that names another process than its pin, or that
    did not exist when the spec was first seen, is never adopted. Discovery that matches more
    than ``max_matches`` processes adds nothing that refresh (``refused`` says why).

    Not thread-safe: the watchdog thread refreshes it and publishes ``targets``.
    """

    def __init__(
        self,
        sampler: Sampler,
        specs: Sequence[TargetSpec] = (),
        *,
        discover_pattern: str | None = DEFAULT_DISCOVERY_PATTERN,
        proc_root: str | None = None,
        pins: PinStore | None = None,
        max_matches: int = DEFAULT_MAX_MATCHES,
        routers: RouterModels | None = None,
    ) -> None:
        self._sampler = sampler
        self._proc_root = proc_root
        self._routers = routers if routers is not None else RouterModels()
        self._pins = pins if pins is not None else PinStore()
        self._targets: tuple[Target, ...] = ()
        self._logged: set[tuple[str, int, float | None]] = set()
        self.refused: str | None = None
        self.configure(specs, discover_pattern, max_matches)

    def configure(
        self,
        specs: Sequence[TargetSpec],
        discover_pattern: str | None,
        max_matches: int = DEFAULT_MAX_MATCHES,
    ) -> None:
        """Take new specs and discovery settings (a reload); pins of specs still configured
        are kept, the others dropped, new ones pinned now. The targets change at the next
        :meth:`refresh`."""
        if discover_pattern is not None:
            check_pattern(discover_pattern, "discovery pattern")
        self._specs = tuple(specs)
        self._pattern = discover_pattern
        self._max_matches = max_matches
        self._pins.retain(s.key for s in self._specs if s.pid is not None)
        # A new ``pid =`` spec is pinned now, not at the next refresh: a pid reused in between
        # would otherwise be what the agent "first saw".
        fresh = [
            s for s in self._specs
            if s.pid is not None and ((p := self._pins.get(s.key)) is None or p.pid != s.pid)
        ]  # fmt: skip
        starts = _start_times(self._sampler, (s.pid for s in fresh if s.pid is not None))
        for spec in fresh:
            assert spec.pid is not None
            self._pin_first(spec, starts.get(spec.pid))

    @property
    def targets(self) -> tuple[Target, ...]:
        """The targets of the latest refresh."""
        return self._targets

    @property
    def pins(self) -> PinStore:
        return self._pins

    def refresh(self) -> TargetChanges:
        """Re-resolve the specs, re-run discovery and report the difference."""
        configured = self._pin(
            resolve(
                self._specs, self._sampler, proc_root=self._proc_root,
                max_matches=self._max_matches,
            )
        )  # fmt: skip
        merged = list(configured)
        if self._pattern is not None:
            taken_pids = {t.pid for t in configured}
            taken_keys = {t.key for t in configured}
            for t in self._discover():
                if t.pid in taken_pids:
                    continue
                if t.key in taken_keys:
                    t = replace(t, key=f"{t.key}#{t.pid}")
                taken_keys.add(t.key)
                merged.append(t)
        previous = set(self._targets)
        current = set(merged)
        kept = {t: t for t in self._targets if t in current}
        targets = tuple(kept.get(t, t) for t in merged)
        added = tuple(t for t in targets if t not in previous)
        removed = tuple(t for t in self._targets if t not in current)
        for t in removed:
            log.info("event=target_removed key=%s pid=%d source=%s", t.key, t.pid, t.source)
        for t in added:
            log.info(
                "event=target_added key=%s pid=%d start_time=%.2f priority=%s source=%s",
                t.key, t.pid, t.start_time, t.priority, t.source,
            )  # fmt: skip
        self._targets = targets
        return TargetChanges(targets, added, removed)

    def _discover(self) -> list[Target]:
        assert self._pattern is not None
        try:
            found = discover(
                self._sampler, self._pattern, proc_root=self._proc_root,
                max_matches=self._max_matches, routers=self._routers,
            )  # fmt: skip
        except TooManyMatches as exc:
            if self.refused != str(exc):
                log.error("event=discovery_refused error=%r action=manage_none", str(exc))
            self.refused = str(exc)
            return []
        if self.refused is not None:
            log.info("event=discovery_accepted pattern=%r matches=%d", self._pattern, len(found))
        self.refused = None
        return found

    def _pin_first(self, spec: TargetSpec, start_time: float | None) -> Pin:
        """Pin a ``pid =`` spec seen for the first time (at start, or a reload that added it
        or changed its pid) to the process its pid names now, or to nothing."""
        assert spec.pid is not None
        pin = Pin(spec.pid, start_time)
        self._pins.set(spec.key, pin)
        if start_time is None:
            log.warning("event=target_pid_absent key=%s pid=%d action=never_adopt",
                        spec.key, spec.pid)  # fmt: skip
        return pin

    def _pin(self, targets: list[Target]) -> list[Target]:
        """Keep a ``pid =`` target only while it is the process its pin adopted."""
        by_key = {t.key: t for t in targets}
        refused: set[str] = set()
        for spec in self._specs:
            if spec.pid is None:
                continue
            t = by_key.get(spec.key)
            pin = self._pins.get(spec.key)
            if pin is None or pin.pid != spec.pid:
                pin = self._pin_first(spec, t.start_time if t is not None else None)
            if t is None or t.start_time == pin.start_time:
                continue
            refused.add(spec.key)
            mark = (spec.key, t.pid, t.start_time)
            if mark not in self._logged:
                self._logged.add(mark)
                log.warning(
                    "event=target_pid_reused key=%s pid=%d start_time=%.2f pinned=%s "
                    "action=not_adopted",
                    t.key, t.pid, t.start_time,
                    "absent" if pin.start_time is None else f"{pin.start_time:.2f}",
                )  # fmt: skip
        return [t for t in targets if t.key not in refused]
