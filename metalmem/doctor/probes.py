"""Network probes: whether the agent's port is free (and who holds it), whether Kubernetes
answers and who else writes the MemoryPressure condition."""

from __future__ import annotations

import errno as errno_mod
import os
import re
import socket
import urllib.error
import urllib.request
from typing import Any

from ..kube.api import FIELD_MANAGER
from ..kube.objects import condition_owners
from ..kube.options import DEFAULT_RESOURCE, Resource
from .facts import KubeProbe, PortProbe

KUBE_TIMEOUT = 3.0  # seconds for GET /version: a cheap reachability probe, not a health check
HOLDER_TIMEOUT = 1.0  # seconds to ask a port's holder for /metrics: it may not speak HTTP


def probe_port(host: str, port: int) -> PortProbe:
    """Bind and listen on ``host:port`` the way the agent's server does (SO_REUSEADDR, as
    ``socketserver`` sets it); on EADDRINUSE ask the holder for /metrics to see whether it
    is a metalmem agent."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return PortProbe(host, port, f"cannot resolve {host!r}: {exc.strerror}", None)
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
            sock.listen(1)
        except OSError as exc:
            holder = _holder(host, port) if exc.errno == errno_mod.EADDRINUSE else None
            return PortProbe(host, port, exc.strerror or str(exc), exc.errno, holder)
    return PortProbe(host, port)


_BUILD_INFO = re.compile(r'^metalmem_build_info\{[^}]*version="([^"]*)"', re.MULTILINE)


def _holder(host: str, port: int) -> str | None:
    """``metalmem <version>`` if a metalmem agent serves /metrics on the port, else ``None``."""
    connect = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    netloc = f"[{connect}]:{port}" if ":" in connect else f"{connect}:{port}"
    try:
        with urllib.request.urlopen(f"http://{netloc}/metrics", timeout=HOLDER_TIMEOUT) as r:
            text = r.read(1 << 20).decode("utf-8", errors="replace")
    except (OSError, ValueError, urllib.error.URLError):
        return None  # not HTTP, not answering in time, or not ours: an unknown holder
    match = _BUILD_INFO.search(text)
    return f"metalmem agent {match.group(1)}" if match else None


def probe_kube(
    kubeconfig: str | None,
    context: str | None,
    resource: str = DEFAULT_RESOURCE,
    namespace: str | None = None,
) -> KubeProbe:
    """Load the Kubernetes config (in-cluster first unless a kubeconfig or context is named,
    never the loader that prints to stdout) and GET /version with a 3 s timeout, no retries;
    then list the objects of ``resource`` (in ``namespace``, else every namespace) and name the
    field managers other than metalmem that write the ``MemoryPressure`` condition.

    The ``kubernetes`` package is imported only here (STYLE rule 1: heavy imports are lazy).
    """
    try:
        from kubernetes import client, config
    except ImportError as exc:
        return KubeProbe(None, None, None, f"the kubernetes package is not installed ({exc})")
    cfg = client.Configuration()
    source = None
    # The loaders raise ConfigException, yaml errors, OSError, TypeError or KeyError for a bad
    # file; whichever it is, this probe's answer is the same: the config does not load.
    try:
        if kubeconfig is None and context is None:
            try:
                config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
                source = "in-cluster service account"
            except config.ConfigException:
                source = None
        if source is None:
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig,
                context=context,
                client_configuration=cfg,
                persist_config=False,
            )
            source = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
    except Exception as exc:
        detail = " ".join(str(exc).split())[:200]
        return KubeProbe(source, None, None, f"no usable config: {type(exc).__name__}: {detail}")
    cfg.retries = 0
    try:
        with client.ApiClient(cfg) as api:
            info = client.VersionApi(api).get_code(_request_timeout=KUBE_TIMEOUT)
    except Exception as exc:  # urllib3 errors, ApiException: all mean "not reachable"
        reason = kube_error_text(exc)
        return KubeProbe(source, cfg.host, None, f"GET {cfg.host}/version: {reason}")
    version = getattr(info, "git_version", None)
    r = Resource.parse(resource)
    try:
        with client.ApiClient(cfg) as api:
            custom = client.CustomObjectsApi(api)
            where: dict[str, Any] = {"group": r.group, "version": r.version, "plural": r.plural,
                     "_request_timeout": KUBE_TIMEOUT}  # fmt: skip
            doc: Any = (
                custom.list_namespaced_custom_object(namespace=namespace, **where)
                if namespace
                else custom.list_cluster_custom_object(**where)
            )
    except Exception as exc:  # 403, 404 (no such resource), unreachable: not a verdict
        return KubeProbe(source, cfg.host, version, list_error=f"list {r}: {kube_error_text(exc)}")
    items = [o for o in (doc or {}).get("items") or () if isinstance(o, dict)]
    writers = set().union(*(condition_owners(o) for o in items)) - {FIELD_MANAGER}
    return KubeProbe(source, cfg.host, version, objects=len(items),
                     condition_writers=tuple(sorted(writers)))  # fmt: skip


_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>:?\s*")


def kube_error_text(exc: BaseException) -> str:
    """One short line for a failed API call: ``HTTP 403 Forbidden`` for an ApiException (whose
    str() carries every response header and the body), the innermost cause without Python
    object reprs for a urllib3 error."""
    status, reason = getattr(exc, "status", None), getattr(exc, "reason", None)
    if isinstance(status, int) and isinstance(reason, str):
        return f"HTTP {status} {reason}"
    inner = reason if isinstance(reason, BaseException) else exc
    text = _OBJECT_REPR.sub("", str(inner) or type(inner).__name__)
    text = " ".join(text.split())
    return text if len(text) <= 200 else text[:197] + "..."
