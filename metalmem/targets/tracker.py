"""The tracker: re-resolves configured and discovered targets and reports what changed."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from ..pins import Pin, PinStore
from ..sampler import Sampler
from ..unload import RouterModels
from .discovery import DEFAULT_DISCOVERY_PATTERN, discover, resolve, start_times
from .model import Target
from .proctable import creation_stamp
from .specs import DEFAULT_MAX_MATCHES, TargetSpec, TooManyMatches, check_pattern

log = logging.getLogger(__name__)

FULL_RESCAN = 60.0
"""Seconds at most between two full rescans of the host for discovery: what changes without a
new pid (a process exec'ing into a match, a rename) is found within this."""


@dataclass(frozen=True, slots=True)
class TargetChanges:
    """The result of one :meth:`TargetTracker.refresh`: all targets, and what changed."""

    targets: tuple[Target, ...]
    added: tuple[Target, ...]
    removed: tuple[Target, ...]


class TargetTracker:
    """Keeps the managed targets current: configured ones first, then discovered ones.

    A target whose key, identity and settings are unchanged stays the same object across
    refreshes; a process that exited is removed, and a restarted one is added as a new identity
    (the old one removed), even under the same key. A discovered process that a spec already
    names is left to the spec; a discovered key equal to a configured one gets ``#pid``.

    A spec that gives a bare ``pid`` is adopted through its :class:`~metalmem.pins.Pin`: the
    identity it had when the spec was first seen, kept across :meth:`configure` (a reload) and,
    with a state dir, across restarts. A pid that names another process than its pin, or that
    did not exist when the spec was first seen, is never adopted. Discovery that matches more
    than ``max_matches`` processes adds nothing that refresh (``refused`` says why).

    Not thread-safe: the watchdog thread refreshes it and publishes ``targets``.
    """

    def __init__(
        self,
        sampler: Sampler,
        specs: Sequence[TargetSpec] = (),
        *,
        discover_pattern: str | None = DEFAULT_DISCOVERY_PATTERN,
        proc_root: str | None = None,
        pins: PinStore | None = None,
        max_matches: int = DEFAULT_MAX_MATCHES,
        routers: RouterModels | None = None,
    ) -> None:
        self._sampler = sampler
        self._proc_root = proc_root
        self._routers = routers if routers is not None else RouterModels()
        self._pins = pins if pins is not None else PinStore()
        self._targets: tuple[Target, ...] = ()
        self._logged: set[tuple[str, int, float | None]] = set()
        self.refused: str | None = None
        self.configure(specs, discover_pattern, max_matches)

    def configure(
        self,
        specs: Sequence[TargetSpec],
        discover_pattern: str | None,
        max_matches: int = DEFAULT_MAX_MATCHES,
        *,
        sampler: Sampler | None = None,
    ) -> None:
        """Take new specs and discovery settings (a reload); pins of specs still configured
        are kept, the others dropped, new ones pinned now. The targets change at the next
        :meth:`refresh`. ``sampler`` reads the new pins' start times: a caller on another
        thread than the one that refreshes passes its own (a Sampler is not thread-safe)."""
        if discover_pattern is not None:
            check_pattern(discover_pattern, "discovery pattern")
        self._specs = tuple(specs)
        self._pattern = discover_pattern
        self._max_matches = max_matches
        self._last_scan: tuple[int | None, float, list[Target]] | None = None
        self._pins.retain(s.key for s in self._specs if s.pid is not None)
        # A new ``pid =`` spec is pinned now, not at the next refresh: a pid reused in between
        # would otherwise be what the agent "first saw".
        fresh = [
            s for s in self._specs
            if s.pid is not None and ((p := self._pins.get(s.key)) is None or p.pid != s.pid)
        ]  # fmt: skip
        reader = sampler if sampler is not None else self._sampler
        starts = start_times(reader, (s.pid for s in fresh if s.pid is not None))
        for spec in fresh:
            assert spec.pid is not None
            self._pin_first(spec, starts.get(spec.pid))

    @property
    def targets(self) -> tuple[Target, ...]:
        """The targets of the latest refresh."""
        return self._targets

    @property
    def pins(self) -> PinStore:
        return self._pins

    def refresh(self) -> TargetChanges:
        """Re-resolve the specs, re-run discovery and report the difference."""
        configured = self._pin(
            resolve(
                self._specs, self._sampler, proc_root=self._proc_root,
                max_matches=self._max_matches,
            )
        )  # fmt: skip
        merged = list(configured)
        if self._pattern is not None:
            taken_pids = {t.pid for t in configured}
            taken_keys = {t.key for t in configured}
            for t in self._discover():
                if t.pid in taken_pids:
                    continue
                if t.key in taken_keys:
                    t = replace(t, key=f"{t.key}#{t.pid}")
                taken_keys.add(t.key)
                merged.append(t)
        previous = set(self._targets)
        current = set(merged)
        kept = {t: t for t in self._targets if t in current}
        targets = tuple(kept.get(t, t) for t in merged)
        added = tuple(t for t in targets if t not in previous)
        removed = tuple(t for t in self._targets if t not in current)
        for t in removed:
            log.info("event=target_removed key=%s pid=%d source=%s", t.key, t.pid, t.source)
        for t in added:
            log.info(
                "event=target_added key=%s pid=%d start_time=%.2f priority=%s source=%s",
                t.key, t.pid, t.start_time, t.priority, t.source,
            )  # fmt: skip
        self._targets = targets
        return TargetChanges(targets, added, removed)

    def _discover(self) -> list[Target]:
        """Discovery's matches: a rescan of the host, or, while no pid was allocated since
        the last one (:func:`creation_stamp`; issue 15: the rescan was a fifth of an idle
        agent's CPU), the last matches that still exist. A full rescan at least every
        :data:`FULL_RESCAN` seconds finds what changed without a new pid (a process that
        exec'd into a match, a rename)."""
        assert self._pattern is not None
        stamp = creation_stamp(self._sampler, self._proc_root)
        now = time.monotonic()
        last = self._last_scan
        if (
            stamp is not None
            and last is not None
            and last[0] == stamp
            and now - last[1] < FULL_RESCAN
        ):
            root = self._proc_root or os.path.join(self._sampler.root, "proc")
            return [t for t in last[2] if os.path.exists(os.path.join(root, str(t.pid)))]
        found = self._rescan()
        self._last_scan = (stamp, now, found) if stamp is not None else None
        return found

    def _rescan(self) -> list[Target]:
        assert self._pattern is not None
        try:
            found = discover(
                self._sampler, self._pattern, proc_root=self._proc_root,
                max_matches=self._max_matches, routers=self._routers,
            )  # fmt: skip
        except TooManyMatches as exc:
            if self.refused != str(exc):
                log.error("event=discovery_refused error=%r action=manage_none", str(exc))
            self.refused = str(exc)
            return []
        if self.refused is not None:
            log.info("event=discovery_accepted pattern=%r matches=%d", self._pattern, len(found))
        self.refused = None
        return found

    def _pin_first(self, spec: TargetSpec, start_time: float | None) -> Pin:
        """Pin a ``pid =`` spec seen for the first time (at start, or a reload that added it
        or changed its pid) to the process its pid names now, or to nothing."""
        assert spec.pid is not None
        pin = Pin(spec.pid, start_time)
        self._pins.set(spec.key, pin)
        if start_time is None:
            log.warning("event=target_pid_absent key=%s pid=%d action=never_adopt",
                        spec.key, spec.pid)  # fmt: skip
        return pin

    def _pin(self, targets: list[Target]) -> list[Target]:
        """Keep a ``pid =`` target only while it is the process its pin adopted."""
        by_key = {t.key: t for t in targets}
        refused: set[str] = set()
        for spec in self._specs:
            if spec.pid is None:
                continue
            t = by_key.get(spec.key)
            pin = self._pins.get(spec.key)
            if pin is None or pin.pid != spec.pid:
                pin = self._pin_first(spec, t.start_time if t is not None else None)
            if t is None or t.start_time == pin.start_time:
                continue
            refused.add(spec.key)
            mark = (spec.key, t.pid, t.start_time)
            if mark not in self._logged:
                self._logged.add(mark)
                log.warning(
                    "event=target_pid_reused key=%s pid=%d start_time=%.2f pinned=%s "
                    "action=not_adopted",
                    t.key, t.pid, t.start_time,
                    "absent" if pin.start_time is None else f"{pin.start_time:.2f}",
                )  # fmt: skip
        return [t for t in targets if t.key not in refused]
