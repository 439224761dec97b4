"""Kubernetes reporting: the ``MemoryPressure`` condition, events, target metadata, suspend.

The objects are LLMKube ``InferenceService`` resources by default (any namespaced custom resource
with a status subresource and ``spec.suspend`` works). A target with a :class:`KubeRef` names one.
:class:`KubeReporter` is a library component the agent composes; it only *reads* the watchdog
(listeners, STYLE rule 14) and gives it two hooks: :meth:`KubeReporter.overlay` (priority and
protection from the object's spec) and :meth:`KubeReporter.stopper` (evict through the owner).

One module per job, the reporter only composing them:

- :mod:`.options`: what the agent configures, and :func:`kube_available`;
- :mod:`.api`: the API calls (bounded timeouts) and what failures mean;
- :mod:`.rest`: the HTTP client they go through (http.client and ssl);
- :mod:`.objects`: what is known of each object, and the metadata the safety gate trusts;
- :mod:`.condition`: the ``MemoryPressure`` condition;
- :mod:`.events`: events and their series;
- :mod:`.memory`: per-model memory on the object (the ``metalmem.io/memory`` annotation);
- :mod:`.suspend`: suspend (the watchdog thread's eviction path) and resume;
- :mod:`.worker`: the one thread that makes the reporting path's API calls, and its backoff;
- :mod:`.reporter`: :class:`KubeReporter`.

Never in the way: every API call of the reporting path runs on one worker thread behind a
bounded queue (the oldest event is dropped when it is full, counted). Transient failures
(connection refused, timeouts, 5xx, 429) back off exponentially up to a cap; 409 is retried
against a fresh read; 404 ends reporting for that object until a refresh finds it again; 403 is
logged once with the RBAC verb that is missing. The one exception is
:meth:`KubeReporter.stopper`, which runs on the watchdog thread during an eviction.

Of ``kubernetes`` only the kubeconfig and in-cluster loaders and ``Configuration`` are imported
(the API classes and models cost ~25 MiB more: issue 15), and only by :meth:`KubeReporter.start`;
importing this package imports nothing of it.
"""

from typing import TYPE_CHECKING

from ..lazy import lazy_attributes

if TYPE_CHECKING:
    from .api import FIELD_MANAGER, KubeConfigError, KubeStats, WriteKind, WriteResult
    from .condition import CONDITION_TYPE, ConditionReason, condition_for, describe
    from .events import REPORTING_CONTROLLER, EventReason, microtime
    from .objects import SUSPEND_ANNOTATION
    from .options import (
        DEFAULT_RESOURCE,
        SERVICE_ACCOUNT_TOKEN,
        KubeOptions,
        Resource,
        kube_available,
    )  # fmt: skip
    from .reporter import KubeReporter
    from .suspend import fits_headroom

# Names are loaded from their module on first use (PEP 562): the agent without Kubernetes
# needs only WriteKind and WriteResult (its metrics), not the reporter (issue 15: RSS).
_WHERE = {
    "FIELD_MANAGER": "api", "KubeConfigError": "api", "KubeStats": "api", "WriteKind": "api",
    "WriteResult": "api", "CONDITION_TYPE": "condition", "ConditionReason": "condition",
    "condition_for": "condition", "describe": "condition", "REPORTING_CONTROLLER": "events",
    "EventReason": "events", "microtime": "events", "SUSPEND_ANNOTATION": "objects",
    "DEFAULT_RESOURCE": "options", "SERVICE_ACCOUNT_TOKEN": "options", "KubeOptions": "options",
    "Resource": "options", "kube_available": "options", "KubeReporter": "reporter",
    "fits_headroom": "suspend",
}  # fmt: skip


__getattr__, __dir__ = lazy_attributes(__name__, _WHERE)
__all__ = [
    "CONDITION_TYPE",
    "DEFAULT_RESOURCE",
    "FIELD_MANAGER",
    "REPORTING_CONTROLLER",
    "SERVICE_ACCOUNT_TOKEN",
    "SUSPEND_ANNOTATION",
    "ConditionReason",
    "EventReason",
    "KubeConfigError",
    "KubeOptions",
    "KubeReporter",
    "KubeStats",
    "Resource",
    "WriteKind",
    "WriteResult",
    "condition_for",
    "describe",
    "fits_headroom",
    "kube_available",
    "microtime",
]
