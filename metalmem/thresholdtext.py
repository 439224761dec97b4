"""The thresholds in force as text: one log token for the agent's lines, a readable line for
`metalmem-agent status`. Both read :func:`metalmem.server.thresholds_dict`'s shape."""

from __future__ import annotations

from collections.abc import Mapping

from .pressure import SIGNAL_TABLE, PressurePolicy

__all__ = ["format_thresholds", "thresholds_text"]

_FMT = {spec.signal.value: spec.fmt for spec in SIGNAL_TABLE}


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


def thresholds_text(policy: PressurePolicy) -> str:
    """The thresholds in force as one log token (the start and reload lines carry it)."""
    from .server import thresholds_dict  # prometheus_client: only where it runs

    return format_thresholds(thresholds_dict(policy))


def _number(v: float) -> str:
    """Exact for whole numbers (bytes per second), shortest repr otherwise."""
    return str(int(v)) if float(v).is_integer() else repr(float(v))
