"""The Prometheus collector over a real watchdog, sampler and child processes."""

from __future__ import annotations

import dataclasses
import math
import pathlib
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

import metalmem
from metalmem.eviction import EvictionMode, Planner
from metalmem.level import Level
from metalmem.metrics import (
    METRIC_NAMES,
    SAMPLE_DURATION_BUCKETS,
    AgentStats,
    MetalmemCollector,
    SampleDurations,
    make_registry,
    target_labels,
)
from metalmem.pressure import Classifier
from metalmem.targets import Priority
from metalmem.watchdog import Listeners, State, Watchdog

from . import samples
from .helpers import Children, reap

MiB = 1 << 20

# SystemMemory field -> the gauge that exports it (the issue's names: independent truth).
SYSTEM_METRICS = {
    "total": "metalmem_memory_total_bytes",
    "available": "metalmem_memory_available_bytes",
    "wired": "metalmem_memory_wired_bytes",
    "compressed": "metalmem_memory_compressed_bytes",
    "swap_total": "metalmem_swap_total_bytes",
    "swap_used": "metalmem_swap_used_bytes",
    "gpu_limit": "metalmem_gpu_limit_bytes",
    "gpu_used": "metalmem_gpu_used_bytes",
    "oom_kills": "metalmem_oom_kills_total",
}

ISSUE_NAMES = (
    "metalmem_memory_total_bytes",
    "metalmem_memory_available_bytes",
    "metalmem_memory_wired_bytes",
    "metalmem_memory_compressed_bytes",
    "metalmem_swap_used_bytes",
    "metalmem_gpu_limit_bytes",
    "metalmem_gpu_used_bytes",
    "metalmem_pressure_level",
    "metalmem_pressure_state",
    "metalmem_pressure_signal_ratio",
    "metalmem_pressure_threshold_ratio",
    "metalmem_process_footprint_bytes",
    "metalmem_process_rss_bytes",
    "metalmem_evictions_total",
    "metalmem_evictions_skipped_total",
    "metalmem_reclaimed_bytes_total",
    "metalmem_sample_duration_seconds",
    "metalmem_last_sample_timestamp_seconds",
    "metalmem_config_reloads_total",
    "metalmem_build_info",
    "metalmem_kube_dropped_total",
    "metalmem_kube_writes_total",
)


class FakeClock:
    """The watchdog's clock, ``time.monotonic()`` plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@dataclasses.dataclass(frozen=True)
class Key:
    """A minimal TargetLike: the watchdog only needs a key and a pid."""

    key: str
    pid: int


Scrape = dict[str, list[Sample]]


def scrape(collector: MetalmemCollector) -> Scrape:
    """Text exposition of a fresh registry, parsed back: exposed family name -> samples."""
    text = generate_latest(make_registry(collector, self_metrics=False)).decode()
    out: Scrape = {}
    for family in text_string_to_metric_families(text):
        name = family.name + "_total" if family.type == "counter" else family.name
        out[name] = list(family.samples)
    return out


def value(s: Scrape, name: str, **labels: str) -> float | None:
    """The one sample of ``name`` with exactly these labels (``None`` if absent)."""
    found = [x.value for x in s.get(name, []) if x.labels == labels and x.name == name]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else None


def collector_for(
    state: Callable[[], State], clock: Callable[[], float] = time.monotonic, **kw: Any
) -> MetalmemCollector:
    kw.setdefault("stats", AgentStats())
    kw.setdefault("durations", SampleDurations())
    return MetalmemCollector(state, version="9.8.7", platform=sys.platform, clock=clock, **kw)


def test_registering_collects_nothing() -> None:
    calls = []

    def state() -> State:
        calls.append(1)
        raise AssertionError("collect() ran at registration")

    make_registry(collector_for(state))
    assert calls == []


def test_every_family_is_exported_and_agrees_with_the_state(
    sampler: metalmem.Sampler, children: Children
) -> None:
    child = children.spawn(allocate_mib=16)
    gone = children.spawn()
    reap(gone.pid)
    durations = SampleDurations()
    seen: list[float] = []
    listeners = Listeners(
        on_sample=[durations.on_sample, lambda st: seen.append(st.sample_duration)]
    )
    clock = FakeClock()
    dog = Watchdog(
        sampler,
        Classifier(),
        [Key("ns/a", child.pid), Key("b", gone.pid)],
        interval=2.0,
        listeners=listeners,
        clock=clock,
    )
    stats = AgentStats()
    collector = collector_for(lambda: dog.state, clock, stats=stats, durations=durations)
    for _ in range(3):
        dog.tick()
    state = dog.state
    s = scrape(collector)
    system, assessment = state.system, state.assessment
    assert system is not None and assessment is not None

    for field, name in SYSTEM_METRICS.items():
        expected = getattr(system, field)
        assert value(s, name) == expected, name  # None (absent) where the platform has none
    assert value(s, "metalmem_memory_total_bytes") == system.total
    assert set(s) == set(METRIC_NAMES) and set(ISSUE_NAMES) <= set(s)
    for field, name in SYSTEM_METRICS.items():  # unknown here: the family, without a sample
        assert (s[name] == []) == (getattr(system, field) is None), name

    level = value(s, "metalmem_pressure_level")
    assert level == int(assessment.level)
    one_hot = {x.labels["level"]: x.value for x in s["metalmem_pressure_state"]}
    assert one_hot == {lvl.name.lower(): float(lvl == assessment.level) for lvl in Level}
    assert system.total is not None and system.available is not None
    assert value(s, "metalmem_pressure_signal_ratio", signal="memory.available") == pytest.approx(
        system.available / system.total
    )

    proc = state.processes["ns/a"]
    assert isinstance(proc, metalmem.ProcessMemory) and proc.footprint is not None
    assert proc.footprint >= 16 * MiB
    foot = value(s, "metalmem_process_footprint_bytes", target="a", target_namespace="ns")
    assert foot == proc.footprint
    assert value(s, "metalmem_process_rss_bytes", target="a", target_namespace="ns") == proc.rss
    # The reaped child's sample is an error: no series at all, rather than a made-up 0.
    assert {x.labels["target"] for x in s["metalmem_process_footprint_bytes"]} == {"a"}
    assert value(s, "metalmem_targets") == 2

    assert value(s, "metalmem_evictions_total", reason="x", result="y") is None
    # Known labels from 0, so increase() sees the first eviction (issue 18).
    evictions = s["metalmem_evictions_total"]
    assert len(evictions) == len(metalmem.Signal) * (len(metalmem.StopResult) + 1)
    assert all(x.value == 0 for x in evictions)
    assert {x.labels["reason"] for x in s["metalmem_evictions_skipped_total"]} == {
        r.value for r in metalmem.SkipReason
    }
    assert all(x.value == 0 for x in s["metalmem_evictions_skipped_total"])
    assert value(s, "metalmem_eviction_mode", mode="observe") == 1
    assert value(s, "metalmem_ticks_total") == 3 == state.counters["ticks"]

    hist = {x.name: x for x in s["metalmem_sample_duration_seconds"] if not x.labels}
    assert hist["metalmem_sample_duration_seconds_count"].value == 3 == len(seen)
    assert hist["metalmem_sample_duration_seconds_sum"].value == pytest.approx(sum(seen))
    buckets = [x for x in s["metalmem_sample_duration_seconds"] if "le" in x.labels]
    assert [float(b.labels["le"]) for b in buckets] == [*SAMPLE_DURATION_BUCKETS, math.inf]
    assert buckets[-1].value == 3

    unix = value(s, "metalmem_last_sample_timestamp_seconds")
    assert unix is not None and abs(unix - time.time()) < 60  # wall time, not monotonic
    clock.advance(5.0)
    later = scrape(collector)
    age = value(later, "metalmem_watchdog_heartbeat_age_seconds")
    assert age is not None and age >= 5.0
    moved = value(later, "metalmem_last_sample_timestamp_seconds")
    assert moved is not None and moved <= unix - 4.9  # five seconds older on the same clock

    build = s["metalmem_build_info"]
    assert [(x.labels, x.value) for x in build] == [
        ({"version": "9.8.7", "platform": sys.platform}, 1.0)
    ]


def test_agent_stats_are_exported_with_both_reload_results(sampler: metalmem.Sampler) -> None:
    dog = Watchdog(sampler, Classifier(), interval=1.0)
    stats = AgentStats()
    collector = collector_for(lambda: dog.state, stats=stats)
    s = scrape(collector)  # before the first tick too
    assert value(s, "metalmem_config_reloads_total", result="success") == 0
    assert value(s, "metalmem_config_reloads_total", result="failure") == 0
    assert value(s, "metalmem_kube_dropped_total") == 0
    assert {x.value for x in s["metalmem_kube_writes_total"]} == {0}
    assert value(s, "metalmem_config_last_reload_successful") == 1
    stats.config_reload("success")
    stats.config_reload("failure")
    assert value(scrape(collector), "metalmem_config_last_reload_successful") == 0
    stats.config_reload("success")
    stats.kube_write("event", "success")
    stats.kube_write("condition", "conflict")
    stats.kube_dropped(3)
    s = scrape(collector)
    assert value(s, "metalmem_config_reloads_total", result="success") == 2
    assert value(s, "metalmem_config_reloads_total", result="failure") == 1
    assert value(s, "metalmem_kube_writes_total", kind="event", result="success") == 1
    assert value(s, "metalmem_kube_writes_total", kind="condition", result="conflict") == 1
    assert value(s, "metalmem_kube_dropped_total") == 3
    assert value(s, "metalmem_config_last_reload_successful") == 1
    # Nothing sampled yet: no memory or pressure series, never zeros.
    assert s["metalmem_memory_total_bytes"] == [] and s["metalmem_pressure_level"] == []
    assert s["metalmem_pressure_state"] == []
    assert s["metalmem_last_sample_timestamp_seconds"] == []


def test_optional_inputs_leave_their_families_empty(sampler: metalmem.Sampler) -> None:
    dog = Watchdog(sampler, Classifier(), interval=1.0)
    dog.tick()
    c = MetalmemCollector(lambda: dog.state, version="1", platform="p")
    s = scrape(c)
    for name in (
        "metalmem_sample_duration_seconds",
        "metalmem_config_reloads_total",
        "metalmem_kube_writes_total",
        "metalmem_kube_dropped_total",
    ):
        assert s[name] == [], name
    assert len(s["metalmem_memory_total_bytes"]) == 1


def test_unknown_values_are_omitted_never_zero(sampler: metalmem.Sampler) -> None:
    dog = Watchdog(sampler, Classifier(), interval=1.0)
    real = dog.tick()
    host = samples.host(
        t=time.monotonic(), wired=None, compressed=None, swap_used=None, oom_kills=None
    )
    known_gpu = samples.host(t=time.monotonic(), gpu_limit=8 << 30, gpu_used=3 << 30)
    for system, missing in (
        (host, {"wired", "compressed", "swap_used", "oom_kills", "gpu_limit", "gpu_used"}),
        (known_gpu, set()),
    ):
        state = dataclasses.replace(real, system=system)
        s = scrape(collector_for(lambda: state))  # noqa: B023 - scraped before the next loop
        for field, name in SYSTEM_METRICS.items():
            if field in missing:
                assert s[name] == [], name
            else:
                assert value(s, name) == getattr(system, field), name
    s = scrape(collector_for(lambda: dataclasses.replace(real, system=known_gpu)))
    headroom = value(s, "metalmem_pressure_signal_ratio", signal="gpu.headroom")
    assert headroom == pytest.approx(5 / 8)


def test_labels_never_carry_pids(sampler: metalmem.Sampler) -> None:
    dog = Watchdog(sampler, Classifier(), interval=1.0)
    real = dog.tick()

    def proc(pid: int, footprint: int) -> metalmem.ProcessMemory:
        return metalmem.ProcessMemory(pid, 1.0, footprint * 2, footprint, 0, 0, 0, 0, 0.0, None)

    processes: dict[str, metalmem.ProcessMemory | metalmem.Error | OSError] = {
        "llama#4242": proc(4242, 100),
        "llama#4343": proc(4343, 50),
        "team/qwen": proc(17, 7),
        "solo": metalmem.NoSuchProcess("gone", pid=99),
    }
    state = dataclasses.replace(real, processes=processes)
    s = scrape(collector_for(lambda: state))
    foot = {
        (x.labels["target"], x.labels["target_namespace"]): x.value
        for x in s["metalmem_process_footprint_bytes"]
    }
    assert foot == {("llama", ""): 150, ("qwen", "team"): 7}
    pids = {"4242", "4343", "17", "99"}
    for samples_ in s.values():
        for x in samples_:
            for v in x.labels.values():
                assert "#" not in v and v not in pids, (x.name, x.labels)


@pytest.mark.parametrize(
    ("key", "labels"),
    [
        ("a", ("a", "")),
        ("ns/a", ("a", "ns")),
        ("ns/a#123", ("a", "ns")),
        ("llama-server#77", ("llama-server", "")),
        ("x#y", ("x#y", "")),  # only a numeric suffix is a pid
    ],
)
def test_target_labels(key: str, labels: tuple[str, str]) -> None:
    assert target_labels(key) == labels


@pytest.mark.skipif(sys.platform != "linux", reason="Linux signals and /proc")
def test_evictions_skips_and_reclaim_are_counted_as_the_state_says(
    sampler: metalmem.Sampler, children: Children, tmp_path: pathlib.Path
) -> None:
    from .test_watchdog_eviction import _critical_now, _eviction, _target

    batch = children.spawn(allocate_mib=32)
    keeper = children.spawn()
    targets = [
        _target(sampler, batch, "batch", Priority.BATCH),
        _target(sampler, keeper, "keeper", Priority.HIGH),
    ]
    pressure = _critical_now(sampler)
    clock = FakeClock()
    dog = Watchdog(
        sampler,
        Classifier(pressure, interval=0.05),
        targets,
        interval=0.05,
        min_interval=0.05,
        planner=Planner(_eviction(EvictionMode.ENFORCE), pressure),
        state_dir=str(tmp_path),
        clock=clock,
    )
    collector = collector_for(lambda: dog.state, clock)
    dog.tick()  # CRITICAL at once (a hard threshold): evicts the batch child
    assert batch.has_exited()
    s = scrape(collector)
    assert value(s, "metalmem_evictions_total", reason="memory.available", result="terminated") == 1
    assert value(s, "metalmem_targets_blocked") == 1
    assert value(s, "metalmem_eviction_mode", mode="enforce") == 1
    assert value(s, "metalmem_pressure_state", level="critical") == 1
    clock.advance(2.0)  # past settle_timeout (1 s): the next tick ends the settle phase
    dog.tick()
    dog.tick()
    state = dog.state
    assert state.settling is None and state.evictions[-1].reclaimed is not None
    s = scrape(collector)
    assert value(s, "metalmem_reclaimed_bytes_total") == state.reclaimed_total
    skipped = {x.labels["reason"]: x.value for x in s["metalmem_evictions_skipped_total"]}
    assert sum(skipped.values()) >= 1
    assert {k: v for k, v in skipped.items() if v} == {
        k: float(v) for k, v in state.skip_counts.items()
    }
    exported = {
        (x.labels["reason"], x.labels["result"]): x.value for x in s["metalmem_evictions_total"]
    }
    assert {k: v for k, v in exported.items() if v} == {
        k: float(v) for k, v in state.eviction_counts.items()
    }


def test_sample_durations_buckets_are_cumulative_and_inclusive() -> None:
    d = SampleDurations()
    for v in (1e-6, 3e-6, 0.5, 2.0, -1.0, math.nan, math.inf):
        d.observe(v)
    buckets, total, count = d.snapshot()
    assert count == 4 and total == pytest.approx(1e-6 + 3e-6 + 0.5 + 2.0)
    counts = dict(buckets)
    assert counts["1e-06"] == 1  # a value on a bound counts in that bucket (le)
    assert counts["2.5e-06"] == 1 and counts["5e-06"] == 2
    assert counts["0.25"] == 2 and counts["0.5"] == 3 and counts["1.0"] == 3
    assert buckets[-1] == ("+Inf", 4)
    assert [n for _, n in buckets] == sorted(n for _, n in buckets)
    with pytest.raises(ValueError):
        SampleDurations((0.1, 0.01))


def test_sample_durations_are_thread_safe() -> None:
    d = SampleDurations()
    per_thread = 5000

    def work() -> None:
        for i in range(per_thread):
            d.observe((i % 7) * 1e-4)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    buckets, total, count = d.snapshot()
    assert count == 4 * per_thread and buckets[-1][1] == count
    assert total == pytest.approx(4 * sum((i % 7) * 1e-4 for i in range(per_thread)))


def test_every_family_template_names_its_samples_as_exposed() -> None:
    # _add appends samples named family.name: the constructor's name (with its unit and, for a
    # counter, without _total) must agree, or samples would land outside their family.
    from metalmem.metrics import _FAMILIES

    for family in _FAMILIES:
        metric = family.empty()
        assert metric.samples == []
        if family.kind == "counter":
            assert metric.name + "_total" == family.name
        else:
            assert metric.name == family.name
        assert family.empty() is not metric  # a fresh one per call


def test_reused_samples_follow_every_change(sampler: metalmem.Sampler) -> None:
    # Samples are reused while (family, labels, value) repeat; a changed value is a new one,
    # and an int keeps its int rendering next to an equal float (issue 15).
    dog = Watchdog(sampler, Classifier(), interval=1.0)
    collector = collector_for(lambda: dog.state)
    dog.tick()
    first = {m.name: list(m.samples) for m in collector.collect()}
    again = {m.name: list(m.samples) for m in collector.collect()}
    build = first["metalmem_build_info"][0]
    assert again["metalmem_build_info"][0] is build  # unchanged: the same object
    ticks = first["metalmem_ticks"][0].value
    dog.tick()
    later = {m.name: list(m.samples) for m in collector.collect()}
    assert later["metalmem_ticks"][0].value == ticks + 1
    assert scrape(collector)["metalmem_ticks_total"][0].value == ticks + 1
    assert type(later["metalmem_build_info"][0].value) is int
