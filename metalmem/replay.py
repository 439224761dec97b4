"""Record samples as JSON lines and replay them through the classifier with the recorded clock.

A recording is one JSON object per tick: the :class:`~metalmem.SystemMemory` fields by name,
sizes as exact integers, ``os_level`` as the level's name, ``psi`` as a nested object or
``null``, timestamps as floats (Python's shortest round-trip repr, so they read back bit for
bit). :func:`parse_line` is strict: it names the field that is missing or has the wrong type,
so a garbled file is reported, never half-read. Replaying is pure: the same lines with the
same policy give the same timeline, which is what makes recordings useful for tuning
thresholds and as regression fixtures.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable
from typing import Any

from .level import Level
from .pressure import Assessment, Classifier, PressurePolicy
from .sampler import PSI, SystemMemory

__all__ = [
    "ReplayError",
    "TimelineEntry",
    "infer_interval",
    "parse_line",
    "record",
    "record_line",
    "render_timeline",
    "replay",
]


class ReplayError(ValueError):
    """A recording's line could not be read: ``line`` is its 1-based number, ``msg`` why."""

    __module__ = "metalmem"

    def __init__(self, msg: str, line: int) -> None:
        super().__init__(f"line {line}: {msg}")
        self.msg = msg
        self.line = line

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.msg, self.line))


def record_line(sample: SystemMemory) -> str:
    """One sample as a JSON object on one line (no newline), exact to the byte and bit."""
    doc = sample._asdict()
    if sample.os_level is not None:
        doc["os_level"] = sample.os_level.name
    if sample.psi is not None:
        doc["psi"] = sample.psi._asdict()
    return json.dumps(doc, separators=(",", ":"))


def record(
    sampler: Any,
    out: Any,
    *,
    interval: float,
    count: int | None = None,
    on_sample: Callable[[int, SystemMemory], None] | None = None,
) -> int:
    """Write one :func:`record_line` per ``interval`` seconds to ``out`` (flushed as taken, so
    a recording stopped early is complete up to its last tick) until ``count`` samples or
    SIGINT/SIGTERM; returns the samples taken. Ticks keep a fixed schedule: a late tick is not
    made up for by a burst. Sampling errors (``metalmem.Error``, ``OSError``) propagate.
    Call from the main thread (it waits on the signals: :class:`metalmem.signals.SignalWaiter`).
    """
    import signal
    import time

    from .signals import SignalWaiter

    taken = 0
    with SignalWaiter((signal.SIGINT, signal.SIGTERM)) as stop:
        deadline = time.monotonic()
        while True:
            sample = sampler.system()
            out.write(record_line(sample) + "\n")
            out.flush()
            taken += 1
            if on_sample is not None:
                on_sample(taken, sample)
            if count is not None and taken >= count:
                return taken
            deadline = max(deadline + interval, time.monotonic())
            if stop.received is None:
                stop.wait(max(0.0, deadline - time.monotonic()))
            if stop.received is not None:
                return taken


def _int(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError("a non-negative integer or null")
    return value


def _float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError("a number")
    return float(value)


def _opt_float(value: object) -> float | None:
    return None if value is None else _float(value)


def _level(value: object) -> Level | None:
    if value is None:
        return None
    if not isinstance(value, str) or value not in Level.__members__:
        raise TypeError(f"a level name ({', '.join(Level.__members__)}) or null")
    return Level[value]


def _psi(value: object) -> PSI | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != set(PSI._fields):
        raise TypeError(f"an object with {', '.join(PSI._fields)}, or null")
    return PSI(*(_opt_float(value[name]) for name in PSI._fields))


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError("a string")
    return value


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError("true or false")
    return value


# How each SystemMemory field is read back; the table must name every field (checked below).
_FIELDS: dict[str, Callable[[object], Any]] = {
    "total": _int,
    "available": _int,
    "free": _int,
    "wired": _int,
    "compressed": _int,
    "swap_total": _int,
    "swap_used": _int,
    "pageouts": _int,
    "swapouts": _int,
    "oom_kills": _int,
    "os_level": _level,
    "psi": _psi,
    "gpu_limit": _int,
    "gpu_used": _int,
    "scope": _str,
    "timestamp": _float,
    "counters_timestamp": _opt_float,
    "limited": _bool,
}
if tuple(_FIELDS) != SystemMemory._fields:  # pragma: no cover - caught by any test run
    raise ImportError("metalmem.replay: the record fields do not match SystemMemory")


def parse_line(text: str) -> SystemMemory:
    """Read one recorded line back into the :class:`SystemMemory` it was written from.

    Raises ``ValueError`` naming the problem (not JSON, not an object, a missing, unknown or
    mistyped field). ``record_line`` then ``parse_line`` gives back an equal sample.
    """
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc.msg} at column {exc.colno}") from exc
    if not isinstance(doc, dict):
        raise ValueError(f"expected a JSON object, got {type(doc).__name__}")
    missing = [name for name in _FIELDS if name not in doc]
    if missing:
        raise ValueError(f"missing field {', '.join(missing)}")
    unknown = sorted(set(doc) - set(_FIELDS))
    if unknown:
        raise ValueError(f"unknown field {', '.join(unknown)}")
    values = []
    for name, read in _FIELDS.items():
        try:
            values.append(read(doc[name]))
        except TypeError as exc:
            raise ValueError(f"field {name} must be {exc}, got {doc[name]!r}") from None
    return SystemMemory(*values)


@dataclasses.dataclass(frozen=True, slots=True)
class TimelineEntry:
    """One replayed tick: the recording's ``line`` number, the sample and its assessment."""

    line: int
    sample: SystemMemory
    assessment: Assessment


def infer_interval(timestamps: Iterable[float], default: float = 2.0) -> float:
    """The recording's tick: the median of the positive gaps between timestamps.

    The median ignores the odd long gap (a suspended laptop) that the classifier must still
    see as a gap. ``default`` when fewer than two distinct timestamps exist.
    """
    gaps = []
    prev: float | None = None
    for t in timestamps:
        if prev is not None and t > prev:
            gaps.append(t - prev)
        prev = t
    if not gaps:
        return default
    gaps.sort()  # the median, without statistics (it imports decimal and fractions)
    mid = len(gaps) // 2
    return gaps[mid] if len(gaps) % 2 else (gaps[mid - 1] + gaps[mid]) / 2


def replay(
    lines: Iterable[str],
    policy: PressurePolicy | None = None,
    interval: float | None = None,
) -> list[TimelineEntry]:
    """Assess every recorded sample, in order, with a fresh :class:`Classifier`.

    ``now`` is each sample's own timestamp (the recorded clock). ``interval`` is the
    classifier's expected tick; ``None`` infers it from the recording (:func:`infer_interval`).
    Blank lines are skipped. Raises :class:`ReplayError` with the line number of the first
    line that cannot be read, before anything is assessed.
    """
    samples: list[tuple[int, SystemMemory]] = []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            samples.append((number, parse_line(text)))
        except ValueError as exc:
            raise ReplayError(str(exc), number) from exc
    if interval is None:
        interval = infer_interval(s.timestamp for _, s in samples)
    classifier = Classifier(policy, interval=interval)
    return [TimelineEntry(n, s, classifier.assess(s, s.timestamp)) for n, s in samples]


def _key(a: Assessment) -> tuple[Any, ...]:
    return (a.level, a.raw_level, a.actionable, tuple((r.signal, r.level) for r in a.reasons))


def render_timeline(entries: Iterable[TimelineEntry], *, every_tick: bool = False) -> list[str]:
    """The timeline as text lines, one per change (or per tick with ``every_tick``).

    A change is a new reported or raw level, a change of ``actionable`` or of the set of
    voting signals. Times are seconds from the first sample (monotonic clocks have no
    meaningful origin). Ends with a summary line; deterministic for equal entries.
    """
    out: list[str] = []
    start: float | None = None
    last_key: tuple[Any, ...] | None = None
    ticks = 0
    changes = 0
    worst = Level.NORMAL
    end = 0.0
    for entry in entries:
        a = entry.assessment
        if start is None:
            start = a.timestamp
        end = a.timestamp - start
        ticks += 1
        worst = max(worst, a.level)
        key = _key(a)
        changed = key != last_key
        if last_key is not None and key[0] != last_key[0]:
            changes += 1
        last_key = key
        if not (changed or every_tick):
            continue
        flags = []
        if a.raw_level != a.level:
            flags.append(f"raw={a.raw_level.name}")
        if a.actionable:
            flags.append("actionable")
        if a.forecast_seconds is not None:
            flags.append(f"forecast={a.forecast_seconds:.1f}s")
        head = f"{end:+11.3f}s  line {entry.line:<6d} {a.level.name:<8}  {' '.join(flags)}"
        out.append(head.rstrip())
        out.extend(f"{'':30}{r.signal.value} {r.level.name}: {r.message}" for r in a.reasons)
    out.append(f"{ticks} samples over {end:.3f}s, {changes} level changes, highest {worst.name}")
    return out
