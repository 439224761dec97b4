"""Prometheus Collector over the watchdog's latest state (STYLE rules 14 and 18).

The collector owns no state about memory: at every scrape it reads the one :class:`State`
reference the watchdog published and builds fresh metric families from it, so nothing stale
survives and no work runs on the watchdog thread (client_python's ``ProcessCollector``
pattern). The only accumulators here are the few that cannot be rebuilt from a snapshot:

- :class:`AgentStats`: counters of the agent around the watchdog (config reloads, the
  Kubernetes reporter's writes and drops); their owners increment them, the collector reads them;
- :class:`SampleDurations` (metalmem/durations.py): the histogram of tick durations, fed by
  the watchdog on its loop thread.

The agent's own /metrics is written by :meth:`MetalmemCollector.exposition` (metalmem/
exposition.py) without prometheus-client; :meth:`MetalmemCollector.collect` hands the same
families to a prometheus-client registry (a host application's), which is the only path that
imports it.

Names follow node_exporter: ``metalmem_`` prefix, base units (bytes, seconds), counters end in
``_total``. Labels never carry pids: a per-target series is labelled by the target's key
(``namespace/name``) split in two (``target``, ``target_namespace``), with the ``#pid`` suffix
that discovery adds to duplicate names removed; targets that then share labels are summed.
Every family is always exposed (HELP and TYPE); a value the platform cannot provide
(``None``) is a family without that sample, never a 0.
"""

from __future__ import annotations

import collections
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, cast

from . import exposition
from .durations import SAMPLE_DURATION_BUCKETS, SampleDurations
from .eviction import EvictionMode, SkipReason
from .kube.api import WriteKind, WriteResult
from .level import Level
from .pressure import SIGNAL_TABLE, Derived, PressurePolicy, Signal, threshold_bytes
from .process import StopResult
from .sampler import ProcessMemory
from .selfstats import self_families
from .watchdog import State

if TYPE_CHECKING:
    from prometheus_client.core import Metric
    from prometheus_client.registry import CollectorRegistry

__all__ = [
    "METRIC_NAMES",
    "SAMPLE_DURATION_BUCKETS",
    "AgentStats",
    "MetalmemCollector",
    "SampleDurations",
    "make_registry",
    "target_labels",
]


class AgentStats:
    """Thread-safe counters of the agent around the watchdog; read at scrape time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reloads: collections.Counter[str] = collections.Counter()
        self._kube_writes: collections.Counter[tuple[str, str]] = collections.Counter()
        self._kube_dropped = 0
        self._kube_restored: collections.Counter[str] = collections.Counter()
        self._kube_writers: set[str] = set()
        self._last_reload_ok = True
        self._generation = 0  # bumped by every change: the exposition reuses its text until then

    def config_reload(self, result: str) -> None:
        """Count one config reload: ``success`` or ``failure``; the latest one is exported
        as a gauge, so an alert resolves once a fixed config is accepted."""
        with self._lock:
            self._reloads[result] += 1
            self._last_reload_ok = result == "success"
            self._generation += 1

    def kube_write(self, kind: str, result: str) -> None:
        """Count one Kubernetes API write: ``kind`` condition|event|suspend|resume, ``result``
        success|conflict|not_found|forbidden|error."""
        with self._lock:
            self._kube_writes[(kind, result)] += 1
            self._generation += 1

    def kube_dropped(self, n: int = 1) -> None:
        """Count writes dropped from the Kubernetes queue because it was full."""
        with self._lock:
            self._kube_dropped += n
            self._generation += 1

    def kube_condition_restored(self, cause: str) -> None:
        """Count one re-apply of our condition after another writer removed or changed it:
        ``cause`` removed|stale|changed."""
        with self._lock:
            self._kube_restored[cause] += 1
            self._generation += 1

    def kube_condition_other_writer(self, manager: str) -> None:
        """Remember a field manager other than metalmem that writes our condition type."""
        with self._lock:
            self._kube_writers.add(manager)
            self._generation += 1

    @property
    def generation(self) -> int:
        """Changes whenever a count does (read without the lock: an int is read whole)."""
        return self._generation

    def snapshot(self) -> dict[str, object]:
        """A consistent copy: ``reloads`` {result: n}, ``kube_writes`` {(kind, result): n},
        ``kube_dropped`` n, ``kube_restored`` {cause: n}, ``kube_writers`` sorted managers,
        ``last_reload_ok`` bool."""
        with self._lock:
            return {
                "reloads": dict(self._reloads),
                "kube_writes": dict(self._kube_writes),
                "kube_dropped": self._kube_dropped,
                "kube_restored": dict(self._kube_restored),
                "kube_writers": sorted(self._kube_writers),
                "last_reload_ok": self._last_reload_ok,
            }


# --- the families ------------------------------------------------------------------------


class _Family(exposition.Family):
    """An exported family (exposition.Family) that prometheus-client can also be handed."""

    __slots__ = ()

    def empty(self) -> Metric:
        """A fresh prometheus-client family without samples. The constructor (name
        validation, the unit suffix) runs once per family; later ones are copies of that
        template, since a collect makes ~30 of them (measured: 21 us -> 6 us per collect)."""
        template = _TEMPLATES.get(self.name)
        if template is None:
            template = _TEMPLATES[self.name] = self._construct()
        metric: Metric = object.__new__(type(template))
        metric.__dict__.update(template.__dict__)
        metric.samples = []
        return metric

    def _construct(self) -> Metric:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        if self.kind == "counter":
            return CounterMetricFamily(self.base, self.doc, labels=self.labels, unit=self.unit)
        if self.kind == "histogram":
            return HistogramMetricFamily(self.name, self.doc, labels=self.labels, unit=self.unit)
        return GaugeMetricFamily(self.name, self.doc, labels=self.labels, unit=self.unit)


_TEMPLATES: dict[str, Any] = {}

_TARGET = ("target", "target_namespace")  # not "namespace": a scrape label in a cluster

# SystemMemory field -> family; each is omitted while the field is None.
_SYSTEM_GAUGES: tuple[tuple[str, _Family], ...] = (
    ("total", _Family("metalmem_memory_total_bytes", "gauge",
                      "Memory of the scope (host RAM, or a cgroup's limit).", unit="bytes")),
    ("available", _Family("metalmem_memory_available_bytes", "gauge",
                          "Memory available to new allocations without swapping.", unit="bytes")),
    ("wired", _Family("metalmem_memory_wired_bytes", "gauge",
                      "Wired memory (macOS wired; Linux Unevictable).", unit="bytes")),
    ("compressed", _Family("metalmem_memory_compressed_bytes", "gauge",
                           "Memory held by the compressor (macOS) or zswap (Linux).",
                           unit="bytes")),
    ("swap_total", _Family("metalmem_swap_total_bytes", "gauge", "Swap space.", unit="bytes")),
    ("swap_used", _Family("metalmem_swap_used_bytes", "gauge", "Swap in use.", unit="bytes")),
    ("gpu_limit", _Family("metalmem_gpu_limit_bytes", "gauge",
                          "Memory the GPU may use (Metal working-set limit, NVML total).",
                          unit="bytes")),
    ("gpu_used", _Family("metalmem_gpu_used_bytes", "gauge", "GPU memory in use.",
                         unit="bytes")),
)  # fmt: skip

_OOM_KILLS = _Family(
    "metalmem_oom_kills_total", "counter", "OOM kills the kernel reports for the scope."
)
_LEVEL = _Family(
    "metalmem_pressure_level", "gauge", "Reported pressure: 0 normal, 1 warning, 2 critical."
)
_STATE = _Family(
    "metalmem_pressure_state", "gauge", "1 for the reported pressure level, 0 for the others.",
    ("level",),
)  # fmt: skip
# One family per unit (issue 18): ``metalmem_pressure_signal`` mixed percent, ratios and
# bytes per second under one name, so no query could compare two of its series. Each signal's
# row names its family and the factor into that unit (PSI percent -> ratio).
_SIGNAL_UNITS: dict[Signal, tuple[str, float]] = {
    Signal.MEMORY_AVAILABLE: ("ratio", 1.0),
    Signal.GPU_HEADROOM: ("ratio", 1.0),
    Signal.PSI_FULL: ("ratio", 0.01),
    Signal.PSI_SOME: ("ratio", 0.01),
    Signal.OS_LEVEL: ("level", 1.0),
    Signal.SWAPOUT_RATE: ("bytes_per_second", 1.0),
    Signal.PAGEOUT_RATE: ("bytes_per_second", 1.0),
    Signal.FORECAST: ("seconds", 1.0),
}
_UNIT_HELP = {
    "ratio": "a ratio 0-1 (available and GPU headroom of their total, PSI avg10 share of time)",
    "level": "the OS's own level number (0 normal, 1 warning, 2 critical)",
    "bytes_per_second": "bytes per second (swap-out and page-out rates)",
    "seconds": "seconds (time until the critical threshold at the recent trend)",
}
_SIGNAL_FAMILIES: dict[str, _Family] = {
    unit: _Family(
        f"metalmem_pressure_signal_{unit}", "gauge",
        f"Each pressure signal's current value in {text}; absent while unknown.",
        ("signal",), "" if unit == "level" else unit,
    )
    for unit, text in _UNIT_HELP.items()
}  # fmt: skip
_THRESHOLD_FAMILIES: dict[str, _Family] = {
    unit: _Family(
        f"metalmem_pressure_threshold_{unit}", "gauge",
        f"The WARNING and CRITICAL thresholds in force per signal, in {text}; absent when "
        "that level of the signal is off.",
        ("signal", "level"), "" if unit == "level" else unit,
    )
    for unit, text in _UNIT_HELP.items()
}  # fmt: skip
_AVAILABLE_THRESHOLD = _Family(
    "metalmem_memory_available_threshold_bytes", "gauge",
    "The available-memory thresholds in force, resolved against the scope's total.",
    ("level",), "bytes",
)  # fmt: skip
_FOOTPRINT = _Family(
    "metalmem_process_footprint_bytes", "gauge",
    "Footprint of a managed target's process (macOS phys_footprint, Linux anon + swap).",
    _TARGET, "bytes",
)  # fmt: skip
_RSS = _Family(
    "metalmem_process_rss_bytes", "gauge", "Resident memory of a managed target's process.",
    _TARGET, "bytes",
)  # fmt: skip
_TARGETS = _Family("metalmem_targets", "gauge", "Managed targets in the latest tick.")
_BLOCKED = _Family("metalmem_targets_blocked", "gauge", "Evicted targets blocked from respawn.")
_MODE = _Family(
    "metalmem_eviction_mode", "gauge", "1 for the eviction mode in force, 0 for the others.",
    ("mode",),
)  # fmt: skip
_EVICTIONS = _Family(
    "metalmem_evictions_total", "counter",
    "Evictions by the signal behind them and how the stop ended (dry-run included).",
    ("reason", "result"),
)  # fmt: skip
_SKIPPED = _Family(
    "metalmem_evictions_skipped_total", "counter",
    "Wanted evictions that did not happen, by reason (counted once per change of reason).",
    ("reason",),
)  # fmt: skip
_RECLAIMED = _Family(
    "metalmem_reclaimed_bytes_total", "counter",
    "Available memory regained after evictions, measured at the end of each settle phase.",
    unit="bytes",
)  # fmt: skip
_DURATION = _Family(
    "metalmem_sample_duration_seconds", "histogram",
    "Duration of a watchdog tick: sample, assess, plan (and any stop it carries).",
    unit="seconds",
)  # fmt: skip
_LAST_SAMPLE = _Family(
    "metalmem_last_sample_timestamp_seconds", "gauge",
    "Unix time of the latest successful sample.", unit="seconds",
)  # fmt: skip
_HEARTBEAT_AGE = _Family(
    "metalmem_watchdog_heartbeat_age_seconds", "gauge",
    "Seconds since the watchdog last completed a tick (healthz fails at 3x the interval).",
    unit="seconds",
)  # fmt: skip
# State.counters key -> family; exported as 0 until the watchdog counts the first one.
_WATCHDOG_COUNTERS: tuple[tuple[str, _Family], ...] = (
    ("ticks", _Family("metalmem_ticks_total", "counter", "Watchdog ticks completed.")),
    ("sample_errors", _Family("metalmem_sample_errors_total", "counter",
                              "Ticks whose sample failed (the previous state stays).")),
    ("pressure_events", _Family("metalmem_pressure_events_total", "counter",
                                "OS pressure notifications that woke the loop.")),
    ("listener_errors", _Family("metalmem_listener_errors_total", "counter",
                                "Listener callbacks that raised.")),
    ("listener_drops", _Family("metalmem_listener_drops_total", "counter",
                               "Listener calls dropped because the notifier queue was full.")),
)  # fmt: skip
_RELOADS = _Family(
    "metalmem_config_reloads_total", "counter", "Config reloads by result (success, failure).",
    ("result",),
)  # fmt: skip
_LAST_RELOAD = _Family(
    "metalmem_config_last_reload_successful", "gauge",
    "1 when the latest config reload was accepted (or none happened yet), 0 when it was "
    "refused and the previous config is still in force.",
)  # fmt: skip
_INTERVAL = _Family(
    "metalmem_watchdog_interval_seconds", "gauge",
    "The watchdog's configured interval (healthz judges the heartbeat's age against 3x it; "
    "under pressure ticks come sooner).", unit="seconds",
)  # fmt: skip
_KUBE_WRITES = _Family(
    "metalmem_kube_writes_total", "counter", "Kubernetes API writes by kind and result.",
    ("kind", "result"),
)  # fmt: skip
_KUBE_DROPPED = _Family(
    "metalmem_kube_dropped_total", "counter",
    "Kubernetes writes dropped because the reporter's queue was full.",
)  # fmt: skip
_KUBE_RESTORED = _Family(
    "metalmem_kube_condition_restored_total", "counter",
    "Re-applies of metalmem's MemoryPressure condition after another writer removed it "
    "(removed), wrote back an older one of ours (stale) or wrote its own (changed); at most "
    "one per object per refresh.", ("cause",),
)  # fmt: skip
_KUBE_WRITERS = _Family(
    "metalmem_kube_condition_other_writer", "gauge",
    "1 for each field manager other than metalmem seen writing the MemoryPressure condition "
    "(e.g. LLMKube's metal agent with its memory watchdog on).", ("manager",),
)  # fmt: skip
_BUILD = _Family(
    "metalmem_build_info", "gauge", "Always 1; the labels name the agent's version and platform.",
    ("version", "platform"),
)  # fmt: skip

_FAMILIES: tuple[_Family, ...] = (
    *(f for _, f in _SYSTEM_GAUGES),
    _OOM_KILLS,
    _LEVEL,
    _STATE,
    *_SIGNAL_FAMILIES.values(),
    *_THRESHOLD_FAMILIES.values(),
    _AVAILABLE_THRESHOLD,
    _FOOTPRINT,
    _RSS,
    _TARGETS,
    _BLOCKED,
    _MODE,
    _EVICTIONS,
    _SKIPPED,
    _RECLAIMED,
    _DURATION,
    _LAST_SAMPLE,
    _HEARTBEAT_AGE,
    _INTERVAL,
    *(f for _, f in _WATCHDOG_COUNTERS),
    _RELOADS,
    _LAST_RELOAD,
    _KUBE_WRITES,
    _KUBE_DROPPED,
    _KUBE_RESTORED,
    _KUBE_WRITERS,
    _BUILD,
)

METRIC_NAMES: tuple[str, ...] = tuple(f.name for f in _FAMILIES)
"""Every family the collector can export, as the text format names it (counters with
``_total``; a histogram by its base name)."""

_RELOAD_RESULTS = ("success", "failure")
_EVICTION_LABELS = tuple(
    (signal.value, result) for signal in Signal for result in (*StopResult, "dry-run")
)
_KUBE_LABELS = tuple((kind.value, result.value) for kind in WriteKind for result in WriteResult)
_PID_SUFFIX = re.compile(r"#\d+$")


def target_labels(key: str) -> tuple[str, str]:
    """``(target, target_namespace)`` labels of a target key: ``ns/name`` -> ``("name", "ns")``,
    ``name`` -> ``("name", "")``; discovery's ``#pid`` suffix is dropped (no pids in labels)."""
    labels = _TARGET_LABELS.get(key)
    if labels is None:
        namespace, _, name = _PID_SUFFIX.sub("", key).rpartition("/")
        if len(_TARGET_LABELS) >= 4096:
            _TARGET_LABELS.clear()  # bounded for churn: keys repeat scrape after scrape
        labels = _TARGET_LABELS[key] = (name, namespace)
    return labels


_TARGET_LABELS: dict[str, tuple[str, str]] = {}


class MetalmemCollector:
    """A prometheus-client Collector over the watchdog's latest :class:`State`.

    ``state`` returns the current snapshot (``lambda: watchdog.state``); it is read once per
    scrape, so every family of one scrape describes the same tick. ``stats`` and
    ``durations`` are optional: their families are left out when not given; so are the
    thresholds without ``policy`` (the classifier's policy in force: a reload changes it, so it is
    read at every scrape), and the interval without ``interval`` (the configured one, not the
    adaptive wait of ``State.interval``). ``clock`` must be the watchdog's (``time.monotonic``
    unless a test injects one): heartbeat and sample ages are measured on it, and ``wall``
    (``time.time``) turns them into Unix time. ``describe()`` is implemented, so registering
    collects nothing.
    """

    def __init__(
        self,
        state: Callable[[], State],
        *,
        stats: AgentStats | None = None,
        durations: SampleDurations | None = None,
        version: str,
        platform: str,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        policy: Callable[[], PressurePolicy] | None = None,
        interval: Callable[[], float] | None = None,
    ) -> None:
        self._state = state
        self._policy = policy
        self._interval = interval
        self._stats = stats
        self._durations = durations
        self._version = version
        self._platform = platform
        self._clock = clock
        self._wall = wall
        self._memos: dict[str, tuple[object, _Out]] = {}

    def describe(self) -> Iterator[Metric]:
        """Every family, without samples (names only: the registry checks for duplicates)."""
        for family in _FAMILIES:
            yield family.empty()

    def families(self) -> list[tuple[_Family, list[exposition.Series]]]:
        """Every family with its samples from the latest State (and the stats), built on the
        calling (scraping) thread.

        Every family of :data:`METRIC_NAMES` is always present (its HELP and TYPE), so a
        scraper can tell "unknown here" (a family without samples) from a missing exporter.
        """
        state = self._state()
        now = self._clock()
        out: _Out = {f.name: [] for f in _FAMILIES}
        self._system(out, state, now)
        self._pressure(out, state)
        self._thresholds(out, state)
        self._processes(out, state)
        self._eviction(out, state)
        self._agent(out, state, now)
        return [(f, out[f.name]) for f in _FAMILIES]

    def collect(self) -> Iterator[Metric]:
        """The families as prometheus-client metrics (for a registry of the host
        application's); the agent's own /metrics uses :meth:`exposition` instead."""
        for family, series in self.families():
            metric = family.empty()
            metric.samples = [_sample(s) for s in series]
            yield metric

    def exposition(
        self, *, openmetrics: bool = False, self_metrics: bool = True, names: Any = None
    ) -> bytes:
        """The scrape's body in the text format (or OpenMetrics), written without
        prometheus-client, byte for byte what its ``generate_latest`` writes for
        :meth:`collect` (plus, with ``self_metrics``, its process and platform collectors).
        ``names`` (a collection of sample names) keeps only those samples, and the families
        that have one, as prometheus-client's ``name[]`` parameter does."""
        families: list[tuple[Any, list[exposition.Series]]] = list(self.families())
        if self_metrics:
            families.extend(self_families())
        if names is not None:
            wanted = set(names)
            kept = ((f, [x for x in s if x[0] in wanted]) for f, s in families)
            families = [(f, s) for f, s in kept if s]
        return exposition.render(families, openmetrics)

    def _system(self, out: _Out, state: State, now: float) -> None:
        system = state.system
        if system is None:
            return
        for field, family in _SYSTEM_GAUGES:
            _add(out, family, (), getattr(system, field))
        _add(out, _OOM_KILLS, (), system.oom_kills)
        # The sample's monotonic time turned into wall time through the clock's age of it.
        _add(out, _LAST_SAMPLE, (), self._wall() - (now - system.timestamp))

    def _pressure(self, out: _Out, state: State) -> None:
        a = state.assessment
        if a is None:
            return
        _add(out, _LEVEL, (), int(a.level))
        for lvl in Level:
            _add(out, _STATE, (lvl.name.lower(),), 1 if lvl == a.level else 0)
        if state.system is not None:
            derived = Derived(a.swapout_rate, a.pageout_rate, a.forecast_seconds)
            for spec in SIGNAL_TABLE:
                unit, scale = _SIGNAL_UNITS[spec.signal]
                observed = spec.observe(state.system, derived)
                _add(
                    out,
                    _SIGNAL_FAMILIES[unit],
                    (spec.signal.value,),
                    None if observed is None else observed * scale,
                )

    def _memo(
        self, out: _Out, section: str, key: object, families: Iterable[_Family],
        fill: Callable[[_Out], None],
    ) -> None:  # fmt: skip
        """Fill ``families`` through ``fill``, or, while ``key`` equals the last one, put in the
        same tuples as last time: the exposition then reuses their rendered text (most of a
        scrape is counters at rest, thresholds and modes, issue 15)."""
        last = self._memos.get(section)
        if last is None or last[0] != key:
            part: _Out = {f.name: [] for f in families}
            fill(part)
            frozen = {k: tuple(v) for k, v in part.items()}  # immutable: rendered text is reused
            last = self._memos[section] = (key, cast(_Out, frozen))
        out.update(last[1])

    def _thresholds(self, out: _Out, state: State) -> None:
        if self._policy is None:
            return
        policy = self._policy()
        total = state.system.total if state.system is not None else None
        families = (*_THRESHOLD_FAMILIES.values(), _AVAILABLE_THRESHOLD)
        self._memo(
            out, "thresholds", (policy, total), families,
            lambda part: self._fill_thresholds(part, policy, total),
        )  # fmt: skip

    def _fill_thresholds(self, out: _Out, policy: PressurePolicy, total: int | None) -> None:
        """The thresholds in force, in the units of the signals they compare with."""
        for spec in SIGNAL_TABLE:
            unit, scale = _SIGNAL_UNITS[spec.signal]
            for name, threshold in zip(
                ("warning", "critical"), spec.thresholds(policy), strict=True
            ):
                if threshold is not None:
                    _add(
                        out, _THRESHOLD_FAMILIES[unit], (spec.signal.value, name), threshold * scale
                    )
        if total:
            for name, fraction in (
                ("warning", policy.warning_available),
                ("critical", policy.critical_available),
            ):
                _add(out, _AVAILABLE_THRESHOLD, (name,), threshold_bytes(fraction, total))

    def _processes(self, out: _Out, state: State) -> None:
        footprint: dict[tuple[str, str], int] = {}
        rss: dict[tuple[str, str], int] = {}
        labels_of = _TARGET_LABELS.get
        for key, sample in state.processes.items():
            if sample.__class__ is not ProcessMemory:
                continue  # the error is in /memstats; an absent series is the honest value
            labels = labels_of(key) or target_labels(key)
            fp, resident = sample.footprint, sample.rss
            if fp is not None:
                footprint[labels] = footprint.get(labels, 0) + fp
            if resident is not None:
                rss[labels] = rss.get(labels, 0) + resident
        # Idle targets keep their sizes tick after tick: then the same text is reused.
        values = (tuple(sorted(footprint.items())), tuple(sorted(rss.items())))
        memo_key = (values, len(state.targets), len(state.blocked))
        self._memo(out, "processes", memo_key, (_FOOTPRINT, _RSS, _TARGETS, _BLOCKED),
                   lambda part: _fill_processes(part, values, state))  # fmt: skip

    def _eviction(self, out: _Out, state: State) -> None:
        key = (
            state.mode,
            tuple(state.eviction_counts.items()),
            tuple(state.skip_counts.items()),
            state.reclaimed_total,
        )
        families = (_MODE, _EVICTIONS, _SKIPPED, _RECLAIMED)
        self._memo(out, "eviction", key, families, lambda part: _fill_eviction(part, state))

    def _agent(self, out: _Out, state: State, now: float) -> None:
        if self._durations is not None:
            buckets, total, _count = self._durations.snapshot()
            series = out[_DURATION.name]
            name = _DURATION.name
            for le, n in buckets:
                series.append((name + "_bucket", ("le",), (le,), n))
            series.append((name + "_count", (), (), buckets[-1][1]))
            series.append((name + "_sum", (), (), total))
        _add(out, _HEARTBEAT_AGE, (), now - state.heartbeat)
        if self._interval is not None:
            _add(out, _INTERVAL, (), self._interval())
        for key, family in _WATCHDOG_COUNTERS:
            _add(out, family, (), state.counters.get(key, 0))
        if self._stats is not None:
            stats = self._stats
            self._memo(out, "stats", stats.generation, _STATS_FAMILIES,
                       lambda part: _fill_stats(part, stats.snapshot()))  # fmt: skip
        self._memo(out, "build", (self._version, self._platform), (_BUILD,),
                   lambda part: _add(part, _BUILD, (self._version, self._platform), 1))  # fmt: skip


def _fill_processes(
    out: _Out,
    values: tuple[tuple[tuple[tuple[str, str], int], ...], tuple[tuple[tuple[str, str], int], ...]],
    state: State,
) -> None:
    for family, items in zip((_FOOTPRINT, _RSS), values, strict=True):
        for labels, value in items:
            _add(out, family, labels, value)
    _add(out, _TARGETS, (), len(state.targets))
    _add(out, _BLOCKED, (), len(state.blocked))


def _fill_eviction(out: _Out, state: State) -> None:
    for m in EvictionMode:
        _add(out, _MODE, (m.value,), 1 if m == state.mode else 0)
    # Every known (reason, result) from 0: increase() cannot see a series' first sample,
    # so an eviction counted into a new series would never fire an alert (issue 18).
    counts = dict.fromkeys(_EVICTION_LABELS, 0)
    counts.update(state.eviction_counts)
    for (reason, result), n in sorted(counts.items()):
        _add(out, _EVICTIONS, (reason, result), n)
    # Every skip reason from the start: a known label set lets rate() see the first one.
    known = {r.value for r in SkipReason}
    for reason in sorted(known | set(state.skip_counts)):
        _add(out, _SKIPPED, (reason,), state.skip_counts.get(reason, 0))
    _add(out, _RECLAIMED, (), state.reclaimed_total)


def _fill_stats(out: _Out, snap: dict[str, object]) -> None:
    reloads = cast(dict[str, int], snap["reloads"])
    writes = cast(dict[tuple[str, str], int], snap["kube_writes"])
    for result in sorted(set(_RELOAD_RESULTS) | set(reloads)):
        _add(out, _RELOADS, (result,), reloads.get(result, 0))
    _add(out, _LAST_RELOAD, (), 1 if snap["last_reload_ok"] else 0)
    for (kind, result), n in sorted({**dict.fromkeys(_KUBE_LABELS, 0), **writes}.items()):
        _add(out, _KUBE_WRITES, (kind, result), n)
    _add(out, _KUBE_DROPPED, (), cast(int, snap["kube_dropped"]))
    restored = cast(dict[str, int], snap["kube_restored"])
    for cause in sorted({"removed", "stale", "changed", *restored}):
        _add(out, _KUBE_RESTORED, (cause,), restored.get(cause, 0))
    for manager in cast(list[str], snap["kube_writers"]):
        _add(out, _KUBE_WRITERS, (manager,), 1)


_STATS_FAMILIES = (
    _RELOADS, _LAST_RELOAD, _KUBE_WRITES, _KUBE_DROPPED, _KUBE_RESTORED, _KUBE_WRITERS
)  # fmt: skip


_Out = dict[str, list[exposition.Series]]
_isfinite = math.isfinite


def _add(out: _Out, family: _Family, labels: tuple[str, ...], value: float | None) -> None:
    """One sample into ``family``; ``None`` (or NaN, inf) adds nothing (a counter's sample
    is ``<name>_total``: ``family.name``)."""
    if value is None or (value.__class__ is float and not _isfinite(value)):
        return
    out[family.name].append((family.name, family.labels, labels, value))


def _sample(series: exposition.Series) -> Any:
    """The prometheus-client ``Sample`` of one series. Most repeat collect after collect
    (counters at rest, thresholds, modes, build info): ``Sample`` is immutable, so the one
    built last time is reused. Keyed by the value's type too, so 1 and 1.0 (equal, hashed
    alike) keep their own rendering. Bounded: cleared when full."""
    name, names, values, value = series
    key = (name, names, values, value.__class__, value)
    sample = _SAMPLES.get(key)
    if sample is None:
        from prometheus_client.samples import Sample

        if len(_SAMPLES) >= _SAMPLES_MAX:
            _SAMPLES.clear()  # values that moved on; the ones still current come back at once
        sample = Sample(
            name, dict(zip(names, values, strict=True)) if names else _NO_LABELS, value, None, None
        )
        if value or value.__class__ is not float:  # 0.0 == -0.0, but they print apart
            _SAMPLES[key] = sample
    return sample


_NO_LABELS: dict[str, str] = {}  # shared by unlabelled samples: exposition only reads it
_SAMPLES: dict[tuple[str, tuple[str, ...], tuple[str, ...], type, float], Any] = {}
_SAMPLES_MAX = 8192


def make_registry(collector: MetalmemCollector, *, self_metrics: bool = True) -> CollectorRegistry:
    """A fresh registry holding ``collector`` and, with ``self_metrics``, the client library's
    process and platform collectors.

    ``process_*`` (RSS, CPU seconds, open fds, start time: read from /proc, so Linux only) is
    how an alert tells a leaking or spinning agent from a busy host, and ``python_info`` names
    the interpreter. Benchmarks of the collector alone pass ``self_metrics=False``.
    """
    from prometheus_client import PlatformCollector, ProcessCollector
    from prometheus_client.registry import CollectorRegistry

    registry = CollectorRegistry(auto_describe=True)
    registry.register(collector)
    if self_metrics:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
    return registry
