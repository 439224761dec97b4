"""The target model: one managed process and how to stop it, with its priority and metadata."""

from __future__ import annotations

import enum
import signal
from dataclasses import dataclass, field, replace

from ..limits import MAX_GRACE, check_duration
from ..unload import UnloadAction

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
