"""Classify memory pressure from samples: pure, deterministic, no I/O (DESIGN.md, Pressure model).

Several signals each vote a level; the assessment is the highest vote, with every vote listed as
a :class:`Reason`. A signal is one row of :data:`SIGNAL_TABLE` (kubelet's ``Signal`` plus its
threshold tables): how to observe a value from a sample, which way is worse, the policy's two
thresholds and how the hysteresis margin applies. Adding a signal means one :class:`Signal`
member, one observation function and one row; :meth:`Classifier.assess` has no per-signal branch.

Two clocks of behaviour, as in kubelet's eviction manager:

- *Reporting* rises at once and falls only after the conditions have stayed below the threshold
  by the margin for ``transition_period`` (``nodeConditionsLastObservedAt``): no flapping.
- *Acting* on CRITICAL (``Assessment.actionable``) needs a hard threshold, or a soft one held for
  ``soft_grace`` (``thresholdsMetGracePeriod``), or a CRITICAL forecast whose time to
  exhaustion is shorter than a stop takes (``Classifier.stop_seconds``): waiting would lose the
  race to the kernel's OOM killer.

The classifier is pure: the same samples with the same ``now`` give the same assessments, which
is what makes ``replay`` and the property tests possible.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from .level import Level
from .limits import MAX_DURATION
from .sampler import SystemMemory

__all__ = [
    "SIGNAL_TABLE",
    "Assessment",
    "Classifier",
    "Derived",
    "Level",
    "Margin",
    "PressurePolicy",
    "Reason",
    "Signal",
    "SignalSpec",
    "assessment_to_dict",
    "parse_duration",
    "threshold_bytes",
]

_MiB = 1024 * 1024

# The sampler refreshes its cumulative counters (Linux /proc/vmstat, NVML) at most once per
# this many seconds (csrc/linux.c MM_SLOW_PERIOD); a rate's time base can be that coarse even
# when the watchdog ticks faster.
_COUNTERS_PERIOD = 1.0
# Gaps longer than this many intervals reset rates and the trend instead of producing spikes.
_GAP_INTERVALS = 5.0
# How long a stop takes by default, for the forecast's "act now" rule: the eviction grace
# (10 s) plus a second for the memory to come back (Classifier.stop_seconds; the watchdog sets
# it from its eviction policy).
RECLAIM_SECONDS = 1.0
DEFAULT_STOP_SECONDS = 10.0 + RECLAIM_SECONDS
# The forecast's least-squares window keeps points at least forecast_window / _FORECAST_POINTS
# apart, so its cost is bounded whatever the tick (about 17 points).
_FORECAST_POINTS = 16


class Signal(enum.StrEnum):
    """A pressure signal; the values are the stable strings of logs, metric labels and JSON."""

    MEMORY_AVAILABLE = "memory.available"
    """Available memory as a fraction of total (lower is worse)."""
    GPU_HEADROOM = "gpu.headroom"
    """``(gpu_limit - used) / gpu_limit``; used is ``gpu_used``, else ``wired`` (lower is worse)."""
    OS_LEVEL = "os.level"
    """The OS's own level (macOS ``kern.memorystatus_vm_pressure_level``)."""
    PSI_FULL = "psi.full"
    """Linux PSI ``full`` avg10, percent of wall time (higher is worse)."""
    PSI_SOME = "psi.some"
    """Linux PSI ``some`` avg10, percent of wall time (higher is worse)."""
    SWAPOUT_RATE = "swapout.rate"
    """Bytes swapped out per second, from the cumulative counter (higher is worse)."""
    PAGEOUT_RATE = "pageout.rate"
    """Bytes paged out per second, from the cumulative counter (higher is worse). macOS:
    ``vm_stat`` pageouts; Linux: workingset refaults (memory signals only, never block I/O)."""
    FORECAST = "forecast"
    """Seconds until available reaches the critical threshold at the trend (lower is worse)."""


_DEFAULT_HARD = frozenset({Signal.MEMORY_AVAILABLE, Signal.GPU_HEADROOM, Signal.OS_LEVEL})


def threshold_bytes(value: float | int, total: int) -> int:
    """Resolve a threshold against capacity (kubelet ``GetThresholdQuantity``).

    A ``float`` is a fraction of ``total`` in (0, 1]; an ``int`` is already bytes (>= 0).
    Fractions truncate toward zero, as kubelet does. Raises ``TypeError`` for other types
    (``bool`` included) and ``ValueError`` for a value out of range.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"threshold must be a fraction (float) or bytes (int), got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"threshold in bytes must be >= 0, got {value}")
        return value
    if not 0.0 < value <= 1.0:
        raise ValueError(f"threshold fraction must be in (0, 1], got {value!r}")
    return int(value * total)


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)?")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """Parse a duration into seconds: ``500ms``, ``2s``, ``1.5s``, ``1m``, ``1h`` or ``3`` (s).

    Surrounding whitespace is ignored; anything else (a sign, an exponent, a space before the
    unit, an unknown unit) raises ``ValueError`` quoting the input.
    """
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(
            f"invalid duration {text!r}: expected a number with an optional unit "
            "ms, s, m or h (e.g. 500ms, 2s, 1.5m)"
        )
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


# --- policy ----------------------------------------------------------------------------------


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclasses.dataclass(frozen=True, slots=True)
class PressurePolicy:
    """The thresholds and timings of the classifier; validated at construction.

    Capacity signals (available memory, GPU headroom) are fractions in (0, 1) and vote when the
    value is *below* the threshold; intensity signals (PSI, rates) vote when the value is *at or
    above* it; the forecast votes when the time left is *below* its horizon. ``None`` disables
    that level of an optional signal. The seed defaults are documented per field; tune them
    with ``metalmem-agent replay`` on recordings from the host.

    Raises ``ValueError`` naming the field for a value out of range or thresholds out of order.
    """

    warning_available: float = 0.20
    """WARNING when available/total is below this (LLMKube's seed default)."""
    critical_available: float = 0.10
    """CRITICAL (hard by default) when available/total is below this."""
    warning_gpu_headroom: float | None = 0.10
    """WARNING when the GPU's free share of ``gpu_limit`` is below this."""
    critical_gpu_headroom: float | None = 0.05
    """CRITICAL when below this: past the Metal cap command buffers fail instead of paging."""
    warning_psi_some_pct: float | None = 20.0
    """WARNING when PSI ``some`` avg10 reaches this percentage."""
    critical_psi_some_pct: float | None = 60.0
    """CRITICAL (soft) at this ``some`` avg10 (nohang's soft PSI threshold)."""
    warning_psi_full_pct: float | None = 5.0
    """WARNING when PSI ``full`` avg10 reaches this percentage."""
    critical_psi_full_pct: float | None = 30.0
    """CRITICAL (soft) at this ``full`` avg10: every runnable task stalled 30 % of the time."""
    warning_swapout_rate: float | None = 4.0 * _MiB
    """WARNING when swap-out reaches this many bytes per second."""
    critical_swapout_rate: float | None = 64.0 * _MiB
    """CRITICAL (soft) at this swap-out rate."""
    warning_pageout_rate: float | None = 64.0 * _MiB
    """WARNING at this page-out rate. Linux: the workingset refault rate (pages evicted and
    read back while still in use), not ``pgpgout``, which counts every block write."""
    critical_pageout_rate: float | None = None
    """Off by default: page-out alone is too ambiguous to act on."""
    warning_forecast: float | None = 60.0
    """WARNING when available reaches the critical threshold within this many seconds."""
    critical_forecast: float | None = 30.0
    """CRITICAL (soft) within this horizon: after ``soft_grace`` (10 s) about 20 s are left,
    room for a 10 s SIGTERM grace before the hard threshold is crossed."""
    forecast_window: float = 10.0
    """Seconds of history in the least-squares slope of available memory. The trend forgets
    anything older, so a recovered host stops forecasting within this window."""
    soft_grace: float = 10.0
    """How long a soft CRITICAL must hold before it is actionable (seconds)."""
    transition_period: float = 30.0
    """How long conditions must stay below a level (by the margin) before it may fall."""
    margin: float = 0.05
    """Hysteresis band. Capacity fractions must clear the threshold by this many points
    (available >= 0.20 + 0.05 to leave WARNING); intensity signals by this share of the
    threshold (PSI below 20 % x 0.95), the forecast by this share of its horizon."""
    hard_signals: frozenset[Signal] = _DEFAULT_HARD
    """Signals whose CRITICAL is acted on at once (kubelet: a hard threshold has no grace).
    Default: available memory, GPU headroom and the OS level; PSI, rates and the forecast are
    soft because each can fire while memory is still plentiful (PSI alone: nohang #25)."""

    def __post_init__(self) -> None:
        for name, lower_is_worse, upper, required in _POLICY_PAIRS:
            _validate_pair(self, name, lower_is_worse, upper, required)
        if not _is_number(self.forecast_window) or not 0 < self.forecast_window <= MAX_DURATION:
            raise ValueError(
                f"PressurePolicy.forecast_window must be a duration in (0, {MAX_DURATION:g}] s, "
                f"got {self.forecast_window!r}"
            )
        for name in ("soft_grace", "transition_period"):
            value = getattr(self, name)
            if not _is_number(value) or not 0 <= value <= MAX_DURATION:
                raise ValueError(
                    f"PressurePolicy.{name} must be a duration in [0, {MAX_DURATION:g}] s, "
                    f"got {value!r}"
                )
        if not _is_number(self.margin) or not 0 <= self.margin < 1:
            raise ValueError(f"PressurePolicy.margin must be in [0, 1), got {self.margin!r}")
        for name in ("warning_available", "warning_gpu_headroom"):
            value = getattr(self, name)
            if value is not None and value + self.margin >= 1:
                raise ValueError(
                    f"PressurePolicy.margin ({self.margin}) plus {name} ({value}) must stay "
                    "below 1, or the level could never fall"
                )
        try:
            hard = frozenset(Signal(s) for s in self.hard_signals)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"PressurePolicy.hard_signals must hold Signal values "
                f"({', '.join(s.value for s in Signal)}), got {self.hard_signals!r}"
            ) from exc
        object.__setattr__(self, "hard_signals", hard)


# (base name, lower is worse, upper bound of a value, required): each pair is warning_<base>
# and critical_<base>; the order rule follows the direction (critical is the worse one).
_POLICY_PAIRS: tuple[tuple[str, bool, float | None, bool], ...] = (
    ("available", True, 1.0, True),
    ("gpu_headroom", True, 1.0, False),
    ("psi_some_pct", False, 100.0, False),
    ("psi_full_pct", False, 100.0, False),
    ("swapout_rate", False, None, False),
    ("pageout_rate", False, None, False),
    ("forecast", True, None, False),
)


def _validate_pair(
    policy: PressurePolicy, base: str, lower_is_worse: bool, upper: float | None, required: bool
) -> None:
    names = (f"warning_{base}", f"critical_{base}")
    values = [getattr(policy, n) for n in names]
    for name, value in zip(names, values, strict=True):
        if value is None and not required:
            continue
        if upper == 1.0:
            ok = _is_number(value) and 0 < value < 1
            what = "a fraction in (0, 1)"
        elif upper is not None:
            ok = _is_number(value) and 0 < value <= upper
            what = f"a number in (0, {upper:g}]"
        else:
            ok = _is_number(value) and value > 0
            what = "a number > 0"
        if not ok:
            optional = "" if required else " or None"
            raise ValueError(f"PressurePolicy.{name} must be {what}{optional}, got {value!r}")
    warning, critical = values
    if warning is None or critical is None:
        return
    if lower_is_worse and not critical < warning:
        raise ValueError(
            f"PressurePolicy.{names[1]} ({critical!r}) must be below {names[0]} ({warning!r})"
        )
    if not lower_is_worse and not critical > warning:
        raise ValueError(
            f"PressurePolicy.{names[1]} ({critical!r}) must be above {names[0]} ({warning!r})"
        )


# --- records ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Reason:
    """One signal's vote: the observed value against the threshold it crossed.

    ``value`` and ``threshold`` are in the signal's unit (see :class:`Signal`): a fraction,
    percent, bytes per second, seconds, or the level number for ``os.level``. ``is_hard`` is
    true for a CRITICAL vote of a hard signal, which is actionable at once.
    """

    signal: Signal
    level: Level
    value: float
    threshold: float
    message: str
    is_hard: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Assessment:
    """The classifier's verdict for one sample.

    ``level`` is the reported level (rises at once, falls after the transition period);
    ``raw_level`` what the current sample alone votes. ``reasons`` lists every vote, the most
    severe first. ``since`` is when the reported level began; ``actionable`` whether a
    CRITICAL may be acted on now. ``forecast_seconds`` is the time until available memory
    reaches the critical threshold at the current trend (``None`` if it is not falling or the
    trend is unknown); ``swapout_rate``/``pageout_rate`` are bytes per second (``None`` until
    two counter readings are known). ``timestamp`` is the ``now`` of the assessment.
    """

    level: Level
    raw_level: Level
    reasons: tuple[Reason, ...]
    since: float
    actionable: bool
    forecast_seconds: float | None
    timestamp: float
    swapout_rate: float | None = None
    pageout_rate: float | None = None

    @property
    def top_reason(self) -> Reason | None:
        """The most severe vote (the first of equals in table order), or ``None``."""
        return self.reasons[0] if self.reasons else None


def assessment_to_dict(assessment: Assessment) -> dict[str, Any]:
    """A JSON-ready dict of an assessment (the one serialization edge; levels become names)."""
    return {
        "level": assessment.level.name,
        "raw_level": assessment.raw_level.name,
        "since": assessment.since,
        "actionable": assessment.actionable,
        "forecast_seconds": assessment.forecast_seconds,
        "swapout_rate": assessment.swapout_rate,
        "pageout_rate": assessment.pageout_rate,
        "timestamp": assessment.timestamp,
        "reasons": [
            {
                "signal": r.signal.value,
                "level": r.level.name,
                "value": r.value,
                "threshold": r.threshold,
                "is_hard": r.is_hard,
                "message": r.message,
            }
            for r in assessment.reasons
        ],
    }


# --- the signal table ------------------------------------------------------------------------


class Derived(NamedTuple):
    """What the classifier derives from the history of samples: rates and the forecast."""

    swapout_rate: float | None
    pageout_rate: float | None
    forecast_seconds: float | None


class Margin(enum.Enum):
    """How the hysteresis margin moves a threshold toward safety."""

    ABSOLUTE = "absolute"  # fraction points: 0.20 -> 0.25
    RELATIVE = "relative"  # share of the threshold: 20 % -> 19 %, 60 s -> 63 s
    NONE = "none"  # discrete values (the OS level keeps its own hysteresis)


def _observe_available(s: SystemMemory, d: Derived) -> float | None:
    if s.available is None or not s.total:
        return None
    return s.available / s.total


def _observe_gpu_headroom(s: SystemMemory, d: Derived) -> float | None:
    limit = s.gpu_limit
    used = s.gpu_used if s.gpu_used is not None else s.wired
    if not limit or used is None:
        return None
    return (limit - used) / limit


def _observe_os_level(s: SystemMemory, d: Derived) -> float | None:
    return None if s.os_level is None else float(s.os_level)


def _observe_psi_full(s: SystemMemory, d: Derived) -> float | None:
    return None if s.psi is None else s.psi.full_avg10


def _observe_psi_some(s: SystemMemory, d: Derived) -> float | None:
    return None if s.psi is None else s.psi.some_avg10


def _observe_swapout(s: SystemMemory, d: Derived) -> float | None:
    return d.swapout_rate


def _observe_pageout(s: SystemMemory, d: Derived) -> float | None:
    return d.pageout_rate


def _observe_forecast(s: SystemMemory, d: Derived) -> float | None:
    return d.forecast_seconds


def _fmt_fraction(v: float) -> str:
    return f"{v * 100:.1f}%"


def _fmt_pct(v: float) -> str:
    return f"{v:.1f}%"


def _fmt_rate(v: float) -> str:
    return f"{v / _MiB:.1f} MiB/s"


def _fmt_seconds(v: float) -> str:
    return f"{v:.1f} s"


def _fmt_level(v: float) -> str:
    return Level(round(v)).name


@dataclasses.dataclass(frozen=True, slots=True)
class SignalSpec:
    """One row of the signal table: observation, direction, thresholds, margin, message."""

    signal: Signal
    observe: Callable[[SystemMemory, Derived], float | None]
    lower_is_worse: bool
    thresholds: Callable[[PressurePolicy], tuple[float | None, float | None]]
    margin: Margin
    fmt: Callable[[float], str]
    message: str  # str.format template over value, threshold, level


SIGNAL_TABLE: tuple[SignalSpec, ...] = (
    SignalSpec(
        Signal.MEMORY_AVAILABLE, _observe_available, True,
        lambda p: (p.warning_available, p.critical_available), Margin.ABSOLUTE, _fmt_fraction,
        "available memory {value} of total is below the {level} threshold {threshold}",
    ),
    SignalSpec(
        Signal.GPU_HEADROOM, _observe_gpu_headroom, True,
        lambda p: (p.warning_gpu_headroom, p.critical_gpu_headroom), Margin.ABSOLUTE,
        _fmt_fraction,
        "GPU headroom {value} of its limit is below the {level} threshold {threshold}",
    ),
    SignalSpec(
        Signal.OS_LEVEL, _observe_os_level, False,
        lambda p: (float(Level.WARNING), float(Level.CRITICAL)), Margin.NONE, _fmt_level,
        "the OS reports {value} memory pressure",
    ),
    SignalSpec(
        Signal.PSI_FULL, _observe_psi_full, False,
        lambda p: (p.warning_psi_full_pct, p.critical_psi_full_pct), Margin.RELATIVE, _fmt_pct,
        "PSI full avg10 {value} is at or above the {level} threshold {threshold}",
    ),
    SignalSpec(
        Signal.PSI_SOME, _observe_psi_some, False,
        lambda p: (p.warning_psi_some_pct, p.critical_psi_some_pct), Margin.RELATIVE, _fmt_pct,
        "PSI some avg10 {value} is at or above the {level} threshold {threshold}",
    ),
    SignalSpec(
        Signal.SWAPOUT_RATE, _observe_swapout, False,
        lambda p: (p.warning_swapout_rate, p.critical_swapout_rate), Margin.RELATIVE, _fmt_rate,
        "swap-out rate {value} is at or above the {level} threshold {threshold}",
    ),
    SignalSpec(
        Signal.PAGEOUT_RATE, _observe_pageout, False,
        lambda p: (p.warning_pageout_rate, p.critical_pageout_rate), Margin.RELATIVE, _fmt_rate,
        "page-out rate {value} is at or above the {level} threshold {threshold}",
    ),
    SignalSpec(
        Signal.FORECAST, _observe_forecast, True,
        lambda p: (p.warning_forecast, p.critical_forecast), Margin.RELATIVE, _fmt_seconds,
        "available memory reaches the critical threshold in {value} at the current trend, "
        "within the {level} horizon {threshold}",
    ),
)  # fmt: skip


def _release(threshold: float | None, spec: SignalSpec, margin: float) -> float | None:
    """The threshold moved toward safety by the margin: the value must clear it to fall."""
    if threshold is None or spec.margin is Margin.NONE:
        return threshold
    if spec.margin is Margin.ABSOLUTE:
        moved = threshold + margin if spec.lower_is_worse else threshold - margin
    else:
        moved = threshold * (1 + margin) if spec.lower_is_worse else threshold * (1 - margin)
    # 12 significant digits: 0.10 + 0.05 is 0.15, not 0.15000000000000002, so the band ends
    # where the policy says.
    return float(f"{moved:.12g}")


class _Rule(NamedTuple):
    """A table row resolved against one policy (the hot loop reads only this)."""

    spec: SignalSpec
    lower_is_worse: bool
    warning: float | None
    critical: float | None
    warning_release: float | None
    critical_release: float | None
    is_hard: bool


def _resolve(policy: PressurePolicy) -> tuple[_Rule, ...]:
    rules = []
    for spec in SIGNAL_TABLE:
        warning, critical = spec.thresholds(policy)
        rules.append(
            _Rule(
                spec,
                spec.lower_is_worse,
                warning,
                critical,
                _release(warning, spec, policy.margin),
                _release(critical, spec, policy.margin),
                spec.signal in policy.hard_signals,
            )
        )
    return tuple(rules)


def _vote(value: float, lower: bool, warning: float | None, critical: float | None) -> Level:
    """The level ``value`` reaches against a pair of thresholds (below, or at or above)."""
    if lower:
        if critical is not None and value < critical:
            return Level.CRITICAL
        if warning is not None and value < warning:
            return Level.WARNING
    else:
        if critical is not None and value >= critical:
            return Level.CRITICAL
        if warning is not None and value >= warning:
            return Level.WARNING
    return Level.NORMAL


def _reason(rule: _Rule, level: Level, value: float) -> Reason:
    threshold = rule.critical if level is Level.CRITICAL else rule.warning
    assert threshold is not None
    spec = rule.spec
    message = spec.message.format(
        value=spec.fmt(value), threshold=spec.fmt(threshold), level=level.name.lower()
    )
    hard = rule.is_hard and level is Level.CRITICAL
    return Reason(spec.signal, level, value, threshold, message, hard)


def _falling_slope(points: Iterable[tuple[float, int]]) -> float | None:
    """The least-squares slope (bytes per second, < 0) of ``(time, available)`` points while
    they show a fall in progress; ``None`` otherwise.

    A fall in progress has a negative slope *and* its newest point at or below the mean. The
    second condition matters after a recovery: when an eviction gives memory back, the
    window still holds the fall and the fitted line still points down, but the newest point
    lies above the mean, so the forecast stops at once instead of outliving the danger.
    Times and sizes are taken relative to the first point, so the sums of sizes are exact
    integers: a flat series gives exactly 0, never a tiny negative slope.
    """
    n = 0
    st = sa = stt = sta = 0.0
    t0 = 0.0
    a0 = da = 0
    for t, a in points:
        if n == 0:
            t0, a0 = t, a
        n += 1
        dt = t - t0
        da = a - a0
        st += dt
        sa += da
        stt += dt * dt
        sta += dt * da
    den = n * stt - st * st
    if n < 2 or den <= 0 or n * da > sa:  # da is the newest point's: above the mean
        return None
    slope = (n * sta - st * sa) / den
    return slope if slope < 0 else None


# --- the classifier --------------------------------------------------------------------------


class Classifier:
    """Turns samples into :class:`Assessment` objects; small state, no I/O, no clock.

    ``interval`` is the expected time between samples (seconds): a gap longer than five
    intervals, a counter that goes down, or missing counters reset the rates and the trend
    instead of producing spikes. Rates use ``counters_timestamp`` as their time base and keep
    their last value while it is unchanged (the sampler refreshes counters at most once per
    second). A ``now`` earlier than the previous one resets the classifier.

    The reported level and hysteresis follow kubelet's transition period: a level is reported
    while its conditions were observed within ``transition_period``; an observation is the raw
    vote reaching that level, or, while that level is reported, the vote with thresholds moved
    by ``margin`` (the band) reaching it. So rising is immediate, values inside the band
    sustain the level, and a fall goes straight to the level the conditions support.

    Not thread-safe: one thread (the watchdog) assesses.
    """

    __slots__ = (
        "_critical_since",
        "_ctr_gap",
        "_ctr_pageouts",
        "_ctr_swapouts",
        "_ctr_ts",
        "_exhaustion",
        "_gap",
        "_last_seen",
        "_level",
        "_now",
        "_pageout_rate",
        "_points",
        "_prev_ts",
        "_rules",
        "_since",
        "_step",
        "_swapout_rate",
        "interval",
        "policy",
        "stop_seconds",
    )

    def __init__(
        self,
        policy: PressurePolicy | None = None,
        *,
        interval: float = 2.0,
        stop_seconds: float = DEFAULT_STOP_SECONDS,
    ) -> None:
        if not _is_number(interval) or interval <= 0:
            raise ValueError(f"Classifier interval must be a duration > 0, got {interval!r}")
        if not _is_number(stop_seconds) or stop_seconds < 0:
            raise ValueError(f"Classifier stop_seconds must be >= 0, got {stop_seconds!r}")
        self.stop_seconds = float(stop_seconds)
        self.policy = policy if policy is not None else PressurePolicy()
        self.interval = float(interval)
        self._rules = _resolve(self.policy)
        self._gap = _GAP_INTERVALS * self.interval
        self._ctr_gap = _GAP_INTERVALS * max(self.interval, _COUNTERS_PERIOD)
        self._step = self.policy.forecast_window / _FORECAST_POINTS
        self._points: deque[tuple[float, int]] = deque()
        self.reset()

    def set_policy(self, policy: PressurePolicy) -> None:
        """Swap the thresholds in place (a config reload). The level, its timers and the
        history stay: a reload must not turn a held CRITICAL into a fresh NORMAL."""
        self.policy = policy
        self._rules = _resolve(policy)
        self._step = policy.forecast_window / _FORECAST_POINTS

    def reset(self) -> None:
        """Forget every sample: the next assessment starts from NORMAL with no history."""
        self._level = Level.NORMAL
        self._since: float | None = None
        self._now: float | None = None
        self._prev_ts: float | None = None
        # Last time each level was observed (index = level); index 0 is unused.
        self._last_seen: list[float | None] = [None, None, None]
        self._critical_since: float | None = None
        self._exhaustion: float | None = None
        self._reset_rates()
        self._points.clear()

    def _reset_rates(self) -> None:
        self._ctr_ts: float | None = None
        self._ctr_pageouts: int | None = None
        self._ctr_swapouts: int | None = None
        self._pageout_rate: float | None = None
        self._swapout_rate: float | None = None

    def _update_rates(self, s: SystemMemory) -> None:
        ct = s.counters_timestamp
        if ct is None:
            self._reset_rates()
            return
        prev_ct = self._ctr_ts
        if prev_ct is not None and ct == prev_ct:
            return  # the counters were not refreshed: the last rates still stand
        if prev_ct is None or ct < prev_ct or ct - prev_ct > self._ctr_gap:
            self._pageout_rate = self._swapout_rate = None
        else:
            dt = ct - prev_ct
            self._pageout_rate = _rate(self._ctr_pageouts, s.pageouts, dt)
            self._swapout_rate = _rate(self._ctr_swapouts, s.swapouts, dt)
        self._ctr_ts = ct
        self._ctr_pageouts = s.pageouts
        self._ctr_swapouts = s.swapouts

    def _update_forecast(self, s: SystemMemory) -> float | None:
        points = self._points
        available, total = s.available, s.total
        if available is None or not total:
            points.clear()
            self._exhaustion = None
            return None
        t = s.timestamp
        if len(points) >= 2 and points[-1][0] - points[-2][0] < self._step:
            # The newest point is still closer than a step to the one before: it is replaced
            # until it is a step apart, so kept points are spaced and their number bounded.
            points[-1] = (t, available)
        else:
            points.append((t, available))
        horizon = t - self.policy.forecast_window
        while points[0][0] < horizon:
            points.popleft()
        slope = _falling_slope(points)
        if slope is None:
            self._exhaustion = None
            return None
        self._exhaustion = available / -slope
        left = available - self.policy.critical_available * total
        return max(left, 0.0) / -slope

    def assess(self, sample: SystemMemory, now: float | None = None) -> Assessment:
        """Classify one sample at time ``now`` (default: the sample's own timestamp).

        ``now`` drives the hysteresis and grace periods; the sample's ``timestamp`` and
        ``counters_timestamp`` drive the trend and the rates. Deterministic: the same samples
        with the same clock give equal assessments.
        """
        if now is None:
            now = sample.timestamp
        if self._now is not None and now < self._now:
            self.reset()
        self._now = now
        prev_ts = self._prev_ts
        ts = sample.timestamp
        if prev_ts is not None and (ts < prev_ts or ts - prev_ts > self._gap):
            self._reset_rates()
            self._points.clear()
        self._prev_ts = ts
        self._update_rates(sample)
        forecast = self._update_forecast(sample)
        derived = Derived(self._swapout_rate, self._pageout_rate, forecast)

        prev = self._level
        raw = Level.NORMAL
        votes: list[tuple[_Rule, Level, float]] = []
        for rule in self._rules:
            value = rule.spec.observe(sample, derived)
            if value is not None:
                level = _vote(value, rule.lower_is_worse, rule.warning, rule.critical)
                if level:
                    votes.append((rule, level, value))
                    if level > raw:
                        raw = level
        # The band (thresholds moved by the margin) only matters while a higher level is
        # reported; skipping it otherwise keeps the common NORMAL tick cheap.
        band = raw
        if raw < prev:
            for rule in self._rules:
                value = rule.spec.observe(sample, derived)
                if value is not None:
                    level = _vote(value, rule.lower_is_worse, rule.warning_release,
                                  rule.critical_release)  # fmt: skip
                    if level > band:
                        band = level

        last_seen = self._last_seen
        for lvl in (Level.WARNING, Level.CRITICAL):
            if raw >= lvl or (band >= lvl and prev >= lvl):
                last_seen[lvl] = now
        period = self.policy.transition_period
        level = Level.NORMAL
        for lvl in (Level.CRITICAL, Level.WARNING):
            seen = last_seen[lvl]
            if seen is not None and (seen == now or now - seen < period):
                level = lvl
                break
        if level != prev or self._since is None:
            self._since = now
        self._level = level

        if raw is Level.CRITICAL:
            if self._critical_since is None:
                self._critical_since = now
        elif not (band is Level.CRITICAL and prev is Level.CRITICAL):
            self._critical_since = None

        reasons = tuple(_reason(rule, lvl, value) for rule, lvl, value in votes)
        if len(reasons) > 1:
            reasons = tuple(sorted(reasons, key=lambda r: -r.level))
        actionable = False
        if level is Level.CRITICAL and raw is Level.CRITICAL:
            critical_since = self._critical_since
            assert critical_since is not None
            actionable = (
                any(r.is_hard for r in reasons)
                or now - critical_since >= self.policy.soft_grace
                or self._too_fast_to_wait(reasons)
            )
        return Assessment(
            level,
            raw,
            reasons,
            self._since,
            actionable,
            forecast,
            now,
            self._swapout_rate,
            self._pageout_rate,
        )

    def _too_fast_to_wait(self, reasons: tuple[Reason, ...]) -> bool:
        """A CRITICAL forecast whose time to exhaustion (available reaching 0 at the trend)
        is shorter than a stop takes (``stop_seconds``: grace + reclaim): waiting out
        ``soft_grace`` would leave the race to the kernel's OOM killer, so act now."""
        exhaustion = self._exhaustion
        return (
            exhaustion is not None
            and exhaustion < self.stop_seconds
            and any(r.signal is Signal.FORECAST and r.level is Level.CRITICAL for r in reasons)
        )


def _rate(prev: int | None, cur: int | None, dt: float) -> float | None:
    """Bytes per second between two cumulative readings; ``None`` across a reset or a gap."""
    if prev is None or cur is None or cur < prev:
        return None
    return (cur - prev) / dt
