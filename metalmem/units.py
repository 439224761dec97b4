"""Sizes for people: doctor's findings, the CLI's tables and Kubernetes messages."""

from __future__ import annotations

__all__ = ["human_bytes"]


def human_bytes(value: int | None, unknown: str = "-") -> str:
    """Render bytes for people in binary units (``512 B``, ``4.0 GiB``); ``unknown`` for
    ``None`` (a table's ``-``, a Kubernetes message's ``unknown``)."""
    if value is None:
        return unknown
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
