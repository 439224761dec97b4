"""The classifier: each signal at its thresholds, rates and resets, hysteresis, grace, policy
validation, and the properties of issue 4 (monotonic, no flapping, recovery, determinism)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import metalmem
from metalmem import (
    PSI,
    Assessment,
    Classifier,
    Level,
    PressurePolicy,
    Signal,
    SystemMemory,
    assessment_to_dict,
    parse_duration,
    threshold_bytes,
)
from metalmem.pressure import SIGNAL_TABLE

from . import samples

TOTAL = 10**10  # fractions of it are exact: 0.2 * TOTAL reads back as 0.2
MiB = 1024 * 1024
NORMAL, WARNING, CRITICAL = Level.NORMAL, Level.WARNING, Level.CRITICAL


def sample(t: float = 0.0, **fields: Any) -> SystemMemory:
    """A calm Linux-like host at time ``t``; keyword arguments override fields."""
    return samples.host(t, **fields)


def psi(some: float | None = 0.0, full: float | None = 0.0) -> PSI:
    return PSI(some, 0.0, full, 0.0, 0.0, 0.0)


def signals(a: Assessment) -> dict[Signal, Level]:
    return {r.signal: r.level for r in a.reasons}


def assess_one(policy: PressurePolicy | None = None, **fields: Any) -> Assessment:
    return Classifier(policy).assess(sample(**fields))


# --- policy ------------------------------------------------------------------------------------


def test_policy_defaults_match_the_design() -> None:
    p = PressurePolicy()
    assert (p.warning_available, p.critical_available) == (0.20, 0.10)
    assert p.transition_period == 30.0 and p.margin == 0.05
    assert p.hard_signals == {Signal.MEMORY_AVAILABLE, Signal.GPU_HEADROOM, Signal.OS_LEVEL}


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"warning_available": 0.0}, "warning_available"),
        ({"warning_available": 1.0}, "warning_available"),
        ({"warning_available": -0.2}, "warning_available"),
        ({"warning_available": math.nan}, "warning_available"),
        ({"warning_available": "0.2"}, "warning_available"),
        ({"warning_available": True}, "warning_available"),
        ({"warning_available": None}, "warning_available"),
        ({"critical_available": 0.3}, "critical_available"),
        ({"critical_available": 0.2}, "critical_available"),
        ({"critical_available": 0.0}, "critical_available"),
        ({"warning_gpu_headroom": 1.5}, "warning_gpu_headroom"),
        ({"critical_gpu_headroom": 0.1}, "critical_gpu_headroom"),
        ({"warning_psi_some_pct": 0.0}, "warning_psi_some_pct"),
        ({"critical_psi_some_pct": 101.0}, "critical_psi_some_pct"),
        ({"critical_psi_some_pct": 10.0}, "critical_psi_some_pct"),
        ({"warning_psi_full_pct": -1.0}, "warning_psi_full_pct"),
        ({"warning_swapout_rate": 0}, "warning_swapout_rate"),
        ({"critical_swapout_rate": 1.0}, "critical_swapout_rate"),
        ({"warning_pageout_rate": math.inf}, "warning_pageout_rate"),
        ({"critical_pageout_rate": 1.0}, "critical_pageout_rate"),
        ({"warning_forecast": 0.0}, "warning_forecast"),
        ({"critical_forecast": 90.0}, "critical_forecast"),
        ({"forecast_window": 0.0}, "forecast_window"),
        ({"soft_grace": -1.0}, "soft_grace"),
        ({"transition_period": -0.5}, "transition_period"),
        ({"transition_period": math.inf}, "transition_period"),
        ({"margin": 1.0}, "margin"),
        ({"margin": -0.01}, "margin"),
        ({"margin": 0.8}, "margin"),  # 0.20 + 0.80 could never be cleared
        ({"hard_signals": frozenset({"memory.nope"})}, "hard_signals"),
        ({"hard_signals": 3}, "hard_signals"),
    ],
)
def test_policy_rejects_invalid_values_naming_the_field(fields: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=rf"PressurePolicy\.{named}\b"):
        PressurePolicy(**fields)


def test_policy_accepts_disabled_signals_zero_durations_and_string_signals() -> None:
    p = PressurePolicy(
        warning_gpu_headroom=None,
        critical_gpu_headroom=None,
        warning_psi_some_pct=None,
        critical_psi_full_pct=None,
        warning_forecast=None,
        critical_forecast=None,
        soft_grace=0,
        transition_period=0,
        margin=0,
        hard_signals=frozenset({"psi.full"}),  # type: ignore[arg-type]
    )
    assert p.hard_signals == frozenset({Signal.PSI_FULL})
    with pytest.raises(AttributeError):
        p.margin = 0.1  # type: ignore[misc]


def test_classifier_rejects_a_bad_interval() -> None:
    for bad in (0, -1.0, math.nan):
        with pytest.raises(ValueError, match="interval"):
            Classifier(interval=bad)


# --- helpers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "total", "expected"),
    [
        (0.1, 1000, 100),
        (0.5, 3, 1),
        (1.0, 77, 77),
        (0, 1000, 0),
        (4096, 10, 4096),
        (0.2, TOTAL, 2 * 10**9),
    ],
)
def test_threshold_bytes_resolves_fractions_and_bytes(
    value: float, total: int, expected: int
) -> None:
    assert threshold_bytes(value, total) == expected


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (0.0, ValueError),
        (1.5, ValueError),
        (-1, ValueError),
        (math.nan, ValueError),
        (True, TypeError),
        ("1", TypeError),
    ],
)
def test_threshold_bytes_rejects_bad_thresholds(value: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        threshold_bytes(value, 1000)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("2s", 2.0), ("1.5s", 1.5), ("1m", 60.0), ("1h", 3600.0), ("3", 3.0),
     ("0", 0.0), (".25s", 0.25), ("10.", 10.0), (" 2s ", 2.0), ("250ms", 0.25)],
)  # fmt: skip
def test_parse_duration_accepts_units_and_plain_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds, rel=1e-12)


@pytest.mark.parametrize(
    "text", ["", "s", "-1s", "+2s", "2 s", "2sec", "1e3", "nan", "inf", "2S", "1..5s", "ms", "2s3"]
)
def test_parse_duration_rejects_garbage_and_negatives(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


# --- each signal at its thresholds --------------------------------------------------------------


@pytest.mark.parametrize(
    ("available", "level"),
    [
        (TOTAL, NORMAL),
        (2 * 10**9, NORMAL),  # exactly at warning: not below it
        (2 * 10**9 - 1, WARNING),
        (10**9, WARNING),  # exactly at critical
        (10**9 - 1, CRITICAL),
        (0, CRITICAL),
    ],
)
def test_available_votes_below_its_thresholds(available: int, level: Level) -> None:
    a = assess_one(available=available)
    assert a.level == a.raw_level == level
    assert signals(a) == ({} if level is NORMAL else {Signal.MEMORY_AVAILABLE: level})
    if level is CRITICAL:
        reason = a.reasons[0]
        assert reason.is_hard and a.actionable
        assert reason.threshold == 0.10 and reason.value == available / TOTAL
        assert "critical threshold 10.0%" in reason.message


@pytest.mark.parametrize(
    ("used", "level"),
    [
        (0, NORMAL),
        (9 * 10**9, NORMAL),  # headroom exactly 0.10
        (9 * 10**9 + 1, WARNING),
        (95 * 10**8, WARNING),  # headroom exactly 0.05
        (95 * 10**8 + 1, CRITICAL),
        (11 * 10**9, CRITICAL),  # over the limit
    ],
)
def test_gpu_headroom_votes_below_its_thresholds(used: int, level: Level) -> None:
    a = assess_one(gpu_limit=TOTAL, gpu_used=used)
    assert a.level == level
    assert signals(a) == ({} if level is NORMAL else {Signal.GPU_HEADROOM: level})
    assert a.actionable == (level is CRITICAL)  # hard by default


def test_gpu_headroom_uses_wired_when_gpu_used_is_unknown() -> None:
    assert assess_one(gpu_limit=TOTAL, gpu_used=None, wired=96 * 10**8).level == CRITICAL
    assert assess_one(gpu_limit=TOTAL, gpu_used=10**8, wired=96 * 10**8).level == NORMAL


@pytest.mark.parametrize("limit", [None, 0])
def test_gpu_headroom_is_silent_without_a_limit(limit: int | None) -> None:
    assert assess_one(gpu_limit=limit, gpu_used=TOTAL, wired=TOTAL).reasons == ()


@pytest.mark.parametrize(
    ("os_level", "level"),
    [(None, NORMAL), (NORMAL, NORMAL), (WARNING, WARNING), (CRITICAL, CRITICAL)],
)
def test_os_level_votes_the_level_the_os_reports(os_level: Level | None, level: Level) -> None:
    a = assess_one(os_level=os_level)
    assert a.level == level
    if level is CRITICAL:
        assert a.reasons[0].signal is Signal.OS_LEVEL and a.reasons[0].is_hard and a.actionable
        assert a.reasons[0].message == "the OS reports CRITICAL memory pressure"


@pytest.mark.parametrize(
    ("some", "full", "expected"),
    [
        (19.99, 0.0, {}),
        (20.0, 0.0, {Signal.PSI_SOME: WARNING}),
        (59.99, 0.0, {Signal.PSI_SOME: WARNING}),
        (60.0, 0.0, {Signal.PSI_SOME: CRITICAL}),
        (0.0, 4.99, {}),
        (0.0, 5.0, {Signal.PSI_FULL: WARNING}),
        (0.0, 29.99, {Signal.PSI_FULL: WARNING}),
        (0.0, 30.0, {Signal.PSI_FULL: CRITICAL}),
        (None, 30.0, {Signal.PSI_FULL: CRITICAL}),  # a kernel without "some"
        (100.0, None, {Signal.PSI_SOME: CRITICAL}),
    ],
)
def test_psi_votes_at_or_above_its_thresholds(
    some: float | None, full: float | None, expected: dict[Signal, Level]
) -> None:
    a = assess_one(psi=psi(some, full))
    assert signals(a) == expected
    assert not a.actionable  # PSI is soft: CRITICAL needs the grace period
    for r in a.reasons:
        assert not r.is_hard and r.message.startswith("PSI ")


def rate_pair(field: str, per_second: int, policy: PressurePolicy | None = None) -> Assessment:
    """Two samples one second apart whose counter ``field`` grows by ``per_second``."""
    c = Classifier(policy)
    c.assess(sample(0.0, **{field: 10**12}))
    return c.assess(sample(1.0, **{field: 10**12 + per_second}))


@pytest.mark.parametrize(
    ("per_second", "level"),
    [
        (0, NORMAL),
        (4 * MiB - 1, NORMAL),
        (4 * MiB, WARNING),
        (64 * MiB - 1, WARNING),
        (64 * MiB, CRITICAL),
    ],
)
def test_swapout_rate_votes_at_or_above_its_thresholds(per_second: int, level: Level) -> None:
    a = rate_pair("swapouts", per_second)
    assert a.swapout_rate == per_second and a.pageout_rate == 0
    assert signals(a) == ({} if level is NORMAL else {Signal.SWAPOUT_RATE: level})
    assert not a.actionable


@pytest.mark.parametrize(
    ("per_second", "level"),
    [(64 * MiB - 1, NORMAL), (64 * MiB, WARNING), (10 * 1024 * MiB, WARNING)],  # no critical
)
def test_pageout_rate_votes_warning_only_by_default(per_second: int, level: Level) -> None:
    a = rate_pair("pageouts", per_second)
    assert a.pageout_rate == per_second
    assert signals(a) == ({} if level is NORMAL else {Signal.PAGEOUT_RATE: level})


def test_pageout_rate_critical_when_configured() -> None:
    policy = PressurePolicy(critical_pageout_rate=256.0 * MiB)
    assert signals(rate_pair("pageouts", 256 * MiB, policy)) == {Signal.PAGEOUT_RATE: CRITICAL}


def falling(a0: int, a1: int, policy: PressurePolicy | None = None) -> Assessment:
    """Available goes from ``a0`` to ``a1`` in one second."""
    c = Classifier(policy)
    c.assess(sample(0.0, available=a0))
    return c.assess(sample(1.0, available=a1))


@pytest.mark.parametrize(
    ("a0", "a1", "forecast", "level"),
    [
        # 50 MB/s falling, 3 GB above the critical 1 GB: exactly the 60 s horizon.
        (4_050_000_000, 4_000_000_000, 60.0, NORMAL),
        (4_050_000_000, 3_999_999_999, None, WARNING),
        # 1.5 GB above critical at 50 MB/s: exactly the 30 s horizon.
        (2_550_000_000, 2_500_000_000, 30.0, WARNING),
        (2_550_000_000, 2_499_999_999, None, CRITICAL),
    ],
)
def test_forecast_votes_below_its_horizons(
    a0: int, a1: int, forecast: float | None, level: Level
) -> None:
    a = falling(a0, a1)
    assert a.forecast_seconds is not None
    if forecast is not None:
        assert a.forecast_seconds == forecast
    assert a.level == level
    assert signals(a) == ({} if level is NORMAL else {Signal.FORECAST: level})
    assert not a.actionable  # the forecast is soft


@pytest.mark.parametrize(("a0", "a1"), [(4 * 10**9, 4 * 10**9), (4 * 10**9, 5 * 10**9)])
def test_forecast_is_none_when_available_is_not_falling(a0: int, a1: int) -> None:
    assert falling(a0, a1).forecast_seconds is None


def test_forecast_needs_two_samples_and_is_zero_below_critical() -> None:
    assert Classifier().assess(sample(available=10**9)).forecast_seconds is None
    a = falling(10**9, 5 * 10**8)
    assert a.forecast_seconds == 0.0 and a.level == CRITICAL
    assert signals(a) == {Signal.MEMORY_AVAILABLE: CRITICAL, Signal.FORECAST: CRITICAL}


def test_forecast_slope_is_least_squares_over_the_window() -> None:
    c = Classifier(PressurePolicy(forecast_window=10.0), interval=1.0)
    # Falls 100 MB/s for 20 s: the estimate is exact however many points are kept.
    for t in range(21):
        a = c.assess(sample(float(t), available=5 * 10**9 - t * 10**8))
    assert a.forecast_seconds == pytest.approx((3 * 10**9 - 10**9) / 10**8)
    # Then flat from t=20: the last falling point (t=19) leaves the 10 s window after t=29.
    for t in range(21, 30):
        a = c.assess(sample(float(t), available=3 * 10**9))
        assert a.forecast_seconds is not None
    a = c.assess(sample(30.0, available=3 * 10**9))
    assert a.forecast_seconds is None


def test_forecast_stops_when_memory_comes_back_although_the_window_holds_the_fall() -> None:
    c = Classifier(interval=1.0)
    for t, available in enumerate([8, 7, 6, 5, 4]):
        a = c.assess(sample(float(t), available=available * 10**9))
    assert a.forecast_seconds == pytest.approx(3.0)  # 1 GB/s, 3 GB above critical
    a = c.assess(sample(5.0, available=8 * 10**9))  # an eviction gave 4 GB back
    assert a.forecast_seconds is None and a.reasons == ()
    # Window 8 7 6 5 4 8 7: the line still points down, the newest point is above the mean.
    assert c.assess(sample(6.0, available=7 * 10**9)).forecast_seconds is None
    # ... 8 7 5: below the mean (6.25 GB) and falling: a fall in progress again.
    assert c.assess(sample(7.0, available=5 * 10**9)).forecast_seconds is not None


def test_missing_available_silences_memory_signals() -> None:
    a = assess_one(available=None)
    assert a.reasons == () and a.forecast_seconds is None
    assert assess_one(total=0, available=0).reasons == ()


# --- rates: resets instead of spikes -----------------------------------------------------------


def test_rate_keeps_its_value_while_the_counters_are_not_refreshed() -> None:
    c = Classifier(interval=0.25)
    c.assess(sample(0.0, swapouts=0))
    a = c.assess(sample(1.0, swapouts=8 * MiB))
    assert a.swapout_rate == 8 * MiB
    # The sampler refreshes counters once a second; ticks in between repeat the old reading.
    for t in (1.25, 1.5, 1.75):
        a = c.assess(sample(t, swapouts=8 * MiB, counters_timestamp=1.0))
        assert a.swapout_rate == 8 * MiB and signals(a) == {Signal.SWAPOUT_RATE: WARNING}
    a = c.assess(sample(2.0, swapouts=8 * MiB))
    assert a.swapout_rate == 0


def test_counter_reset_yields_no_rate_instead_of_a_spike() -> None:
    c = Classifier()
    c.assess(sample(0.0, pageouts=10**12, swapouts=10**12))
    a = c.assess(sample(2.0, pageouts=5, swapouts=10**12 + 2 * MiB))
    assert a.pageout_rate is None and a.swapout_rate == MiB
    assert a.reasons == ()
    a = c.assess(sample(4.0, pageouts=5 + 256 * MiB, swapouts=10**12 + 2 * MiB))
    assert a.pageout_rate == 128 * MiB  # measured again from the new baseline


@pytest.mark.parametrize(("gap", "rate"), [(10.0, 16 * MiB), (10.5, None)])
def test_a_gap_longer_than_five_intervals_resets_rates(gap: float, rate: float | None) -> None:
    c = Classifier(interval=2.0)
    c.assess(sample(0.0, swapouts=0, available=6 * 10**9))
    a = c.assess(sample(gap, swapouts=int(16 * MiB * gap), available=3 * 10**9))
    assert a.swapout_rate == rate
    assert (a.forecast_seconds is None) == (rate is None)  # the trend is reset too


@pytest.mark.parametrize(("gap", "reset"), [(0.5, False), (0.6, True)])
def test_a_sample_gap_resets_rates_and_trend_even_when_counters_are_fresh(
    gap: float, reset: bool
) -> None:
    # A 100 ms tick: the counters' own gap limit (5 x their 1 s period) is not reached.
    c = Classifier(interval=0.1)
    c.assess(sample(0.0, swapouts=0, available=6 * 10**9))
    a = c.assess(sample(gap, swapouts=64 * MiB, available=3 * 10**9))
    assert (a.swapout_rate is None) == reset
    assert (a.forecast_seconds is None) == reset


def test_missing_counters_yield_no_rates() -> None:
    c = Classifier()
    c.assess(sample(0.0, swapouts=None, pageouts=None, counters_timestamp=None))
    a = c.assess(sample(2.0, swapouts=None, pageouts=None, counters_timestamp=None))
    assert a.swapout_rate is None and a.pageout_rate is None and a.reasons == ()


# --- platforms without a signal ----------------------------------------------------------------


def test_linux_like_sample_without_os_level_or_gpu_votes_from_psi() -> None:
    a = assess_one(os_level=None, gpu_limit=None, gpu_used=None, psi=psi(25.0, 0.0))
    assert signals(a) == {Signal.PSI_SOME: WARNING}


def test_macos_like_sample_without_psi_votes_from_the_os_level() -> None:
    a = assess_one(psi=None, os_level=WARNING, gpu_limit=TOTAL, gpu_used=10**9)
    assert signals(a) == {Signal.OS_LEVEL: WARNING}


def test_a_sample_with_every_optional_field_unknown_is_normal() -> None:
    bare = {name: None for name in SystemMemory._fields if name not in ("scope", "timestamp")}
    bare["limited"] = False
    c = Classifier()
    for t in (0.0, 2.0):
        a = c.assess(sample(t, **bare))
        assert a.level == NORMAL and a.reasons == () and a.forecast_seconds is None


# --- hysteresis, since, grace ------------------------------------------------------------------


def run(c: Classifier, steps: list[tuple[float, dict[str, Any]]]) -> list[Assessment]:
    return [c.assess(sample(t, **fields)) for t, fields in steps]


# Scenarios that swing available memory fast turn the forecast off: it would rightly report
# the swings as falls and hide the behaviour under test.
NO_FORECAST = PressurePolicy(warning_forecast=None, critical_forecast=None)


def test_level_rises_at_once_and_falls_after_the_transition_period() -> None:
    c = Classifier()
    low, safe = {"available": 5 * 10**8}, {"available": 5 * 10**9}
    out = run(c, [(0.0, safe), (2.0, low)] + [(2.0 + t, safe) for t in range(2, 34, 2)])
    assert [a.level for a in out[:2]] == [NORMAL, CRITICAL]
    by_time = {a.timestamp: a for a in out}
    assert by_time[30.0].level == CRITICAL and by_time[30.0].raw_level == NORMAL
    assert by_time[32.0].level == NORMAL  # 30 s after the last CRITICAL observation, to WARNING
    assert by_time[32.0].since == 32.0 and by_time[30.0].since == 2.0


def test_fall_stops_at_the_level_the_conditions_support() -> None:
    c = Classifier(interval=1.0)
    warning_band = {"available": 15 * 10**8}  # 0.15: WARNING, and clear of critical + margin
    out = run(c, [(0.0, {"available": 5 * 10**8})] + [(t, warning_band) for t in range(1, 41)])
    levels = {a.timestamp: a.level for a in out}
    assert levels[29.0] == CRITICAL and levels[30.0] == WARNING and levels[40.0] == WARNING
    safe = run(c, [(float(t), {"available": 5 * 10**9}) for t in range(41, 71)])
    assert safe[-2].level == WARNING and safe[-1].level == NORMAL  # 30 s after t=40
    assert safe[-1].since == 70.0


@pytest.mark.parametrize(
    ("start", "band", "level"),
    [
        (19 * 10**8, [2 * 10**9, 24 * 10**8, 2499999999, 15 * 10**8], WARNING),
        (5 * 10**8, [10**9, 14 * 10**8, 1499999999], CRITICAL),
    ],
)
def test_values_inside_the_band_hold_the_level_however_long(
    start: int, band: list[int], level: Level
) -> None:
    c = Classifier(NO_FORECAST)
    steps = [(0.0, {"available": start})]
    steps += [(10.0 * (i + 1), {"available": band[i % len(band)]}) for i in range(40)]
    assert {a.level for a in run(c, steps)} == {level}


def test_values_inside_the_band_do_not_raise_the_level() -> None:
    c = Classifier()
    out = run(c, [(float(t), {"available": 24 * 10**8}) for t in range(0, 100, 2)])
    assert {a.level for a in out} == {NORMAL}
    assert {a.since for a in out} == {0.0}


def test_clearing_the_band_by_the_margin_lets_the_level_fall() -> None:
    c = Classifier(PressurePolicy(transition_period=0.0))
    out = run(c, [(0.0, {"available": 19 * 10**8}), (1.0, {"available": 2499999999}),
                  (2.0, {"available": 25 * 10**8})])  # fmt: skip
    assert [a.level for a in out] == [WARNING, WARNING, NORMAL]


def test_relative_margin_for_intensity_signals() -> None:
    c = Classifier(PressurePolicy(transition_period=0.0))
    out = run(c, [(0.0, {"psi": psi(20.0)}), (1.0, {"psi": psi(19.0)}), (2.0, {"psi": psi(18.99)})])
    assert [a.level for a in out] == [WARNING, WARNING, NORMAL]  # band down to 20 x 0.95


def test_soft_critical_becomes_actionable_after_the_grace_period() -> None:
    c = Classifier(PressurePolicy(soft_grace=10.0), interval=1.0)
    hot = {"psi": psi(0.0, 35.0)}
    out = run(c, [(float(t), hot) for t in range(0, 12)])
    assert all(a.level == CRITICAL for a in out)
    assert [a.actionable for a in out] == [False] * 10 + [True, True]


def test_grace_survives_dips_into_the_band_but_not_below_it() -> None:
    c = Classifier(PressurePolicy(soft_grace=10.0), interval=1.0)
    hot, band, cool = {"psi": psi(0.0, 35.0)}, {"psi": psi(0.0, 29.0)}, {"psi": psi(0.0, 20.0)}
    out = run(c, [(0.0, hot), (4.0, band), (8.0, hot), (10.0, hot)])
    assert [a.actionable for a in out] == [False, False, False, True]
    assert out[1].level == CRITICAL and out[1].raw_level == WARNING and not out[1].actionable
    out = run(c, [(12.0, cool), (14.0, hot), (23.0, hot), (24.0, hot)])
    assert [a.actionable for a in out] == [False, False, False, True]  # restarted at 14


def test_hard_critical_is_actionable_at_once_and_configurable() -> None:
    low = {"available": 5 * 10**8}
    assert Classifier().assess(sample(0.0, **low)).actionable
    soft = PressurePolicy(hard_signals=frozenset(), soft_grace=5.0)
    c = Classifier(soft, interval=1.0)
    out = run(c, [(float(t), low) for t in range(7)])
    assert [a.actionable for a in out] == [False] * 5 + [True, True]
    assert not any(r.is_hard for a in out for r in a.reasons)


def test_zero_grace_makes_soft_critical_actionable_at_once() -> None:
    a = Classifier(PressurePolicy(soft_grace=0.0)).assess(sample(psi=psi(0.0, 30.0)))
    assert a.actionable


def test_reasons_are_sorted_by_severity_then_table_order() -> None:
    a = assess_one(available=15 * 10**8, os_level=CRITICAL, psi=psi(70.0, 10.0))
    assert [(r.signal, r.level) for r in a.reasons] == [
        (Signal.OS_LEVEL, CRITICAL),
        (Signal.PSI_SOME, CRITICAL),
        (Signal.MEMORY_AVAILABLE, WARNING),
        (Signal.PSI_FULL, WARNING),
    ]
    assert a.top_reason is a.reasons[0]
    assert assess_one().top_reason is None


def test_assessment_to_dict_is_json_with_stable_names() -> None:
    a = assess_one(available=5 * 10**8, psi=psi(25.0, 0.0))
    doc = json.loads(json.dumps(assessment_to_dict(a)))
    assert doc["level"] == "CRITICAL" and doc["actionable"] is True
    assert [r["signal"] for r in doc["reasons"]] == ["memory.available", "psi.some"]
    assert doc["reasons"][0]["is_hard"] is True and doc["reasons"][1]["level"] == "WARNING"


def test_now_defaults_to_the_sample_time_and_drives_since() -> None:
    c = Classifier()
    assert c.assess(sample(5.0)).since == 5.0
    a = c.assess(sample(6.0, available=0), now=100.0)
    assert a.timestamp == 100.0 and a.since == 100.0


def test_clock_going_backwards_or_reset_starts_afresh() -> None:
    c = Classifier()
    c.assess(sample(100.0, available=0))
    a = c.assess(sample(50.0))
    assert a.level == NORMAL and a.since == 50.0
    c.assess(sample(60.0, available=0))
    c.reset()
    assert c.assess(sample(61.0)).level == NORMAL


def test_every_signal_has_one_table_row_and_a_stable_value() -> None:
    assert [spec.signal for spec in SIGNAL_TABLE] == list(Signal)
    assert [s.value for s in Signal] == [
        "memory.available", "gpu.headroom", "os.level", "psi.full", "psi.some",
        "swapout.rate", "pageout.rate", "forecast",
    ]  # fmt: skip
    assert metalmem.Level is Level and metalmem.pressure.Level is Level


def test_assess_on_a_real_sample() -> None:
    with metalmem.Sampler() as s:
        first = s.system()
        c = Classifier(interval=0.01)
        a = c.assess(first)
        assert a.level in Level and a.since == first.timestamp
        b = c.assess(s.system())
    assert b.timestamp >= a.timestamp


# --- properties --------------------------------------------------------------------------------

fractions = st.floats(0.0, 1.0, allow_nan=False)
# Mostly regular ticks (the forecast sees a trend), sometimes a gap past 5 intervals.
dts = st.one_of(st.sampled_from([0.5, 1.0, 2.0, 2.0, 3.0]), st.floats(0.05, 15.0))
maybe_psi = st.one_of(st.none(), st.builds(psi, st.floats(0.0, 100.0), st.floats(0.0, 100.0)))


@st.composite
def histories(draw: st.DrawFn, max_size: int = 12) -> list[SystemMemory]:
    """Sample sequences with increasing clocks and every signal in play; available memory
    is a random walk (steps or jumps), so trends near flat and steep both occur."""
    t = 1000.0
    swapouts = pageouts = 0
    available = draw(fractions)
    out: list[SystemMemory] = []
    for _ in range(draw(st.integers(0, max_size))):
        t += draw(dts)
        available = draw(
            st.one_of(
                fractions, st.floats(-0.03, 0.03).map(lambda d, a=available: min(max(a + d, 0), 1))
            )
        )
        swapouts = draw(st.sampled_from([swapouts, swapouts + 10**8, 0]))
        pageouts = draw(st.sampled_from([pageouts, pageouts + 10**9]))
        has_gpu = draw(st.booleans())
        out.append(
            sample(
                t,
                available=int(available * TOTAL),
                psi=draw(maybe_psi),
                os_level=draw(st.sampled_from([None, NORMAL, WARNING, CRITICAL])),
                gpu_limit=TOTAL if has_gpu else None,
                gpu_used=int(draw(fractions) * TOTAL) if has_gpu else None,
                swapouts=swapouts,
                pageouts=pageouts,
                counters_timestamp=draw(st.sampled_from([t, out[-1].counters_timestamp]))
                if out
                else t,
            )
        )
    return out


@st.composite
def monotonic_cases(draw: st.DrawFn) -> tuple[list[SystemMemory], SystemMemory, int, int]:
    """A history, the next sample, and two values of its available memory (low <= high),
    drawn anywhere or near the last value, where the trend is most sensitive."""
    history = draw(histories())
    last = history[-1] if history else sample(0.0)
    t = last.timestamp + draw(dts)
    near = (last.available or 0) / TOTAL
    value = st.one_of(fractions, st.floats(-0.02, 0.02).map(lambda d: min(max(near + d, 0), 1)))
    low, high = sorted((int(draw(value) * TOTAL), int(draw(value) * TOTAL)))
    return history, last._replace(timestamp=t, counters_timestamp=t), low, high


@settings(deadline=None, max_examples=200)
@given(monotonic_cases())
def test_less_available_memory_never_yields_a_lower_level(
    case: tuple[list[SystemMemory], SystemMemory, int, int],
) -> None:
    history, base, low, high = case
    results = []
    for available in (low, high):
        c = Classifier()
        for s in history:
            c.assess(s)
        results.append(c.assess(base._replace(available=available)))
    a_low, a_high = results
    assert a_low.level >= a_high.level
    assert a_low.raw_level >= a_high.raw_level
    if a_high.actionable:
        assert a_low.actionable
    if a_high.forecast_seconds is not None:
        assert a_low.forecast_seconds is not None
        assert a_low.forecast_seconds <= a_high.forecast_seconds


BANDS = [
    # (signal, entering value, band values) for the default policy; the band is what lies
    # between the entering threshold and that threshold cleared by the margin.
    ("available", 0.19, st.floats(0.15, 0.2499)),
    ("available", 0.05, st.floats(0.0, 0.1499)),
    ("gpu", 0.09, st.floats(0.051, 0.1499)),
    ("psi_some", 25.0, st.floats(19.0, 59.9)),
]


@pytest.mark.parametrize(("kind", "enter", "band"), BANDS)
@settings(deadline=None, max_examples=60)
@given(data=st.data())
def test_input_oscillating_inside_the_band_never_changes_the_level(
    kind: str, enter: float, band: st.SearchStrategy[float], data: st.DataObject
) -> None:
    # The forecast is off: a fast swing inside the band is a real fall it would report.
    c = Classifier(NO_FORECAST)

    def at(t: float, value: float) -> SystemMemory:
        if kind == "available":
            return sample(t, available=int(value * TOTAL))
        if kind == "gpu":
            return sample(t, gpu_limit=TOTAL, gpu_used=int((1 - value) * TOTAL))
        return sample(t, psi=psi(value, 0.0))

    entered = c.assess(at(0.0, enter))
    assert entered.level > NORMAL
    t = 0.0
    for value in data.draw(st.lists(band, min_size=1, max_size=40)):
        t += data.draw(st.floats(0.1, 120.0))
        a = c.assess(at(t, value))
        assert a.level == entered.level and a.since == 0.0


@settings(deadline=None, max_examples=150)
@given(histories(), st.lists(st.floats(0.1, 4.0), min_size=1, max_size=20), st.booleans())
def test_after_safe_values_the_level_is_normal_within_the_transition_period(
    history: list[SystemMemory], safe_dts: list[float], with_forecast: bool
) -> None:
    policy = (
        PressurePolicy()
        if with_forecast
        else PressurePolicy(warning_forecast=None, critical_forecast=None)
    )
    c = Classifier(policy)
    for s in history:
        c.assess(s)
    last = history[-1] if history else sample(0.0)
    t = t_safe = last.timestamp + safe_dts[0]
    # The trend is an input too: the forecast forgets a fall once it leaves its window.
    settle = policy.transition_period + (policy.forecast_window if with_forecast else 0.0)
    i = 0
    while True:
        a = c.assess(
            last._replace(
                available=TOTAL // 2, psi=psi(0.0, 0.0), os_level=NORMAL,
                gpu_used=0 if last.gpu_limit else None, timestamp=t, counters_timestamp=t,
            )
        )  # fmt: skip
        if t >= t_safe + settle:
            assert a.level == NORMAL and a.reasons == () and not a.actionable
        if t >= t_safe + settle + 10.0:
            break
        i += 1
        t += safe_dts[i % len(safe_dts)]


def test_set_policy_swaps_thresholds_and_keeps_the_level() -> None:
    clf = Classifier(PressurePolicy(transition_period=30.0), interval=1.0)
    # 15 % available: WARNING under the default 20 %.
    assert clf.assess(sample(0.0, available=15 * 10**8), now=0.0).level is WARNING
    clf.set_policy(PressurePolicy(warning_available=0.10, critical_available=0.05))
    # 15 % no longer votes WARNING, but a reload is not a recovery: the level falls only
    # after the transition period, as it would have without the reload.
    assert clf.assess(sample(1.0, available=16 * 10**8), now=1.0).level is WARNING
    assert clf.assess(sample(40.0, available=16 * 10**8), now=40.0).level is NORMAL
    # The new critical threshold applies at once.
    assert clf.assess(sample(41.0, available=4 * 10**8), now=41.0).level is CRITICAL


# --- the race: a forecast that cannot wait out soft_grace ------------------------------------


def _falling(classifier: metalmem.Classifier, per_second: int, start: int) -> Assessment:
    """Feed 3 s of available memory falling at ``per_second`` (bytes) from ``start``."""
    a = None
    for i in range(7):
        t = i * 0.5
        a = classifier.assess(samples.host(t, available=start - int(per_second * t)), t)
    assert a is not None
    return a


def test_a_forecast_whose_exhaustion_beats_a_stop_is_actionable_at_once() -> None:
    # total 10 GB: CRITICAL below 1 GB. At 500 MB/s from 5 GB, 3.5 GB are left after 3 s:
    # 7 s to exhaustion, 5 s to the critical threshold (a CRITICAL forecast, soft).
    policy = PressurePolicy(warning_forecast=60.0, critical_forecast=30.0, soft_grace=10.0)
    fast = _falling(Classifier(policy, interval=0.5, stop_seconds=11.0), 500 * 10**6, 5 * 10**9)
    assert fast.raw_level is Level.CRITICAL and fast.top_reason is not None
    assert fast.top_reason.signal is Signal.FORECAST and not fast.top_reason.is_hard
    assert fast.actionable  # 7 s to exhaustion < 11 s a stop takes: no soft_grace wait
    # The same fall where a stop is quicker than exhaustion waits for soft_grace as before.
    slow = _falling(Classifier(policy, interval=0.5, stop_seconds=5.0), 500 * 10**6, 5 * 10**9)
    assert slow.raw_level is Level.CRITICAL and not slow.actionable


def test_classifier_rejects_a_negative_stop_time() -> None:
    with pytest.raises(ValueError, match="stop_seconds"):
        Classifier(stop_seconds=-1.0)
