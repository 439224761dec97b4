"""The one exception hierarchy of metalmem (STYLE rule 7).

Exceptions are data: they carry ``pid``, ``name``, ``msg`` and ``errno`` where they apply,
render a stable ``str``/``repr``, pickle, and show the public module path in tracebacks.
"""

from __future__ import annotations

from typing import Any


class Error(Exception):
    """Base class of every metalmem error."""

    __module__ = "metalmem"

    def __init__(
        self,
        msg: str = "",
        *,
        pid: int | None = None,
        name: str | None = None,
        errno: int | None = None,
    ) -> None:
        super().__init__(msg)
        self.msg = msg
        self.pid = pid
        self.name = name
        self.errno = errno

    def _details(self) -> str:
        parts = []
        if self.pid is not None:
            parts.append(f"pid={self.pid}")
        if self.name is not None:
            parts.append(f"name={self.name!r}")
        if self.errno is not None:
            parts.append(f"errno={self.errno}")
        return ", ".join(parts)

    def __str__(self) -> str:
        details = self._details()
        if self.msg and details:
            return f"{self.msg} ({details})"
        return self.msg or details

    def __repr__(self) -> str:
        return f"metalmem.{type(self).__name__}({self!s})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.msg, self.pid, self.name, self.errno))


def _rebuild(
    cls: type[Error], msg: str, pid: int | None, name: str | None, errno: int | None
) -> Error:
    return cls(msg, pid=pid, name=name, errno=errno)


class NoSuchProcess(Error):
    """The process does not exist (any more)."""

    __module__ = "metalmem"


class AccessDenied(Error):
    """The OS refused access (another user's process, a sandbox, a missing capability)."""

    __module__ = "metalmem"


class Unsupported(Error):
    """The platform or kernel cannot provide this signal at all."""

    __module__ = "metalmem"


class ConfigError(Error, ValueError):
    """A setting the guardian cannot use. ``key`` names it (``"interval"``,
    ``"pressure.warning_available"``; ``None`` for the file as a whole); ``detail`` is the
    problem without its location, so a front end can say where the value came from instead
    (a flag, a variable, a line of a file). ``str()`` is one line naming both."""

    __module__ = "metalmem"

    def __init__(self, msg: str, *, key: str | None = None, detail: str | None = None) -> None:
        super().__init__(msg)
        self.key = key
        self.detail = detail if detail is not None else msg

    def __reduce__(self) -> tuple[Any, ...]:
        return (_config_error, (self.msg, self.key, self.detail))


def _config_error(msg: str, key: str | None, detail: str) -> ConfigError:
    return ConfigError(msg, key=key, detail=detail)
