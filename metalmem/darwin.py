"""macOS memory figures from the kernel's raw page counters: the one place they become bytes.

The native layer hands over ``host_statistics64``/sysctl page counts untouched (DESIGN.md), so
the formula lives here, in pure Python, where it is tested on any host against counters recorded
on real Macs (``shared/fixtures/macos-vm-samples.json``) and fed by tools that parse ``vm_stat``.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["derive_darwin"]

# vm_stat's labels in snake_case, with vm_stat's meanings (reference/macos-memory.md §1.1).
_REQUIRED = (
    "free",  # "Pages free": the kernel's free_count minus speculative_count
    "active",
    "inactive",
    "speculative",
    "wired_down",  # wire_count; on macOS it already includes the throttled pages
    "purgeable",
    "file_backed",  # external_page_count
    "anonymous",  # internal_page_count (purgeable pages included)
    "occupied_by_compressor",  # compressor_page_count: RAM holding compressed data
)
_EVENTS = ("pageins", "pageouts", "swapins", "swapouts")  # cumulative, in pages


def _pages(counters: Mapping[str, object], key: str) -> int:
    value = counters[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"derive_darwin: counter {key!r} must be a page count >= 0: {value!r}")
    return value


def derive_darwin(
    counters: Mapping[str, int], page_size: int, total: int | None
) -> dict[str, int | None]:
    """Derive byte figures from vm_stat-style page counters, the way Activity Monitor counts.

    ``counters`` uses ``vm_stat``'s labels in snake_case and its meanings: ``free`` excludes
    the speculative pages (the kernel's ``free_count`` includes them; the C layer subtracts),
    ``anonymous`` is ``internal_page_count``, ``file_backed`` is ``external_page_count``. It
    needs ``free, active, inactive, speculative, wired_down, purgeable, file_backed, anonymous,
    occupied_by_compressor``; the cumulative ``pageins, pageouts, swapins, swapouts`` are
    optional, and other keys (``throttled``, ``stored_in_compressor``, macOS 26's ``tagged*``
    lines, vm_stat's fault counters) are ignored. ``page_size`` is the kernel's page size
    (``vm_kernel_page_size``: 16384 on Apple Silicon even under Rosetta; section numbers here
    are reference/macos-memory.md's, §1.2). ``total`` is ``hw.memsize`` in bytes, or ``None``
    to sum the page queues (free + speculative + active + inactive + wired + compressor), which
    misses the pages in no queue (0.7 % of RAM on the recorded 128 GiB Mac, 1.6 % on the 32 GiB
    one), so ``available`` is then understated by that much.

    Returns bytes (``int``) under these keys:

    - ``app`` = anonymous - purgeable; ``wired`` = wired_down; ``compressed`` =
      occupied_by_compressor (the RAM the compressor occupies, not the logical pages it stores);
    - ``used`` = app + wired + compressed: Activity Monitor's "Memory Used";
    - ``available`` = total - used: what can be had without paging anyone's anonymous memory
      out, since file cache, purgeable and free pages can all be taken back;
    - ``cached`` = file_backed + purgeable: Activity Monitor's "Cached Files";
    - ``free`` (vm_stat's, no speculative pages), ``total``;
    - ``pageins, pageouts, swapins, swapouts``: cumulative bytes, ``None`` when not given.

    Activity Monitor is closed source; these are the community's reconstructions (§1.5, Stats
    app, macmon), checked against what it showed: on the only recorded sample with every
    counter (128 GiB, ``edgecontrol-17``) ``used`` is 61.3 % of RAM where it showed 63 %, and
    on ``facter-ng-229-pr`` ``cached`` is 5.84 GiB where it showed 5.74 GB. The stated
    tolerance is 3 % of RAM for both (tests/test_darwin.py).

    psutil's ``available`` is ``inactive + free`` (its free includes speculative pages, §1.5).
    It counts inactive anonymous pages as available, which they are only by compressing or
    swapping them, and misses the purgeable and active file pages that can be dropped. On the
    same 128 GiB sample it says 65.3 GiB available (49 % used, against Activity Monitor's 63 %)
    where this function says 49.6 GiB; on a near-starved 24 GiB Mac (``hmcl-4876``: 3,857 free
    pages, the compressor holding 1.9 M pages in 0.44 M) psutil says 6.8 GiB and this function
    4.8 GiB. GPU-wired Metal buffers are in ``wired`` here and in neither of psutil's terms.

    Invariants, for any input: every value is >= 0, ``app + wired + compressed == used``,
    ``used + available == total``, ``free`` and ``cached`` are at most ``available``. Counters
    that sum past ``total`` (a torn read, a wrong total) are clamped in the order wired,
    compressed, app, since the first two can least be reclaimed.

    Raises ``ValueError`` naming a missing or invalid counter (never a made-up 0), or for a
    ``page_size`` <= 0 or a negative ``total``.
    """
    missing = [k for k in _REQUIRED if k not in counters]
    if missing:
        raise ValueError(f"derive_darwin: missing counters {missing}")
    if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size <= 0:
        raise ValueError(f"derive_darwin: page_size must be a positive int: {page_size!r}")
    if total is not None and (isinstance(total, bool) or not isinstance(total, int) or total < 0):
        raise ValueError(f"derive_darwin: total must be None or an int >= 0: {total!r}")
    p = {k: _pages(counters, k) for k in _REQUIRED}
    if total is None:
        queued = ("free", "speculative", "active", "inactive", "wired_down")
        total = (sum(p[k] for k in queued) + p["occupied_by_compressor"]) * page_size

    wired = min(p["wired_down"] * page_size, total)
    compressed = min(p["occupied_by_compressor"] * page_size, total - wired)
    app = min(max(p["anonymous"] - p["purgeable"], 0) * page_size, total - wired - compressed)
    used = app + wired + compressed
    available = total - used
    out: dict[str, int | None] = {
        "total": total,
        "available": available,
        "used": used,
        "app": app,
        "wired": wired,
        "compressed": compressed,
        "cached": min((p["file_backed"] + p["purgeable"]) * page_size, available),
        "free": min(p["free"] * page_size, available),
    }
    for key in _EVENTS:
        out[key] = _pages(counters, key) * page_size if key in counters else None
    return out
