"""metalmem/exposition.py writes what prometheus-client writes, byte for byte (issue 15).

The agent's /metrics no longer goes through prometheus-client; these tests hold the two to the
same bytes: for arbitrary families and values (hypothesis), for the real collector over a
watchdog that ticked with real processes, and for the process and platform collectors.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client import generate_latest as text_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics.exposition import generate_latest as om_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

import metalmem
from metalmem import exposition
from metalmem.eviction import EvictionMode, EvictionPolicy, Planner
from metalmem.exposition import Family, Series
from metalmem.metrics import AgentStats, MetalmemCollector, SampleDurations, make_registry
from metalmem.pressure import Classifier, PressurePolicy
from metalmem.selfstats import self_families
from metalmem.watchdog import Watchdog

from .helpers import Children, reap
from .test_metrics import Key


class _Families(Collector):
    """prometheus-client metrics built from our (family, series) pairs, the documented way."""

    def __init__(self, families: Sequence[tuple[Family, Sequence[Series]]]) -> None:
        self._families = families

    def collect(self) -> Iterator[Any]:
        for family, series in self._families:
            if family.kind == "counter":
                metric: Any = CounterMetricFamily(family.base, family.doc, labels=family.labels,
                                                  unit=family.unit)  # fmt: skip
                for _, _, values, value in series:
                    metric.add_metric(list(values), value)
            elif family.kind == "histogram":
                metric = HistogramMetricFamily(family.name, family.doc, unit=family.unit)
                buckets = [(v[0], n) for name, _, v, n in series if name.endswith("_bucket")]
                total = next(n for name, _, _, n in series if name.endswith("_sum"))
                metric.add_metric([], buckets, total)
            else:
                metric = GaugeMetricFamily(family.name, family.doc, labels=family.labels,
                                           unit=family.unit)  # fmt: skip
                for _, _, values, value in series:
                    metric.add_metric(list(values), value)
            yield metric


def _registry(collector: Collector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def _both(families: Sequence[tuple[Family, Sequence[Series]]]) -> Iterable[tuple[bytes, bytes]]:
    registry = _registry(_Families(families))
    yield exposition.render(families, openmetrics=False), text_latest(registry)
    yield exposition.render(families, openmetrics=True), om_latest(registry)


_NAME = st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True)
_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
_VALUE = st.one_of(
    st.integers(-(2**62), 2**62),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, 1.0, 0.5, 1e-6, 1234567.0, 12345678.9, 2.5e20, -0.0]),
)


@st.composite
def _family(draw: st.DrawFn, index: int) -> tuple[Family, list[Series]]:
    kind = draw(st.sampled_from(["gauge", "counter"]))
    unit = draw(st.sampled_from(["", "bytes", "seconds"]))
    base = f"m{index}_{draw(_NAME)}" + (f"_{unit}" if unit else "")
    name = base + "_total" if kind == "counter" else base
    labels = tuple(sorted(draw(st.sets(st.sampled_from(["le_x", "target", "a", "zz"]),
                                       max_size=3))))  # fmt: skip
    family = Family(name, kind, draw(_TEXT), labels, unit)
    rows = draw(st.lists(st.tuples(*(_TEXT for _ in labels)), max_size=4, unique=True))
    return family, [(name, labels, row, draw(_VALUE)) for row in rows]


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 5).flatmap(lambda n: st.tuples(*(_family(i) for i in range(n)))))
def test_any_families_render_as_prometheus_client_renders_them(
    families: tuple[tuple[Family, list[Series]], ...],
) -> None:
    for ours, theirs in _both(families):
        assert ours == theirs


def test_float_text_matches_go_formatting() -> None:
    from prometheus_client.utils import floatToGoString

    for v in (0, -0.0, 1, 1.5, 1e-9, 123456.0, 1234567.0, 1e22, -1e22, math.inf, -math.inf,
              math.nan, 2**53, 0.1 + 0.2):  # fmt: skip
        assert exposition.float_text(v) == floatToGoString(v), v


def _collector_over_real_ticks(
    sampler: metalmem.Sampler, children: Children
) -> tuple[MetalmemCollector, Watchdog]:
    child = children.spawn(allocate_mib=8)
    gone = children.spawn()
    reap(gone.pid)
    durations = SampleDurations()
    dog = Watchdog(
        sampler,
        Classifier(),
        [Key('ns/we"ird\\name', child.pid), Key("b", gone.pid), Key("c#12", child.pid)],
        interval=2.0,
        planner=Planner(EvictionPolicy(mode=EvictionMode.DRY_RUN), PressurePolicy()),
        durations=durations,
    )
    for _ in range(3):
        dog.tick()
    stats = AgentStats()
    stats.config_reload("failure")
    stats.kube_write("condition", "conflict")
    stats.kube_condition_other_writer("llmkube-metal-agent")
    heartbeat = dog.state.heartbeat
    collector = MetalmemCollector(
        lambda: dog.state,
        stats=stats,
        durations=durations,
        version="1.2.3",
        platform=sys.platform,
        clock=lambda: heartbeat + 0.25,
        wall=lambda: 1.7e9,
        policy=lambda: PressurePolicy(),
        interval=lambda: 2.0,
    )
    return collector, dog


def test_the_collector_writes_what_prometheus_client_writes(
    sampler: metalmem.Sampler, children: Children
) -> None:
    collector, _ = _collector_over_real_ticks(sampler, children)
    registry = make_registry(collector, self_metrics=False)
    ours = collector.exposition(self_metrics=False)
    assert ours == text_latest(registry)
    assert collector.exposition(self_metrics=False, openmetrics=True) == om_latest(registry)
    assert b'target="we\\"ird\\\\name"' in ours  # escaped, as the format wants
    # name[] keeps the named samples, and the families that have one
    only = collector.exposition(
        self_metrics=False, names=["metalmem_targets", "metalmem_sample_duration_seconds_sum"]
    )
    kept = {f.name for f in text_string_to_metric_families(only.decode())}
    assert kept == {"metalmem_targets", "metalmem_sample_duration_seconds"}
    assert only == text_latest(registry.restricted_registry(
        ["metalmem_targets", "metalmem_sample_duration_seconds_sum"]))  # fmt: skip


def test_self_metrics_match_the_process_and_platform_collectors() -> None:
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    theirs = {f.name: f for f in text_string_to_metric_families(text_latest(registry).decode())}
    ours_text = exposition.render(self_families(), openmetrics=False).decode()
    ours = {f.name: f for f in text_string_to_metric_families(ours_text)}
    assert set(ours) == set(theirs)
    for name, family in theirs.items():
        mine = ours[name]
        assert (mine.type, mine.documentation) == (family.type, family.documentation), name
        assert [s.labels for s in mine.samples] == [s.labels for s in family.samples], name
        for a, b in zip(mine.samples, family.samples, strict=True):
            if name in ("process_resident_memory_bytes", "process_virtual_memory_bytes"):
                assert a.value == pytest.approx(b.value, rel=0.05), name  # read moments apart
            elif name == "process_cpu_seconds":
                assert a.value == pytest.approx(b.value, abs=0.05), name
            elif name != "process_open_fds":  # the other's listdir held one more fd
                assert a.value == b.value, name


@pytest.mark.parametrize(
    "accept",
    [
        None,
        "",
        "text/plain",
        "text/plain;version=0.0.4",
        "application/openmetrics-text",
        "application/openmetrics-text; version=1.0.0",
        "application/openmetrics-text;version=0.0.1,text/plain;version=0.0.4;q=0.5",
        # Prometheus 3's default scrape_protocols, in its order
        "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,"
        "application/openmetrics-text;version=0.0.1;q=0.4,"
        "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,"
        "*/*;q=0.1",
        "application/json",
    ],
)
def test_format_negotiation_agrees_with_prometheus_client(accept: str | None) -> None:
    _encoder, ctype = choose_encoder(accept)  # type: ignore[arg-type]
    assert exposition.wants_openmetrics(accept) == ctype.startswith("application/openmetrics")


def test_the_agent_path_never_imports_prometheus_client() -> None:
    code = (
        "import sys, metalmem, metalmem.metrics, metalmem.server, metalmem.watchdog\n"
        "assert 'prometheus_client' not in sys.modules, 'imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ})


def test_zero_and_negative_zero_keep_their_own_text() -> None:
    # Found by hypothesis in CI: 0.0 == -0.0 (same hash, same type), so a cache keyed by the
    # value handed one's line to the other; prometheus-client prints them apart.
    family = Family("m_zero", "gauge", "z", ("a",))
    for first, second in ((0.0, -0.0), (-0.0, 0.0)):
        for value in (first, second):
            families = [(family, [(family.name, ("a",), ("x",), value)])]
            for ours, theirs in _both(families):
                assert ours == theirs, value
