"""macOS memory derivation from raw page counters (placeholder until issue 3 lands)."""

from __future__ import annotations

from typing import Any


def derive_darwin(counters: dict[str, int], page_size: int, total: int | None) -> dict[str, Any]:
    """Derive byte figures from vm_stat-style page counters; see issue 3."""
    raise NotImplementedError("derive_darwin lands with the macOS backend (issue 3)")
