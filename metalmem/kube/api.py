"""The API calls the reporter makes, and what their failures mean.

:class:`Api` wraps the official client (imported here only, by :meth:`Api.__init__`) with
bounded timeouts; every failure becomes a :class:`CallFailed` that says whether to retry
(connection errors, timeouts, 5xx, 429) and which ``result`` label it counts under.
:class:`Failures` counts and logs a failed write once per cause (403 with the RBAC verb that is
missing, 401, 404 handing the object to whoever tracks missing objects).
"""

from __future__ import annotations

import enum
import json
import logging
import os
from collections.abc import Callable
from typing import Any, Protocol

from ..errors import Error
from ..targets import KubeRef
from .options import KubeOptions, Resource

__all__ = [
    "APPLY_PATCH",
    "FIELD_MANAGER",
    "MERGE_PATCH",
    "Api",
    "CallFailed",
    "Failures",
    "KubeConfigError",
    "KubeStats",
    "NoStats",
    "WriteKind",
    "WriteResult",
]

log = logging.getLogger("metalmem.kube")

FIELD_MANAGER = "metalmem"
MERGE_PATCH = "application/merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"


class WriteKind(enum.StrEnum):
    """What an API write was for: the ``kind`` label of ``metalmem_kube_writes_total``."""

    CONDITION = "condition"
    EVENT = "event"
    SUSPEND = "suspend"
    RESUME = "resume"
    ANNOTATION = "annotation"


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

    def kube_condition_restored(self, cause: str) -> None: ...

    def kube_condition_other_writer(self, manager: str) -> None: ...


class NoStats:
    """Counts nothing (a reporter used without metrics)."""

    def kube_write(self, kind: str, result: str) -> None:
        pass

    def kube_dropped(self, n: int = 1) -> None:
        pass

    def kube_condition_restored(self, cause: str) -> None:
        pass

    def kube_condition_other_writer(self, manager: str) -> None:
        pass


class KubeConfigError(Error):
    """No usable Kubernetes configuration (kubeconfig or in-cluster service account)."""

    __module__ = "metalmem"


class CallFailed(Exception):
    """One API call failed; ``result`` is the metric label, ``transient`` says retry later."""

    def __init__(
        self, result: WriteResult, code: int | None, message: str, *, transient: bool
    ) -> None:
        super().__init__(message)
        self.result = result
        self.code = code
        self.message = message
        self.transient = transient


class Api:
    """The few calls metalmem makes, through the official client, with bounded timeouts."""

    def __init__(self, options: KubeOptions, resource: Resource) -> None:
        import yaml  # a dependency of kubernetes: its kubeconfig parser
        from kubernetes import client, config  # the lazy import: see the package docstring

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
                raise CallFailed(WriteResult.ERROR, code, message, transient=True) from exc
            result = {
                403: WriteResult.FORBIDDEN,
                404: WriteResult.NOT_FOUND,
                409: WriteResult.CONFLICT,
            }.get(code, WriteResult.ERROR)
            raise CallFailed(result, code, message, transient=False) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise CallFailed(
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
            raise CallFailed(WriteResult.ERROR, None, "create events: no body", transient=False)
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


class Failures:
    """Counts failed calls and logs each cause once: a 403 with the RBAC rule that is missing,
    a 401, other permanent failures; a 404 is handed to ``on_not_found``."""

    def __init__(
        self,
        stats: KubeStats,
        resource: Resource,
        on_not_found: Callable[[KubeRef, str], None],
    ) -> None:
        self.stats = stats
        self._resource = resource
        self._on_not_found = on_not_found
        self._logged: set[tuple[str, ...]] = set()

    def count(
        self, kind: WriteKind | None, exc: CallFailed, ref: KubeRef | None, *, verb: str = ""
    ) -> None:
        if kind is not None:
            self.stats.kube_write(kind, exc.result)
        if exc.result is WriteResult.FORBIDDEN:
            what = exc.message.split(":", 1)[0]  # "<verb> <resource>"
            if ("forbidden", what) not in self._logged:
                self._logged.add(("forbidden", what))
                v, _, resource = what.partition(" ")
                group = "events.k8s.io" if resource == "events" else self._resource.group
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
            self._on_not_found(ref, "404 on " + (verb or str(kind)))
        elif not exc.transient and exc.result is not WriteResult.CONFLICT:
            log.warning("event=kube_write_failed kind=%s error=%r", kind or verb, exc.message)
