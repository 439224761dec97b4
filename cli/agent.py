"""`metalmem-agent run`, `status` and `explain`: flags and rendering over :class:`metalmem.Agent`.

`run` resolves every setting flag > environment (``METALMEM_<FLAG>``) > config file > default
into one :class:`metalmem.AgentConfig` and hands it to :func:`metalmem.run`, which serves until
a signal. Bad input of any kind exits 2 with one line that names the flag, variable or file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import textwrap
from collections.abc import Callable, Mapping
from typing import Any

import click

import metalmem
from metalmem.config import DEFAULT_INTERVAL, parse_listen
from metalmem.configfile import Config, load_config
from metalmem.errors import ConfigError
from metalmem.eviction import EvictionMode, EvictionPolicy
from metalmem.limits import MAX_INTERVAL
from metalmem.logsetup import setup_logging
from metalmem.pressure import PressurePolicy
from metalmem.systemd import SystemdNotifier

from .common import (
    EXIT_FAILURE,
    EXIT_USAGE,
    DurationType,
    format_thresholds,
    human_bytes,
)

log = logging.getLogger("metalmem.agent")

DEFAULT_LISTEN = "127.0.0.1:9438"
# "1": SIGUSR1 stalls/unstalls the loop, SIGUSR2 makes its next tick raise (tests only)
TEST_HOOKS_ENV = "METALMEM_TEST_HOOKS"


class ListenType(click.ParamType):  # type: ignore[type-arg]  # generic only in click >= 8.2
    """``HOST:PORT`` (``[::1]:9438`` for IPv6); port 0 picks a free one (tests)."""

    name = "host:port"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return parse_listen(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


FRACTION = click.FloatRange(0, 1, min_open=True, max_open=True)
LOG_LEVELS = click.Choice(metalmem.config.LOG_LEVELS, case_sensitive=False)
LOG_FORMATS = click.Choice(metalmem.config.LOG_FORMATS, case_sensitive=False)


@dataclasses.dataclass(frozen=True)
class Setting:
    """One `run` option: its config file key, built-in default, AgentConfig field and flag."""

    key: str | None  # "section.key" in the config file, None: flag/environment only
    default: Any
    field: str | None  # None: folded into a policy by resolve_settings
    flag: str  # its declaration; the variable is METALMEM_<NAME>
    help: str
    type: Any = None  # a click type; "flag" for an on/off flag


# The single table of what can be set where; docs/configuration.md lists the same rows.
SETTINGS: dict[str, Setting] = {
    "memory_watchdog_interval": Setting(
        "agent.interval", DEFAULT_INTERVAL, "interval", "--memory-watchdog-interval",
        "Time between samples (500ms, 2s, 1m); 0 turns the watchdog off, metrics stay. "
        "[default: 2s]", DurationType(minimum=None, maximum=MAX_INTERVAL),
    ),
    "memory_pressure_warning": Setting(
        "pressure.warning_available", None, None, "--memory-pressure-warning",
        "WARNING below this fraction of memory available. [default: 0.20]", FRACTION,
    ),
    "memory_pressure_critical": Setting(
        "pressure.critical_available", None, None, "--memory-pressure-critical",
        "CRITICAL below this fraction of memory available. [default: 0.10]", FRACTION,
    ),
    "eviction_enabled": Setting(
        None, False, None, "--eviction-enabled",
        "Enforce: stop the lowest-priority target at CRITICAL (config: eviction.mode).", "flag",
    ),
    "dry_run": Setting(
        None, False, None, "--dry-run",
        "Plan evictions and report them, stop nothing (wins over --eviction-enabled).", "flag",
    ),
    "discover": Setting(
        "discovery.pattern", None, "discover", "--discover", "Also manage processes matching REGEX."
    ),
    "scope": Setting(
        "agent.scope", "host", "scope", "--scope",
        "'host' or a cgroup directory to watch instead of the host. [default: host]",
    ),
    "listen": Setting(
        "agent.listen", DEFAULT_LISTEN, "listen", "--listen",
        f"HTTP address for /metrics, /memstats, /healthz, /readyz. [default: {DEFAULT_LISTEN}]",
        ListenType(),
    ),
    "state_dir": Setting(
        "agent.state_dir", None, "state_dir", "--state-dir",
        "Directory for state that must survive a restart (respawn blocks).",
        click.Path(file_okay=False),
    ),
    "record": Setting(
        "agent.record", None, "record", "--record",
        "Append every sample as a JSON line to this file (for `replay`).",
        click.Path(dir_okay=False),
    ),
    "log_format": Setting(
        "agent.log_format", "text", "log_format", "--log-format", "text or json.", LOG_FORMATS
    ),
    "log_level": Setting(
        "agent.log_level", "info", "log_level", "--log-level", "[default: info]", LOG_LEVELS
    ),
    "kube": Setting(
        "kube.enabled", None, "kube", "--kube/--no-kube",
        "Report to Kubernetes (default: on when in a cluster or a kubeconfig is found).",
    ),
    "kubeconfig": Setting(
        "kube.kubeconfig", None, "kubeconfig", "--kubeconfig", "Path to a kubeconfig file."
    ),
    "kube_context": Setting(
        "kube.context", None, "kube_context", "--kube-context", "The kubeconfig context."
    ),
    "namespace": Setting(
        "kube.namespace", None, "namespace", "--namespace",
        "Only this namespace (default: the namespaces the targets name).",
    ),
    "resource": Setting(
        "kube.resource", None, "resource", "--resource",
        "GROUP/VERSION/PLURAL of the objects. "
        "[default: inference.llmkube.dev/v1alpha1/inferenceservices]",
    ),
    "node_name": Setting(
        "kube.node_name", None, "node_name", "--node-name", "reportingInstance. [default: hostname]"
    ),
}  # fmt: skip
_FLAG_OF = {s.field: name for name, s in SETTINGS.items() if s.field}


def resolve_settings(
    ctx: click.Context, values: Mapping[str, Any], config: Config | None
) -> metalmem.AgentConfig:
    """Apply flag > environment > file > default to every option; raises ConfigError (a file
    value) or click.BadParameter (a flag or variable), both exit 2."""
    from click.core import ParameterSource

    in_file = config.settings() if config is not None else {}
    chosen: dict[str, Any] = {}
    for name, setting in SETTINGS.items():
        if ctx.get_parameter_source(name) in (
            ParameterSource.COMMANDLINE,
            ParameterSource.ENVIRONMENT,
        ):
            chosen[name] = values[name]
            in_file.pop(setting.field or "", None)
        else:
            chosen[name] = in_file.get(setting.field or "", setting.default)

    pressure = config.pressure if config is not None else PressurePolicy()
    overrides = {
        "warning_available": chosen["memory_pressure_warning"],
        "critical_available": chosen["memory_pressure_critical"],
    }
    try:
        pressure = dataclasses.replace(
            pressure, **{k: v for k, v in overrides.items() if v is not None}
        )
    except (TypeError, ValueError) as exc:
        raise click.BadParameter(
            str(exc), param_hint="'--memory-pressure-warning' / '--memory-pressure-critical'"
        ) from None

    eviction = config.eviction if config is not None else EvictionPolicy()
    if chosen["dry_run"]:
        if chosen["eviction_enabled"]:
            log.warning("event=dry_run_wins detail=--dry-run and --eviction-enabled both set")
        eviction = dataclasses.replace(eviction, mode=EvictionMode.DRY_RUN)
    elif chosen["eviction_enabled"]:
        eviction = dataclasses.replace(eviction, mode=EvictionMode.ENFORCE)
    fields = {s.field: chosen[name] for name, s in SETTINGS.items() if s.field}
    try:
        return metalmem.AgentConfig.from_mapping(
            {**in_file, **fields, "pressure": pressure, "eviction": eviction}
        )
    except ConfigError as exc:
        if config is not None and exc.key in in_file:
            raise config.locate(exc) from None
        raise bad_parameter(exc) from None


def bad_parameter(exc: ConfigError) -> click.BadParameter:
    """A library refusal as the flag that sets its key (exit 2, one line)."""
    flag = _FLAG_OF.get(exc.key or "", exc.key or "config")
    return click.BadParameter(exc.detail, param_hint=f"'--{flag.replace('_', '-')}'")


# --- run ------------------------------------------------------------------------------------


def _run_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Every SETTINGS row as an option (``METALMEM_<NAME>`` its variable), then --config."""
    for name, s in reversed(SETTINGS.items()):
        kind = {"is_flag": True, "default": False} if s.type == "flag" else {"type": s.type}
        option = click.option(
            s.flag, name, envvar="METALMEM_" + name.upper(), show_envvar=True, help=s.help, **kind
        )
        command = option(command)
    return click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        envvar="METALMEM_CONFIG",
        show_envvar=True,
        help="TOML config file: [agent], [pressure], [eviction], [[target]], [discovery], [kube].",
    )(command)


@click.command()
@_run_options
@click.pass_context
def run(ctx: click.Context, /, config_path: str | None, **values: Any) -> None:
    """Run the watchdog, the HTTP endpoints and (optionally) Kubernetes reporting."""
    config = _load(config_path)
    try:
        settings = resolve_settings(ctx, values, config)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    setup_logging(settings.log_format, settings.log_level, environ=os.environ)

    def reload() -> metalmem.AgentConfig:
        assert config_path is not None
        try:
            return resolve_settings(ctx, values, load_config(config_path))
        except click.BadParameter as exc:
            raise ConfigError(exc.format_message()) from None

    try:
        code = metalmem.run(
            settings,
            reload_config=reload if config_path is not None else None,
            test_hooks=os.environ.get(TEST_HOOKS_ENV) == "1",
            systemd=SystemdNotifier(os.environ),
        )
    except ConfigError as exc:
        raise bad_parameter(exc) from None
    sys.exit(code)


def _load(config_path: str | None) -> Config | None:
    if config_path is None:
        return None
    try:
        return load_config(config_path)
    except ConfigError as exc:
        raise click.UsageError(f"--config {exc}") from None


# --- status ---------------------------------------------------------------------------------


@click.command()
@click.option(
    "--url",
    default=f"http://{DEFAULT_LISTEN}",
    show_default=True,
    envvar="METALMEM_URL",
    help="Base URL of a running agent.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the agent's /memstats as is.")
def status(url: str, as_json: bool) -> None:
    """Summarise a running agent: level, reasons, memory, targets, evictions."""
    from metalmem.client import Unreachable, fetch_memstats

    try:
        doc = fetch_memstats(url)
    except Unreachable as exc:
        click.echo(f"metalmem-agent: error: {exc}", err=True)
        sys.exit(EXIT_FAILURE)
    except ConfigError as exc:
        raise click.BadParameter(exc.detail, param_hint="'--url'") from None
    if as_json:
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
        return
    try:
        text = render_status(doc)
    except (TypeError, AttributeError, ValueError, KeyError) as exc:
        raise click.BadParameter(
            f"{url}/memstats is not a metalmem /memstats document ({type(exc).__name__})",
            param_hint="'--url'",
        ) from None
    click.echo(text)


def render_status(doc: Mapping[str, Any]) -> str:
    """A readable summary of a /memstats document."""
    lines: list[str] = []
    a = doc.get("assessment") or {}
    system = doc.get("system") or {}
    total, avail = system.get("total"), system.get("available")
    share = f" ({avail / total:.1%})" if total and avail is not None else ""
    lines.append(
        f"level {a.get('level', '?')}  mode {doc.get('mode', '?')}  "
        f"agent {doc.get('version', '?')}  sample age {_age(doc.get('sample_age'))}"
    )
    lines.append(
        f"memory available {human_bytes(avail)} of {human_bytes(total)}{share}  "
        f"wired {human_bytes(system.get('wired'))}  "
        f"compressed {human_bytes(system.get('compressed'))}  "
        f"swap used {human_bytes(system.get('swap_used'))}"
    )
    thresholds = doc.get("thresholds")
    if thresholds:
        text = "thresholds (warning / critical): " + format_thresholds(thresholds, human=True)
        lines.extend(textwrap.wrap(text, 100, subsequent_indent="  ", break_on_hyphens=False))
    gpu = doc.get("gpu") or {}
    if gpu.get("limit") is not None:
        lines.append(f"gpu used {human_bytes(gpu.get('used'))} of {human_bytes(gpu.get('limit'))}")
    for reason in a.get("reasons") or []:
        lines.append(
            f"  {reason.get('level', '?'):<8} {reason.get('signal', '?'):<18} "
            f"{reason.get('message', '')}"
        )
    processes = doc.get("processes") or {}
    if processes:
        lines.append(f"{'TARGET':<28} {'PID':>7} {'PRIORITY':<9} {'FOOTPRINT':>10} {'RSS':>10}")
        for key, p in sorted(processes.items()):
            error = p.get("error")
            if error:
                lines.append(f"{key:<28} {p.get('pid', '-')!s:>7} {'':<9} {error.get('message')}")
                continue
            memory = p.get("memory") or {}
            lines.append(
                f"{key:<28} {p.get('pid', '-')!s:>7} {p.get('priority') or '-':<9} "
                f"{human_bytes(memory.get('footprint')):>10} {human_bytes(memory.get('rss')):>10}"
            )
    for key in doc.get("unmatched") or []:
        lines.append(f"{key:<28} {'-':>7} configured, but matches no running process")
    blocked = doc.get("blocked") or []
    if blocked:
        lines.append("respawn blocked: " + ", ".join(blocked))
    for ev in (doc.get("evictions") or [])[-5:]:
        lines.append(
            f"evicted {ev.get('key')} pid {ev.get('pid')}: {ev.get('result')} "
            f"(footprint {human_bytes(ev.get('footprint'))}, "
            f"reclaimed {human_bytes(ev.get('reclaimed'))})"
        )
    for sk in (doc.get("skips") or [])[-3:]:
        lines.append(f"skipped: {sk.get('reason')}: {sk.get('explanation')}")
    return "\n".join(lines)


def _age(value: Any) -> str:
    return f"{value:.1f}s" if isinstance(value, int | float) else "-"


# --- explain --------------------------------------------------------------------------------


@click.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    envvar="METALMEM_CONFIG",
    help="The agent's config file (targets, policy).",
)
@click.option("--discover", default=None, help="Also rank processes matching REGEX.")
@click.option("--scope", default="host", show_default=True, help="'host' or a cgroup directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the ranking as JSON.")
def explain(config_path: str | None, discover: str | None, scope: str, as_json: bool) -> None:
    """Show the eviction ranking right now, from a live sample and the configured targets.

    Read-only: it samples and ranks, and stops nothing, whatever the configured mode.
    """
    from metalmem.ranking import rank_now

    config = _load(config_path)
    try:
        wanted = metalmem.AgentConfig(
            pressure=config.pressure if config else PressurePolicy(),
            eviction=config.eviction if config else EvictionPolicy(),
            targets=config.targets if config else (),
            discover=discover if discover is not None else (config.discover if config else None),
            scope=scope,
        )
        r = rank_now(wanted)
    except ConfigError as exc:
        raise bad_parameter(exc) from None
    if as_json:
        click.echo(json.dumps(r.to_dict(), indent=2))
        return
    click.echo(
        f"level {r.assessment.level.name}; available {human_bytes(r.system.available)} of "
        f"{human_bytes(r.system.total)}; configured mode {r.mode.value}"
    )
    for key in r.unmatched:
        click.echo(f"target {key}: configured, but matches no running process")
    if not r.plan.candidates:
        if wanted.targets or wanted.discover is not None:
            click.echo("no managed targets: nothing configured matches a running process")
        else:
            click.echo("no managed targets (configure [[target]] tables or --discover)")
    click.echo(r.plan.explain())


__all__ = ["EXIT_USAGE", "explain", "resolve_settings", "run", "status"]
