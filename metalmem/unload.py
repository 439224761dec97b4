"""Model-level eviction: unload one model through its server's HTTP API, then verify.

A shared inference server runs several models: llama-server in router mode (each model a
child ``llama-server`` instance), Ollama (each model an ``ollama runner`` child), llama-swap
(each model an upstream process it started). Killing the server frees every model at once;
unloading one model frees only its memory and keeps the others answering. An
:class:`UnloadAction` on a target's :class:`~metalmem.targets.StopMethod` says how:

========================  =======================================================  ============
preset                    request                                                  documented in
========================  =======================================================  ============
``llama-server``          ``POST /models/unload`` ``{"model": M}``                 llama.cpp
                                                                                   tools/server
                                                                                   README
``ollama``                ``POST /api/generate`` ``{"model": M, "keep_alive": 0}`` Ollama
                                                                                   docs/api.md
``llama-swap``            ``POST /api/models/unload/M``                            llama-swap
                                                                                   proxy/
                                                                                   proxymanager_api.go
``http``                  any method, path and JSON body (``{model}`` replaced)    -
========================  =======================================================  ============

The stop then *verifies* (an HTTP 200 is a promise, not memory): ``verify = "exit"`` (every
preset's default) waits for the target process, the model's instance, to exit; ``"footprint"``
waits for the target's footprint (anonymous resident + swap) to fall to half of what it was,
for servers that unload in-process. :func:`unload` runs inside :func:`metalmem.process.stop`
after the identity check and the safety gate, which it asks right before the HTTP call like
every other stop.

When the request fails (refused connection, timeout, a status other than 2xx) an ``exit``
target is stopped by signal instead (it is the model's own process: signalling it stops that
model only), within what is left of the grace period (the request takes half of it at most);
a ``footprint`` target is not touched (it is the shared server: a signal would stop every
model). The record says which. An ``exit`` target still running at the end of the
grace period gets SIGKILL, as on the signal path.

:class:`RouterModels` turns the child instances of a llama-server router into such targets at
discovery: it asks the router's ``GET /models`` which models are loaded, and maps each one to
its instance process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import Error
from .llamaargs import flag_value

if TYPE_CHECKING:
    from .process import StopRecord, StopResult, _Handle
    from .sampler import Sampler
    from .targets import Target

__all__ = [
    "PRESETS",
    "VERIFY_MODES",
    "UnloadAction",
    "parse_unload",
    "router_url",
    "unload",
]

log = logging.getLogger(__name__)

VERIFY_MODES = ("exit", "footprint")
FOOTPRINT_SHARE = 0.5
"""``verify = "footprint"``: the unload counts once the footprint fell by this share."""
HTTP_TIMEOUT = 5.0
"""Seconds the unload request may take (the router answers at once and unloads after)."""
_MAX_BODY = 4096  # bytes of a response kept for the log


@dataclass(frozen=True, slots=True)
class _Preset:
    method: str
    path: str
    body: str | None


PRESETS: Mapping[str, _Preset] = {
    "llama-server": _Preset("POST", "/models/unload", '{"model": "{model}"}'),
    "ollama": _Preset("POST", "/api/generate", '{"model": "{model}", "keep_alive": 0}'),
    "llama-swap": _Preset("POST", "/api/models/unload/{model}", None),
}
"""The request of each documented API; ``{model}`` is the model's name (JSON-escaped in a body,
percent-encoded in a path)."""

_URL_RE = re.compile(r"https?://[^/\s?#]+(/[^\s?#]*)?")


@dataclass(frozen=True, slots=True)
class UnloadAction:
    """How to unload one model: ``preset`` (``llama-server``, ``ollama``, ``llama-swap`` or
    ``http``), the server's base ``url`` (``http://127.0.0.1:8080``), the ``model`` name the
    server knows it by, and how to verify (``verify``: ``exit`` or ``footprint``).

    ``http`` takes ``method``, ``path`` and ``body`` (a JSON template in which ``{model}`` is
    replaced); the presets fix them. Raises ``ValueError`` naming the config key at fault.
    """

    preset: str
    url: str
    model: str
    verify: str = "exit"
    method: str | None = None
    path: str | None = None
    body: str | None = None
    timeout: float = HTTP_TIMEOUT

    def __post_init__(self) -> None:
        if self.preset not in (*PRESETS, "http"):
            raise ValueError(
                f"unload: must be one of {', '.join((*PRESETS, 'http'))}, got {self.preset!r}"
            )
        if not isinstance(self.url, str) or not _URL_RE.fullmatch(self.url):
            raise ValueError(
                f"unload_url: must be an http:// or https:// base URL without query, got "
                f"{self.url!r}"
            )
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError(f"unload_model: must be a non-empty name, got {self.model!r}")
        if self.verify not in VERIFY_MODES:
            raise ValueError(
                f"unload_verify: must be one of {', '.join(VERIFY_MODES)}, got {self.verify!r}"
            )
        if (
            isinstance(self.timeout, bool)
            or not isinstance(self.timeout, int | float)
            or not 0 < self.timeout <= 60
        ):
            raise ValueError(f"unload_timeout: must be seconds in (0, 60], got {self.timeout!r}")
        if self.preset == "http":
            if self.method is None or self.method.upper() not in ("GET", "POST", "PUT", "DELETE"):
                raise ValueError(
                    f"unload_method: must be GET, POST, PUT or DELETE, got {self.method!r}"
                )
            if not isinstance(self.path, str) or not self.path.startswith("/"):
                raise ValueError(f"unload_path: must start with '/', got {self.path!r}")
            object.__setattr__(self, "method", self.method.upper())
        else:
            for key in ("method", "path", "body"):
                if getattr(self, key) is not None:
                    raise ValueError(
                        f'unload_{key}: only for unload = "http"; the {self.preset} preset fixes it'
                    )
        if self.body is not None:
            if not isinstance(self.body, str):
                raise ValueError(f"unload_body: must be a JSON string, got {self.body!r}")
            try:
                json.loads(self.body.replace("{model}", "m"))
            except ValueError as exc:
                raise ValueError(f"unload_body: not JSON with {{model}} in it: {exc}") from None

    def request(self) -> tuple[str, str, bytes | None]:
        """``(method, url, body)`` of the unload request for :attr:`model`."""
        if self.preset == "http":
            method, path, body = self.method or "POST", self.path or "/", self.body
        else:
            p = PRESETS[self.preset]
            method, path, body = p.method, p.path, p.body
        path = path.replace("{model}", urllib.parse.quote(self.model, safe=""))
        data = None
        if body is not None:
            escaped = json.dumps(self.model)[1:-1]  # the name inside a JSON string
            data = body.replace("{model}", escaped).encode()
        return method, self.url.rstrip("/") + path, data


_UNLOAD_KEYS = {
    "unload": "preset",
    "unload_url": "url",
    "unload_model": "model",
    "unload_verify": "verify",
    "unload_method": "method",
    "unload_path": "path",
    "unload_body": "body",
    "unload_timeout": "timeout",
}
UNLOAD_KEYS = frozenset(_UNLOAD_KEYS)
"""The ``[[target]]`` keys this module reads."""


def parse_unload(table: Mapping[str, Any], name: str | None) -> UnloadAction | None:
    """The :class:`UnloadAction` of a ``[[target]]`` table, or ``None`` when it sets no
    ``unload``. ``unload_model`` defaults to the target's ``name``. Raises ``ValueError``
    naming the key (``unload_url: ...``)."""
    if "unload" not in table:
        extra = sorted(k for k in table if k in UNLOAD_KEYS)
        if extra:
            raise ValueError(f'{extra[0]}: needs unload = "<preset>" in the same table')
        return None
    kwargs: dict[str, Any] = {_UNLOAD_KEYS[k]: v for k, v in table.items() if k in UNLOAD_KEYS}
    for key, attr in _UNLOAD_KEYS.items():
        value = kwargs.get(attr)
        if attr in ("preset", "url", "model", "verify", "method", "path", "body") and (
            value is not None and not isinstance(value, str)
        ):
            raise ValueError(f"{key}: must be a string, got {value!r}")
    if "url" not in kwargs:
        raise ValueError("unload_url: required with unload (the server's base URL)")
    kwargs.setdefault("model", name)
    return UnloadAction(**kwargs)


# --- the stop --------------------------------------------------------------------------------


def _call(action: UnloadAction, timeout: float) -> tuple[bool, str]:
    """Send the unload request; ``(accepted, what the server said)``."""
    import urllib.error  # here, not at import: urllib.request brings ssl, email, http (~8 MiB)
    import urllib.request

    method, url, data = action.request()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, body = resp.status, resp.read(_MAX_BODY)
    except urllib.error.HTTPError as exc:
        with contextlib.suppress(OSError):
            body = exc.read(_MAX_BODY)
        return False, f"{method} {url}: HTTP {exc.code} {body[:200]!r}"
    except (OSError, ValueError) as exc:  # refused, reset, timeout, malformed response
        return False, f"{method} {url}: {exc}"
    text = body[:200].decode(errors="replace")
    if not 200 <= status < 300:
        return False, f"{method} {url}: HTTP {status} {text!r}"
    # llama-server answers {"success": true}; a JSON false there is a refusal.
    with contextlib.suppress(ValueError):
        doc = json.loads(body)
        if isinstance(doc, dict) and doc.get("success") is False:
            return False, f"{method} {url}: HTTP {status} {text!r}"
    return True, f"{method} {url}: HTTP {status}"


def _footprint(sampler: Sampler, pid: int) -> int | None:
    try:
        return sampler.process(pid).footprint
    except (Error, OSError):  # gone or unreadable: no number
        return None


def unload(
    target: Target,
    handle: _Handle,
    sampler: Sampler,
    clock: Callable[[], float],
    t0: float,
    steps: list[str],
    done: Callable[[StopResult, str], StopRecord],
    signal_path: Callable[[str], StopRecord],
    kill: Callable[[str], StopRecord],
    *,
    sleep: Callable[[float], None] = time.sleep,
    poll_interval: float = 0.05,
) -> StopRecord:
    """Unload ``target``'s model and verify; called by :func:`metalmem.process.stop` on a
    verified handle, after the safety gate said yes. ``signal_path(note)`` runs the signal path
    (TERM, grace, KILL) and ``kill(note)`` sends SIGKILL, each prefixing its message with
    ``note``."""
    from .process import StopResult

    action = target.stop.unload
    assert action is not None
    grace = target.stop.grace_seconds
    before = _footprint(sampler, target.pid) if action.verify == "footprint" else None
    steps.append("unload")
    # At most half the grace, so a refused request leaves the signal path the other half.
    ok, said = _call(action, min(action.timeout, max(grace / 2, 0.25)))
    if not ok:
        log.warning("event=unload_failed key=%s pid=%d detail=%r", target.key, target.pid, said)
        if action.verify == "exit":
            return signal_path(f"unload refused ({said}); stopped by signal: ")
        return done(StopResult.FAILED, f"unload refused ({said}); the shared server is left "
                    "running")  # fmt: skip
    log.info("event=unload_sent key=%s pid=%d model=%s detail=%r", target.key, target.pid,
             action.model, said)  # fmt: skip
    deadline = t0 + grace
    if action.verify == "exit":
        if handle.wait(max(0.0, deadline - clock())):
            return done(
                StopResult.UNLOADED,
                f"{said}; model {action.model} unloaded, its process exited in "
                f"{clock() - t0:.2f} s",
            )
        return kill(f"{said}; still running {grace:g} s after the unload: ")
    goal = None if before is None else int(before * (1 - FOOTPRINT_SHARE))
    while True:
        if handle.has_exited():
            return done(StopResult.UNLOADED, f"{said}; the process exited")
        now_fp = _footprint(sampler, target.pid)
        if goal is not None and now_fp is not None and now_fp <= goal:
            return done(
                StopResult.UNLOADED,
                f"{said}; model {action.model} unloaded, footprint {before} -> {now_fp} bytes "
                f"in {clock() - t0:.2f} s",
            )
        if clock() >= deadline:
            return done(
                StopResult.FAILED,
                f"{said}; footprint {before} -> {now_fp} bytes, not down by "
                f"{FOOTPRINT_SHARE:.0%} within {grace:g} s; the shared server is left running",
            )
        sleep(poll_interval)


# --- llama-server router mode ----------------------------------------------------------------

_ROUTER_FLAGS = ("--models-dir", "--models-preset")
_PORT_FLAGS = ("--port",)
_HOST_FLAGS = ("--host",)


def is_router(argv: Sequence[str], has_instances: bool = False) -> bool:
    """A llama-server command line in router mode: ``--models-dir``/``--models-preset``, or
    (the router of the model cache) no model at all (``-m``, ``--model``, ``-hf``,
    ``--hf-repo``, ``--alias``) in a process that ``has_instances`` (llama-server children)."""
    args = argv[1:]
    if any(flag_value(args, (f,)) is not None for f in _ROUTER_FLAGS):
        return True
    return has_instances and all(
        flag_value(args, (f,)) is None
        for f in ("-m", "--model", "-hf", "--hf-repo", "-hfr", "--alias", "-a")
    )


def router_url(argv: Sequence[str]) -> str:
    """The router's base URL from its command line: ``--host`` (``0.0.0.0``, ``::`` and an
    empty host mean loopback) and ``--port`` (llama-server's defaults: 127.0.0.1:8080)."""
    host = flag_value(argv[1:], _HOST_FLAGS) or "127.0.0.1"
    port = flag_value(argv[1:], _PORT_FLAGS) or "8080"
    if host in ("0.0.0.0", "", "::", "[::]"):
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


@dataclass(slots=True)
class _RouterView:
    children: frozenset[int]
    models: dict[int, str]  # instance pid -> model id
    asked: float


@dataclass(slots=True)
class RouterModels:
    """Maps each llama-server router's child instances to the model ids of its ``/models``.

    :meth:`models` asks a router's ``GET /models`` only when its set of children changed (a
    model was loaded or unloaded) or ``refresh`` seconds passed, so a quiet router costs no
    HTTP call per tick. An instance is matched to the loaded model whose ``path`` or ``id``
    its command line names (``-m PATH``, ``--alias ID``). A router that does not answer maps
    nothing (its instances are then plain discovered processes) until the next change.
    """

    timeout: float = 1.0
    refresh: float = 30.0
    clock: Callable[[], float] = time.monotonic
    fetch: Callable[[str, float], Any] | None = None
    _views: dict[tuple[int, str], _RouterView] = field(default_factory=dict)

    def models(
        self,
        router_pid: int,
        url: str,
        children: Mapping[int, Sequence[str]],
    ) -> dict[int, str]:
        """``{instance pid: model id}`` for the router's ``children`` (pid -> argv)."""
        key = (router_pid, url)
        kids = frozenset(children)
        view = self._views.get(key)
        now = self.clock()
        if view is not None and view.children == kids and now - view.asked < self.refresh:
            return view.models
        mapping: dict[int, str] = {}
        try:
            doc = (self.fetch or _get_json)(url + "/models", self.timeout)
        except (OSError, ValueError) as exc:
            log.debug("event=router_unreachable url=%s error=%s", url, exc)
            doc = None
        entries = doc.get("data") if isinstance(doc, dict) else None
        for entry in entries if isinstance(entries, list) else ():
            if not isinstance(entry, dict):
                continue
            status = entry.get("status")
            value = status.get("value") if isinstance(status, dict) else status
            if value not in ("loaded", "loading", "sleeping"):
                continue
            model_id = entry.get("id")
            if not isinstance(model_id, str) or not model_id:
                continue
            names = {model_id}
            path = entry.get("path")
            if isinstance(path, str) and path:
                names.add(path)
                names.add(os.path.realpath(path))
            for pid, argv in children.items():
                if pid in mapping:
                    continue
                named = {
                    v for v in (flag_value(argv[1:], ("-m", "--model")),
                                flag_value(argv[1:], ("--alias", "-a"))) if v
                }  # fmt: skip
                named |= {os.path.realpath(v) for v in named}
                if named & names:
                    mapping[pid] = model_id
        self._views[key] = _RouterView(kids, mapping, now)
        # Forget routers not asked about for a while (they exited).
        for k in [k for k, v in self._views.items() if now - v.asked > 10 * self.refresh]:
            del self._views[k]
        return mapping


def _get_json(url: str, timeout: float) -> Any:
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read(1 << 20))
