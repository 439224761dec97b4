"""A small JSON client for the Kubernetes API over :mod:`http.client` and :mod:`ssl`.

The official client's API classes pull in every model (with pydantic) and urllib3's pool
manager; the reporter makes five kinds of call (issue 15: agent RSS). :class:`Rest` takes what
a kubernetes ``Configuration`` (loaded by kubernetes' own kubeconfig and in-cluster loaders)
says about the server and the credentials, and makes one request at a time per connection,
keeping idle connections for the next call of any thread (the reporter's worker and the
watchdog's stop path both call). Answers of 400 and above are :class:`HttpError`; anything
else that goes wrong is an ``OSError`` or an ``http.client.HTTPException`` (or
:class:`AuthError` when a credential plugin fails).
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import json
import select
import ssl
import threading
import time
import urllib.parse
from collections.abc import Mapping
from typing import Any

__all__ = ["AuthError", "HttpError", "Rest"]

_IDLE_KEPT = 4  # connections kept between calls: two threads call, one request each at a time


class HttpError(Exception):
    """The server answered ``status`` >= 400; ``body`` is the raw answer (a ``Status``)."""

    def __init__(self, status: int, reason: str, body: bytes) -> None:
        super().__init__(f"HTTP {status} {reason}")
        self.status = status
        self.reason = reason
        self.body = body


class AuthError(Exception):
    """The credentials could not be refreshed (an exec or OIDC plugin failed)."""


class _Https(http.client.HTTPConnection):
    """HTTPS with the name checked against ``server_hostname`` (kubeconfig ``tls-server-name``)
    rather than the host connected to; through a proxy, TLS runs inside the CONNECT tunnel."""

    default_port = http.client.HTTPS_PORT

    def __init__(
        self, host: str, port: int, timeout: float, context: ssl.SSLContext, server_hostname: str
    ) -> None:
        super().__init__(host, port, timeout=timeout)
        self._context = context
        self._server_hostname = server_hostname

    def connect(self) -> None:
        super().connect()  # TCP, and CONNECT when a tunnel is set
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self._server_hostname)


class Rest:
    """Requests to one API server with the credentials of a kubernetes ``Configuration``."""

    def __init__(self, cfg: Any, timeout: float, user_agent: str) -> None:
        url = urllib.parse.urlsplit(str(cfg.host))
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"server {cfg.host!r}: not an http(s) URL")
        self._cfg = cfg
        self._timeout = timeout
        self._https = url.scheme == "https"
        self._host = url.hostname
        self._port = url.port or (443 if self._https else 80)
        self._prefix = url.path.rstrip("/")  # a server behind a path (a proxying gateway)
        self._headers = {"Accept": "application/json", "User-Agent": user_agent}
        self._context = _ssl_context(cfg) if self._https else None
        self._server_hostname = (
            getattr(cfg, "tls_server_name", None)
            or (cfg.assert_hostname if isinstance(cfg.assert_hostname, str) else None)
            or self._host
        )
        self._proxy = _proxy(cfg, self._host, self._port)
        self._lock = threading.Lock()
        self._idle: list[http.client.HTTPConnection] = []

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str | None = None,
    ) -> Any:
        """One call; the decoded JSON answer (``{}`` when empty). ``body`` is sent as JSON."""
        target = self._prefix + path
        if query:
            target += "?" + urllib.parse.urlencode(query)
        headers = dict(self._headers)
        headers.update(self._auth())
        data = None
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode()
            headers["Content-Type"] = content_type or "application/json"
        deadline = time.monotonic() + self._timeout  # the whole call, connecting included
        call = (method, target, headers, data)
        conn, reused = self._take(deadline)
        try:
            try:
                status, reason, raw, keep = self._exchange(conn, deadline, *call)
            except (ConnectionResetError, BrokenPipeError):  # RemoteDisconnected included
                if not (reused and method == "GET"):
                    raise
                # The server closed a kept connection as we reused it: a read can be repeated.
                conn.close()
                conn = self._connect(deadline)
                status, reason, raw, keep = self._exchange(conn, deadline, *call)
        except BaseException:
            conn.close()
            raise
        if keep:
            self._give(conn)
        else:
            conn.close()
        if status >= 400:
            raise HttpError(status, reason, raw)
        return json.loads(raw) if raw.strip() else {}

    def _exchange(
        self,
        conn: http.client.HTTPConnection,
        deadline: float,
        method: str,
        target: str,
        headers: dict[str, str],
        data: bytes | None,
    ) -> tuple[int, str, bytes, bool]:
        _settimeout(conn, deadline)  # a kept connection still has its last call's timeout
        conn.request(method, target, body=data, headers=headers)
        _settimeout(conn, deadline)
        resp = conn.getresponse()
        _settimeout(conn, deadline)
        raw = resp.read()
        return resp.status, resp.reason, raw, not resp.will_close

    def _auth(self) -> dict[str, str]:
        cfg = self._cfg
        try:  # calls refresh_api_key_hook: exec and OIDC plugins renew the token here
            token = cfg.get_api_key_with_prefix("BearerToken", alias="authorization")
        except Exception as exc:  # the plugin's own exceptions (ConfigException, OSError, ...)
            raise AuthError(f"refreshing the credentials failed: {exc}") from exc
        if token:
            return {"Authorization": str(token)}
        if cfg.username:
            pair = f"{cfg.username}:{cfg.password or ''}".encode()
            return {"Authorization": "Basic " + base64.b64encode(pair).decode()}
        return {}

    def _take(self, deadline: float) -> tuple[http.client.HTTPConnection, bool]:
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._connect(deadline), False
            if not _dropped(conn):
                return conn, True
            conn.close()

    def _give(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < _IDLE_KEPT:
                self._idle.append(conn)
                return
        conn.close()

    def _connect(self, deadline: float) -> http.client.HTTPConnection:
        if self._proxy is not None:
            host, port, headers = self._proxy
        else:
            host, port, headers = self._host, self._port, None
        timeout = deadline - time.monotonic()
        if timeout <= 0:
            raise TimeoutError("request timed out")
        conn: http.client.HTTPConnection
        if self._context is not None:
            conn = _Https(host, port, timeout, self._context, self._server_hostname)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
        if self._proxy is not None:
            conn.set_tunnel(self._host, self._port, headers=headers)
        conn.connect()  # here, so that a refused connection is not taken for a dropped one
        return conn


def _settimeout(conn: http.client.HTTPConnection, deadline: float) -> None:
    """Bound what is left of the call: each socket operation gets the time remaining."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("request timed out")
    if conn.sock is not None:
        conn.sock.settimeout(left)


def _dropped(conn: http.client.HTTPConnection) -> bool:
    """Whether a kept connection was closed by the server (readable while idle: EOF or junk)."""
    sock = conn.sock
    if sock is None:
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def _ssl_context(cfg: Any) -> ssl.SSLContext:
    """As the official client's urllib3 pool: CA file or data, client certificate, verify."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if not cfg.verify_ssl:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ca_data = getattr(cfg, "ca_cert_data", None)
        if cfg.ssl_ca_cert or ca_data:
            ctx.load_verify_locations(cafile=cfg.ssl_ca_cert or None, cadata=ca_data or None)
        if cfg.assert_hostname is False:
            ctx.check_hostname = False
    if cfg.cert_file:
        ctx.load_cert_chain(cfg.cert_file, cfg.key_file or None)
    return ctx


def _proxy(cfg: Any, host: str, port: int) -> tuple[str, int, dict[str, str]] | None:
    """(proxy host, port, CONNECT headers) when ``cfg.proxy`` applies to the server."""
    proxy = getattr(cfg, "proxy", None)
    if not proxy or _no_proxy(str(getattr(cfg, "no_proxy", None) or ""), host, port):
        return None
    p = urllib.parse.urlsplit(str(proxy))
    if p.scheme != "http" or not p.hostname:
        raise ValueError(f"proxy {proxy!r}: only http:// proxies are supported")
    headers = dict(getattr(cfg, "proxy_headers", None) or {})
    if p.username:
        pair = f"{urllib.parse.unquote(p.username)}:{urllib.parse.unquote(p.password or '')}"
        basic = base64.b64encode(pair.encode()).decode()
        headers.setdefault("Proxy-Authorization", f"Basic {basic}")
    return p.hostname, p.port or 80, headers


def _no_proxy(rules: str, host: str, port: int) -> bool:
    """``no_proxy`` as the official client reads it: ``*``, names and their subdomains,
    ``name:port``, IP addresses and networks."""
    host = host.lower()
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    for rule in (r.strip().lower() for r in rules.split(",")):
        if not rule:
            continue
        if rule == "*":
            return True
        if ip is not None:
            try:
                if ip in ipaddress.ip_network(rule, strict=False):
                    return True
            except ValueError:
                pass
        rule = rule.lstrip(".")
        for name in (host, f"{host}:{port}"):
            if name == rule or name.endswith("." + rule):
                return True
    return False
