"""Plan evictions: which managed targets to stop, or the named reason not to (DESIGN.md, Eviction).

The planner is pure: the same assessment, samples, targets, clock and eviction history give the
same :class:`Plan`, whatever order the targets come in. It decides and explains; it never signals
anything (``process.stop`` does that, driven by the watchdog, one victim at a time, sampling
again between two).

Gates, in DESIGN.md's order; the first that applies names the plan's :class:`SkipReason` and
leaves it without victims. The ranked table is filled in every case, so ``explain`` works when
nothing is done too.

1. ``mode`` is OBSERVE: ``disabled`` (DRY_RUN and ENFORCE plan alike; the watchdog decides
   whether to act).
2. The assessment is below CRITICAL or not actionable (soft grace still running):
   ``not_actionable``.
3. A settle phase is still waiting for the last victim's memory (``blocked_settling``), an
   eviction happened less than ``cooldown`` ago (``cooldown``), or ``max_evictions`` happened
   within ``window`` (``budget_exhausted``).
4. Guard: the managed footprint must be at least ``min_managed_share`` of the *used* memory,
   ``total - available`` (``below_guard``): when most of what is in use belongs to other
   programs, stopping a model is not the fix. Every live target counts, protected ones too.
   LLMKube divides by total RAM instead (reference/peers.md b1), which measures how big the
   models are, not whose memory is in use.
5. Floor: the last ``floor`` live targets are never evicted (``floor``; LLMKube #383). Live
   means a trusted sample, protected and unsized targets included. With no live target at all
   the floor has nothing to keep, and the skip is ``no_candidates``.
6. A Kubernetes target's object is being read for the first time (``metadata_pending``): its
   priority is unknown, so any victim could be the wrong one; the read takes under a refresh.
7. Nobody to evict: every live target is protected (``all_protected``), the only candidates'
   objects could not be read (``metadata_pending``), or there is no live target with a known
   footprint (``no_candidates``).

Otherwise the victims are the shortest prefix of the ranking whose footprints add up to
``needed_bytes``: what brings available memory back to the warning threshold, plus
``min_reclaim`` (kubelet ``eviction-minimum-reclaim``, which stops evict-one, re-trigger,
evict-one loops), at least one target, and never more than leaves ``floor`` live targets.

Ranking (kubelet ``rankMemoryPressure``): :data:`RANKING` is a table of questions, each one
comparator, chained as by :func:`ordered_by`: eligible rows first, lower priority first, over
its declared budget first, larger footprint first, the newest process first, then key and pid,
so that the order is total
and does not depend on input order.

Processes are keyed by :attr:`Target.key`; a sample must also name the target's process
(same pid, and same start time where the sample has one) or it is not trusted: LLMKube keyed
RSS by one name and looked it up by another (reference/peers.md b1), and a sample of the wrong
process would size the wrong victim.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeGuard

from .errors import AccessDenied
from .level import Level
from .limits import MAX_DURATION, MAX_GRACE
from .pressure import Assessment, PressurePolicy
from .sampler import ProcessMemory, SystemMemory
from .targets import Metadata, Target

if TYPE_CHECKING:
    from _typeshed import SupportsRichComparison

__all__ = [
    "COMPARATORS",
    "RANKING",
    "Candidate",
    "CandidateState",
    "Comparator",
    "EvictionMode",
    "EvictionPolicy",
    "Plan",
    "Planner",
    "SkipReason",
    "compare_candidates",
    "comparing",
    "ordered_by",
]


class EvictionMode(enum.StrEnum):
    """What the agent does with a plan; the values are the stable strings of flags and logs."""

    OBSERVE = "observe"
    """Do not plan evictions at all (every plan is skipped as ``disabled``)."""
    DRY_RUN = "dry-run"
    """Plan and report would-be victims; stop nothing."""
    ENFORCE = "enforce"
    """Plan and stop the victims."""


class SkipReason(enum.StrEnum):
    """Why a plan has no victims; stable strings for logs, metric labels and events."""

    DISABLED = "disabled"
    NOT_ACTIONABLE = "not_actionable"
    BLOCKED_SETTLING = "blocked_settling"
    COOLDOWN = "cooldown"
    BUDGET_EXHAUSTED = "budget_exhausted"
    BELOW_GUARD = "below_guard"
    FLOOR = "floor"
    ALL_PROTECTED = "all_protected"
    NO_CANDIDATES = "no_candidates"
    METADATA_PENDING = "metadata_pending"
    """Every candidate is a Kubernetes target whose object was not read yet."""
    # The safety gate's refusals (metalmem.gate): found right before a stop, from fresh facts.
    NOT_ADOPTED = "not_adopted"
    IDENTITY_CHANGED = "identity_changed"
    GONE = "gone"
    PROTECTED = "protected"
    PRIORITY_CHANGED = "priority_changed"
    UNVERIFIABLE = "unverifiable"
    NEVER_TARGET = "never_target"


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


_UP_TO_MAX = f"a duration in [0, {MAX_DURATION:g}] s"

# (field, check, what the value must be): one row per numeric field of EvictionPolicy.
# Durations are bounded (metalmem.limits says why).
_POLICY_CHECKS: tuple[tuple[str, Callable[[object], bool], str], ...] = (
    ("min_managed_share", lambda v: _is_number(v) and 0 <= v <= 1, "a fraction in [0, 1]"),
    ("floor", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    (
        "grace",
        lambda v: _is_number(v) and 0 <= v <= MAX_GRACE,
        f"a duration in [0, {MAX_GRACE:g}] s",
    ),
    ("cooldown", lambda v: _is_number(v) and 0 <= v <= MAX_DURATION, _UP_TO_MAX),
    ("max_evictions", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    (
        "window",
        lambda v: _is_number(v) and 0 < v <= MAX_DURATION,
        f"a duration in (0, {MAX_DURATION:g}] s",
    ),
    ("min_reclaim", lambda v: _is_int(v) and v >= 0, "bytes >= 0 (an integer)"),
    ("settle_timeout", lambda v: _is_number(v) and 0 <= v <= MAX_DURATION, _UP_TO_MAX),
    ("settle_share", lambda v: _is_number(v) and 0 < v <= 1, "a fraction in (0, 1]"),
)


@dataclasses.dataclass(frozen=True, slots=True)
class EvictionPolicy:
    """How eviction is planned and paced; validated at construction.

    Sizes are bytes, durations seconds. ``mode`` also accepts its string value. Raises
    ``ValueError`` naming the field for a value of the wrong type or out of range.
    """

    mode: EvictionMode = EvictionMode.OBSERVE
    """Observe-only unless configured (DESIGN.md: eviction is opt-in)."""
    min_managed_share: float = 0.5
    """Guard: the managed footprint must be at least this share of used memory
    (``total - available``), in [0, 1]; 0 turns the guard off. LLMKube's 50 %, but of used
    memory, not of total RAM."""
    floor: int = 1
    """The last ``floor`` live targets are never evicted (protected ones count), >= 0."""
    grace: float = 10.0
    """SIGTERM -> SIGKILL grace for the actor, >= 0 (LLMKube and llama-swap wait 10 s)."""
    cooldown: float = 30.0
    """Least time between two evictions, >= 0 (kubelet waits up to 30 s for pod cleanup)."""
    max_evictions: int = 3
    """At most this many evictions within ``window``, >= 1: a mis-tuned threshold cannot empty
    the host (reference/peers.md c8)."""
    window: float = 600.0
    """The window of ``max_evictions``, > 0 seconds."""
    min_reclaim: int = 256 * 2**20
    """Bytes reclaimed beyond the warning threshold (kubelet ``eviction-minimum-reclaim``), >= 0."""
    settle_timeout: float = 30.0
    """How long the watchdog waits for a victim's memory to come back after a stop, >= 0."""
    settle_share: float = 0.5
    """Share of the victim's footprint that must come back to end the settle phase, in (0, 1]."""

    def __post_init__(self) -> None:
        try:
            mode = EvictionMode(self.mode)
        except ValueError as exc:
            raise ValueError(
                f"EvictionPolicy.mode must be one of {', '.join(m.value for m in EvictionMode)}, "
                f"got {self.mode!r}"
            ) from exc
        object.__setattr__(self, "mode", mode)
        for name, check, what in _POLICY_CHECKS:
            value = getattr(self, name)
            if not check(value):
                raise ValueError(f"EvictionPolicy.{name} must be {what}, got {value!r}")


class CandidateState(enum.StrEnum):
    """Where a target stands in the ranked table; the order of the members is the table's."""

    ELIGIBLE = "eligible"
    """Live, unprotected, footprint known: may be a victim."""
    PROTECTED = "protected"
    """Live but protected: never a victim (counts toward the floor and the guard)."""
    UNSIZED = "unsized"
    """Live, footprint unknown: cannot be sized, so never a victim (counts toward the floor)."""
    PENDING = "pending"
    """Live, a Kubernetes target whose object was not read (yet): its priority and protection
    are unknown, so never a victim (counts toward the floor). While a first read is in flight
    (:attr:`Metadata.PENDING`) no other target is a victim either."""
    GONE = "gone"
    """No trusted sample: exited, inaccessible, not sampled, or the sample names another
    process. Not live."""

    @property
    def order(self) -> int:
        """0 for eligible up to 3 for gone: the table lists eligible rows first."""
        return _STATE_ORDER[self]


_STATE_ORDER = {s: i for i, s in enumerate(CandidateState)}


@dataclasses.dataclass(frozen=True, slots=True)
class Candidate:
    """One row of the ranked table.

    ``footprint`` is the sampled footprint in bytes (``None``: unknown or untrusted);
    ``over_budget`` whether it exceeds the target's declared ``budget``; ``rank`` the 1-based
    row (1 is the first to go); ``why`` a short text on the row's standing.
    """

    target: Target
    footprint: int | None
    over_budget: bool
    rank: int
    why: str
    state: CandidateState = CandidateState.ELIGIBLE

    @property
    def is_live(self) -> bool:
        """Whether the process has a trusted sample (eligible, protected or unsized)."""
        return self.state is not CandidateState.GONE

    @property
    def is_eligible(self) -> bool:
        """Whether it may be a victim."""
        return self.state is CandidateState.ELIGIBLE


# --- ranking ---------------------------------------------------------------------------------

Comparator = Callable[[Candidate, Candidate], int]
"""Negative when the first should be evicted before the second, positive after, 0 undecided."""

RankKey = Callable[[Candidate], "SupportsRichComparison"]
"""One question of the ranking as a sort key: the smaller value is evicted first."""


def by_state(c: Candidate) -> int:
    """Eligible rows first, then protected, unsized, gone."""
    return c.state.order


def by_priority(c: Candidate) -> int:
    """Lower priority first (batch < low < normal < high < critical)."""
    return c.target.priority.rank


def by_over_budget(c: Candidate) -> bool:
    """Over its declared budget first (kubelet ``exceedMemoryRequests``)."""
    return not c.over_budget


def by_footprint(c: Candidate) -> tuple[bool, int]:
    """Larger footprint first; an unknown one last (it cannot be counted on)."""
    footprint = c.footprint
    return (True, 0) if footprint is None else (False, -footprint)


def by_start(c: Candidate) -> float:
    """Tie-break: the newest process first (the latest start time). Among otherwise equal
    rows the newest most likely caused the pressure, and stopping it is what a fail-closed
    pre-flight admission would have done; the older ones keep their warm caches and clients.
    (LLMKube's own watchdog evicts the oldest; docs/configuration.md says why we differ.)"""
    return -c.target.start_time


def by_key(c: Candidate) -> str:
    """Tie-break: key, in code-point order."""
    return c.target.key


def by_pid(c: Candidate) -> tuple[int, float]:
    """Last tie-break: pid, then start time (keys are unique among live targets)."""
    return (c.target.pid, c.target.start_time)


RANKING: tuple[tuple[str, RankKey], ...] = (
    ("state", by_state),
    ("priority", by_priority),
    ("over_budget", by_over_budget),
    ("footprint", by_footprint),
    ("started", by_start),
    ("key", by_key),
    ("pid", by_pid),
)
"""The eviction order as a table: (name, question); the first question that tells two rows
apart decides. Each question is a sort key, turned into a comparator by :func:`comparing` for
:func:`ordered_by`; :meth:`Planner.rank` sorts by the keys in one pass, which at 256 targets
halved ``rank`` (1.15 ms to 0.6 ms) against ``cmp_to_key(compare_candidates)``."""


def comparing(key: RankKey) -> Comparator:
    """The comparator that asks one question (kubelet ``cmpFunc``)."""

    def compare(a: Candidate, b: Candidate) -> int:
        ka, kb = key(a), key(b)
        return bool(kb < ka) - bool(ka < kb)  # type: ignore[operator]

    return compare


def ordered_by(*comparators: Comparator) -> Comparator:
    """Chain comparators: the first that tells two rows apart decides (kubelet ``orderedBy``)."""

    def compare(a: Candidate, b: Candidate) -> int:
        for cmp in comparators:
            result = cmp(a, b)
            if result:
                return result
        return 0

    return compare


COMPARATORS: tuple[tuple[str, Comparator], ...] = tuple(
    (name, comparing(key)) for name, key in RANKING
)
""":data:`RANKING` as comparators."""

compare_candidates: Comparator = ordered_by(*(cmp for _, cmp in COMPARATORS))
"""The full eviction order: negative when ``a`` goes before ``b``."""


_KEYS: tuple[RankKey, ...] = tuple(key for _, key in RANKING)


def _sort_key(c: Candidate) -> tuple[SupportsRichComparison, ...]:
    """:data:`RANKING`'s keys of one row, in order (the reference for :func:`_row_key`)."""
    return tuple([key(c) for key in _KEYS])


def _row_key(
    t: Target, footprint: int | None, over: bool, state: CandidateState
) -> tuple[SupportsRichComparison, ...]:
    """:func:`_sort_key` of the row these fields would make, written out: ``rank`` runs on
    every CRITICAL tick, and six key calls per row plus a second Candidate per row were most
    of ``Planner.plan`` (measured: 45 us at 16 targets). A test keeps the two equal."""
    return (
        state.order,
        t.priority.rank,
        not over,
        (True, 0) if footprint is None else (False, -footprint),
        -t.start_time,
        t.key,
        (t.pid, t.start_time),
    )


def _first(row: tuple[Any, ...]) -> Any:
    return row[0]


def deciding_comparator(a: Candidate, b: Candidate) -> str | None:
    """The name of the :data:`RANKING` row that orders ``a`` against ``b`` (``None``: equal)."""
    for name, cmp in COMPARATORS:
        if cmp(a, b):
            return name
    return None


# --- the plan --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    """The planner's answer for one tick.

    ``victims`` are in the order to stop them (the watchdog stops the first, samples and plans
    again). ``needed_bytes`` is what eviction would have to reclaim now (0 when total or
    available memory is unknown); ``skip_reason`` is ``None`` exactly when there are victims.
    ``candidates`` is the whole ranked table, protected and gone targets included.
    ``explanation`` is one line with the numbers behind the decision; ``reclaim_bytes`` the sum
    of the victims' footprints.
    """

    victims: tuple[Target, ...]
    needed_bytes: int
    skip_reason: SkipReason | None
    candidates: tuple[Candidate, ...]
    explanation: str
    reclaim_bytes: int = 0

    @property
    def wants_eviction(self) -> bool:
        """Whether the plan names at least one victim."""
        return bool(self.victims)

    def explain(self) -> str:
        """The decision line and the ranked table as text, one row per target.

        Columns: rank, key, pid, priority, footprint, budget (``!`` when over it), cumulative
        footprint of eligible rows (compare with ``needed``), state (``victim`` for the chosen
        ones), the :data:`RANKING` row that put this row before the next one, and why. The
        ranking is lexicographic, so there is no numeric score: the deciding comparator is
        what explains an order.
        """
        victims = {t.identity for t in self.victims}
        header = ("rank", "key", "pid", "priority", "footprint", "budget", "cumulative",
                  "state", "before next by", "why")  # fmt: skip
        rows: list[tuple[str, ...]] = []
        cumulative = 0
        cands = self.candidates
        for i, c in enumerate(cands):
            t = c.target
            if c.is_eligible and c.footprint is not None:
                cumulative += c.footprint
                cum = _fmt_bytes(cumulative)
            else:
                cum = "-"
            budget = (
                "-" if t.budget is None else _fmt_bytes(t.budget) + ("!" if c.over_budget else "")
            )
            state = "victim" if t.identity in victims and c.is_eligible else c.state.value
            nxt = deciding_comparator(c, cands[i + 1]) if i + 1 < len(cands) else None
            rows.append((
                str(c.rank), t.key, str(t.pid), t.priority.value,
                "?" if c.footprint is None else _fmt_bytes(c.footprint),
                budget, cum, state, nxt or "-", c.why,
            ))  # fmt: skip
        widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header) - 1)]
        lines = [self.explanation, f"needed {_fmt_bytes(self.needed_bytes)}"]
        for r in (header, *rows):
            cells = [cell.ljust(w) for cell, w in zip(r, widths, strict=False)]
            lines.append("  ".join([*cells, r[-1]]).rstrip())
        return "\n".join(lines)


def _fmt_bytes(n: int) -> str:
    """Bytes as text with a binary unit: ``512 B``, ``1.5 MiB``, ``12.0 GiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def _fmt_seconds(s: float) -> str:
    return f"{s:.1f} s"


# --- the planner -----------------------------------------------------------------------------


def _sample_state(
    target: Target, sample: ProcessMemory | Exception | None
) -> tuple[CandidateState, int | None, str]:
    """The row of one target: its state, trusted footprint and why, from its sample."""
    if sample is None:
        return CandidateState.GONE, None, "gone: not sampled"
    if isinstance(sample, AccessDenied):
        # Alive, but another user's and the agent is not root: it can be neither sized nor
        # stopped (docs/configuration.md, "Targets the agent cannot size"; doctor's
        # targets.sized check names the fix). Live, so it counts toward the floor.
        return CandidateState.UNSIZED, None, f"unsized: {sample}; run the agent as root"
    if isinstance(sample, BaseException):
        return CandidateState.GONE, None, f"gone: {type(sample).__name__}: {sample}"
    if sample.pid != target.pid:
        return CandidateState.GONE, None, f"gone: sample is for pid {sample.pid}"
    if sample.start_time is not None and sample.start_time != target.start_time:
        return (
            CandidateState.GONE,
            None,
            f"gone: pid reused (start_time {sample.start_time} != {target.start_time})",
        )
    footprint = sample.footprint
    if target.metadata is Metadata.PENDING:
        return CandidateState.PENDING, footprint, "pending: its object is being read"
    if target.metadata is Metadata.UNKNOWN:
        return CandidateState.PENDING, footprint, "unknown: its object could not be read"
    if target.protected:
        return CandidateState.PROTECTED, footprint, "protected"
    if footprint is None:
        return CandidateState.UNSIZED, None, "footprint unknown"
    budget = target.budget
    if budget is None:
        why = f"candidate: {target.priority.value}, no budget"
    elif footprint > budget:
        why = f"candidate: {target.priority.value}, over budget by {_fmt_bytes(footprint - budget)}"
    else:
        why = f"candidate: {target.priority.value}, within budget"
    return CandidateState.ELIGIBLE, footprint, why


def _unsized_note(live: Sequence[Candidate]) -> str:
    """Names the live targets whose memory is unknown: the guard cannot count them, so its
    share is a floor, not a measurement."""
    unsized = [c.target.key for c in live if c.state is CandidateState.UNSIZED]
    if not unsized:
        return ""
    return f"; {len(unsized)} live target(s) unsized, memory unknown: {', '.join(unsized)}"


class Planner:
    """Chooses victims under CRITICAL pressure, or names why not; pure, no state, no I/O.

    ``pressure`` supplies the warning threshold that ``needed_bytes`` aims back above. The
    planner keeps nothing between calls: cooldown and budget come from ``evictions`` (the
    monotonic times of past evictions), the settle phase from ``settling``.
    """

    __slots__ = ("policy", "pressure")

    def __init__(self, policy: EvictionPolicy, pressure: PressurePolicy) -> None:
        self.policy = policy
        self.pressure = pressure

    def rank(
        self, targets: Sequence[Target], processes: Mapping[str, ProcessMemory | Exception]
    ) -> tuple[Candidate, ...]:
        """The ranked table of every target: eligible ones in eviction order, then protected,
        unsized and gone ones. Independent of the order of ``targets``."""
        rows = []
        for t in targets:
            state, footprint, why = _sample_state(t, processes.get(t.key))
            over = footprint is not None and t.budget is not None and footprint > t.budget
            rows.append((_row_key(t, footprint, over, state), t, footprint, over, why, state))
        rows.sort(key=_first)
        return tuple(
            Candidate(t, footprint, over, i, why, state)
            for i, (_, t, footprint, over, why, state) in enumerate(rows, 1)
        )

    def needed_bytes(self, system: SystemMemory) -> int:
        """Bytes to reclaim: available back up to the warning threshold, plus ``min_reclaim``.

        The threshold is ``ceil(warning_available * total)``, the least available memory at
        which the available-memory signal stops voting. 0 when total or available is unknown.
        """
        total, available = system.total, system.available
        if total is None or available is None:
            return 0
        threshold = math.ceil(self.pressure.warning_available * total)
        return max(0, threshold - available) + self.policy.min_reclaim

    def plan(
        self,
        assessment: Assessment,
        system: SystemMemory,
        processes: Mapping[str, ProcessMemory | Exception],
        targets: Sequence[Target],
        now: float,
        *,
        evictions: Sequence[float] = (),
        settling: bool = False,
    ) -> Plan:
        """Decide which targets to stop now, or the :class:`SkipReason` not to.

        ``processes`` maps :attr:`Target.key` to the target's sample, or to the exception that
        sampling it raised (the target is then not live). ``evictions`` are the monotonic times
        of past evictions and ``now`` the same clock; ``settling`` says the last victim's memory
        is still awaited. See the module docstring for the gates and the ranking.
        """
        policy = self.policy
        table = self.rank(targets, processes)
        needed = self.needed_bytes(system)

        def skip(reason: SkipReason, why: str) -> Plan:
            return Plan((), needed, reason, table, f"skip {reason.value}: {why}")

        if policy.mode is EvictionMode.OBSERVE:
            return skip(SkipReason.DISABLED, f"mode is {policy.mode.value}")
        if assessment.level < Level.CRITICAL or not assessment.actionable:
            top = assessment.top_reason
            cause = f" ({top.message})" if top is not None else ""
            return skip(
                SkipReason.NOT_ACTIONABLE,
                f"level {assessment.level.name}, actionable={assessment.actionable}{cause}",
            )
        if settling:
            return skip(SkipReason.BLOCKED_SETTLING, "waiting for the last victim's memory")
        if evictions:
            last = max(evictions)
            if now - last < policy.cooldown:
                return skip(
                    SkipReason.COOLDOWN,
                    f"last eviction {_fmt_seconds(now - last)} ago < cooldown "
                    f"{_fmt_seconds(policy.cooldown)}",
                )
            recent = sorted(e for e in evictions if now - e < policy.window)
            if len(recent) >= policy.max_evictions:
                free_at = recent[-policy.max_evictions] + policy.window
                return skip(
                    SkipReason.BUDGET_EXHAUSTED,
                    f"{len(recent)} evictions in the last {_fmt_seconds(policy.window)} >= "
                    f"max {policy.max_evictions} (next in {_fmt_seconds(free_at - now)})",
                )

        live = [c for c in table if c.is_live]
        managed = sum(c.footprint for c in live if c.footprint is not None)
        total, available = system.total, system.available
        if total is None or available is None:
            return skip(
                SkipReason.BELOW_GUARD,
                f"used memory unknown (total={total}, available={available})",
            )
        used = total - available
        if used <= 0:
            return skip(SkipReason.BELOW_GUARD, f"used memory is {_fmt_bytes(used)}")
        share = managed / used
        if share < policy.min_managed_share:
            return skip(
                SkipReason.BELOW_GUARD,
                f"managed {_fmt_bytes(managed)} is {share:.1%} of used {_fmt_bytes(used)} "
                f"< {policy.min_managed_share:.1%}{_unsized_note(live)}",
            )
        if 0 < len(live) <= policy.floor:
            return skip(SkipReason.FLOOR, f"{len(live)} live target(s) <= floor {policy.floor}")
        reading = [c.target.key for c in live if c.target.metadata is Metadata.PENDING]
        if reading:
            return skip(
                SkipReason.METADATA_PENDING,
                f"waiting for the first read of {', '.join(sorted(reading))}: its priority may "
                "put it before any other victim",
            )
        eligible = [c for c in live if c.is_eligible]
        if not eligible:
            if live and all(c.state is CandidateState.PROTECTED for c in live):
                return skip(SkipReason.ALL_PROTECTED, f"all {len(live)} live target(s) protected")
            pending = sum(c.state is CandidateState.PENDING for c in live)
            if pending:
                return skip(
                    SkipReason.METADATA_PENDING,
                    f"{pending} of {len(live)} live target(s) have objects that could not be read",
                )
            return skip(
                SkipReason.NO_CANDIDATES,
                f"{len(live)} live target(s), none unprotected with a known footprint",
            )

        allowed = eligible[: len(live) - policy.floor]
        victims: list[Candidate] = []
        reclaim = 0
        for c in allowed:
            victims.append(c)
            assert c.footprint is not None
            reclaim += c.footprint
            if reclaim >= needed:
                break
        threshold = math.ceil(self.pressure.warning_available * total)
        names = ", ".join(c.target.key for c in victims)
        shortfall = (
            ""
            if reclaim >= needed
            else f"; short by {_fmt_bytes(needed - reclaim)}: all {len(allowed)} allowed "
            f"candidate(s) taken (floor {policy.floor})"
        )
        explanation = (
            f"evict {len(victims)} of {len(eligible)} candidate(s) ({names}): "
            f"{_fmt_bytes(reclaim)} for needed {_fmt_bytes(needed)} "
            f"(available {_fmt_bytes(available)}, warning at {_fmt_bytes(threshold)}, "
            f"min_reclaim {_fmt_bytes(policy.min_reclaim)}; managed {share:.1%} of used)"
            f"{shortfall}"
        )
        return Plan(tuple(c.target for c in victims), needed, None, table, explanation, reclaim)
