"""Static configuration: ``[[target]]`` tables checked into :class:`TargetSpec` records, and
the patterns that ``cmdline`` specs and discovery match (refused when they would match all)."""

from __future__ import annotations

import logging
import re
import shlex
import signal
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..unload import UNLOAD_KEYS, parse_unload
from .model import KubeRef, Priority, StopMethod, Target

log = logging.getLogger(__name__)

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


def unmatched_targets(specs: Iterable[TargetSpec], targets: Iterable[Target]) -> list[str]:
    """Keys of configured targets that name no live process right now.

    Resolution drops such a spec without a word (a stopped service is normal), so without this
    a typo in a ``cmdline`` pattern looks exactly like a host with nothing to manage. A
    ``cmdline`` spec that matched several processes has keys ``key#pid``: any of them counts.
    """
    live = {re.sub(r"#\d+$", "", t.key) for t in targets}
    return [s.key for s in specs if s.key not in live]
