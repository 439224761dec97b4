"""The targets the loop sees: the tracker, re-resolved every few seconds, and the configured
targets that match nothing, noted once per change."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence

from .config import AgentConfig
from .errors import ConfigError
from .pins import PinStore
from .sampler import Sampler
from .targets import Target, TargetTracker, TooManyMatches, discover, unmatched_targets

__all__ = ["TARGET_REFRESH", "ManagedTargets"]

log = logging.getLogger("metalmem.agent")

TARGET_REFRESH = 5.0  # seconds between re-resolving targets and re-running discovery


class ManagedTargets:
    """``config``'s targets and discovery over ``sampler``. :meth:`current` runs on the loop
    thread only (the tracker is not thread-safe); :attr:`unmatched` may be read anywhere."""

    def __init__(self, sampler: Sampler, config: AgentConfig) -> None:
        self._sampler = sampler
        self._specs = config.targets
        self._tracker = TargetTracker(
            sampler,
            config.targets,
            discover_pattern=config.discover,
            pins=PinStore(config.state_dir),
            max_matches=config.max_matches,
        )
        self._tracker.refresh()  # discovery that matches too much is bad input: refuse it now
        if self._tracker.refused is not None:
            raise ConfigError(self._tracker.refused, key="discover")
        self._refresh_at = time.monotonic() + TARGET_REFRESH
        self.unmatched: tuple[str, ...] = ()

    @property
    def adopted(self) -> Sequence[Target]:
        """The targets as the tracker adopted them (what the safety gate trusts)."""
        return self._tracker.targets

    def current(self) -> Sequence[Target]:
        now = time.monotonic()
        if now >= self._refresh_at:
            self._refresh_at = now + TARGET_REFRESH
            self._tracker.refresh()  # logs what was added and removed
            self._note_unmatched()
        return self._tracker.targets

    def configure(self, old: AgentConfig, new: AgentConfig) -> None:
        """Take a reload's targets and discovery (refreshed at the next tick); raises
        ConfigError, changing nothing, when the new discovery would match over its cap."""
        # This runs on the reloading thread while the loop samples: a Sampler of its own.
        own = isinstance(self._sampler, Sampler)
        opened = Sampler(self._sampler.root, self._sampler.scope) if own else None
        with opened if opened is not None else contextlib.nullcontext(self._sampler) as sampler:
            if new.discover is not None:
                try:
                    discover(sampler, new.discover, max_matches=new.max_matches)
                except TooManyMatches as exc:
                    raise ConfigError(str(exc), key="discover") from None
            if (new.targets, new.discover, new.max_matches) != (
                old.targets, old.discover, old.max_matches
            ):  # fmt: skip
                # The same tracker: its pins must survive a reload (issue 13, finding 1).
                self._tracker.configure(new.targets, new.discover, new.max_matches, sampler=sampler)
                self._specs = new.targets
                self._refresh_at = 0.0

    def _note_unmatched(self) -> None:
        """Name configured targets that match nothing, once per change (a typo is silent
        otherwise); /memstats and `status` show the same list."""
        unmatched = tuple(unmatched_targets(self._specs, self._tracker.targets))
        if unmatched != self.unmatched:
            if unmatched:
                log.warning("event=targets_unmatched keys=%s", ",".join(unmatched))
            elif self.unmatched:
                log.info("event=targets_matched keys=%s", ",".join(self.unmatched))
            self.unmatched = unmatched
