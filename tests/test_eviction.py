"""The eviction planner (issue 5): every skip reason at its boundary, needed bytes, the ranking on
every ordered pair, the explain table, and the properties: protection, priority order, fewest
victims, floor, determinism."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import random
import re
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metalmem import (
    AccessDenied,
    Assessment,
    Classifier,
    Level,
    NoSuchProcess,
    PressurePolicy,
    Priority,
    ProcessMemory,
    SystemMemory,
    Target,
)
from metalmem.eviction import (
    RANKING,
    Candidate,
    CandidateState,
    EvictionMode,
    EvictionPolicy,
    Plan,
    Planner,
    SkipReason,
    _row_key,
    _sort_key,
    compare_candidates,
    deciding_comparator,
)

from . import samples

GiB = 2**30
MiB = 2**20
TOTAL = 10**10  # 0.2 * TOTAL is exact in floating point
AVAILABLE = 5 * 10**8  # 5 %: below critical_available (10 %), a hard, actionable CRITICAL
USED = TOTAL - AVAILABLE
WARNING_AT = 2 * 10**9  # ceil(0.2 * TOTAL)
NEEDED = WARNING_AT - AVAILABLE + 256 * MiB  # with the default min_reclaim
NOW = 1000.0
ENFORCE = EvictionPolicy(mode=EvictionMode.ENFORCE)


def system(
    available: int | None = AVAILABLE, total: int | None = TOTAL, **fields: Any
) -> SystemMemory:
    return samples.host(
        NOW, **{"total": total, "available": available, "free": available, **fields}
    )


# A real classifier's verdict on a host at 5 % available: hard CRITICAL, actionable at once.
CRITICAL = Classifier().assess(system(), now=NOW)
assert CRITICAL.level is Level.CRITICAL and CRITICAL.actionable


def target(
    key: str,
    pid: int,
    priority: Priority = Priority.NORMAL,
    *,
    protected: bool = False,
    budget: int | None = None,
) -> Target:
    return Target(key, pid, start_time=float(pid), priority=priority, protected=protected,
                  budget=budget)  # fmt: skip


def proc(t: Target, footprint: int | None, *, pid: int | None = None,
         start_time: float | None = None) -> ProcessMemory:  # fmt: skip
    return ProcessMemory(
        pid=t.pid if pid is None else pid,
        start_time=t.start_time if start_time is None else start_time,
        rss=footprint,
        footprint=footprint,
        wired=None,
        swap=None,
        peak=None,
        anon=footprint,
        timestamp=NOW,
        detail_timestamp=None,
    )


def host(
    *rows: tuple[Target, int | None],
) -> tuple[list[Target], dict[str, ProcessMemory | Exception]]:
    """Targets and their samples keyed by Target.key, as the watchdog maps them."""
    return [t for t, _ in rows], {t.key: proc(t, f) for t, f in rows}


def plan(
    rows: Sequence[tuple[Target, int | None]] = (),
    *,
    policy: EvictionPolicy = ENFORCE,
    assessment: Assessment = CRITICAL,
    sample: SystemMemory | None = None,
    processes: Mapping[str, ProcessMemory | Exception] | None = None,
    targets: Sequence[Target] | None = None,
    now: float = NOW,
    evictions: Sequence[float] = (),
    settling: bool = False,
) -> Plan:
    ts, ps = host(*rows)
    return Planner(policy, PressurePolicy()).plan(
        assessment,
        system() if sample is None else sample,
        ps if processes is None else processes,
        ts if targets is None else targets,
        now,
        evictions=evictions,
        settling=settling,
    )


def keys(targets: Sequence[Target]) -> list[str]:
    return [t.key for t in targets]


A = target("a", 101, Priority.LOW)
B = target("b", 102, Priority.NORMAL)
C = target("c", 103, Priority.HIGH)
THREE = ((A, 3 * GiB), (B, 3 * GiB), (C, 3 * GiB))  # managed 9.66 GB of 9.5 GB used

# --- the policy --------------------------------------------------------------------------------


def test_policy_defaults_are_observe_only() -> None:
    p = EvictionPolicy()
    assert p.mode is EvictionMode.OBSERVE
    assert (p.min_managed_share, p.floor, p.cooldown, p.max_evictions, p.window) == (
        0.5, 1, 30.0, 3, 600.0)  # fmt: skip
    assert p.min_reclaim == 256 * MiB


def test_policy_mode_accepts_its_string_value() -> None:
    assert EvictionPolicy(mode="dry-run").mode is EvictionMode.DRY_RUN  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("mode", "on"),
        ("min_managed_share", -0.1),
        ("min_managed_share", 1.01),
        ("min_managed_share", math.nan),
        ("floor", -1),
        ("floor", 1.0),
        ("floor", True),
        ("grace", -1.0),
        ("grace", math.inf),
        ("cooldown", -0.5),
        ("max_evictions", 0),
        ("window", 0.0),
        ("min_reclaim", -1),
        ("min_reclaim", 1.5),
        ("settle_timeout", -1.0),
        ("settle_share", 0.0),
        ("settle_share", 1.5),
        ("settle_share", "half"),
    ],
)
def test_policy_rejects_out_of_range_values_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=rf"EvictionPolicy\.{field} "):
        EvictionPolicy(**{field: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [("min_managed_share", 0.0), ("min_managed_share", 1), ("floor", 0), ("cooldown", 0),
     ("settle_share", 1.0), ("min_reclaim", 0), ("max_evictions", 1), ("grace", 0)],
)  # fmt: skip
def test_policy_accepts_values_at_the_edges(field: str, value: Any) -> None:
    assert getattr(EvictionPolicy(**{field: value}), field) == value


# --- gates: each skip reason and its boundary ---------------------------------------------------

WARNING_ASSESSMENT = Classifier().assess(system(available=TOTAL * 15 // 100), now=NOW)
SOFT_CRITICAL = dataclasses.replace(CRITICAL, actionable=False)  # soft grace still running


@pytest.mark.parametrize(
    ("case", "kwargs", "reason"),
    [
        ("evicts", {}, None),
        ("dry-run plans like enforce", {"policy": EvictionPolicy(mode=EvictionMode.DRY_RUN)},
         None),
        ("observe", {"policy": EvictionPolicy()}, SkipReason.DISABLED),
        ("warning", {"assessment": WARNING_ASSESSMENT}, SkipReason.NOT_ACTIONABLE),
        ("critical in grace", {"assessment": SOFT_CRITICAL}, SkipReason.NOT_ACTIONABLE),
        ("settling", {"settling": True}, SkipReason.BLOCKED_SETTLING),
        ("cooldown", {"evictions": [NOW - 10]}, SkipReason.COOLDOWN),
        ("budget", {"evictions": [NOW - 300, NOW - 200, NOW - 100]},
         SkipReason.BUDGET_EXHAUSTED),
        ("guard", {"rows": ((A, GiB), (B, GiB), (C, GiB))}, SkipReason.BELOW_GUARD),
        ("guard, total unknown", {"sample": system(total=None)}, SkipReason.BELOW_GUARD),
        ("guard, available unknown", {"sample": system(available=None)}, SkipReason.BELOW_GUARD),
        ("floor", {"rows": ((A, 9 * GiB),)}, SkipReason.FLOOR),
        ("all protected",
         {"rows": ((target("p", 1, protected=True), 5 * GiB),
                   (target("q", 2, protected=True), 5 * GiB))},
         SkipReason.ALL_PROTECTED),
        ("no targets", {"rows": (), "policy": EvictionPolicy(mode=EvictionMode.ENFORCE,
                                                            min_managed_share=0)},
         SkipReason.NO_CANDIDATES),
        ("only unsized and protected",
         {"rows": ((target("p", 1, protected=True), 9 * GiB), (A, None))},
         SkipReason.NO_CANDIDATES),
        # Gate order: the first that applies names the skip.
        ("observe before everything",
         {"policy": EvictionPolicy(), "assessment": SOFT_CRITICAL, "settling": True},
         SkipReason.DISABLED),
        ("not actionable before settling", {"assessment": WARNING_ASSESSMENT, "settling": True},
         SkipReason.NOT_ACTIONABLE),
        ("settling before cooldown", {"settling": True, "evictions": [NOW - 1]},
         SkipReason.BLOCKED_SETTLING),
        ("cooldown before budget", {"evictions": [NOW - 3, NOW - 2, NOW - 1]},
         SkipReason.COOLDOWN),
        ("budget before guard", {"evictions": [NOW - 300, NOW - 200, NOW - 100],
                                 "rows": ((A, 1),)}, SkipReason.BUDGET_EXHAUSTED),
        ("guard before floor", {"rows": ((A, GiB),)}, SkipReason.BELOW_GUARD),
        ("floor before all protected", {"rows": ((target("p", 1, protected=True), 9 * GiB),)},
         SkipReason.FLOOR),
    ],
)  # fmt: skip
def test_plan_gates(case: str, kwargs: dict[str, Any], reason: SkipReason | None) -> None:
    kwargs.setdefault("rows", THREE)
    p = plan(**kwargs)
    assert p.skip_reason is reason, p.explanation
    assert p.wants_eviction is (reason is None)
    assert len(p.candidates) == len(kwargs["rows"])  # the table is there when skipping too
    if reason is not None:
        assert p.victims == ()
        assert p.explanation.startswith(f"skip {reason.value}: ")


@pytest.mark.parametrize(
    ("min_share", "managed", "reason"),
    [
        (0.5, USED // 2, None),  # exactly at the share: passes
        (0.5, USED // 2 - 1, SkipReason.BELOW_GUARD),
        (0.3, USED * 3 // 10, None),
        (0.3, USED * 3 // 10 - 1, SkipReason.BELOW_GUARD),
        (1.0, USED, None),
        (1.0, USED - 1, SkipReason.BELOW_GUARD),
        (0.0, 0, SkipReason.NO_CANDIDATES),  # guard off; nothing sized to evict
    ],
)
def test_guard_is_a_share_of_used_memory_and_passes_at_the_boundary(
    min_share: float, managed: int, reason: SkipReason | None
) -> None:
    # Two targets share the managed footprint; a protected one counts as managed too.
    rows: tuple[tuple[Target, int | None], ...] = (
        (target("p", 1, protected=True), managed - managed // 2),
        (A, managed // 2),
    )
    if managed == 0:
        rows = ((target("p", 1, protected=True), 0), (target("u", 2), None))
    policy = EvictionPolicy(mode=EvictionMode.ENFORCE, min_managed_share=min_share)
    p = plan(rows, policy=policy)
    assert p.skip_reason is reason, p.explanation


def test_guard_divides_by_used_memory_not_total_ram() -> None:
    # LLMKube's defect: 4 GB of models on a 10 GB host is 40 % of RAM (below 50 %), but the
    # host has only 4.5 GB in use, so the models are 89 % of it: they are the pressure.
    small_host = system(available=TOTAL // 20, total=TOTAL)
    rows = ((A, 2 * 10**9), (B, 2 * 10**9))
    crowded = plan(rows, sample=small_host)
    assert crowded.skip_reason is SkipReason.BELOW_GUARD  # 4 of 9.5 GB used: 42 %
    # Same models, same RAM, but the rest of the host is quiet: 4 of 4.5 GB used.
    quiet = plan(rows, sample=system(available=TOTAL - 45 * 10**8, total=TOTAL))
    assert quiet.skip_reason is None
    assert "88.9% of used" in quiet.explanation


@pytest.mark.parametrize(
    ("floor", "live", "victims"),
    [
        (1, 1, None),  # never the last target
        (1, 2, 1),
        (2, 2, None),
        (2, 3, 1),
        (0, 1, 1),  # floor 0: the last one may go
        (0, 2, 2),
        (3, 5, 2),
    ],
)
def test_floor_limits_victims(floor: int, live: int, victims: int | None) -> None:
    # Each target is too small to cover what is needed alone, so the floor is what stops.
    rows = tuple((target(f"t{i}", 10 + i), USED // live) for i in range(live))
    policy = EvictionPolicy(mode=EvictionMode.ENFORCE, floor=floor, min_reclaim=10 * 10**9)
    p = plan(rows, policy=policy)
    if victims is None:
        assert p.skip_reason is SkipReason.FLOOR
    else:
        assert len(p.victims) == victims
        assert live - len(p.victims) == floor
        assert "short by" in p.explanation


def test_floor_counts_protected_and_unsized_targets_but_not_gone_ones() -> None:
    policy = EvictionPolicy(mode=EvictionMode.ENFORCE, floor=1)
    protected = target("p", 1, protected=True)
    # Protected p keeps the floor: a may go, and p is never a victim.
    assert keys(plan(((protected, 5 * GiB), (A, 5 * GiB)), policy=policy).victims) == ["a"]
    # Unsized u is live too.
    assert keys(plan(((target("u", 2), None), (A, 9 * GiB)), policy=policy).victims) == ["a"]
    # A gone target is not live: a alone is the last target.
    ts, ps = host((A, 9 * GiB))
    gone = target("g", 3)
    p = plan(targets=[*ts, gone], processes={**ps, "g": NoSuchProcess("gone", pid=3)},
             policy=policy)  # fmt: skip
    assert p.skip_reason is SkipReason.FLOOR


@pytest.mark.parametrize(
    ("last", "reason"),
    [
        (NOW - 30.0, None),  # exactly cooldown ago: allowed
        (NOW - 29.5, SkipReason.COOLDOWN),
        (NOW - 1000.0, None),
        (NOW + 5.0, SkipReason.COOLDOWN),  # a time from the future: be careful
    ],
)
def test_cooldown_boundary(last: float, reason: SkipReason | None) -> None:
    assert plan(THREE, evictions=[last]).skip_reason is reason


def test_cooldown_zero_never_blocks() -> None:
    policy = EvictionPolicy(mode=EvictionMode.ENFORCE, cooldown=0, max_evictions=10)
    assert plan(THREE, policy=policy, evictions=[NOW]).skip_reason is None


@pytest.mark.parametrize(
    ("evictions", "reason"),
    [
        ((NOW - 600.0, NOW - 300.0, NOW - 100.0), None),  # the oldest left the window exactly
        ((NOW - 599.5, NOW - 300.0, NOW - 100.0), SkipReason.BUDGET_EXHAUSTED),
        ((NOW - 300.0, NOW - 100.0), None),
        ((NOW - 5000.0, NOW - 4000.0, NOW - 3000.0, NOW - 100.0), None),
    ],
)
def test_budget_window_boundary(evictions: tuple[float, ...], reason: SkipReason | None) -> None:
    p = plan(THREE, evictions=evictions)
    assert p.skip_reason is reason, p.explanation
    if reason is SkipReason.BUDGET_EXHAUSTED:
        assert "next in 0.5 s" in p.explanation


# --- needed bytes and victims ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "available", "warning", "min_reclaim", "needed"),
    [
        (TOTAL, AVAILABLE, 0.20, 256 * MiB, WARNING_AT - AVAILABLE + 256 * MiB),
        (TOTAL, AVAILABLE, 0.20, 0, WARNING_AT - AVAILABLE),
        (TOTAL, WARNING_AT, 0.20, 0, 0),  # at the threshold: nothing short
        (TOTAL, WARNING_AT - 1, 0.20, 0, 1),
        (TOTAL, TOTAL // 2, 0.20, 4096, 4096),  # above it: only min_reclaim
        (TOTAL, 0, 0.30, 0, 3 * 10**9),
        (7, 0, 0.20, 0, 2),  # 1.4 bytes round up
        (None, AVAILABLE, 0.20, 256 * MiB, 0),
        (TOTAL, None, 0.20, 256 * MiB, 0),
    ],
)
def test_needed_bytes(
    total: int | None, available: int | None, warning: float, min_reclaim: int, needed: int
) -> None:
    planner = Planner(
        EvictionPolicy(mode=EvictionMode.ENFORCE, min_reclaim=min_reclaim),
        PressurePolicy(warning_available=warning, critical_available=warning / 2),
    )
    assert planner.needed_bytes(system(available=available, total=total)) == needed


def test_plan_reports_needed_bytes_with_its_numbers() -> None:
    p = plan(THREE)
    assert p.needed_bytes == NEEDED
    assert p.reclaim_bytes == 3 * GiB
    assert p.explanation.startswith("evict 1 of 3 candidate(s) (a): 3.0 GiB for needed 1.6 GiB")
    assert "available 476.8 MiB, warning at 1.9 GiB, min_reclaim 256.0 MiB" in p.explanation


@pytest.mark.parametrize(
    ("footprints", "victims"),
    [
        ((NEEDED, GiB, GiB), ["t0"]),  # the first covers it exactly
        ((NEEDED - 1, NEEDED, 1), ["t0", "t1"]),  # one byte short: the next one too
        ((NEEDED // 3 + 1,) * 3 + (NEEDED,), ["t0", "t1", "t2"]),  # priority beats size
        ((1, 1, 10 * GiB), ["t0", "t1", "t2"]),
    ],
)
def test_victims_are_the_fewest_in_rank_order_that_cover_needed(
    footprints: tuple[int, ...], victims: list[str]
) -> None:
    # t0 < t1 < t2 < t3 by priority, whatever their sizes.
    prios = list(Priority)
    rows = tuple((target(f"t{i}", 10 + i, prios[i]), f) for i, f in enumerate(footprints))
    policy = EvictionPolicy(mode=EvictionMode.ENFORCE, min_managed_share=0, floor=0)
    p = plan(rows, policy=policy)
    assert keys(p.victims) == victims
    assert p.reclaim_bytes >= NEEDED


def test_at_least_one_victim_when_critical_for_another_signal() -> None:
    # GPU headroom is critical while available memory is plentiful and min_reclaim is 0:
    # nothing is short of the warning threshold, but the pressure is real.
    gpu_full = system(available=TOTAL // 2, gpu_limit=10 * GiB, gpu_used=10 * GiB)
    assessment = Classifier().assess(gpu_full, now=NOW)
    assert assessment.level is Level.CRITICAL and assessment.actionable
    policy = EvictionPolicy(mode=EvictionMode.ENFORCE, min_managed_share=0, min_reclaim=0)
    p = plan(((A, GiB), (B, GiB)), policy=policy, assessment=assessment, sample=gpu_full)
    assert p.needed_bytes == 0
    assert keys(p.victims) == ["a"]


def test_all_allowed_candidates_are_taken_when_they_cannot_cover_it() -> None:
    policy = EvictionPolicy(mode=EvictionMode.ENFORCE, min_managed_share=0, floor=1,
                            min_reclaim=100 * GiB)  # fmt: skip
    p = plan(THREE, policy=policy)
    assert keys(p.victims) == ["a", "b"]
    assert "short by" in p.explanation and "all 2 allowed candidate(s) taken" in p.explanation


# --- samples: keyed by Target.key, checked against the target's identity ------------------------


def test_a_target_the_agent_may_not_read_is_unsized_never_a_victim_and_named_by_the_guard() -> None:
    # A non-root agent and another user's llama-server: macOS refuses proc_pid_rusage (EPERM).
    denied: dict[str, ProcessMemory | Exception] = {
        "a": AccessDenied("permission denied (proc_pid_rusage(RUSAGE_INFO_V4))", pid=101),
        "b": AccessDenied("permission denied (proc_pid_rusage(RUSAGE_INFO_V4))", pid=102),
    }
    policy = EvictionPolicy(mode=EvictionMode.ENFORCE, floor=0)
    p = plan(targets=[A, B], processes=denied, policy=policy)
    assert p.victims == () and p.skip_reason is SkipReason.BELOW_GUARD
    assert "2 live target(s) unsized, memory unknown: a, b" in p.explanation
    assert {c.state for c in p.candidates} == {CandidateState.UNSIZED}
    # With the guard off, nothing is eligible: still no victim, and the reason says why.
    p = plan(
        targets=[A, B], processes=denied, policy=dataclasses.replace(policy, min_managed_share=0)
    )
    assert p.victims == () and p.skip_reason is SkipReason.NO_CANDIDATES


def test_samples_that_do_not_name_the_target_are_not_trusted() -> None:
    d = target("d", 104)
    e = target("e", 105)
    f = target("f", 106)
    processes: dict[str, ProcessMemory | Exception] = {
        "a": proc(A, 3 * GiB),
        "b": AccessDenied("denied", pid=102),
        "c": NoSuchProcess("exited", pid=103),
        "d": proc(d, 3 * GiB, pid=999),  # another process's sample under d's key
        "e": proc(e, 3 * GiB, start_time=1.5),  # pid reused by a newer process
        # f: not sampled (keyed under another name: LLMKube's RSS-by-wrong-name defect)
        "f-model.gguf": proc(f, 3 * GiB),
    }
    policy = EvictionPolicy(mode=EvictionMode.ENFORCE, min_managed_share=0, floor=0)
    p = plan(targets=[A, B, C, d, e, f], processes=processes, policy=policy)
    whys = {c.target.key: (c.state, c.footprint, c.why) for c in p.candidates}
    assert whys["a"] == (CandidateState.ELIGIBLE, 3 * GiB, "candidate: low, no budget")
    assert whys["b"] == (
        CandidateState.UNSIZED,
        None,
        "unsized: denied (pid=102); run the agent as root",
    )
    assert whys["c"][0] is CandidateState.GONE and "NoSuchProcess" in whys["c"][2]
    assert whys["d"] == (CandidateState.GONE, None, "gone: sample is for pid 999")
    assert whys["e"][0] is CandidateState.GONE and "pid reused" in whys["e"][2]
    assert whys["f"] == (CandidateState.GONE, None, "gone: not sampled")
    assert keys(p.victims) == ["a"]


def test_a_sample_without_a_start_time_is_trusted_by_pid() -> None:
    ps: dict[str, ProcessMemory | Exception] = {"a": proc(A, 3 * GiB)._replace(start_time=None)}
    table = Planner(ENFORCE, PressurePolicy()).rank([A], ps)
    assert table[0].state is CandidateState.ELIGIBLE


# --- ranking -----------------------------------------------------------------------------------


def row(
    key: str,
    pid: int,
    priority: Priority,
    footprint: int | None,
    *,
    budget: int | None = None,
    state: CandidateState = CandidateState.ELIGIBLE,
) -> Candidate:
    t = Target(key, pid, float(pid), priority, state is CandidateState.PROTECTED, budget)
    over = footprint is not None and budget is not None and footprint > budget
    return Candidate(t, footprint, over, 0, "", state)


# Expected eviction order: each row must go before every row after it.
EXPECTED_ORDER = (
    row("z", 1, Priority.BATCH, 8 * GiB, budget=GiB),  # over budget beats size
    row("y", 2, Priority.BATCH, 4 * GiB, budget=GiB),
    row("x", 3, Priority.BATCH, 17 * GiB, budget=32 * GiB),  # within budget: like none
    row("a", 5, Priority.BATCH, 16 * GiB),  # no budget: not over; the newest (start 5) first
    row("a", 4, Priority.BATCH, 16 * GiB),  # same key, started earlier
    row("b", 3, Priority.BATCH, 16 * GiB),  # the oldest of the equal footprints last
    row("c", 6, Priority.BATCH, 0),
    row("q", 7, Priority.LOW, GiB, budget=0),  # priority beats everything below it
    row("p", 8, Priority.LOW, 64 * GiB),
    row("n", 9, Priority.NORMAL, 64 * GiB),
    row("h", 10, Priority.HIGH, 64 * GiB, budget=GiB),
    row("k", 11, Priority.CRITICAL, 64 * GiB, budget=GiB),
    row("s", 12, Priority.BATCH, 64 * GiB, budget=GiB, state=CandidateState.PROTECTED),
    row("r", 13, Priority.HIGH, 64 * GiB, state=CandidateState.PROTECTED),
    row("u", 14, Priority.BATCH, None, state=CandidateState.UNSIZED),
    row("g", 15, Priority.BATCH, None, state=CandidateState.GONE),
)


def test_ranking_on_every_ordered_pair() -> None:
    """earlyoom's permute_is_larger: the comparator agrees with the list on every pair."""
    for i, j in itertools.permutations(range(len(EXPECTED_ORDER)), 2):
        a, b = EXPECTED_ORDER[i], EXPECTED_ORDER[j]
        result = compare_candidates(a, b)
        assert (result < 0) if i < j else (result > 0), (i, j, a.target.key, b.target.key)
    for a in EXPECTED_ORDER:
        assert compare_candidates(a, a) == 0


def test_ties_go_to_the_newest_process() -> None:
    """Issue 16: equal priority and footprint: the latest start time goes first (the newest
    model most likely caused the pressure; LLMKube evicts the oldest instead, deliberately not
    copied), whatever the keys and pids say; equal start times fall to key, then pid."""
    old = dataclasses.replace(row("a-old", 900, Priority.NORMAL, 4 * GiB).target, start_time=10.0)
    new = dataclasses.replace(row("z-new", 100, Priority.NORMAL, 4 * GiB).target, start_time=99.0)
    for order in ((old, new), (new, old)):
        ps = {t.key: proc(t, 4 * GiB) for t in order}
        ranked = [c.target.key for c in Planner(ENFORCE, PressurePolicy()).rank(order, ps)]
        assert ranked == ["z-new", "a-old"], ranked
    a = row("a", 2, Priority.NORMAL, GiB)
    b = dataclasses.replace(a, target=dataclasses.replace(a.target, key="b", pid=1))
    assert compare_candidates(a, b) < 0 and deciding_comparator(a, b) == "key"


def test_ranking_table_names_each_question_once() -> None:
    names = [name for name, _ in RANKING]
    assert names == ["state", "priority", "over_budget", "footprint", "started", "key", "pid"]


def test_rank_orders_targets_independently_of_input_order() -> None:
    rows = [
        (target("n", 1, Priority.NORMAL), 5 * GiB),
        (target("b2", 2, Priority.BATCH), GiB),
        (target("b1", 3, Priority.BATCH), 2 * GiB),
        (target("l", 4, Priority.LOW, budget=GiB), 2 * GiB),
        (target("l2", 5, Priority.LOW), 9 * GiB),
        (target("p", 6, Priority.BATCH, protected=True), 9 * GiB),
        (target("u", 7, Priority.BATCH), None),
    ]
    expected = ["b1", "b2", "l", "l2", "n", "p", "u", "gone"]
    ts, ps = host(*rows)
    ts.append(target("gone", 8))
    planner = Planner(ENFORCE, PressurePolicy())
    rng = random.Random(5)
    for _ in range(20):
        rng.shuffle(ts)
        table = planner.rank(ts, ps)
        assert [c.target.key for c in table] == expected
        assert [c.rank for c in table] == list(range(1, len(expected) + 1))


# --- explain -----------------------------------------------------------------------------------


def test_explain_lists_every_target_in_rank_order_with_markers() -> None:
    protected = target("guarded", 1, Priority.BATCH, protected=True)
    gone = target("ghost", 2)
    ts, ps = host((A, 4 * GiB), (B, 3 * GiB), (C, 2 * GiB), (protected, 2 * GiB))
    ps["ghost"] = NoSuchProcess("exited", pid=2)
    p = plan(targets=[gone, *ts], processes=ps)
    text = p.explain()
    lines = text.splitlines()
    assert lines[0] == p.explanation
    assert lines[1] == f"needed {1.6:.1f} GiB"
    assert lines[2].split()[:4] == ["rank", "key", "pid", "priority"]
    body = lines[3:]
    assert [line.split()[1] for line in body] == ["a", "b", "c", "guarded", "ghost"]
    assert [line.split()[0] for line in body] == ["1", "2", "3", "4", "5"]
    cells = [re.split(r"\s{2,}", line) for line in body]
    assert [c[7] for c in cells] == ["victim", "eligible", "eligible", "protected", "gone"]
    # The comparator that put each row before the next: a, b, c by priority, then the states.
    assert [c[8] for c in cells] == ["priority", "priority", "state", "state", "-"]
    assert cells[0][5:7] == ["-", "4.0 GiB"]  # no budget; cumulative footprint
    assert cells[3][6] == "-"  # protected rows do not add to what eviction can reclaim
    assert cells[4][9] == "gone: NoSuchProcess: exited (pid=2)"


def test_explain_works_when_skipping() -> None:
    p = plan(THREE, policy=EvictionPolicy())
    assert p.skip_reason is SkipReason.DISABLED
    assert all(k in p.explain() for k in "abc")


# --- properties ----------------------------------------------------------------------------------

SAMPLE_KINDS = ("ok", "ok", "ok", "unsized", "gone", "wrong_pid", "missing")


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(st.text("abcdefgh", min_size=1, max_size=3), unique=True, max_size=9))
    targets: list[Target] = []
    processes: dict[str, ProcessMemory | Exception] = {}
    for i, name in enumerate(names):
        budget = draw(st.none() | st.integers(0, 8 * GiB))
        t = Target(name, 100 + i, float(i), draw(st.sampled_from(Priority)),
                   draw(st.booleans()), budget)  # fmt: skip
        targets.append(t)
        kind = draw(st.sampled_from(SAMPLE_KINDS))
        footprint = draw(st.integers(0, 8 * GiB))
        if kind == "ok":
            processes[name] = proc(t, footprint)
        elif kind == "unsized":
            processes[name] = proc(t, None)
        elif kind == "gone":
            processes[name] = NoSuchProcess("exited", pid=t.pid)
        elif kind == "wrong_pid":
            processes[name] = proc(t, footprint, pid=t.pid + 1000)
    policy = EvictionPolicy(
        mode=EvictionMode.ENFORCE,
        min_managed_share=draw(st.sampled_from([0.0, 0.0, 0.5])),
        floor=draw(st.integers(0, 3)),
        min_reclaim=draw(st.integers(0, 4 * GiB)),
        cooldown=0,
    )
    total = 16 * GiB
    available = draw(st.integers(0, total // 10 - 1))
    return {"targets": targets, "processes": processes, "policy": policy,
            "sample": system(available=available, total=total)}  # fmt: skip


def run(s: dict[str, Any], targets: Sequence[Target] | None = None) -> Plan:
    return plan(targets=s["targets"] if targets is None else targets, processes=s["processes"],
                policy=s["policy"], sample=s["sample"])  # fmt: skip


def live_keys(s: dict[str, Any]) -> set[str]:
    """Targets with a sample that names them: computed here, not by the planner."""
    out = set()
    for t in s["targets"]:
        m = s["processes"].get(t.key)
        if isinstance(m, ProcessMemory) and m.pid == t.pid:
            out.add(t.key)
    return out


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_property_plan_invariants(s: dict[str, Any]) -> None:
    p = run(s)
    policy: EvictionPolicy = s["policy"]
    by_key = {c.target.key: c for c in p.candidates}
    victims = set(keys(p.victims))
    live = live_keys(s)
    assert {c.target.key for c in p.candidates if c.is_live} == live
    # The table (sorted by the RANKING keys) is in the comparators' order.
    assert list(p.candidates) == sorted(p.candidates, key=functools.cmp_to_key(compare_candidates))
    # rank's written-out key is the RANKING table's key.
    for c in p.candidates:
        assert _row_key(c.target, c.footprint, c.over_budget, c.state) == _sort_key(c)
    assert (p.skip_reason is None) == bool(p.victims)

    # A protected, gone or unsized target is never a victim.
    for key in victims:
        t = by_key[key].target
        assert not t.protected
        assert key in live and by_key[key].footprint is not None

    # Priority: no victim ranks above an unprotected, sized, live target that was spared;
    # and the victims are exactly the first eligible rows of the table.
    eligible = [c for c in p.candidates if c.is_eligible]
    spared = [c for c in eligible if c.target.key not in victims]
    for key in victims:
        for c in spared:
            assert by_key[key].target.priority.rank <= c.target.priority.rank
    assert [c.target.key for c in eligible[: len(victims)]] == keys(p.victims)

    # Floor: never fewer than `floor` live targets left.
    if victims:
        assert len(live) - len(victims) >= policy.floor

    # Fewest: without the last victim, what is needed would not be covered; and the victims
    # cover it unless the floor stopped them.
    footprints = [by_key[k].footprint or 0 for k in keys(p.victims)]
    if len(footprints) > 1:
        assert sum(footprints[:-1]) < p.needed_bytes
    if victims and sum(footprints) < p.needed_bytes:
        assert len(live) - len(victims) == policy.floor or len(spared) == 0
    assert p.reclaim_bytes == sum(footprints)


@settings(max_examples=150, deadline=None)
@given(scenarios(), st.randoms(use_true_random=False))
def test_property_same_inputs_same_plan_in_any_target_order(
    s: dict[str, Any], rng: random.Random
) -> None:
    first = run(s)
    assert run(s) == first
    shuffled = list(s["targets"])
    rng.shuffle(shuffled)
    assert run(s, shuffled) == first
    assert first.explain() == run(s, shuffled).explain()
