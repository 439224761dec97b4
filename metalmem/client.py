"""Reading a running agent: its ``/memstats`` document over HTTP (`metalmem-agent status`, or a
host's own dashboard). Bad input is a :class:`~metalmem.ConfigError` (key ``url``); an agent
that cannot be reached is :class:`Unreachable`, so a caller can tell the two apart (exit 2, 1)."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from .errors import ConfigError, Error

__all__ = ["Unreachable", "fetch_memstats"]


class Unreachable(Error):
    """Nothing answered at the URL, or the answer could not be read."""


def _bad(detail: str) -> ConfigError:
    return ConfigError(f"url: {detail}", key="url", detail=detail)


def fetch_memstats(url: str, timeout: float = 5.0) -> dict[str, Any]:
    """GET ``url``/memstats as a dict (a document with an integer ``schema_version``)."""
    target = url.rstrip("/") + "/memstats"
    try:
        parts = urllib.parse.urlsplit(target)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        raise _bad(f"{url!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _bad(f"{url!r} is not an http:// URL with a host")
    try:
        with urllib.request.urlopen(target, timeout=timeout) as resp:
            body = resp.read(16 << 20)
    except ValueError as exc:  # what urlsplit let through and the request refused
        raise _bad(f"{url!r}: {exc}") from None
    except urllib.error.HTTPError as exc:
        raise _bad(
            f"{target} answered HTTP {exc.code} {exc.reason}: not a metalmem agent"
        ) from None
    except urllib.error.URLError as exc:
        why = getattr(exc.reason, "strerror", None) or str(exc.reason)
        raise Unreachable(f"cannot reach {target}: {why}") from None
    except TimeoutError:
        raise Unreachable(f"{target} did not answer in {timeout:g} s") from None
    except (OSError, http.client.HTTPException) as exc:
        why = getattr(exc, "strerror", None) or type(exc).__name__
        raise Unreachable(f"cannot read {target}: {why}") from None
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        doc = None
    if not isinstance(doc, dict) or not isinstance(doc.get("schema_version"), int):
        raise _bad(f"{target} answered, but not with a metalmem /memstats document")
    return doc
