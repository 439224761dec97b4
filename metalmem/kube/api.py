"""The API calls the reporter makes, and what their failures mean.

:class:`Api` makes them through :class:`.rest.Rest` (http.client) with bounded timeouts,
from a configuration kubernetes' own loaders read (imported here only, by
:meth:`Api.__init__`, and only they: :func:`_kubernetes_config`); every failure becomes a
:class:`CallFailed` that says whether to retry (connection errors, timeouts, 5xx, 429) and
which ``result`` label it counts under.
:class:`Failures` counts and logs a failed write once per cause (403 with the RBAC verb that is
missing, 401, 404 handing the object to whoever tracks missing objects).
"""

from __future__ import annotations

import enum
import json
import logging
import os
import sys
import threading
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
    """The few calls metalmem makes (:class:`.rest.Rest`), with bounded timeouts."""

    def __init__(self, options: KubeOptions, resource: Resource) -> None:
        import yaml  # a dependency of kubernetes: its kubeconfig parser

        from .. import __version__
        from . import rest  # http.client and ssl: loaded with Kubernetes reporting only

        configuration, config = _kubernetes_config()
        cfg = configuration()
        explicit = options.kubeconfig is not None or options.context is not None
        source = ""
        try:
            if not explicit and os.environ.get("KUBERNETES_SERVICE_HOST"):
                try:
                    config.load_incluster_config(client_configuration=cfg)
                    source = "in-cluster"
                except config.ConfigException as exc:
                    log.info("event=kube_incluster_unavailable error=%r fallback=kubeconfig", exc)
            if not source:
                # load_kube_config, never load_config: that one prints to stdout.
                config.load_kube_config(
                    config_file=options.kubeconfig,
                    context=options.context,
                    client_configuration=cfg,
                    persist_config=False,
                )
                source = f"kubeconfig {options.kubeconfig or '(default)'}"
            self._rest = rest.Rest(cfg, options.request_timeout, f"{FIELD_MANAGER}/{__version__}")
        except (
            config.ConfigException,
            yaml.YAMLError,  # a garbled kubeconfig
            AttributeError,  # valid YAML that is not a mapping
            OSError,  # includes ssl.SSLError: an unreadable CA or client certificate
            ValueError,
            TypeError,
            KeyError,
        ) as exc:
            message = " ".join(str(exc).split())  # YAML errors span lines: one line to the operator
            raise KubeConfigError(f"cannot load Kubernetes configuration: {message}") from exc
        self.source = source
        self.host = str(cfg.host)
        self._resource = resource
        r = resource
        self._objects = f"/apis/{r.group}/{r.version}/namespaces/{{ns}}/{r.plural}"

    def close(self) -> None:
        self._rest.close()

    def _call(self, verb: str, what: str, fn: Callable[[], Any]) -> Any:
        import http.client

        from .rest import AuthError, HttpError

        try:
            return fn()
        except HttpError as exc:
            code = exc.status
            message = f"{verb} {what}: HTTP {code} {exc.reason}: {_status_message(exc)}"
            if code == 0 or code == 429 or code >= 500:
                raise CallFailed(WriteResult.ERROR, code, message, transient=True) from exc
            result = {
                403: WriteResult.FORBIDDEN,
                404: WriteResult.NOT_FOUND,
                409: WriteResult.CONFLICT,
            }.get(code, WriteResult.ERROR)
            raise CallFailed(result, code, message, transient=False) from exc
        except (OSError, http.client.HTTPException, AuthError, ValueError) as exc:
            # OSError: refused, reset, timed out, TLS; ValueError: a 2xx answer not JSON
            raise CallFailed(
                WriteResult.ERROR, None, f"{verb} {what}: {exc!r}", transient=True
            ) from exc

    def _path(self, namespace: str, name: str | None = None, sub: str | None = None) -> str:
        path = self._objects.format(ns=_quote(namespace))
        if name is not None:
            path += "/" + _quote(name)
        if sub is not None:
            path += "/" + sub
        return path

    def get(self, ref: KubeRef) -> dict[str, Any]:
        path = self._path(ref.namespace, ref.name)
        obj = self._call("get", self._resource.plural, lambda: self._rest.request("GET", path))
        return dict(obj)

    def list(self, namespace: str) -> list[dict[str, Any]]:
        path = self._path(namespace)
        doc = self._call("list", self._resource.plural, lambda: self._rest.request("GET", path))
        return [dict(o) for o in (doc or {}).get("items") or ()]

    def apply_status(self, ref: KubeRef, body: dict[str, Any]) -> dict[str, Any]:
        path = self._path(ref.namespace, ref.name, "status")
        obj = self._call(
            "patch",
            f"{self._resource.plural}/status",
            lambda: self._rest.request(
                "PATCH",
                path,
                query={"fieldManager": FIELD_MANAGER, "force": "true"},
                body=body,
                content_type=APPLY_PATCH,
            ),
        )
        return dict(obj)

    def merge_patch(self, ref: KubeRef, body: dict[str, Any]) -> dict[str, Any]:
        path = self._path(ref.namespace, ref.name)
        obj = self._call(
            "patch",
            self._resource.plural,
            lambda: self._rest.request(
                "PATCH",
                path,
                query={"fieldManager": FIELD_MANAGER},
                body=body,
                content_type=MERGE_PATCH,
            ),
        )
        return dict(obj)

    def create_event(self, namespace: str, body: dict[str, Any]) -> None:
        path = f"{_EVENTS}/namespaces/{_quote(namespace)}/events"
        self._call("create", "events", lambda: self._rest.request("POST", path, body=body))

    def patch_event(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        path = f"{_EVENTS}/namespaces/{_quote(namespace)}/events/{_quote(name)}"
        self._call(
            "patch",
            "events",
            lambda: self._rest.request("PATCH", path, body=body, content_type=MERGE_PATCH),
        )


_EVENTS = "/apis/events.k8s.io/v1"


def _quote(segment: str) -> str:
    """One path segment, every reserved character escaped (as the official client did)."""
    import urllib.parse

    return urllib.parse.quote(segment, safe="")


_STUBS = ("kubernetes", "kubernetes.client", "kubernetes.config")


def _kubernetes_config() -> tuple[Any, Any]:
    """kubernetes' ``Configuration`` class and its config loaders (``load_kube_config``,
    ``load_incluster_config``, ``ConfigException``), without importing the rest of kubernetes.

    Why: ``import kubernetes`` runs the package ``__init__``, which imports the whole client
    (every API class and ~800 pydantic models), dynamic, watch, stream, utils, leaderelection
    and informer: +25.5 MiB of agent RSS (issue 15). The loaders need only
    ``kubernetes.client.configuration`` and ``kubernetes.config.{kube_config,incluster_config}``
    (+14.2 MiB with requests/oauthlib/urllib3/yaml). So while they load, stub package modules
    stand in for ``kubernetes``, ``kubernetes.client`` and ``kubernetes.config`` (their
    ``__path__`` the real directories, so submodules load from the installed package, and no
    ``__init__`` runs); the stub ``kubernetes.client`` offers ``Configuration`` and an
    ``ApiClient`` that imports the real one when called (kube_config calls it only in
    ``new_client_from_config``). The stubs leave ``sys.modules`` right after, the loaded
    submodules stay: a later ``import kubernetes`` (tests, doctor) runs the real ``__init__``
    and reuses them. A kubernetes laid out otherwise (ImportError, AttributeError) gets the
    plain full import; one already imported is used as it is.
    """
    full = sys.modules.get("kubernetes")
    if full is not None and hasattr(full, "client") and hasattr(full, "config"):
        return full.client.Configuration, full.config
    with _LEAN_LOCK:
        try:
            return _lean_config()
        except (ImportError, AttributeError) as exc:
            log.debug("event=kube_lean_import_failed error=%r fallback=full", exc)
    from kubernetes import client, config

    return client.Configuration, config


_LEAN_LOCK = threading.Lock()


def _lean_config() -> tuple[Any, Any]:
    import importlib.util
    import types

    spec = importlib.util.find_spec("kubernetes")  # finds the package without running it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("kubernetes is not installed")
    root = os.fspath(next(iter(spec.submodule_search_locations)))
    if any(name in sys.modules for name in _STUBS):
        raise ImportError("kubernetes is partly imported")  # not ours to replace: full import
    stubs = {name: types.ModuleType(name) for name in _STUBS}
    stubs["kubernetes"].__path__ = [root]
    stubs["kubernetes.client"].__path__ = [os.path.join(root, "client")]
    stubs["kubernetes.config"].__path__ = [os.path.join(root, "config")]
    stubs["kubernetes.client"].ApiClient = _api_client  # type: ignore[attr-defined]
    sys.modules.update(stubs)
    try:
        configuration = _submodule("kubernetes.client.configuration").Configuration
        stubs["kubernetes.client"].Configuration = configuration  # type: ignore[attr-defined]
        kube_config = _submodule("kubernetes.config.kube_config")
        incluster = _submodule("kubernetes.config.incluster_config")
        exception = _submodule("kubernetes.config.config_exception")
        loaders: Any = types.SimpleNamespace(
            load_kube_config=kube_config.load_kube_config,
            load_incluster_config=incluster.load_incluster_config,
            ConfigException=exception.ConfigException,
        )
    finally:
        for name, stub in stubs.items():
            if sys.modules.get(name) is stub:
                del sys.modules[name]
    return configuration, loaders


def _submodule(name: str) -> Any:
    """``import name`` (``__import__``, not importlib: ``python -X importtime`` sees it)."""
    __import__(name)
    return sys.modules[name]


def _api_client(*args: Any, **kwargs: Any) -> Any:
    """kube_config's ``ApiClient`` after a lean load: the real one, imported when first called."""
    from kubernetes.client import ApiClient

    return ApiClient(*args, **kwargs)


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
