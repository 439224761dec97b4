"""Pieces every command shares: exit codes, the duration option type, threshold rendering
(byte rendering and the unmatched-target check live in the library and are re-exported)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import click

import metalmem
from metalmem.limits import MAX_DURATION
from metalmem.pressure import SIGNAL_TABLE
from metalmem.targets import unmatched_targets as unmatched_targets
from metalmem.units import human_bytes as human_bytes

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class DurationType(click.ParamType):  # type: ignore[type-arg]  # generic only in click >= 8.2
    """A duration option (``500ms``, ``2s``, ``1.5m``, plain seconds) read by
    :func:`metalmem.parse_duration`; ``minimum`` is exclusive (an interval must be > 0) and
    ``maximum`` inclusive (``metalmem.limits`` says why every duration is bounded). A number
    from a config file is taken as seconds; booleans, NaN and infinities are refused."""

    name = "duration"

    def __init__(self, minimum: float | None = 0.0, maximum: float = MAX_DURATION) -> None:
        self.minimum = minimum
        self.maximum = maximum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            seconds = float(value)
            if not math.isfinite(seconds) or seconds < 0:
                self.fail(f"{value!r} is not a duration >= 0", param, ctx)
        else:
            try:
                seconds = metalmem.parse_duration(str(value))
            except ValueError as exc:
                self.fail(str(exc), param, ctx)
        if self.minimum is not None and seconds <= self.minimum:
            self.fail(f"{value!r} must be longer than {self.minimum:g}s", param, ctx)
        if seconds > self.maximum:
            self.fail(f"{value!r} is longer than the limit of {self.maximum:g}s", param, ctx)
        return seconds


_FMT = {spec.signal.value: spec.fmt for spec in SIGNAL_TABLE}


def _number(v: float) -> str:
    """Exact for whole numbers (bytes per second), shortest repr otherwise."""
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def format_thresholds(
    thresholds: Mapping[str, Mapping[str, float | None]], *, human: bool = False
) -> str:
    """``signal=warning/critical`` per signal (``-`` where a level is off), from
    :func:`metalmem.server.thresholds_dict` or /memstats' ``thresholds``.

    Plain numbers in the signal's unit make one log token (``human=False``); ``human`` uses the
    classifier's own renderings (``20.0%``, ``4.0 MiB/s``) for `status`, space-separated.
    """
    parts = []
    for signal, levels in thresholds.items():
        fmt = _FMT.get(signal) if human else None
        shown = [
            "-" if v is None else (fmt(v) if fmt is not None else _number(v))
            for v in (levels.get("warning"), levels.get("critical"))
        ]
        parts.append(
            f"{signal} {shown[0]} / {shown[1]}" if human else f"{signal}={'/'.join(shown)}"
        )
    return ("; " if human else ",").join(parts)
