"""The eviction ranking right now: one live sample of the host and the configured targets,
ranked as the planner would at CRITICAL. Read-only: it samples and ranks, and stops nothing,
whatever the configured mode (``metalmem-agent explain``, or a host's own status page)."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from .config import AgentConfig
from .eviction import EvictionMode, Plan, Planner
from .pressure import Assessment, Classifier
from .sampler import SystemMemory
from .targets import TargetTracker, unmatched_targets
from .wiring import open_sampler

__all__ = ["Ranking", "rank_now"]


@dataclasses.dataclass(frozen=True)
class Ranking:
    """What :func:`rank_now` saw and decided."""

    assessment: Assessment
    system: SystemMemory
    plan: Plan
    mode: EvictionMode  # the configured one (the ranking itself is always a dry run)
    unmatched: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        plan = self.plan
        return {
            "level": self.assessment.level.name,
            "mode": self.mode.value,
            "available": self.system.available,
            "total": self.system.total,
            "skip_reason": plan.skip_reason.value if plan.skip_reason else None,
            "explanation": plan.explanation,
            "needed_bytes": plan.needed_bytes,
            "unmatched": list(self.unmatched),
            "ranking": [
                {
                    "rank": c.rank,
                    "key": c.target.key,
                    "pid": c.target.pid,
                    "priority": c.target.priority.value,
                    "protected": c.target.protected,
                    "footprint": c.footprint,
                    "budget": c.target.budget,
                    "over_budget": c.over_budget,
                    "state": c.state.value,
                    "why": c.why,
                }
                for c in plan.candidates
            ],
        }


def rank_now(config: AgentConfig) -> Ranking:
    """Sample ``config.scope`` once and rank ``config``'s targets (and discovery) as if
    CRITICAL and enforcing, so the result shows who would go first right now. Raises
    :class:`~metalmem.ConfigError` for a scope it cannot open."""
    with open_sampler(config.scope) as sampler:
        targets = TargetTracker(sampler, config.targets, discover_pattern=config.discover)
        adopted = targets.refresh().targets
        system = sampler.system()
        by_pid = sampler.processes(t.pid for t in adopted) if adopted else {}
        now = time.monotonic()
        assessment = Classifier(config.pressure).assess(system, now=now)
    by_key = {t.key: by_pid[t.pid] for t in adopted if t.pid in by_pid}
    dry_run = dataclasses.replace(config.eviction, mode=EvictionMode.DRY_RUN)
    plan = Planner(dry_run, config.pressure).plan(assessment, system, by_key, adopted, now)
    unmatched = tuple(unmatched_targets(config.targets, adopted))
    return Ranking(assessment, system, plan, config.eviction.mode, unmatched)
