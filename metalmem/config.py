"""AgentConfig: every setting of the guardian, typed and validated in one place.

A host application builds one from keyword arguments or from a mapping out of its own
configuration (:meth:`AgentConfig.from_mapping`); ``metalmem-agent run`` builds the same mapping
from its flags, ``METALMEM_*`` variables and TOML file, with its precedence, and nothing else.
Every refusal is a :class:`~metalmem.ConfigError` whose ``key`` names the setting, so each
front end can say where the bad value came from.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import ConfigError
from .eviction import EvictionPolicy
from .limits import MAX_INTERVAL
from .pressure import PressurePolicy, parse_duration
from .targets import DEFAULT_MAX_MATCHES, TargetSpec, check_pattern

__all__ = [
    "DEFAULT_INTERVAL",
    "DEFAULT_LISTEN",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "AgentConfig",
    "parse_interval",
    "parse_listen",
]

DEFAULT_INTERVAL = 2.0
DEFAULT_LISTEN = ("127.0.0.1", 9438)
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
MAX_MATCHES_LIMIT = 4096  # more processes than any host runs models; a typo past it


def parse_listen(value: object) -> tuple[str, int]:
    """``"HOST:PORT"`` (``"[::1]:9438"`` for IPv6) or a ``(host, port)`` pair; port 0 picks a
    free one. Raises ``ValueError`` quoting the value."""
    if isinstance(value, tuple | list) and len(value) == 2:
        host, port = value
        if isinstance(host, str) and host and type(port) is int and 0 <= port <= 65535:
            return (host, port)
        raise ValueError(f"{value!r} is not a (host, port) pair")
    text = str(value).strip()
    host, sep, digits = text.rpartition(":")
    if not sep or not host or not digits.isdigit() or not 0 <= int(digits) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:9438)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return (host, int(digits))


def parse_interval(value: object) -> float:
    """Seconds between ticks (``"500ms"``, ``"2s"``, or a number); 0 turns the loop off."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"{value!r} is not a duration >= 0")
    elif isinstance(value, str):
        seconds = parse_duration(value)
    else:
        raise ValueError(f"{value!r} is not a duration")
    if seconds > MAX_INTERVAL:
        raise ValueError(f"{value!r} is longer than the limit of {MAX_INTERVAL:g}s")
    return seconds


def _optional_str(value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"must be a string, got {value!r}")
    return value


def _choice(choices: tuple[str, ...]) -> Any:
    def check(value: object) -> str:
        text = str(value).lower()
        if not isinstance(value, str) or text not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return text

    return check


def _tristate(value: object) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"{value!r} is not true or false")
    return value


def _policy(kind: str) -> Any:
    """A policy field: the object itself, or a table shaped like the file's section (durations
    and sizes may be strings there, ``false`` turns an optional signal off)."""

    def build(value: object) -> Any:
        from .configfile import parse_document

        cls = PressurePolicy if kind == "pressure" else EvictionPolicy
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(f"must be a {cls.__name__} or a table, got {value!r}")
        config = parse_document({kind: dict(value)}, "config")
        return getattr(config, kind)

    return build


def _targets(value: object) -> tuple[TargetSpec, ...]:
    """TargetSpecs, or ``[[target]]``-shaped tables (``grace = "5s"`` allowed)."""
    from .configfile import parse_document

    if not isinstance(value, Sequence) or isinstance(value, str):
        raise ValueError(f"must be a list of targets, got {value!r}")
    if all(isinstance(t, TargetSpec) for t in value):
        return tuple(value)
    return parse_document({"target": list(value)}, "config").targets


def _max_matches(value: object) -> int:
    if type(value) is not int or not 1 <= value <= MAX_MATCHES_LIMIT:
        raise ValueError(f"must be an integer in [1, {MAX_MATCHES_LIMIT}], got {value!r}")
    return value


def _discover(value: object) -> str | None:
    if value is not None:
        check_pattern(value, "pattern")
    return _optional_str(value)


def _scope(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be 'host' or a cgroup directory, got {value!r}")
    return value


# Each field's converter: it accepts what a file or a host's own config holds (strings, tables)
# as well as the typed value, and raises ValueError; AgentConfig turns that into ConfigError.
_CONVERT: dict[str, Any] = {
    "interval": parse_interval,
    "pressure": _policy("pressure"),
    "eviction": _policy("eviction"),
    "targets": _targets,
    "discover": _discover,
    "max_matches": _max_matches,
    "scope": _scope,
    "listen": parse_listen,
    "state_dir": _optional_str,
    "record": _optional_str,
    "log_format": _choice(LOG_FORMATS),
    "log_level": _choice(LOG_LEVELS),
    "kube": _tristate,
    "kubeconfig": _optional_str,
    "kube_context": _optional_str,
    "namespace": _optional_str,
    "resource": _optional_str,
    "node_name": _optional_str,
    "config_path": _optional_str,
}


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    """Everything the guardian runs with (units: seconds, bytes, fractions).

    ``interval`` 0 turns the loop off (a scrape samples instead). ``kube``: ``True`` reports to
    Kubernetes, ``False`` never (the library's default), ``None`` when a cluster or a kubeconfig
    is found (the agent's default). ``listen`` is where :class:`metalmem.Agent` serves HTTP when
    asked to. ``config_path`` only labels messages. Raises :class:`~metalmem.ConfigError`.
    """

    interval: float = DEFAULT_INTERVAL
    pressure: PressurePolicy = dataclasses.field(default_factory=PressurePolicy)
    eviction: EvictionPolicy = dataclasses.field(default_factory=EvictionPolicy)
    targets: tuple[TargetSpec, ...] = ()
    discover: str | None = None
    max_matches: int = DEFAULT_MAX_MATCHES
    scope: str = "host"
    listen: tuple[str, int] = DEFAULT_LISTEN
    state_dir: str | None = None
    record: str | None = None
    log_format: str = "text"
    log_level: str = "info"
    kube: bool | None = False
    kubeconfig: str | None = None
    kube_context: str | None = None
    namespace: str | None = None
    resource: str | None = None
    node_name: str | None = None
    config_path: str | None = None

    def __post_init__(self) -> None:
        for name, convert in _CONVERT.items():
            value = getattr(self, name)
            try:
                converted = convert(value)
            except ConfigError as exc:
                raise ConfigError(f"{name}: {exc.detail}", key=name, detail=exc.detail) from None
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{name}: {exc}", key=name, detail=str(exc)) from None
            if converted is not value:
                object.__setattr__(self, name, converted)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> AgentConfig:
        """Build one from ``{"interval": "2s", "pressure": {...}, "targets": [...]}``: the field
        names as keys, values as a file or a host's own config would hold them."""
        for key in mapping:
            if key not in _CONVERT:
                raise ConfigError(f"unknown key {key}", key=key)
        return cls(**mapping)

    @classmethod
    def from_file(cls, path: str) -> AgentConfig:
        """The agent's TOML file (what ``metalmem-agent run --config`` reads), defaults for
        what it leaves out; every error names the file, the key and, if found, the line."""
        from .configfile import load_config

        config = load_config(path)
        try:
            return cls.from_mapping(config.settings())
        except ConfigError as exc:
            raise config.locate(exc) from None

    def replace(self, **changes: Any) -> AgentConfig:
        """A copy with ``changes`` applied and validated."""
        return dataclasses.replace(self, **changes)
