"""Every check in one table, run over the facts; the exit status and JSON document of a run."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

from .. import __version__
from .facts import HostFacts
from .findings import Finding, Result, Verdict
from .host_checks import (
    check_agent_priority,
    check_kube,
    check_port,
    check_targets,
    check_targets_sized,
)
from .memory_checks import (
    check_cgroup,
    check_events,
    check_model_fit,
    check_nvml,
    check_pressure,
    check_psi,
    check_psi_trigger,
    check_sampler,
    check_swap,
    check_wired_collector,
    check_wired_limit,
    check_wired_limit_boot,
)

DARWIN = frozenset({"darwin"})
LINUX = frozenset({"linux"})
EVERYWHERE = DARWIN | LINUX


class Check(NamedTuple):
    """One row of :data:`CHECKS`: a stable name, where it applies, and the pure check."""

    name: str
    platforms: frozenset[str]
    run: Callable[[HostFacts], Result]
    applies: Callable[[HostFacts], bool] = lambda facts: True


CHECKS: tuple[Check, ...] = (
    Check("sampler", EVERYWHERE, check_sampler),
    Check("memory.pressure", EVERYWHERE, check_pressure),
    Check("gpu.wired_limit", DARWIN, check_wired_limit),
    Check("gpu.wired_limit.boot", DARWIN, check_wired_limit_boot),
    Check("gpu.wired_collector", DARWIN, check_wired_collector),
    Check("gpu.nvml", LINUX, check_nvml),
    Check("gpu.model_fit", EVERYWHERE, check_model_fit),
    Check("swap", EVERYWHERE, check_swap),
    Check("psi", LINUX, check_psi),
    Check("psi.trigger", LINUX, check_psi_trigger),
    Check("events", LINUX, check_events),
    Check("cgroup", LINUX, check_cgroup),
    Check("targets.sized", EVERYWHERE, check_targets_sized),
    Check("agent.priority", EVERYWHERE, check_agent_priority),
    Check("targets", EVERYWHERE, check_targets),
    Check("http.port", EVERYWHERE, check_port),
    Check("kube", EVERYWHERE, check_kube, lambda facts: facts.kube is not None),
)
"""Every check, in output order. A new check is a pure function of :class:`HostFacts` plus a
row here (and, if it needs a new fact, a field and a line in :func:`gather_facts`)."""


def run_checks(facts: HostFacts) -> tuple[Finding, ...]:
    """The verdict of every check that applies to the facts' platform."""
    return tuple(
        Finding(row.name, *row.run(facts))
        for row in CHECKS
        if facts.platform in row.platforms and row.applies(facts)
    )


# --- output --------------------------------------------------------------------------------


def exit_code(findings: Iterable[Finding]) -> int:
    """1 when any check failed, else 0: the status of ``metalmem-agent doctor``."""
    return 1 if any(f.verdict == Verdict.FAIL for f in findings) else 0


def report_to_dict(facts: HostFacts, findings: Sequence[Finding]) -> dict[str, Any]:
    """The JSON document of ``doctor --json`` (docs/doctor.schema.json)."""
    counts = {v.value: sum(1 for f in findings if f.verdict == v) for v in Verdict}
    return {
        "version": __version__,
        "platform": facts.platform,
        "checks": [
            {"check": f.check, "verdict": f.verdict.value, "finding": f.finding, "fix": f.fix}
            for f in findings
        ],
        "summary": {**counts, "exit_code": exit_code(findings)},
    }
