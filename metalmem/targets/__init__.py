"""Managed targets: the inference processes metalmem may stop, and where they come from.

A :class:`Target` is one running process, named by ``(pid, start_time)`` for its whole lifetime
(``start_time`` from the sampler: seconds since boot on Linux), plus what the eviction planner
needs to know about it: a stable ``key``, a :class:`Priority`, whether it is protected, its
declared budget and how to stop it. Two sources produce targets:

- static configuration: :class:`TargetSpec` records, one per ``[[target]]`` table of the agent's
  TOML file, checked by :func:`parse_target_specs` (the CLI reads the file; library code never
  does, STYLE rule 2) and turned into live targets by :func:`resolve`;
- discovery (:func:`discover`): running processes whose executable name matches a regex
  (``llama-server`` by default), named from ``--alias`` or the model file in their command line.

A target whose process is gone is dropped; a restarted process is a new identity even under the
same key. :class:`TargetTracker` re-resolves both sources and reports what changed.

One module per part: :mod:`.model` (Target, Priority, StopMethod), :mod:`.specs` (TargetSpec
and its parsing), :mod:`.proctable` (process tables), :mod:`.discovery` (resolve, discover) and
:mod:`.tracker` (TargetTracker); this package re-exports them.

Processes are listed from ``<proc_root>`` (``<sampler.root>/proc`` unless given, so tests can
point both at a captured tree) on Linux, and from ``ps`` on macOS, which has no ``/proc``.
"""

from .discovery import DEFAULT_DISCOVERY_PATTERN, discover, name_from_argv, resolve
from .model import KubeRef, Metadata, Priority, StopMethod, Target, TargetSource
from .proctable import parse_ps_output
from .specs import (
    DEFAULT_MAX_MATCHES,
    TargetSpec,
    TooManyMatches,
    check_pattern,
    parse_size,
    parse_target_specs,
    unmatched_targets,
)
from .tracker import TargetChanges, TargetTracker

__all__ = [
    "DEFAULT_DISCOVERY_PATTERN",
    "DEFAULT_MAX_MATCHES",
    "KubeRef",
    "Metadata",
    "Priority",
    "StopMethod",
    "Target",
    "TargetChanges",
    "TargetSource",
    "TargetSpec",
    "TargetTracker",
    "TooManyMatches",
    "check_pattern",
    "discover",
    "name_from_argv",
    "parse_ps_output",
    "parse_size",
    "parse_target_specs",
    "resolve",
    "unmatched_targets",
]
