"""What the agent configures: the resource, the scope, the pacing; and whether to report at all.

:func:`kube_available` decides the default without importing ``kubernetes``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
from collections.abc import Mapping

__all__ = [
    "ADMISSION_LABELS",
    "DEFAULT_RESOURCE",
    "SERVICE_ACCOUNT_TOKEN",
    "KubeOptions",
    "Resource",
    "kube_available",
]

DEFAULT_RESOURCE = "inference.llmkube.dev/v1alpha1/inferenceservices"
SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
ADMISSION_LABELS = ("kueue.x-k8s.io/queue-name", "kueue.x-k8s.io/managed")
"""Labels (or annotations) that mark an object whose ``spec.suspend`` an admission controller
(Kueue) owns: metalmem never suspends such an object (docs/kubernetes.md)."""


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
    ``admission_labels``: an object with any of these labels (or annotations) has its
    ``spec.suspend`` owned by an admission controller (Kueue) and is never suspended.
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
    admission_labels: tuple[str, ...] = ADMISSION_LABELS

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
        if not isinstance(self.admission_labels, tuple) or not all(
            isinstance(k, str) and k for k in self.admission_labels
        ):
            raise ValueError(
                f"admission_labels: must be a tuple of label keys, got {self.admission_labels!r}"
            )
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
