"""Kubernetes reporting: the ``MemoryPressure`` condition, events, target metadata, suspend.

The objects are LLMKube ``InferenceService`` resources by default (any namespaced custom resource
with a status subresource and ``spec.suspend`` works). A target with a :class:`KubeRef` names one.
:class:`KubeReporter` is a library component the agent composes; it only *reads* the watchdog
(listeners, STYLE rule 14) and gives it two hooks: :meth:`KubeReporter.overlay` (priority and
protection from the object's spec) and :meth:`KubeReporter.stopper` (evict through the owner).

Never in the way: every API call of the reporting path runs on one worker thread behind a
bounded queue (the oldest event is dropped when it is full, counted); the listeners only record
what changed. The condition is *state*, not a queue item: the worker writes the current desired
condition of each object whenever it differs from the last one written, so after an outage the
current condition is written, not the history. Transient failures (connection refused, timeouts,
5xx, 429) back off exponentially up to a cap; 409 is retried against a fresh read; 404 ends
reporting for that object until a refresh finds it again; 403 is logged once with the RBAC verb
that is missing.

The one exception is :meth:`KubeReporter.stopper`, which runs on the watchdog thread during an
eviction: one bounded merge-patch of ``spec.suspend`` (plus a read if the object is not cached,
and one retry per conflict), then up to ``grace`` for the owner to stop the process.

``kubernetes`` (~150-200 ms and ~30 MiB to import, reference/python-ecosystem.md 2.5) is imported
only by :meth:`KubeReporter.start`; importing this module imports nothing of it, and
:func:`kube_available` decides the default without it.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import enum
import json
import logging
import math
import os
import random
import select
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from .errors import Error
from .eviction import SkipReason
from .gate import KubeFacts, Refusal
from .kubemeta import MetadataCache, SpecFields
from .level import Level
from .pressure import Assessment, PressurePolicy, threshold_bytes
from .process import StopRecord, StopResult, stop
from .sampler import Sampler, SystemMemory
from .targets import KubeRef, Metadata, Target
from .watchdog import PUBLISH_TIMEOUT, EvictionRecord, Listeners, SkipRecord, State

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

log = logging.getLogger(__name__)

DEFAULT_RESOURCE = "inference.llmkube.dev/v1alpha1/inferenceservices"
FIELD_MANAGER = "metalmem"
CONDITION_TYPE = "MemoryPressure"
REPORTING_CONTROLLER = "metalmem.io/agent"
SUSPEND_ANNOTATION = "metalmem.io/suspended"
SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"

MERGE_PATCH = "application/merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"

_NOTE_LIMIT = 1024  # events.k8s.io/v1 rejects a longer note
_CONFLICT_RETRIES = 3
_KEYS_KEPT = 1024  # target keys remembered for their objects (older ones parse as ns/name)


class ConditionReason(enum.StrEnum):
    """``reason`` of the ``MemoryPressure`` condition."""

    NORMAL = "Normal"
    WARNING = "Warning"
    CRITICAL = "Critical"
    EVICTED = "Evicted"


class EventReason(enum.StrEnum):
    """``reason`` of the events the reporter writes; each has one ``action`` (see _ACTIONS)."""

    LEVEL_CHANGED = "MemoryPressureLevelChanged"
    EVICTING = "Evicting"
    EVICTED = "Evicted"
    EVICTION_SKIPPED = "EvictionSkipped"
    RESPAWN_BLOCKED = "RespawnBlocked"
    RESPAWN_UNBLOCKED = "RespawnUnblocked"
    SUSPENDED = "Suspended"
    RESUMED = "Resumed"


_ACTIONS: Mapping[EventReason, str] = {
    EventReason.LEVEL_CHANGED: "ObserveMemoryPressure",
    EventReason.EVICTING: "Evict",
    EventReason.EVICTED: "Evict",
    EventReason.EVICTION_SKIPPED: "Evict",
    EventReason.RESPAWN_BLOCKED: "BlockRespawn",
    EventReason.RESPAWN_UNBLOCKED: "UnblockRespawn",
    EventReason.SUSPENDED: "Suspend",
    EventReason.RESUMED: "Resume",
}


class WriteKind(enum.StrEnum):
    """What an API write was for: the ``kind`` label of ``metalmem_kube_writes_total``."""

    CONDITION = "condition"
    EVENT = "event"
    SUSPEND = "suspend"
    RESUME = "resume"


class WriteResult(enum.StrEnum):
    """How an API write ended: the ``result`` label of ``metalmem_kube_writes_total``."""

    SUCCESS = "success"
    CONFLICT = "conflict"
    NOT_FOUND = "not_found"
    FORBIDDEN = "forbidden"
    ERROR = "error"


class KubeStats(Protocol):
    """Where the reporter counts (``metalmem.metrics.AgentStats`` implements it)."""

    def kube_write(self, kind: str, result: str) -> None: ...

    def kube_dropped(self, n: int = 1) -> None: ...


class _NoStats:
    def kube_write(self, kind: str, result: str) -> None:
        pass

    def kube_dropped(self, n: int = 1) -> None:
        pass


class KubeConfigError(Error):
    """No usable Kubernetes configuration (kubeconfig or in-cluster service account)."""

    __module__ = "metalmem"


def _suspend_patch(resource_version: str | None, annotation: str | None) -> dict[str, Any]:
    """The merge patch that suspends (with our annotation) or resumes (removing it) an object,
    preconditioned on ``resource_version`` so a concurrent change is a 409, not lost."""
    return {
        "metadata": {
            "resourceVersion": resource_version,
            "annotations": {SUSPEND_ANNOTATION: annotation},
        },
        "spec": {"suspend": annotation is not None},
    }


# --- options -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Resource:
    """A namespaced custom resource, ``GROUP/VERSION/PLURAL``."""

    group: str
    version: str
    plural: str

    @classmethod
    def parse(cls, text: str) -> Resource:
        """``inference.llmkube.dev/v1alpha1/inferenceservices`` -> Resource; ``ValueError``
        naming the option otherwise."""
        parts = text.strip().split("/")
        if len(parts) != 3 or not all(parts) or any(" " in p for p in parts):
            raise ValueError(f"resource: expected GROUP/VERSION/PLURAL, got {text!r}")
        return cls(*parts)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"

    def __str__(self) -> str:
        return f"{self.group}/{self.version}/{self.plural}"


def _positive(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


@dataclasses.dataclass(frozen=True, slots=True)
class KubeOptions:
    """What the agent passes to :class:`KubeReporter`; validated, ``ValueError`` names the field.

    ``namespace`` limits reporting to one namespace (``None``: every namespace the targets
    name). ``refresh`` is how often the objects' specs are re-read (at most 30 s, issue 7).
    ``series_window``: a repeat of the same event within it updates the first one's ``series``.
    ``suspend_grace``: how long the suspend path waits for the owner to stop the process
    (``None``: the target's ``stop.grace``). ``request_timeout`` bounds every API call;
    ``backoff_initial``/``backoff_max`` pace retries while the API is unreachable.
    """

    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None
    resource: str = DEFAULT_RESOURCE
    node_name: str = dataclasses.field(default_factory=socket.gethostname)
    refresh: float = 30.0
    queue_size: int = 256
    series_window: float = 600.0
    suspend_grace: float | None = None
    request_timeout: float = 5.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0

    def __post_init__(self) -> None:
        Resource.parse(self.resource)
        if not isinstance(self.node_name, str) or not 0 < len(self.node_name) <= 128:
            raise ValueError(f"node_name: must be 1 to 128 characters, got {self.node_name!r}")
        if not _positive(self.refresh) or self.refresh > 30:
            raise ValueError(f"refresh: must be in (0, 30] seconds, got {self.refresh!r}")
        if (
            isinstance(self.queue_size, bool)
            or not isinstance(self.queue_size, int)
            or self.queue_size < 1
        ):
            raise ValueError(f"queue_size: must be an integer >= 1, got {self.queue_size!r}")
        for name in ("series_window", "request_timeout", "backoff_initial", "backoff_max"):
            if not _positive(getattr(self, name)):
                raise ValueError(f"{name}: must be > 0 seconds, got {getattr(self, name)!r}")
        if self.backoff_initial > self.backoff_max:
            raise ValueError("backoff_initial: must not exceed backoff_max")
        if self.suspend_grace is not None and not (
            _positive(self.suspend_grace) or self.suspend_grace == 0
        ):
            raise ValueError(f"suspend_grace: must be >= 0 seconds, got {self.suspend_grace!r}")
        for name in ("kubeconfig", "context", "namespace"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{name}: must be a non-empty string, got {value!r}")


def kube_available(
    options: KubeOptions,
    *,
    environ: Mapping[str, str] | None = None,
    token_path: str = SERVICE_ACCOUNT_TOKEN,
) -> tuple[bool, str]:
    """Whether Kubernetes reporting should be on by default, and why (for the log).

    On when an explicit kubeconfig exists, when running in a pod (``KUBERNETES_SERVICE_HOST``
    and the service account token), or when ``KUBECONFIG`` or ``~/.kube/config`` names a file
    that exists. Never imports ``kubernetes``.
    """
    env = os.environ if environ is None else environ
    if options.kubeconfig is not None:
        if os.path.isfile(options.kubeconfig):
            return True, f"kubeconfig {options.kubeconfig}"
        return False, f"kubeconfig {options.kubeconfig} does not exist"
    if env.get("KUBERNETES_SERVICE_HOST") and os.path.isfile(token_path):
        return True, "in-cluster service account"
    for path in (env.get("KUBECONFIG") or "").split(os.pathsep):
        if path and os.path.isfile(path):
            return True, f"kubeconfig {path} (KUBECONFIG)"
    home = env.get("HOME") or os.path.expanduser("~")
    default = os.path.join(home, ".kube", "config")
    if os.path.isfile(default):
        return True, f"kubeconfig {default}"
    return False, "no in-cluster service account and no kubeconfig (KUBECONFIG, ~/.kube/config)"


# --- pure helpers (serialization edges) -------------------------------------------------------


def condition_for(level: Level, evicted: bool = False) -> tuple[str, ConditionReason]:
    """(status, reason) of ``MemoryPressure``: True for WARNING/CRITICAL, False for NORMAL;
    ``Evicted`` for an object whose process metalmem stopped while the pressure lasts."""
    if level == Level.NORMAL:
        return "False", ConditionReason.NORMAL
    if evicted:
        return "True", ConditionReason.EVICTED
    return "True", (
        ConditionReason.CRITICAL if level == Level.CRITICAL else ConditionReason.WARNING
    )


def _human(n: int | None) -> str:
    if n is None:
        return "unknown"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{n} B"  # pragma: no cover - the loop always returns


def describe(level: Level, system: SystemMemory | None, assessment: Assessment | None) -> str:
    """The condition message: the level, available of total, and the top signal's message."""
    parts = []
    if system is not None and system.available is not None and system.total:
        share = 100.0 * system.available / system.total
        parts.append(
            f"available {_human(system.available)} of {_human(system.total)} ({share:.1f}%)"
        )
    top = assessment.top_reason if assessment is not None else None
    if top is not None:
        parts.append(f"top signal {top.signal.value}: {top.message}")
    return f"{level.name}: " + ("; ".join(parts) if parts else "no sample yet")


def fits_headroom(footprint: int | None, system: SystemMemory | None, warning: float) -> bool:
    """Whether ``footprint`` bytes fit in the memory available above the WARNING threshold
    (``warning`` is the policy's ``warning_available`` fraction). An unknown footprint fits;
    an unknown sample does not."""
    if system is None or system.available is None or not system.total:
        return False
    if footprint is None:
        return True
    return footprint <= system.available - threshold_bytes(warning, system.total)


def microtime(unix: float) -> str:
    """metav1.MicroTime: RFC 3339 with exactly six fractional digits, UTC."""
    dt = datetime.datetime.fromtimestamp(unix, datetime.UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _rfc3339(unix: float) -> str:
    return datetime.datetime.fromtimestamp(unix, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _event_time(unix: float) -> datetime.datetime:
    """eventTime for the client's model. The client serializes it with ``isoformat()``, which
    drops the fraction when it is 0, and MicroTime then fails to parse (exactly six digits):
    never send microsecond 0."""
    dt = datetime.datetime.fromtimestamp(unix, datetime.UTC)
    return dt if dt.microsecond else dt.replace(microsecond=1)


def _truncate(text: str, limit: int = _NOTE_LIMIT) -> str:
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode(errors="ignore") + "..."


# --- cached objects ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _ObjectInfo:
    """What the reporter keeps of one object from its latest read or write."""

    api_version: str
    kind: str
    uid: str | None
    generation: int | None
    resource_version: str | None
    priority: str | None
    protected: bool | None
    suspended: bool
    annotation: dict[str, Any] | None  # ours, parsed; None when absent or unreadable
    has_annotation: bool
    condition: Mapping[str, Any] | None  # the stored MemoryPressure condition


def _info_from(obj: Mapping[str, Any]) -> _ObjectInfo:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    annotations = meta.get("annotations") or {}
    raw = annotations.get(SUSPEND_ANNOTATION)
    parsed: dict[str, Any] | None = None
    if raw is not None:
        try:
            value = json.loads(raw)
            parsed = value if isinstance(value, dict) else {}
        except ValueError:
            parsed = {}
    condition = next(
        (
            c
            for c in (obj.get("status") or {}).get("conditions") or ()
            if isinstance(c, dict) and c.get("type") == CONDITION_TYPE
        ),
        None,
    )
    priority = spec.get("priority")
    protected = spec.get("evictionProtection")
    return _ObjectInfo(
        api_version=str(obj.get("apiVersion", "")),
        kind=str(obj.get("kind", "")),
        uid=meta.get("uid"),
        generation=meta.get("generation"),
        resource_version=meta.get("resourceVersion"),
        priority=priority if isinstance(priority, str) else None,
        protected=protected if isinstance(protected, bool) else None,
        suspended=spec.get("suspend") is True,
        annotation=parsed,
        has_annotation=raw is not None,
        condition=condition,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class _Desired:
    """The condition an object should carry now; ``since_unix`` is when ``status`` took
    this value (its lastTransitionTime unless the object already has the same status)."""

    status: str
    reason: ConditionReason
    message: str
    since_unix: float


@dataclasses.dataclass(frozen=True, slots=True)
class _EventItem:
    ref: KubeRef
    reason: EventReason
    type: str  # Normal | Warning
    note: str
    detail: str  # with (ref, reason, action, type): what makes two events "the same"
    time_unix: float


@dataclasses.dataclass(slots=True)
class _Series:
    namespace: str
    name: str
    count: int
    last_unix: float


# --- the API (kubernetes imported here only) -------------------------------------------------


class _CallFailed(Exception):
    """One API call failed; ``result`` is the metric label, ``transient`` says retry later."""

    def __init__(
        self, result: WriteResult, code: int | None, message: str, *, transient: bool
    ) -> None:
        super().__init__(message)
        self.result = result
        self.code = code
        self.message = message
        self.transient = transient


class _Api:
    """The few calls metalmem makes, through the official client, with bounded timeouts."""

    def __init__(self, options: KubeOptions, resource: Resource) -> None:
        import yaml  # a dependency of kubernetes: its kubeconfig parser
        from kubernetes import client, config  # the lazy import: see the module docstring

        cfg = client.Configuration()
        explicit = options.kubeconfig is not None or options.context is not None
        source = ""
        try:
            if not explicit and os.environ.get("KUBERNETES_SERVICE_HOST"):
                try:
                    config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
                    source = "in-cluster"
                except config.ConfigException as exc:
                    log.info("event=kube_incluster_unavailable error=%r fallback=kubeconfig", exc)
            if not source:
                # load_kube_config, never load_config: that one prints to stdout.
                config.load_kube_config(  # type: ignore[no-untyped-call]
                    config_file=options.kubeconfig,
                    context=options.context,
                    client_configuration=cfg,
                    persist_config=False,
                )
                source = f"kubeconfig {options.kubeconfig or '(default)'}"
        except (
            config.ConfigException,
            yaml.YAMLError,  # a garbled kubeconfig
            AttributeError,  # valid YAML that is not a mapping
            OSError,
            ValueError,
            TypeError,
            KeyError,
        ) as exc:
            message = " ".join(str(exc).split())  # YAML errors span lines: one line to the operator
            raise KubeConfigError(f"cannot load Kubernetes configuration: {message}") from exc
        cfg.retries = 0  # the reporter paces its own retries (capped backoff)
        self.source = source
        self.host = str(cfg.host)
        self._client = client.ApiClient(cfg)
        self._custom = client.CustomObjectsApi(self._client)
        self._events = client.EventsV1Api(self._client)
        self._event_model = client.EventsV1Event
        self._api_exception: type[Exception] = client.exceptions.ApiException
        self._resource = resource
        self._timeout = options.request_timeout

    def close(self) -> None:
        self._client.close()  # type: ignore[no-untyped-call]

    def _call(self, verb: str, what: str, fn: Callable[[], Any]) -> Any:
        import urllib3

        try:
            return fn()
        except self._api_exception as exc:
            code = int(getattr(exc, "status", 0) or 0)
            reason = getattr(exc, "reason", "") or ""
            message = f"{verb} {what}: HTTP {code} {reason}: {_status_message(exc)}"
            if code == 0 or code == 429 or code >= 500:
                raise _CallFailed(WriteResult.ERROR, code, message, transient=True) from exc
            result = {
                403: WriteResult.FORBIDDEN,
                404: WriteResult.NOT_FOUND,
                409: WriteResult.CONFLICT,
            }.get(code, WriteResult.ERROR)
            raise _CallFailed(result, code, message, transient=False) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise _CallFailed(
                WriteResult.ERROR, None, f"{verb} {what}: {exc!r}", transient=True
            ) from exc

    def _names(self, ref: KubeRef) -> dict[str, Any]:
        r = self._resource
        return {
            "group": r.group,
            "version": r.version,
            "namespace": ref.namespace,
            "plural": r.plural,
            "name": ref.name,
            "_request_timeout": self._timeout,
        }

    def get(self, ref: KubeRef) -> dict[str, Any]:
        obj = self._call(
            "get",
            self._resource.plural,
            lambda: self._custom.get_namespaced_custom_object(**self._names(ref)),
        )
        return dict(obj)

    def list(self, namespace: str) -> list[dict[str, Any]]:
        r = self._resource
        doc = self._call(
            "list",
            r.plural,
            lambda: self._custom.list_namespaced_custom_object(
                group=r.group,
                version=r.version,
                namespace=namespace,
                plural=r.plural,
                _request_timeout=self._timeout,
            ),
        )
        return [dict(o) for o in (doc or {}).get("items") or ()]

    def apply_status(self, ref: KubeRef, body: dict[str, Any]) -> dict[str, Any]:
        obj = self._call(
            "patch",
            f"{self._resource.plural}/status",
            lambda: self._custom.patch_namespaced_custom_object_status(
                **self._names(ref),
                body=body,
                field_manager=FIELD_MANAGER,
                force=True,
                _content_type=APPLY_PATCH,
            ),
        )
        return dict(obj)

    def merge_patch(self, ref: KubeRef, body: dict[str, Any]) -> dict[str, Any]:
        obj = self._call(
            "patch",
            self._resource.plural,
            lambda: self._custom.patch_namespaced_custom_object(
                **self._names(ref),
                body=body,
                field_manager=FIELD_MANAGER,
                _content_type=MERGE_PATCH,
            ),
        )
        return dict(obj)

    def create_event(self, namespace: str, body: dict[str, Any]) -> None:
        model = self._event_model.from_dict(body)
        if model is None:  # pragma: no cover - from_dict returns None only for None
            raise _CallFailed(WriteResult.ERROR, None, "create events: no body", transient=False)
        self._call(
            "create",
            "events",
            lambda: self._events.create_namespaced_event(
                namespace=namespace, body=model, _request_timeout=self._timeout
            ),
        )

    def patch_event(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        self._call(
            "patch",
            "events",
            lambda: self._events.patch_namespaced_event(
                name=name,
                namespace=namespace,
                body=body,
                _content_type=MERGE_PATCH,
                _request_timeout=self._timeout,
            ),
        )


def _status_message(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    if isinstance(body, str):
        try:
            return str(json.loads(body).get("message", body))[:500]
        except (ValueError, AttributeError):
            return body[:500]
    return str(exc)[:500]


# --- exit waiting for the suspend path -----------------------------------------------------------


class _ExitWaiter:
    """Waits for one target's process to exit without signalling it: a pidfd on Linux (pins
    the pid, polls readable on exit), else re-sampling (gone, or another start time)."""

    def __init__(self, target: Target, sampler: Sampler) -> None:
        self._target = target
        self._sampler = sampler
        self._fd: int | None = None
        if sys.platform == "linux":
            try:
                self._fd = os.pidfd_open(target.pid)
            except OSError:
                self._fd = None

    def is_target(self) -> bool:
        """Whether the pid (pinned by the pidfd where there is one) is still the target."""
        try:
            rec = self._sampler.process(self._target.pid)
        except (Error, OSError):
            return False
        return rec.start_time == self._target.start_time

    def wait(self, timeout: float) -> bool:
        if self._fd is not None:
            poller = select.poll()
            poller.register(self._fd, select.POLLIN)
            return bool(poller.poll(max(0, round(timeout * 1000))))
        deadline = time.monotonic() + timeout
        while True:
            if not self.is_target():
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(0.05, left))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# --- the reporter --------------------------------------------------------------------------------


class KubeReporter:
    """Reports the watchdog's view to the objects its targets name, and evicts through them.

    Compose it in the agent::

        reporter = KubeReporter(KubeOptions(...), pressure=policy, stats=agent_stats)
        reporter.start()                      # loads config, starts the worker
        reporter.attach(listeners)            # before the watchdog starts
        dog = Watchdog(..., targets=lambda: reporter.overlay(tracker.targets),
                       listeners=listeners, stopper=reporter.stopper)

    ``pressure`` supplies the WARNING threshold for the resume rule (default policy if
    omitted); ``stats`` counts writes and drops; ``clock`` is monotonic seconds and ``wall``
    Unix seconds (both injectable); ``state_dir`` keeps the objects' last-read priority and
    protection across restarts (:mod:`metalmem.kubemeta`).
    """

    def __init__(
        self,
        options: KubeOptions,
        *,
        pressure: PressurePolicy | None = None,
        stats: KubeStats | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        state_dir: str | None = None,
    ) -> None:
        self.options = options
        self._meta = MetadataCache(state_dir, clock=clock, wall=wall)
        # The watchdog's safety gate, asked right before a suspend (set by whoever composes
        # the two; without one, the stopper checks the fresh object's protection itself).
        self.gate: Callable[[Target], Refusal | None] | None = None
        self.resource = Resource.parse(options.resource)
        self._warning = (pressure or PressurePolicy()).warning_available
        self._stats: KubeStats = stats if stats is not None else _NoStats()
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()  # guards assignments only: no I/O or logging under it
        self._refs: dict[KubeRef, None] = {}
        self._key_refs: dict[str, KubeRef] = {}
        self._objects: Mapping[KubeRef, _ObjectInfo] = {}
        self._attempted: frozenset[KubeRef] = frozenset()  # refs a refresh has tried to read
        self._missing: set[KubeRef] = set()
        self._desired: dict[KubeRef, _Desired] = {}
        self._evicted: set[KubeRef] = set()
        self._events: collections.deque[_EventItem] = collections.deque()
        self._resume_wanted: dict[KubeRef, None] = {}
        self._level: Level | None = None
        self._system: SystemMemory | None = None
        self._assessment: Assessment | None = None
        # worker-only state
        self._written: dict[KubeRef, _Desired] = {}
        self._written_condition: dict[KubeRef, dict[str, Any]] = {}
        self._series: dict[tuple[Any, ...], _Series] = {}
        self._logged: set[tuple[str, ...]] = set()
        self._failures = 0
        self._outage_since: float | None = None
        self._retry_at = 0.0
        self._next_refresh = 0.0
        self._refresh_wanted = True
        self._last_event_ns = 0
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._idle = threading.Event()
        self._thread: threading.Thread | None = None
        self._api: _Api | None = None

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Load the configuration (in-cluster first unless a kubeconfig or context is given,
        then the kubeconfig) and start the worker. Raises :class:`KubeConfigError`."""
        if self._thread is not None:
            raise RuntimeError("KubeReporter already started")
        self._api = _Api(self.options, self.resource)
        log.info(
            "event=kube_started source=%r server=%s resource=%s namespace=%s node=%s",
            self._api.source, self._api.host, self.resource,
            self.options.namespace or "*", self.options.node_name,
        )  # fmt: skip
        self._thread = threading.Thread(target=self._run, name="metalmem-kube", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        """Stop the worker; returns within ``timeout`` (a call in flight is abandoned)."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._api is not None and (self._thread is None or not self._thread.is_alive()):
            self._api.close()

    def flush(self, timeout: float) -> bool:
        """Wait until nothing is left to write (for a clean shutdown); False on timeout or
        when the worker is not running."""
        if self._thread is None or not self._thread.is_alive():
            return False
        self._idle.clear()
        self._wake.set()
        return self._idle.wait(timeout)

    def attach(self, listeners: Listeners) -> None:
        """Register the reporter's callbacks (they only record; the worker does the I/O)."""
        listeners.on_sample.append(self._on_sample)
        listeners.on_level_change.append(self._on_level_change)
        listeners.on_evicting.append(self._on_evicting)
        listeners.on_eviction.append(self._on_eviction)
        listeners.on_skip.append(self._on_skip)
        listeners.on_unblock.append(self._on_unblock)

    def set_pressure(self, pressure: PressurePolicy) -> None:
        """Use a reloaded policy's WARNING threshold for the resume rule."""
        self._warning = pressure.warning_available

    @property
    def is_reachable(self) -> bool:
        """False while the API is failing (the worker is backing off)."""
        return self._failures == 0

    # --- scope ---------------------------------------------------------------------------------
    def _ref_of(self, target: Any) -> KubeRef | None:
        ref = getattr(target, "kube", None)
        if not isinstance(ref, KubeRef):
            return None
        if self.options.namespace is not None and ref.namespace != self.options.namespace:
            return None
        return ref

    def _note(self, refs: Iterable[tuple[str, KubeRef]]) -> None:
        """Remember targets' objects; a new object wakes the worker to read it."""
        new = False
        for key, ref in refs:
            if self._key_refs.get(key) == ref and ref in self._refs:
                continue
            with self._lock:
                self._key_refs[key] = ref
                if len(self._key_refs) > _KEYS_KEPT:  # keys with #pid come and go with pids
                    del self._key_refs[next(iter(self._key_refs))]
                if ref not in self._refs:
                    self._refs[ref] = None
                    new = True
        if new:
            self._refresh_wanted = True
            self._wake.set()

    def _ref_for_key(self, key: str) -> KubeRef | None:
        ref = self._key_refs.get(key)
        if ref is None:  # e.g. a respawn block from before a restart: keys are ns/name[#pid]
            ns, sep, name = key.partition("/")
            name = name.split("#", 1)[0]
            if sep and ns and name:
                ref = KubeRef(ns, name)
                if self.options.namespace is not None and ns != self.options.namespace:
                    return None
        return ref

    # --- target metadata -------------------------------------------------------------------------
    def overlay(self, targets: Sequence[Target]) -> tuple[Target, ...]:
        """The targets with priority and protection from their objects' spec, where the spec
        sets them (``spec.priority``, ``spec.evictionProtection``), and ``metadata`` saying
        where they come from. A target whose object was not read yet is
        :attr:`Metadata.PENDING` (never stopped, issue 13); one whose object does not exist
        keeps its local settings. Cheap: reads a cached snapshot (refreshed by the worker every
        ``refresh`` seconds), never calls the API."""
        self._note((t.key, r) for t in targets if (r := self._ref_of(t)) is not None)
        out = []
        for t in targets:
            facts = self.metadata(t)
            if facts is None:
                ref = self._ref_of(t)
                first_read = self.is_reachable and ref is not None and ref not in self._attempted
                t = dataclasses.replace(
                    t, metadata=Metadata.PENDING if first_read else Metadata.UNKNOWN
                )
            elif facts.source is not Metadata.LOCAL:
                t = dataclasses.replace(
                    t, priority=facts.priority, protected=facts.protected, metadata=facts.source
                )
            out.append(t)
        return tuple(out)

    def metadata(self, target: Target) -> KubeFacts | None:
        """What ``target``'s object says now (see :class:`metalmem.gate.KubeFacts`): read
        within twice the refresh period, or as last read while the API is unreachable;
        ``None`` when nothing is known. Local settings hold for a target without an object in
        scope and for an object that does not exist."""
        ref = self._ref_of(target)
        if ref is None or ref in self._missing:
            return KubeFacts(target.priority, target.protected, Metadata.LOCAL)
        return self._meta.facts(
            ref, target, max_age=2 * self.options.refresh, reachable=self.is_reachable
        )

    # --- listeners (notifier thread: record, never call the API) --------------------------------
    def _desired_for(self, ref: KubeRef, level: Level, message: str) -> _Desired:
        status, reason = condition_for(level, ref in self._evicted)
        prev = self._desired.get(ref)
        since = prev.since_unix if prev is not None and prev.status == status else self._wall()
        return _Desired(status, reason, message, since)

    def _on_sample(self, state: State) -> None:
        self._note((t.key, r) for t in state.targets if (r := self._ref_of(t)) is not None)
        assessment = state.assessment
        fresh: list[KubeRef] = []
        with self._lock:
            self._system, self._assessment = state.system, assessment
            if assessment is not None:
                level = self._level if self._level is not None else assessment.level
                self._level = level
                fresh = [r for r in self._refs if r not in self._desired]
                if fresh:
                    message = describe(level, state.system, assessment)
                    for ref in fresh:
                        self._desired[ref] = self._desired_for(ref, level, message)
            wake = bool(self._resume_wanted) or bool(fresh)
        if wake:
            self._wake.set()

    def _on_level_change(self, old: Level, new: Level, assessment: Assessment) -> None:
        now = self._wall()
        with self._lock:
            self._level = new
            self._assessment = assessment
            if new == Level.NORMAL:
                self._evicted.clear()
            message = describe(new, self._system, assessment)
            for ref in self._refs:
                self._desired[ref] = self._desired_for(ref, new, message)
            refs = list(self._refs)
        kind = "Normal" if new == Level.NORMAL else "Warning"
        note = f"memory pressure {old.name} -> {new.name}: {message}"
        for ref in refs:
            self._post(_EventItem(ref, EventReason.LEVEL_CHANGED, kind, note,
                                  f"{old.name}->{new.name}", now))  # fmt: skip

    def _on_evicting(self, record: EvictionRecord) -> None:
        """A stop is starting: say so on its object before the first signal (issue 14)."""
        ref = self._ref_for_key(record.key)
        if ref is not None:
            note = (
                f"evicting {record.key} (pid {record.pid}, priority {record.priority}, "
                f"footprint {_human(record.footprint)}) on signal {record.reason}"
            )
            self._post(_EventItem(ref, EventReason.EVICTING, "Warning", note, "", self._wall()))

    def _on_eviction(self, record: EvictionRecord) -> None:
        if record.result == "dry-run":
            return
        ref = self._ref_for_key(record.key)
        if ref is None:
            return
        now = self._wall()
        try:
            result = StopResult(record.result)
        except ValueError:
            result = StopResult.FAILED
        note = (
            f"evicted {record.key} (pid {record.pid}, priority {record.priority}) on signal "
            f"{record.reason}: result {record.result}, footprint {_human(record.footprint)}, "
            f"reclaimed {_human(record.reclaimed)}; {record.message}"
        )
        with self._lock:
            level = self._level or Level.CRITICAL
            if result.is_success and level != Level.NORMAL:  # at NORMAL it is over already
                self._evicted.add(ref)
                message = (
                    f"evicted pid {record.pid}: result {record.result}, footprint "
                    f"{_human(record.footprint)}, reclaimed {_human(record.reclaimed)}; "
                    + describe(level, self._system, self._assessment)
                )
                self._desired[ref] = self._desired_for(ref, level, message)
        self._post(_EventItem(ref, EventReason.EVICTED, "Warning", note, record.result, now))
        if result.is_success or result is StopResult.FAILED:
            self._post(
                _EventItem(
                    ref, EventReason.RESPAWN_BLOCKED, "Warning",
                    f"{record.key} must not be respawned until NORMAL has held for the "
                    "transition period", "", now,
                )
            )  # fmt: skip

    def _on_skip(self, record: SkipRecord) -> None:
        now = self._wall()
        note = f"eviction wanted but skipped: {record.reason.value}: {record.explanation}"
        with self._lock:
            refs = list(self._refs)
        for ref in refs:
            self._post(
                _EventItem(ref, EventReason.EVICTION_SKIPPED, "Warning", note,
                           record.reason.value, now)
            )  # fmt: skip

    def _on_unblock(self, keys: tuple[str, ...]) -> None:
        now = self._wall()
        for key in keys:
            ref = self._ref_for_key(key)
            if ref is None:
                continue
            with self._lock:
                self._resume_wanted[ref] = None
            self._post(
                _EventItem(ref, EventReason.RESPAWN_UNBLOCKED, "Normal",
                           f"{key} may be respawned: NORMAL has held for the transition period",
                           "", now)
            )  # fmt: skip

    def _post(self, item: _EventItem) -> None:
        dropped = 0
        with self._lock:
            while len(self._events) >= self.options.queue_size:
                self._events.popleft()
                dropped += 1
            self._events.append(item)
        if dropped:
            self._stats.kube_dropped(dropped)
            log.debug("event=kube_event_dropped n=%d reason=queue_full", dropped)
        self._wake.set()

    # --- the suspend path (watchdog thread) -------------------------------------------------------
    def stopper(self, target: Target, sampler: Sampler) -> StopRecord:
        """Stop a victim through its owner: merge-patch ``spec.suspend: true`` with the
        ``metalmem.io/suspended`` annotation, then wait up to the grace for the process to
        exit; if it does not, run :func:`metalmem.process.stop` (recorded in the message).

        Targets without an object, protected ones, objects suspended by someone else, and any
        failure to patch (API unreachable, 403, 404) take the signal path at once. Pass it as
        ``Watchdog(stopper=...)``.
        """
        ref = self._ref_of(target)
        api = self._api
        if self.is_reachable and self._thread is not None:
            self.flush(PUBLISH_TIMEOUT)  # the condition and "Evicting" before any signal
        if ref is None or api is None or target.protected or ref in self._missing:
            return stop(target, sampler=sampler, gate=self.gate)
        if not self.is_reachable:
            return self._signal_path(target, sampler, "the API server is unreachable")
        t0 = self._clock()
        waiter = _ExitWaiter(target, sampler)
        try:
            if not waiter.is_target():  # gone already: stop() says so without signalling
                return stop(target, sampler=sampler, gate=self.gate)
            footprint = self._footprint(target, sampler)
            try:  # the object as it is now: its protection may have changed since the plan
                info = self._remember(ref, api.get(ref))
            except _CallFailed as exc:
                self._count_failure(WriteKind.SUSPEND, exc, ref)
                return self._signal_path(target, sampler, exc.message)
            refusal = self._gate_check(target, info)
            if refusal is not None:
                return StopRecord(
                    target.key, target.pid, target.start_time, StopResult.DENIED, (),
                    self._clock() - t0, f"safety gate: {refusal.reason}: {refusal.detail}",
                )  # fmt: skip
            failure = self._suspend(api, ref, footprint, info)
            if failure is not None:
                return self._signal_path(target, sampler, failure)
            grace = (
                self.options.suspend_grace
                if self.options.suspend_grace is not None
                else target.stop.grace_seconds
            )
            self._post(
                _EventItem(
                    ref, EventReason.SUSPENDED, "Warning",
                    f"spec.suspend set by metalmem on {self.options.node_name} to stop "
                    f"{target.key} (pid {target.pid}, footprint {_human(footprint)}) under "
                    "CRITICAL memory pressure", "", self._wall(),
                )
            )  # fmt: skip
            if waiter.wait(grace):
                message = f"suspended {ref.namespace}/{ref.name}; the owner stopped the process"
                log.info("event=kube_suspend_done key=%s pid=%d ref=%s/%s duration=%.3f",
                         target.key, target.pid, ref.namespace, ref.name,
                         self._clock() - t0)  # fmt: skip
                return StopRecord(
                    target.key, target.pid, target.start_time, StopResult.TERMINATED,
                    ("suspend",), self._clock() - t0, message,
                )  # fmt: skip
        finally:
            waiter.close()
        log.warning("event=kube_suspend_timeout key=%s pid=%d grace=%.1f fallback=signal",
                    target.key, target.pid, grace)  # fmt: skip
        rec = stop(target, sampler=sampler, gate=self.gate)
        result = rec.result
        if result is StopResult.ALREADY_GONE:
            result = StopResult.TERMINATED  # the owner stopped it, just after the grace
        elif not result.is_gone:
            with self._lock:  # still running: undo the suspend once memory allows
                self._resume_wanted[ref] = None
        return StopRecord(
            target.key, target.pid, target.start_time, result, ("suspend", *rec.steps),
            self._clock() - t0,
            f"suspended {ref.namespace}/{ref.name}; the process did not exit within "
            f"{grace:g} s, so the signal path ran: {rec.message}",
        )  # fmt: skip

    def _footprint(self, target: Target, sampler: Sampler) -> int | None:
        try:
            return sampler.process(target.pid).footprint
        except (Error, OSError):
            return None

    def _gate_check(self, target: Target, info: _ObjectInfo) -> Refusal | None:
        """The safety gate, or (a reporter used without a watchdog) the fresh object's own
        protection and priority."""
        if self.gate is not None:
            return self.gate(target)
        facts = SpecFields(info.priority, info.protected).facts(target, Metadata.READ)
        if facts.protected:
            return Refusal(SkipReason.PROTECTED, "its object sets evictionProtection")
        if facts.priority != target.priority:
            return Refusal(SkipReason.PRIORITY_CHANGED, f"its object says {facts.priority}")
        return None

    def _signal_path(self, target: Target, sampler: Sampler, why: str) -> StopRecord:
        log.warning("event=kube_suspend_skipped key=%s reason=%r fallback=signal", target.key, why)
        rec = stop(target, sampler=sampler, gate=self.gate)
        return dataclasses.replace(rec, message=f"not suspended ({why}); {rec.message}")

    def _suspend(
        self, api: _Api, ref: KubeRef, footprint: int | None, info: _ObjectInfo | None
    ) -> str | None:
        """Set spec.suspend with our annotation; None on success, else why not."""
        annotation = json.dumps(
            {
                "time": _rfc3339(self._wall()),
                "level": Level.CRITICAL.name,  # the planner acts only at CRITICAL
                "footprint": footprint,
                "node": self.options.node_name,
            },
            sort_keys=True,
        )
        for _ in range(_CONFLICT_RETRIES):
            try:
                if info is None:
                    info = self._remember(ref, api.get(ref))
                if info.suspended and not info.has_annotation:
                    return "spec.suspend was already set by someone else"
                obj = api.merge_patch(ref, _suspend_patch(info.resource_version, annotation))
            except _CallFailed as exc:
                self._count_failure(WriteKind.SUSPEND, exc, ref)
                if exc.result is WriteResult.CONFLICT:
                    info = None
                    continue
                return exc.message
            self._remember(ref, obj)
            self._stats.kube_write(WriteKind.SUSPEND, WriteResult.SUCCESS)
            log.info("event=kube_suspended ref=%s/%s footprint=%s", ref.namespace, ref.name,
                     footprint)  # fmt: skip
            return None
        return "the object kept changing (409 conflicts)"

    # --- worker ----------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopping.is_set():
            now = self._clock()
            if now < self._retry_at:
                self._wake.wait(self._retry_at - now)
                self._wake.clear()
                continue
            self._wake.clear()
            try:
                did = self._step()
            except _CallFailed as exc:
                self._backoff(exc)
                continue
            except Exception:  # a bug must not end reporting silently
                log.exception("event=kube_worker_error")
                self._retry_at = self._clock() + self.options.backoff_max
                continue
            if self._failures:
                log.info("event=kube_recovered down_for=%.1fs",
                         self._clock() - (self._outage_since or self._clock()))  # fmt: skip
                self._failures = 0
                self._outage_since = None
                self._refresh_wanted = True  # the objects may have changed meanwhile
                continue
            if not did:
                self._idle.set()
                self._wake.wait(max(0.0, self._next_refresh - self._clock()))

    def _backoff(self, exc: _CallFailed) -> None:
        self._failures += 1
        doublings = min(self._failures - 1, 32)  # an outage of days must not overflow
        delay = min(self.options.backoff_max, self.options.backoff_initial * 2.0**doublings)
        delay *= random.uniform(0.5, 1.0)  # spread the agents of many nodes
        self._retry_at = self._clock() + delay
        if self._failures == 1:
            self._outage_since = self._clock()
            log.warning("event=kube_unreachable error=%r retry_in=%.2fs", exc.message, delay)
        else:
            log.debug("event=kube_retry failures=%d error=%r retry_in=%.2fs", self._failures,
                      exc.message, delay)  # fmt: skip

    def _step(self) -> bool:
        """One unit of work; True if there was any. Transient failures raise _CallFailed."""
        if self._refresh_wanted or self._clock() >= self._next_refresh:
            self._refresh_wanted = False
            self._next_refresh = self._clock() + self.options.refresh
            self._refresh()
            return True
        return self._sync_conditions() or self._resume_one() or self._send_event()

    def _remember(self, ref: KubeRef, obj: Mapping[str, Any]) -> _ObjectInfo:
        info = _info_from(obj)
        with self._lock:
            self._objects = {**self._objects, ref: info}
        self._meta.seen(ref, SpecFields(info.priority, info.protected))
        return info

    def _set_missing(self, ref: KubeRef, why: str) -> None:
        with self._lock:
            if ref in self._missing:
                return
            self._missing.add(ref)
            self._objects = {r: i for r, i in self._objects.items() if r != ref}
        log.warning(
            "event=kube_object_missing ref=%s/%s resource=%s reason=%s action=keep_local_settings",
            ref.namespace, ref.name, self.resource, why,
        )  # fmt: skip

    def _found(self, ref: KubeRef, obj: Mapping[str, Any]) -> _ObjectInfo:
        """A read of ``ref`` (worker thread). An object that was missing, or was recreated
        (another uid), gets the current condition again."""
        before = self._objects.get(ref)
        info = self._remember(ref, obj)
        if ref in self._missing or (before is not None and before.uid != info.uid):
            with self._lock:
                self._missing.discard(ref)
            self._written.pop(ref, None)
            self._written_condition.pop(ref, None)
            log.info("event=kube_object_found ref=%s/%s uid=%s", ref.namespace, ref.name,
                     info.uid)  # fmt: skip
        return info

    def _refresh(self) -> None:
        """Re-read every known object (one list per namespace; a get each if list is not
        allowed). Objects that are gone keep their targets' local settings (logged once)."""
        with self._lock:
            refs = list(self._refs)
        by_ns: dict[str, list[KubeRef]] = collections.defaultdict(list)
        for ref in refs:
            by_ns[ref.namespace].append(ref)
        api = self._api
        assert api is not None
        for ns, wanted in by_ns.items():
            try:
                items = {str((o.get("metadata") or {}).get("name")): o for o in api.list(ns)}
            except _CallFailed as exc:
                if exc.transient:
                    raise
                self._count_failure(None, exc, None, verb="list")
                for ref in wanted:
                    self._fetch(ref)
                continue
            for ref in wanted:
                if ref.name in items:
                    self._found(ref, items[ref.name])
                else:
                    self._set_missing(ref, "not found")
        with self._lock:
            self._attempted = self._attempted | frozenset(refs)

    def _fetch(self, ref: KubeRef) -> _ObjectInfo | None:
        """Read one object now; None when it is missing or may not be read."""
        assert self._api is not None
        try:
            return self._found(ref, self._api.get(ref))
        except _CallFailed as exc:
            if exc.transient:
                raise
            if exc.result is WriteResult.NOT_FOUND:
                self._set_missing(ref, "not found")
            else:
                self._count_failure(None, exc, ref, verb="get")
            return None

    def _count_failure(
        self, kind: WriteKind | None, exc: _CallFailed, ref: KubeRef | None, *, verb: str = ""
    ) -> None:
        if kind is not None:
            self._stats.kube_write(kind, exc.result)
        if exc.result is WriteResult.FORBIDDEN:
            what = exc.message.split(":", 1)[0]  # "<verb> <resource>"
            if ("forbidden", what) not in self._logged:
                self._logged.add(("forbidden", what))
                v, _, resource = what.partition(" ")
                group = "events.k8s.io" if resource == "events" else self.resource.group
                log.error(
                    "event=kube_forbidden verb=%s resource=%s group=%s missing_rbac=%r "
                    "detail=%r", v, resource, group,
                    f"verbs: [{v}] on {resource} in apiGroup {group}", exc.message,
                )  # fmt: skip
        elif exc.code == 401:
            if ("unauthorized",) not in self._logged:
                self._logged.add(("unauthorized",))
                log.error("event=kube_unauthorized detail=%r hint=%r", exc.message,
                          "the token is invalid or expired")  # fmt: skip
        elif exc.result is WriteResult.NOT_FOUND and ref is not None:
            self._set_missing(ref, "404 on " + (verb or str(kind)))
        elif not exc.transient and exc.result is not WriteResult.CONFLICT:
            log.warning("event=kube_write_failed kind=%s error=%r", kind or verb, exc.message)

    # condition -------------------------------------------------------------------------------
    def _sync_conditions(self) -> bool:
        with self._lock:
            todo = [
                (r, d)
                for r, d in self._desired.items()
                if self._written.get(r) != d and r not in self._missing
            ]
        for ref, desired in todo:
            self._write_condition(ref, desired)
        return bool(todo)

    def _write_condition(self, ref: KubeRef, desired: _Desired) -> None:
        api = self._api
        assert api is not None
        info = self._objects.get(ref) or self._fetch(ref)
        if info is None:  # missing, or it may not be read: not retried until the next change
            self._written[ref] = desired
            return
        previous = self._written_condition.get(ref) or info.condition
        transition = _rfc3339(desired.since_unix)
        if previous is not None and previous.get("status") == desired.status:
            transition = str(previous.get("lastTransitionTime") or transition)
        condition: dict[str, Any] = {
            "type": CONDITION_TYPE,
            "status": desired.status,
            "reason": desired.reason.value,
            "message": _truncate(desired.message, 32768),
            "lastTransitionTime": transition,
        }
        if info.generation is not None:
            condition["observedGeneration"] = info.generation
        body = {
            "apiVersion": self.resource.api_version,
            "kind": info.kind,
            "metadata": {"name": ref.name, "namespace": ref.namespace},
            "status": {"conditions": [condition]},
        }
        try:
            obj = api.apply_status(ref, body)
        except _CallFailed as exc:
            if exc.transient:
                self._stats.kube_write(WriteKind.CONDITION, exc.result)
                raise
            self._count_failure(WriteKind.CONDITION, exc, ref, verb="patch")
            self._written[ref] = desired  # not retried until the desired condition changes
            return
        self._remember(ref, obj)
        self._written[ref] = desired
        self._written_condition[ref] = condition
        self._stats.kube_write(WriteKind.CONDITION, WriteResult.SUCCESS)
        log.info(
            "event=kube_condition ref=%s/%s status=%s reason=%s last_transition=%s",
            ref.namespace, ref.name, desired.status, desired.reason, transition,
        )  # fmt: skip

    # resume ----------------------------------------------------------------------------------
    def _resume_one(self) -> bool:
        """Resume one object whose block cleared, if ours and its footprint fits now."""
        with self._lock:
            wanted = [r for r in self._resume_wanted if r not in self._missing]
            system, level = self._system, self._level
        for ref in wanted:
            info = self._objects.get(ref)
            footprint = (info.annotation or {}).get("footprint") if info is not None else None
            if level != Level.NORMAL or not fits_headroom(
                footprint if isinstance(footprint, int) else None, system, self._warning
            ):
                continue
            self._resume(ref)
            return True
        return False

    def _resume(self, ref: KubeRef) -> None:
        api = self._api
        assert api is not None
        done = True
        for _ in range(_CONFLICT_RETRIES):
            info = self._fetch(ref)
            if info is None:
                break
            if not info.has_annotation or not info.suspended:
                why = "not_suspended_by_metalmem" if info.suspended else "not_suspended"
                log.info("event=kube_resume_skipped ref=%s/%s reason=%s", ref.namespace, ref.name,
                         why)  # fmt: skip
                break
            node = (info.annotation or {}).get("node")
            if node not in (None, self.options.node_name):
                log.info("event=kube_resume_skipped ref=%s/%s reason=suspended_by_node node=%s",
                         ref.namespace, ref.name, node)  # fmt: skip
                break
            footprint = (info.annotation or {}).get("footprint")
            if not fits_headroom(
                footprint if isinstance(footprint, int) else None, self._system, self._warning
            ):
                done = False  # the annotation says it is bigger than the cache knew: wait
                break
            try:
                obj = api.merge_patch(ref, _suspend_patch(info.resource_version, None))
            except _CallFailed as exc:
                if exc.transient:
                    self._stats.kube_write(WriteKind.RESUME, exc.result)
                    raise
                self._count_failure(WriteKind.RESUME, exc, ref, verb="patch")
                if exc.result is WriteResult.CONFLICT:
                    continue
                break
            self._remember(ref, obj)
            self._stats.kube_write(WriteKind.RESUME, WriteResult.SUCCESS)
            log.info("event=kube_resumed ref=%s/%s footprint=%s", ref.namespace, ref.name,
                     footprint)  # fmt: skip
            self._post(
                _EventItem(
                    ref, EventReason.RESUMED, "Normal",
                    f"spec.suspend cleared by metalmem on {self.options.node_name}: footprint "
                    f"{_human(footprint if isinstance(footprint, int) else None)} fits the "
                    "headroom above the WARNING threshold", "", self._wall(),
                )
            )  # fmt: skip
            break
        if done:
            with self._lock:
                self._resume_wanted.pop(ref, None)

    # events ----------------------------------------------------------------------------------
    def _send_event(self) -> bool:
        with self._lock:
            if not self._events:
                return False
            item = self._events.popleft()
        if item.ref in self._missing:
            return True
        try:
            self._write_event(item)
        except _CallFailed:
            with self._lock:  # back to the head, unless newer events filled the queue
                if len(self._events) < self.options.queue_size:
                    self._events.appendleft(item)
                else:
                    self._stats.kube_dropped(1)
            raise
        return True

    def _event_name(self, ref: KubeRef) -> str:
        ns = max(time.time_ns(), self._last_event_ns + 1)
        self._last_event_ns = ns
        return f"{ref.name}.{ns:x}"

    def _write_event(self, item: _EventItem) -> None:
        api = self._api
        assert api is not None
        info = self._objects.get(item.ref) or self._fetch(item.ref)
        if info is None:
            return
        action = _ACTIONS[item.reason]
        key = (item.ref, item.reason, action, item.type, item.detail)
        window = self.options.series_window
        self._series = {
            k: s for k, s in self._series.items() if item.time_unix - s.last_unix <= window
        }
        series = self._series.get(key)
        try:
            if series is not None:
                series.count += 1
                series.last_unix = item.time_unix
                try:
                    api.patch_event(
                        series.namespace,
                        series.name,
                        {"series": {"count": series.count,
                                    "lastObservedTime": microtime(item.time_unix)}},
                    )  # fmt: skip
                    self._stats.kube_write(WriteKind.EVENT, WriteResult.SUCCESS)
                    return
                except _CallFailed as exc:
                    if exc.result is not WriteResult.NOT_FOUND:
                        series.count -= 1
                        raise
                    del self._series[key]  # expired or deleted: start a new one
            name = self._create_event(api, item, info, action)
            self._series[key] = _Series(item.ref.namespace, name, 1, item.time_unix)
            self._stats.kube_write(WriteKind.EVENT, WriteResult.SUCCESS)
        except _CallFailed as exc:
            if exc.transient:
                self._stats.kube_write(WriteKind.EVENT, exc.result)
                raise
            self._count_failure(WriteKind.EVENT, exc, None, verb="create")

    def _create_event(self, api: _Api, item: _EventItem, info: _ObjectInfo, action: str) -> str:
        regarding: dict[str, Any] = {
            "apiVersion": info.api_version or self.resource.api_version,
            "kind": info.kind,
            "name": item.ref.name,
            "namespace": item.ref.namespace,
        }
        if info.uid:
            regarding["uid"] = info.uid
        for _ in range(_CONFLICT_RETRIES):
            name = self._event_name(item.ref)
            body = {
                "apiVersion": "events.k8s.io/v1",
                "kind": "Event",
                "metadata": {"name": name, "namespace": item.ref.namespace},
                "eventTime": _event_time(item.time_unix),
                "reportingController": REPORTING_CONTROLLER,
                "reportingInstance": self.options.node_name,
                "action": action,
                "reason": item.reason.value,
                "type": item.type,
                "note": _truncate(item.note),
                "regarding": regarding,
            }
            try:
                api.create_event(item.ref.namespace, body)
            except _CallFailed as exc:
                if exc.result is WriteResult.CONFLICT:  # the name exists: take another
                    continue
                raise
            log.debug("event=kube_event ref=%s/%s reason=%s name=%s", item.ref.namespace,
                      item.ref.name, item.reason, name)  # fmt: skip
            return name
        raise _CallFailed(WriteResult.CONFLICT, 409, "create events: names kept colliding",
                          transient=False)  # fmt: skip
