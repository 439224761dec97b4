"""The eviction half of the loop: plan at CRITICAL, gate and block the victim, stop it on a
thread of its own, then settle, record and unblock.

The :class:`Evictor` runs on the loop thread (only :meth:`Evictor.run_stop` runs on the stop
thread, and it only fills in the in-flight stop's outcome); the :class:`~metalmem.watchdog.Watchdog`
calls it from its tick and publishes what :meth:`Evictor.fields` returns.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .blocks import RespawnBlocks
from .errors import Error
from .eviction import EvictionMode, Plan, Planner, SkipReason
from .gate import Refusal, SafetyGate
from .level import Level
from .pressure import Assessment, Classifier
from .process import DEFAULT_KILL_TIMEOUT, StopRecord, StopResult, stop
from .sampler import ProcessMemory, Sampler, SystemMemory
from .state import EvictionRecord, Listeners, SkipRecord, TargetLike
from .targets import Target

log = logging.getLogger(__name__)

__all__ = ["PUBLISH_TIMEOUT", "Evictor", "Stopper"]

Processes = Mapping[str, ProcessMemory | Error | OSError]


@dataclasses.dataclass(frozen=True, slots=True)
class _Settle:
    key: str
    baseline: int | None
    footprint: int | None
    deadline: float
    record: EvictionRecord


@dataclasses.dataclass(slots=True)
class InFlight:
    """A stop that was decided and published; the stop thread fills in ``outcome``."""

    victim: Target
    footprint: int | None
    reason: str
    available: int | None  # when it was chosen: the settle phase's baseline
    blocked_before: bool
    started: float
    deadline: float  # the latest it can end: grace + the SIGKILL wait
    thread: threading.Thread | None = None
    outcome: StopRecord | Refusal | None = None
    done: threading.Event = dataclasses.field(default_factory=threading.Event)


# How long a stop waits for the listeners to have taken what the tick published (the level
# change, the State, "evicting") before its first signal. They only record (the Kubernetes
# reporter's writes are its worker's), so this is milliseconds unless a listener is stuck.
PUBLISH_TIMEOUT = 1.0
# The shortest wait the headroom bound may ask for (next_wait): a tick costs ~0.2 ms.


# How a victim is stopped: the signal path by default; the Kubernetes reporter substitutes one
# that suspends through the owning object first (metalmem.kube).
Stopper = Callable[[Target, Sampler], StopRecord]


class Evictor:
    """Plans, gates, blocks, stops and settles, one victim at a time (kubelet: one per pass).

    ``sampler`` is the loop's (for the fresh sample before acting); stops get a Sampler of
    their own (a Sampler is not thread-safe), and so does :attr:`gate`, which checks each
    victim right before ``stopper`` is called (default: :func:`metalmem.process.stop`, which
    asks the gate again before its first signal). ``post`` hands listener calls to the
    notifier, ``barrier`` waits until it delivered what was published, and ``wake`` wakes the
    loop when a stop ends. ``adopted`` returns the targets as the tracker adopted them.
    """

    def __init__(
        self,
        sampler: Sampler,
        classifier: Classifier,
        planner: Planner | None,
        listeners: Listeners,
        *,
        post: Callable[..., None],
        barrier: Callable[[float], None],
        wake: Callable[[], None],
        adopted: Callable[[], Sequence[Target]],
        clock: Callable[[], float],
        state_dir: str | None = None,
        stopper: Stopper | None = None,
    ) -> None:
        self.sampler = sampler
        self.classifier = classifier
        self.planner = planner
        self.listeners = listeners
        self._post_all = post
        self._barrier = barrier
        self._wake = wake
        self._clock = clock
        self.blocks = RespawnBlocks(state_dir)
        # Identities whose stop found them gone already: never planned again (a zombie used
        # to be "evicted" every tick, issue 13). Bounded: one entry per exited target.
        self.spent: collections.deque[tuple[int, float]] = collections.deque(maxlen=256)
        self._stop_sampler = (
            Sampler(sampler.root, sampler.scope) if isinstance(sampler, Sampler) else sampler
        )
        self.inflight: InFlight | None = None
        self.gate = SafetyGate(
            self._stop_sampler,
            adopted,
            lambda: self.planner.policy.floor if self.planner is not None else 1,
        )
        self._stopper: Stopper = stopper or self._signal_stop
        self._eviction_times: collections.deque[float] = collections.deque(maxlen=1000)
        self._evictions: collections.deque[EvictionRecord] = collections.deque(maxlen=20)
        self._skips: collections.deque[SkipRecord] = collections.deque(maxlen=20)
        self._eviction_counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self._skip_counts: collections.Counter[str] = collections.Counter()
        self._reclaimed_total = 0
        self._settle: _Settle | None = None
        self._last_skip: SkipReason | None = None
        self._last_dry_run: str | None = None

    def close(self) -> None:
        """Release the stop path's own Sampler (opened here; an agent may restart many times
        in one process). Only once no stop is in flight."""
        if self._stop_sampler is not self.sampler and isinstance(self._stop_sampler, Sampler):
            self._stop_sampler.close()

    @property
    def mode(self) -> EvictionMode:
        """observe (no planner, or the policy says so), dry-run or enforce."""
        return self.planner.policy.mode if self.planner is not None else EvictionMode.OBSERVE

    def _signal_stop(self, target: Target, sampler: Sampler) -> StopRecord:
        return stop(target, sampler=sampler, gate=self.gate.check)

    def plan(
        self,
        assessment: Assessment,
        system: SystemMemory,
        processes: Mapping[str, ProcessMemory | Error | OSError],
        targets: Sequence[TargetLike],
        now: float,
    ) -> tuple[Plan | None, tuple[Target, SystemMemory] | None]:
        """Settle, unblock, plan; name at most one victim to stop (kubelet: one per pass),
        with the fresh sample it was chosen on. A stop in flight holds further evictions,
        as the settle phase does."""
        assert self.planner is not None
        managed = [t for t in targets if isinstance(t, Target)]
        self._check_settle(system, now)
        self._check_unblock(assessment, now)
        if assessment.level != Level.CRITICAL:
            # Nothing to plan below CRITICAL; ranking costs ~40 us at 16 targets (measured).
            self._last_skip = None
            self._last_dry_run = None
            return None, None
        plan = self.planner.plan(
            assessment,
            system,
            processes,
            managed,
            now,
            evictions=tuple(self._eviction_times),
            settling=self._settle is not None or self.inflight is not None,
        )
        # Wanted means the current sample itself says CRITICAL: while the reported level is
        # held up by hysteresis after a recovery, nothing is wanted and nothing is skipped.
        wanted = assessment.raw_level == Level.CRITICAL
        if not wanted:
            self._last_skip = None
            self._last_dry_run = None
            return plan, None
        if not plan.victims:
            self._last_dry_run = None
            if not wanted or plan.skip_reason is None:
                self._last_skip = None
            elif plan.skip_reason != self._last_skip:
                self._record_skip(plan)
            return plan, None
        self._last_skip = None
        victim = plan.victims[0]
        if self.mode == EvictionMode.DRY_RUN:
            if victim.key != self._last_dry_run:
                self._last_dry_run = victim.key
                self._record_dry_run(victim, plan, assessment, processes)
            return plan, None
        # Check again before acting (earlyoom): choosing took time and memory may be back.
        fresh = self.sampler.system()
        recheck = self.planner.plan(
            assessment, fresh, processes, managed, now, evictions=tuple(self._eviction_times)
        )
        if not recheck.victims:
            log.info("event=evict_cancelled reason=recovered_before_acting")
            return recheck, None
        return recheck, (recheck.victims[0], fresh)

    def _footprint(
        self, key: str, processes: Mapping[str, ProcessMemory | Error | OSError]
    ) -> int | None:
        p = processes.get(key)
        return p.footprint if isinstance(p, ProcessMemory) else None

    def _record_skip(self, plan: Plan) -> None:
        assert plan.skip_reason is not None
        self._last_skip = plan.skip_reason
        self._skip_counts[plan.skip_reason.value] += 1
        rec = SkipRecord(plan.skip_reason, plan.explanation, time.time())
        self._skips.append(rec)
        log.warning("event=eviction_skipped reason=%s detail=%r", rec.reason, rec.explanation)
        self._post_all(self.listeners.on_skip, rec)

    def _record_refusal(self, refusal: Refusal) -> None:
        """A stop the safety gate refused: a skip like the planner's, once per change."""
        if refusal.reason == self._last_skip:
            return
        self._last_skip = refusal.reason
        self._skip_counts[refusal.reason.value] += 1
        rec = SkipRecord(refusal.reason, f"safety gate: {refusal.detail}", time.time())
        self._skips.append(rec)
        log.warning("event=eviction_skipped reason=%s detail=%r", rec.reason, rec.explanation)
        self._post_all(self.listeners.on_skip, rec)

    def _record_dry_run(
        self,
        victim: Target,
        plan: Plan,
        assessment: Assessment,
        processes: Mapping[str, ProcessMemory | Error | OSError],
    ) -> None:
        reason = assessment.top_reason.signal.value if assessment.top_reason else "-"
        rec = EvictionRecord(
            victim.key,
            victim.pid,
            victim.priority.value,
            reason,
            self._footprint(victim.key, processes),
            "dry-run",
            None,
            0.0,
            time.time(),
            plan.explanation,
        )
        self._eviction_counts[(reason, "dry-run")] += 1
        self._evictions.append(rec)
        log.warning(
            "event=would_evict key=%s pid=%d detail=%r", victim.key, victim.pid, plan.explanation
        )
        self._post_all(self.listeners.on_eviction, rec)

    def begin(
        self,
        chosen: tuple[Target, SystemMemory],
        assessment: Assessment,
        system: SystemMemory,
        processes: Mapping[str, ProcessMemory | Error | OSError],
    ) -> InFlight | None:
        """Gate and block the victim; the stop itself starts once this tick is published."""
        victim, fresh = chosen
        footprint = self._footprint(victim.key, processes)
        reason = assessment.top_reason.signal.value if assessment.top_reason else "-"
        if self.planner is not None:
            victim = dataclasses.replace(
                victim, stop=victim.stop.with_default_grace(self.planner.policy.grace)
            )
        refusal = self.gate.check(victim)
        if refusal is not None:
            self._record_refusal(refusal)
            return None
        # Block first, so nothing can respawn it while it stops (LLMKube sets it before too).
        # A block that was there before this stop (an earlier victim under the same key) is
        # never cleared by this one's outcome.
        blocked_before = victim.key in self.blocks
        self.blocks.block(victim.key, pid=victim.pid, footprint=footprint, reason=reason)
        now = self._clock()
        self.inflight = InFlight(
            victim, footprint, reason, fresh.available, blocked_before, now,
            now + victim.stop.grace_seconds + DEFAULT_KILL_TIMEOUT,
        )  # fmt: skip
        log.warning(
            "event=evict key=%s pid=%d priority=%s footprint=%s reason=%s",
            victim.key, victim.pid, victim.priority.value, footprint, reason,
        )  # fmt: skip
        return self.inflight

    def announce(self, flight: InFlight) -> None:
        """Say "evicting" (``on_evicting``), before the stop's first signal."""
        victim = flight.victim
        rec = EvictionRecord(
            victim.key, victim.pid, victim.priority.value, flight.reason, flight.footprint,
            "evicting", None, 0.0, time.time(), "stop starting",
        )  # fmt: skip
        self._post_all(self.listeners.on_evicting, rec)

    def run_stop(self, flight: InFlight) -> None:
        """The stop: after the notifier delivered what this tick published, the gate once
        more, then the stopper (which asks the gate again right before its first signal)."""
        try:
            self._barrier(PUBLISH_TIMEOUT)
            refusal = self.gate.check(flight.victim)
            flight.outcome = (
                refusal if refusal is not None else self._stopper(flight.victim, self._stop_sampler)
            )
        except Exception as exc:  # the stopper must not take the loop down with it
            log.exception("event=stop_error key=%s", flight.victim.key)
            v = flight.victim
            flight.outcome = StopRecord(
                v.key, v.pid, v.start_time, StopResult.FAILED, (),
                self._clock() - flight.started, f"stopper raised {type(exc).__name__}: {exc}",
            )  # fmt: skip
        finally:
            flight.done.set()
            self._wake()  # the loop collects it

    def collect(self) -> None:
        """Record a finished stop (on the loop thread): block, spent identity, pacing,
        settle phase or eviction record, as the stop's outcome says."""
        flight = self.inflight
        if flight is None or not flight.done.is_set():
            return
        self.inflight = None
        victim, outcome = flight.victim, flight.outcome
        if outcome is None or isinstance(outcome, Refusal):
            if not flight.blocked_before:
                self.blocks.clear_key(victim.key)
            if isinstance(outcome, Refusal):
                self._record_refusal(outcome)
            return
        result = outcome
        now = self._clock()
        if result.result in (StopResult.DENIED, StopResult.ALREADY_GONE):
            if not flight.blocked_before:
                self.blocks.clear_key(victim.key)
            if result.result is StopResult.ALREADY_GONE:
                self.spent.append(victim.identity)
        else:
            self._eviction_times.append(now)
        rec = EvictionRecord(
            victim.key, victim.pid, victim.priority.value, flight.reason, flight.footprint,
            result.result.value, None, result.duration, time.time(), result.message,
        )  # fmt: skip
        self._eviction_counts[(flight.reason, rec.result)] += 1
        if result.result.is_success:
            policy = self.planner.policy if self.planner is not None else None
            timeout = policy.settle_timeout if policy is not None else 0.0
            self._settle = _Settle(
                victim.key, flight.available, flight.footprint, now + timeout, rec
            )
        else:
            self._evictions.append(rec)
            self._post_all(self.listeners.on_eviction, rec)

    def fields(self) -> dict[str, Any]:
        """The State's eviction fields as they stand now."""
        flight = self.inflight
        return {
            "blocked": self.blocks.keys(),
            "settling": self._settle.key if self._settle is not None else None,
            "evictions": tuple(self._evictions),
            "skips": tuple(self._skips),
            "eviction_counts": dict(self._eviction_counts),
            "skip_counts": dict(self._skip_counts),
            "reclaimed_total": self._reclaimed_total,
            "stopping": flight.victim.key if flight is not None else None,
            "busy_until": flight.deadline if flight is not None else None,
        }

    def _check_settle(self, system: SystemMemory, now: float) -> None:
        """End the settle phase once memory came back (a share of the footprint) or timed out."""
        settle = self._settle
        if settle is None:
            return
        share = self.planner.policy.settle_share if self.planner is not None else 0.5
        rose = None
        if settle.baseline is not None and system.available is not None:
            rose = max(0, system.available - settle.baseline)
        back = (
            rose is not None and settle.footprint is not None and rose >= share * settle.footprint
        )
        if not back and now < settle.deadline:
            return
        rec = dataclasses.replace(settle.record, reclaimed=rose)
        self._reclaimed_total += rose or 0
        self._settle = None
        self._evictions.append(rec)
        log.info("event=settled key=%s reclaimed=%s in_time=%s", rec.key, rose, back)
        self._post_all(self.listeners.on_eviction, rec)

    def _check_unblock(self, assessment: Assessment, now: float) -> None:
        if self._settle is not None or self.inflight is not None or not self.blocks.keys():
            return
        held = now - assessment.since
        if assessment.level == Level.NORMAL and held >= self.classifier.policy.transition_period:
            cleared = self.blocks.clear()
            log.info("event=respawn_unblocked keys=%s normal_for=%.1fs", ",".join(cleared), held)
            self._post_all(self.listeners.on_unblock, cleared)
