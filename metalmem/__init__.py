"""metalmem: keep LLM inference hosts alive under memory pressure.

The public API, re-exported; nothing else lives here. Importing metalmem samples, registers,
starts and imports (kubernetes, prometheus_client, the HTTP server) nothing: the guardian
itself (``Agent``, ``AgentConfig``, ``run``) is imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .darwin import derive_darwin
from .errors import AccessDenied, ConfigError, Error, NoSuchProcess, Unsupported
from .eviction import (
    Candidate,
    CandidateState,
    EvictionMode,
    EvictionPolicy,
    Plan,
    Planner,
    SkipReason,
)
from .lazy import lazy_attributes
from .level import Level
from .pressure import (
    Assessment,
    Classifier,
    PressurePolicy,
    Reason,
    Signal,
    assessment_to_dict,
    parse_duration,
    threshold_bytes,
)
from .process import Reclaim, StopRecord, StopResult, stop, wait_for_reclaim
from .replay import ReplayError, TimelineEntry, parse_line, record_line
from .sampler import (
    PSI,
    GpuMemory,
    PressureEvents,
    ProcessMemory,
    Sampler,
    SystemMemory,
    process_memory,
    system_memory,
)
from .targets import (
    KubeRef,
    Priority,
    StopMethod,
    Target,
    TargetChanges,
    TargetSource,
    TargetSpec,
    TargetTracker,
    discover,
    parse_target_specs,
    resolve,
)

if TYPE_CHECKING:
    from .agent import Agent
    from .config import AgentConfig
    from .hoststop import StopAction
    from .serve import run

__version__ = "0.1.0"

# The guardian's composition pulls in the HTTP server and prometheus_client: on first use only.
_LAZY = {
    "Agent": "agent",
    "StopAction": "hoststop",
    "AgentConfig": "config",
    "run": "serve",
}


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)


__all__ = [
    "PSI",
    "AccessDenied",
    "Agent",
    "AgentConfig",
    "Assessment",
    "Candidate",
    "CandidateState",
    "Classifier",
    "ConfigError",
    "Error",
    "EvictionMode",
    "EvictionPolicy",
    "GpuMemory",
    "KubeRef",
    "Level",
    "NoSuchProcess",
    "Plan",
    "Planner",
    "PressureEvents",
    "PressurePolicy",
    "Priority",
    "ProcessMemory",
    "Reason",
    "Reclaim",
    "ReplayError",
    "Sampler",
    "Signal",
    "SkipReason",
    "StopAction",
    "StopMethod",
    "StopRecord",
    "StopResult",
    "SystemMemory",
    "Target",
    "TargetChanges",
    "TargetSource",
    "TargetSpec",
    "TargetTracker",
    "TimelineEntry",
    "Unsupported",
    "__version__",
    "assessment_to_dict",
    "derive_darwin",
    "discover",
    "parse_duration",
    "parse_line",
    "parse_target_specs",
    "process_memory",
    "record_line",
    "resolve",
    "run",
    "stop",
    "system_memory",
    "threshold_bytes",
    "wait_for_reclaim",
]
