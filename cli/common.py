"""Pieces every command shares: exit codes, byte rendering, the duration option type."""

from __future__ import annotations

import math
from typing import Any

import click

import metalmem
from metalmem.limits import MAX_DURATION
from metalmem.targets import unmatched_targets
from metalmem.thresholdtext import format_thresholds
from metalmem.units import human_bytes

__all__ = [
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_USAGE",
    "DurationType",
    "format_thresholds",
    "human_bytes",
    "unmatched_targets",
]

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
