"""The safety gate: the one check every stop passes right before it acts.

Planning happens from a sample that may be a tick old, and a stop may follow a Kubernetes call
or a wait; by then the pid may name another process, the process may be a zombie, its object
may have been marked protected, or the other targets may have exited. So before the first
signal, stop command or suspend, :meth:`SafetyGate.check` re-derives from fresh facts that:

1. the pid is not one metalmem never signals (pid <= 1, itself, its parent);
2. the target is an adopted identity: the tracker's current targets hold this exact
   ``(pid, start_time)`` (a pid pin, a discovery match, or a ``cmdline`` match);
3. the process behind the pid is still that identity (start time read now) and alive, not a
   zombie;
4. it is not protected, and its priority is the one the planner ranked; for a Kubernetes
   target both come from its object, read within the refresh period (or, while the API is
   unreachable, as last read): while nothing is known it is never stopped;
5. the floor still holds: at least ``floor`` other live targets remain.

Any failure refuses the stop with a :class:`~metalmem.eviction.SkipReason`. The gate decides;
it never signals (``metalmem.process.stop`` and the Kubernetes stopper call it, and the
watchdog calls it before handing a victim to any stopper, a custom one included).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import NamedTuple

from .errors import AccessDenied, Error, NoSuchProcess
from .eviction import SkipReason
from .procstate import is_zombie
from .sampler import ProcessMemory, Sampler
from .targets import Metadata, Priority, Target

__all__ = ["KubeFacts", "Refusal", "SafetyGate"]

log = logging.getLogger(__name__)


class Refusal(NamedTuple):
    """Why the gate refused a stop: a stable reason and the facts behind it."""

    reason: SkipReason
    detail: str


class KubeFacts(NamedTuple):
    """A Kubernetes target's priority and protection as its object says (``source`` is
    :attr:`Metadata.READ` or :attr:`Metadata.LAST_KNOWN`; :attr:`Metadata.LOCAL` where the
    object is known not to exist, so the local settings hold)."""

    priority: Priority
    protected: bool
    source: Metadata


MetadataLookup = Callable[[Target], KubeFacts | None]
"""The Kubernetes reporter's view of a target's object; ``None``: not known (yet)."""


class SafetyGate:
    """Checks a victim against fresh facts; see the module docstring for the rules.

    ``targets`` returns the managed targets as the tracker adopted them (before any overlay);
    ``floor`` the policy's floor now; ``metadata`` (optional) the Kubernetes facts. Thread-safe
    as far as its inputs are: it only reads.
    """

    def __init__(
        self,
        sampler: Sampler,
        targets: Callable[[], Sequence[Target]],
        floor: Callable[[], int],
        metadata: MetadataLookup | None = None,
    ) -> None:
        self._sampler = sampler
        self._targets = targets
        self._floor = floor
        self.metadata = metadata

    def check(self, target: Target) -> Refusal | None:
        """``None`` when ``target`` may be stopped now, else the :class:`Refusal`."""
        refusal = self._check(target)
        if refusal is not None:
            log.warning(
                "event=gate_refused key=%s pid=%d reason=%s detail=%r",
                target.key, target.pid, refusal.reason, refusal.detail,
            )  # fmt: skip
        return refusal

    def _check(self, target: Target) -> Refusal | None:
        pid = target.pid
        if pid <= 1 or pid == os.getpid() or pid == os.getppid():
            return Refusal(SkipReason.NEVER_TARGET, f"pid {pid} is never signalled")
        adopted = self._targets()
        if not any(t.identity == target.identity for t in adopted):
            return Refusal(
                SkipReason.NOT_ADOPTED,
                f"pid {pid} start_time {target.start_time} is not a managed identity now",
            )
        refusal = self._alive(target)
        if refusal is not None:
            return refusal
        refusal = self._protection(target)
        if refusal is not None:
            return refusal
        return self._floor_holds(target, adopted)

    def _alive(self, target: Target) -> Refusal | None:
        try:
            rec = self._sampler.process(target.pid)
        except NoSuchProcess:
            return Refusal(SkipReason.GONE, "no such process")
        except AccessDenied as exc:
            return Refusal(SkipReason.UNVERIFIABLE, f"cannot read its identity: {exc}")
        except (Error, OSError) as exc:
            return Refusal(SkipReason.UNVERIFIABLE, f"cannot read its identity: {exc}")
        if rec.start_time != target.start_time:
            return Refusal(
                SkipReason.IDENTITY_CHANGED,
                f"pid now names another process (start_time {rec.start_time} != "
                f"{target.start_time})",
            )
        if is_zombie(self._sampler.root, target.pid):
            return Refusal(SkipReason.GONE, "exited (zombie, not yet reaped)")
        return None

    def _protection(self, target: Target) -> Refusal | None:
        priority, protected = target.priority, target.protected
        if target.kube is not None and self.metadata is not None:
            facts = self.metadata(target)
            if facts is None:
                return Refusal(
                    SkipReason.METADATA_PENDING,
                    f"object {target.kube.namespace}/{target.kube.name} not read yet: its "
                    "priority and protection are unknown",
                )
            if facts.source is not Metadata.LOCAL:
                priority, protected = facts.priority, facts.protected
        if protected:
            return Refusal(SkipReason.PROTECTED, "target is protected")
        if priority != target.priority:
            return Refusal(
                SkipReason.PRIORITY_CHANGED,
                f"priority is {priority.value} now, ranked as {target.priority.value}",
            )
        return None

    def _floor_holds(self, target: Target, adopted: Sequence[Target]) -> Refusal | None:
        floor = self._floor()
        if floor <= 0:
            return None
        others = {t.pid: t for t in adopted if t.identity != target.identity}
        live = 0
        for pid, rec in self._sampler.processes(others).items():
            if not isinstance(rec, ProcessMemory) or rec.start_time != others[pid].start_time:
                continue
            if not is_zombie(self._sampler.root, pid):
                live += 1
        if live < floor:
            return Refusal(
                SkipReason.FLOOR, f"{live} other live target(s) would remain < floor {floor}"
            )
        return None
