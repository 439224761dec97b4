"""The agent's TOML config file: ``[pressure]``, ``[eviction]``, ``[[target]]``, ``[discovery]``.

It maps the file, in one function, into the library's frozen, validated objects; the same
function validates a document a host application builds itself (:func:`parse_document`).
Every error is a :class:`~metalmem.ConfigError` whose message names the file, the key and,
where it can be found, the line. Reading the file is the caller's choice: the agent's command
line passes the path it was given; nothing here looks for one.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Mapping
from typing import Any

from .errors import ConfigError
from .eviction import EvictionPolicy
from .pressure import PressurePolicy, parse_duration
from .targets import (
    DEFAULT_MAX_MATCHES,
    TargetSpec,
    check_pattern,
    parse_size,
    parse_target_specs,
)

__all__ = ["FIELDS", "Config", "ConfigError", "load_config", "parse_config", "parse_document"]

_PRESSURE_DURATIONS = {
    "forecast_window",
    "soft_grace",
    "transition_period",
    "warning_forecast",
    "critical_forecast",
}
_PRESSURE_RATES = {
    "warning_swapout_rate",
    "critical_swapout_rate",
    "warning_pageout_rate",
    "critical_pageout_rate",
}
_EVICTION_DURATIONS = {"grace", "cooldown", "window", "settle_timeout"}
_EVICTION_SIZES = {"min_reclaim"}
_DISCOVERY_KEYS = {"pattern", "enabled", "max_matches"}
_MAX_MATCHES_LIMIT = 4096  # more processes than any host runs models; a typo past it
# [agent] and [kube]: the run command's own settings (flag > environment > file > default).
# Values stay as the file gives them; metalmem.config.AgentConfig validates them, so a value
# means the same in every place it can be set.
AGENT_KEYS = frozenset(
    {"interval", "listen", "scope", "state_dir", "record", "log_format", "log_level"}
)
KUBE_KEYS = frozenset({"enabled", "kubeconfig", "context", "namespace", "resource", "node_name"})
_TOP_KEYS = {"pressure", "eviction", "target", "discovery", "agent", "kube"}
# The file's [agent], [kube] and discovery keys as metalmem.AgentConfig fields.
FIELDS: dict[str, str] = {
    **{f"agent.{k}": k for k in AGENT_KEYS},
    **{f"kube.{k}": k for k in KUBE_KEYS - {"enabled", "context"}},
    "kube.enabled": "kube",
    "kube.context": "kube_context",
    "discovery.pattern": "discover",
}


# PressurePolicy thresholds that may be None (signal off): `key = false` in the file.
_OPTIONAL_THRESHOLDS = frozenset(
    f.name for f in dataclasses.fields(PressurePolicy) if "None" in str(f.type)
)


@dataclasses.dataclass(frozen=True, slots=True)
class Config:
    """Everything a config file says, validated."""

    pressure: PressurePolicy
    eviction: EvictionPolicy
    targets: tuple[TargetSpec, ...]
    discover: str | None
    agent: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    max_matches: int = DEFAULT_MAX_MATCHES
    kube: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # Which keys the file set, as "section.key": the agent lets flags and the environment
    # override only what they name, and the file override only defaults.
    given: frozenset[str] = frozenset()
    path: str | None = None
    where: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def settings(self) -> dict[str, Any]:
        """What the file sets, as :meth:`metalmem.AgentConfig.from_mapping` takes it: the
        policies, targets and discovery validated, [agent] and [kube] values as written."""
        out: dict[str, Any] = {
            "pressure": self.pressure,
            "eviction": self.eviction,
            "targets": self.targets,
            "max_matches": self.max_matches,
            "config_path": self.path,
        }
        for key, field in FIELDS.items():
            if key in self.given:
                section, bare = key.split(".")
                table = {"agent": self.agent, "kube": self.kube}.get(section)
                out[field] = table[bare] if table is not None else self.discover
        return out

    def locate(self, exc: ConfigError) -> ConfigError:
        """``exc`` (from a field :meth:`settings` gave) at the file's key and line."""
        key = next((k for k, f in FIELDS.items() if f == exc.key), exc.key or "")
        where = self.where.get(key, self.path or "<config>")
        return ConfigError(f"{where}: {key}: {exc.detail}", key=key, detail=exc.detail)


def _error(where: str, detail: str, key: str | None = None) -> ConfigError:
    """``where: detail``; ``detail`` alone is what a document without a file reports."""
    return ConfigError(f"{where}: {detail}", key=key, detail=detail)


def _line_of(text: str, key: str, after: int = 0) -> int | None:
    """The first line past ``after`` that assigns ``key`` (or opens ``[key]``), 1-based."""
    pattern = re.compile(rf"^\s*(\[+\s*{re.escape(key)}\s*\]+|\"?{re.escape(key)}\"?\s*=)")
    for number, line in enumerate(text.splitlines(), 1):
        if number > after and pattern.match(line):
            return number
    return None


def _where(path: str, text: str, key: str) -> str:
    line = _line_of(text, key)
    return f"{path}:{line}" if line is not None else path


def _section(doc: Mapping[str, Any], name: str, path: str, text: str) -> dict[str, Any]:
    value = doc.get(name, {})
    if not isinstance(value, dict):
        raise _error(_where(path, text, name), f"[{name}] must be a table", name)
    return dict(value)


def _convert(
    table: dict[str, Any],
    durations: set[str],
    sizes: set[str],
    section: str,
    fields: set[str],
    path: str,
    text: str,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        where = _where(path, text, key)
        if key not in fields:
            raise _error(where, f"unknown key {section}.{key}", f"{section}.{key}")
        if value is False and key in _OPTIONAL_THRESHOLDS:
            out[key] = None  # `= false` turns an optional signal off (TOML has no null)
            continue
        try:
            if key in durations and isinstance(value, str):
                value = parse_duration(value)
            elif key in sizes and isinstance(value, str):
                value = parse_size(value)
        except ValueError as exc:
            raise _error(where, f"{section}.{key}: {exc}", f"{section}.{key}") from None
        out[key] = value
    return out


def _target_durations(table: Any) -> Any:
    """``grace = "5s"`` in a [[target]] table, as seconds (other values pass through)."""
    if isinstance(table, dict) and isinstance(table.get("grace"), str):
        try:
            return {**table, "grace": parse_duration(table["grace"])}
        except ValueError:
            return table  # parse_target_specs names the key and the bad value
    return table


def _target_key(message: str) -> str:
    """The key a parse_target_specs error names ("target[i]: key: ..." or "unknown key 'k'")."""
    quoted = re.search(r"unknown key '([^']+)'", message)
    if quoted:
        return quoted.group(1)
    parts = message.split(":")
    return parts[1].strip() if len(parts) >= 3 else "target"


def parse_config(text: str, path: str = "<config>") -> Config:
    """Validate the text of a config file; raises :class:`ConfigError`."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_document(doc, path, text)


def parse_document(doc: Mapping[str, Any], path: str = "<config>", text: str = "") -> Config:
    """Validate a document shaped like the file (``{"pressure": {...}, "target": [...]}``);
    ``text``, when given, is where error messages find line numbers."""
    for key in doc:
        if key not in _TOP_KEYS:
            raise _error(_where(path, text, key), f"unknown key {key}", key)
    pressure_fields = {f.name for f in dataclasses.fields(PressurePolicy)}
    eviction_fields = {f.name for f in dataclasses.fields(EvictionPolicy)}
    p = _convert(
        _section(doc, "pressure", path, text),
        _PRESSURE_DURATIONS,
        _PRESSURE_RATES,
        "pressure",
        pressure_fields,
        path,
        text,
    )
    e = _convert(
        _section(doc, "eviction", path, text),
        _EVICTION_DURATIONS,
        _EVICTION_SIZES,
        "eviction",
        eviction_fields,
        path,
        text,
    )
    d = _section(doc, "discovery", path, text)
    for key in d:
        if key not in _DISCOVERY_KEYS:
            raise _error(
                _where(path, text, key), f"unknown key discovery.{key}", f"discovery.{key}"
            )
    if "hard_signals" in p:
        signals = p["hard_signals"]
        if not isinstance(signals, list | tuple | set | frozenset) or not all(
            isinstance(x, str) for x in signals
        ):
            raise _error(
                _where(path, text, "hard_signals"),
                f"pressure.hard_signals: must be a list of signal names, got {signals!r}",
                "pressure.hard_signals",
            )
        p["hard_signals"] = frozenset(signals)
    try:
        pressure = PressurePolicy(**p)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: [pressure]: {exc}", key="pressure", detail=str(exc)) from None
    try:
        eviction = EvictionPolicy(**e)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: [eviction]: {exc}", key="eviction", detail=str(exc)) from None
    tables = doc.get("target", [])
    if not isinstance(tables, list | tuple):
        raise _error(_where(path, text, "target"), "target must be [[target]] tables", "target")
    tables = [_target_durations(t) for t in tables]
    try:
        specs = parse_target_specs(tables)
    except ValueError as exc:
        message = str(exc)
        index = re.match(r"target\[(\d+)\]", message)
        headers = [
            n
            for n, line in enumerate(text.splitlines(), 1)
            if re.match(r"^\s*\[\[\s*target\s*\]\]", line)
        ]
        start = headers[int(index.group(1))] if index and int(index.group(1)) < len(headers) else 0
        line = _line_of(text, _target_key(message), start)
        raise ConfigError(
            f"{path}:{line}: {message}" if line else f"{path}: {message}",
            key="target",
            detail=message,
        ) from None
    extra: dict[str, dict[str, Any]] = {}
    where: dict[str, str] = {}
    for name, keys in (("agent", AGENT_KEYS), ("kube", KUBE_KEYS)):
        table = _section(doc, name, path, text)
        for key in table:
            if key not in keys:
                raise _error(_where(path, text, key), f"unknown key {name}.{key}", f"{name}.{key}")
            where[f"{name}.{key}"] = _where(path, text, key)
        extra[name] = table
    given = {
        f"{name}.{key}"
        for name in ("pressure", "eviction", "discovery")
        for key in _section(doc, name, path, text)
    }
    given |= {f"{name}.{key}" for name, table in extra.items() for key in table}
    enabled = d.get("enabled", True)
    if not isinstance(enabled, bool):
        raise _error(
            _where(path, text, "enabled"),
            f"discovery.enabled: must be true or false, got {enabled!r}",
            "discovery.enabled",
        )
    max_matches = d.get("max_matches", DEFAULT_MAX_MATCHES)
    if (
        isinstance(max_matches, bool)
        or not isinstance(max_matches, int)
        or not 1 <= max_matches <= _MAX_MATCHES_LIMIT
    ):
        raise _error(
            _where(path, text, "max_matches"),
            f"discovery.max_matches: must be an integer in [1, {_MAX_MATCHES_LIMIT}], "
            f"got {max_matches!r}",
            "discovery.max_matches",
        )
    pattern = d.get("pattern") if enabled else None
    if pattern is not None:
        try:
            check_pattern(pattern, "discovery.pattern")
        except ValueError as exc:
            raise _error(_where(path, text, "pattern"), str(exc), "discovery.pattern") from None
    return Config(
        pressure,
        eviction,
        tuple(specs),
        pattern,
        agent=extra["agent"],
        max_matches=max_matches,
        kube=extra["kube"],
        given=frozenset(given),
        path=path,
        where=where,
    )


def load_config(path: str) -> Config:
    """Read and validate a config file; raises :class:`ConfigError` (unreadable or invalid)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    return parse_config(text, path)
