"""A check's verdict and finding, and the figures several checks derive from the facts
(the GPU ceiling, the host's baseline, the recommended wired limit)."""

from __future__ import annotations

import dataclasses
import enum
import math

from .facts import HostFacts, MiB

MODEL_HEADROOM = 0.9
"""A model above this share of the GPU ceiling leaves too little room for its KV cache and
compute buffers: mlx-lm's ``wired_limit()`` warns past 0.9 x max_recommended_working_set_size
(reference/macos-memory.md §4.4)."""


class Verdict(enum.StrEnum):
    """A check's outcome; the values are the stable strings of the table and the JSON."""

    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclasses.dataclass(frozen=True, slots=True)
class Finding:
    """One check's verdict, a one-line finding and the exact fix (``None``: nothing to do)."""

    check: str
    verdict: Verdict
    finding: str
    fix: str | None = None


Result = tuple[Verdict, str, str | None]
DOC = "docs/dedicated-hosts.md"


def recommended_wired_limit_mb(total: int, baseline: int, warning_available: float) -> int:
    """The largest ``iogpu.wired_limit_mb`` that keeps a GPU filled to its ceiling from
    pushing the host below metalmem's WARNING threshold (docs/dedicated-hosts.md).

    ``total`` is RAM and ``baseline`` what the host uses with no model loaded, in bytes;
    ``warning_available`` the WARNING fraction. Wired memory counts as used, so the GPU
    ceiling plus the baseline must stay within ``total - ceil(w * total)``: the same threshold
    the planner aims back above (``Planner.needed_bytes``). Whole MiB, never below 0.
    """
    room = total - math.ceil(warning_available * total) - baseline
    return max(0, room // MiB)


def pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%"


def gpu_ceiling(facts: HostFacts) -> tuple[int | None, str]:
    """Bytes the GPU may use and where that figure comes from."""
    if facts.wired_limit_mb:
        return facts.wired_limit_mb * MiB, f"iogpu.wired_limit_mb={facts.wired_limit_mb}"
    if facts.gpu is not None and facts.gpu.limit:
        what = "recommendedMaxWorkingSetSize" if facts.platform == "darwin" else "NVML total"
        return facts.gpu.limit, what
    if facts.system is not None and facts.system.gpu_limit:
        return facts.system.gpu_limit, "the sampler's GPU limit"
    return None, "unknown"


def baseline(facts: HostFacts) -> int | None:
    """Memory in use apart from the managed targets: ``total - available - footprints``."""
    s = facts.system
    if s is None or s.total is None or s.available is None:
        return None
    return max(0, s.total - s.available - (facts.managed_footprint or 0))
