"""`metalmem-agent run`, `status` and `explain`: the agent an operator leaves running.

`run` resolves every setting flag > environment (``METALMEM_<FLAG>``) > config file > default,
wires Sampler -> Watchdog (-> Planner) -> HTTP (-> Kubernetes), and turns signals into
actions: SIGTERM/SIGINT stop, SIGHUP (or a new config file mtime) reloads. Bad input of any
kind exits 2 with one line that names the flag, variable or file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import select
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any

import click

import metalmem
from metalmem.eviction import EvictionMode, EvictionPolicy, Planner
from metalmem.limits import MAX_INTERVAL
from metalmem.pins import PinStore
from metalmem.pressure import Classifier, PressurePolicy
from metalmem.process import DEFAULT_KILL_TIMEOUT
from metalmem.targets import (
    DEFAULT_MAX_MATCHES,
    Target,
    TargetSpec,
    TargetTracker,
    TooManyMatches,
    check_pattern,
    discover,
)
from metalmem.watchdog import Listeners, State, Watchdog

from .common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    DurationType,
    format_thresholds,
    human_bytes,
    unmatched_targets,
)
from .config import Config, ConfigError, load_config
from .systemd import JournalPriority, SystemdNotifier, stderr_is_journal
from .watchfile import open_watch

if TYPE_CHECKING:
    from metalmem.kube import KubeReporter

log = logging.getLogger("metalmem.agent")

DEFAULT_LISTEN = "127.0.0.1:9438"
DEFAULT_INTERVAL = 2.0
TARGET_REFRESH = 5.0  # seconds between re-resolving targets and re-running discovery
ON_DEMAND_PERIOD = 1.0  # watchdog disabled: a scrape samples at most this often
# "1": SIGUSR1 stalls/unstalls the loop, SIGUSR2 makes its next tick raise (tests only)
TEST_HOOKS_ENV = "METALMEM_TEST_HOOKS"


# --- option types ---------------------------------------------------------------------------


class ListenType(click.ParamType):  # type: ignore[type-arg]  # generic only in click >= 8.2
    """``HOST:PORT`` (``[::1]:9438`` for IPv6); port 0 picks a free one (tests)."""

    name = "host:port"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        text = str(value).strip()
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            self.fail(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:9438)", param, ctx)
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        return (host, int(port))


FRACTION = click.FloatRange(0, 1, min_open=True, max_open=True)
LOG_LEVELS = click.Choice(["debug", "info", "warning", "error"], case_sensitive=False)
LOG_FORMATS = click.Choice(["text", "json"], case_sensitive=False)


@dataclasses.dataclass(frozen=True)
class Setting:
    """One `run` option: where the config file keeps it and its built-in default."""

    key: str | None  # "section.key" in the config file, None: flag/environment only
    default: Any


# The single table of what can be set where; docs/configuration.md lists the same rows.
SETTINGS: dict[str, Setting] = {
    "memory_watchdog_interval": Setting("agent.interval", DEFAULT_INTERVAL),
    "memory_pressure_warning": Setting("pressure.warning_available", None),
    "memory_pressure_critical": Setting("pressure.critical_available", None),
    "eviction_enabled": Setting(None, False),
    "dry_run": Setting(None, False),
    "discover": Setting("discovery.pattern", None),
    "scope": Setting("agent.scope", "host"),
    "listen": Setting("agent.listen", ListenType().convert(DEFAULT_LISTEN, None, None)),
    "state_dir": Setting("agent.state_dir", None),
    "record": Setting("agent.record", None),
    "log_format": Setting("agent.log_format", "text"),
    "log_level": Setting("agent.log_level", "info"),
    "kube": Setting("kube.enabled", None),
    "kubeconfig": Setting("kube.kubeconfig", None),
    "kube_context": Setting("kube.context", None),
    "namespace": Setting("kube.namespace", None),
    "resource": Setting("kube.resource", None),
    "node_name": Setting("kube.node_name", None),
}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything `run` needs, resolved and validated."""

    interval: float
    pressure: PressurePolicy
    eviction: EvictionPolicy
    targets: tuple[TargetSpec, ...]
    discover: str | None
    max_matches: int
    scope: str
    listen: tuple[str, int]
    state_dir: str | None
    record: str | None
    log_format: str
    log_level: str
    kube: bool | None
    kubeconfig: str | None
    kube_context: str | None
    namespace: str | None
    resource: str | None
    node_name: str | None
    config_path: str | None


def _file_value(
    name: str, config: Config | None, ctx: click.Context, params: Mapping[str, click.Parameter]
) -> tuple[bool, Any]:
    """The config file's value for option ``name`` (converted by the option's own type)."""
    setting = SETTINGS[name]
    if config is None or setting.key is None or setting.key not in config.given:
        return False, None
    section, key = setting.key.split(".")
    if section == "agent":
        raw = config.agent[key]
    elif section == "kube":
        raw = config.kube[key]
    elif section == "discovery":
        return True, config.discover
    else:  # pressure.*: already validated into the policy
        return True, getattr(config.pressure, key)
    param = params[name]
    try:
        if isinstance(param.type, click.types.BoolParamType):
            if not isinstance(raw, bool):
                raise click.BadParameter(f"{raw!r} is not true or false")
            return True, raw
        return True, param.type.convert(raw, param, ctx)
    except click.BadParameter as exc:
        where = config.where.get(setting.key, config.path or "<config>")
        raise ConfigError(f"{where}: {setting.key}: {exc.message}") from None


def resolve_settings(
    ctx: click.Context, values: Mapping[str, Any], config: Config | None
) -> Settings:
    """Apply flag > environment > file > default to every option; raises ConfigError or
    click.BadParameter (both exit 2)."""
    from click.core import ParameterSource

    params = {p.name: p for p in ctx.command.params if p.name}
    chosen: dict[str, Any] = {}
    explicit: set[str] = set()
    for name, setting in SETTINGS.items():
        source = ctx.get_parameter_source(name)
        if source in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
            chosen[name] = values[name]
            explicit.add(name)
            continue
        found, value = _file_value(name, config, ctx, params)
        chosen[name] = value if found else setting.default

    pressure = config.pressure if config is not None else PressurePolicy()
    overrides = {
        "warning_available": chosen["memory_pressure_warning"],
        "critical_available": chosen["memory_pressure_critical"],
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    try:
        pressure = dataclasses.replace(pressure, **overrides)
    except (TypeError, ValueError) as exc:
        w, c = pressure.warning_available, pressure.critical_available
        w = overrides.get("warning_available", w)
        c = overrides.get("critical_available", c)
        if w <= c:
            raise click.BadParameter(
                f"the warning threshold ({w:g}) must be above the critical one ({c:g})",
                param_hint="'--memory-pressure-warning' / '--memory-pressure-critical'",
            ) from None
        raise click.BadParameter(str(exc), param_hint="'--memory-pressure-*'") from None

    eviction = config.eviction if config is not None else EvictionPolicy()
    if chosen["dry_run"]:
        if chosen["eviction_enabled"]:
            log.warning("event=dry_run_wins detail=--dry-run and --eviction-enabled both set")
        eviction = dataclasses.replace(eviction, mode=EvictionMode.DRY_RUN)
    elif chosen["eviction_enabled"]:
        eviction = dataclasses.replace(eviction, mode=EvictionMode.ENFORCE)

    interval = chosen["memory_watchdog_interval"]  # >= 0: parse_duration refuses a sign
    discover = chosen["discover"]
    if discover is not None:
        try:
            check_pattern(discover, "pattern")
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--discover'") from None
    return Settings(
        interval=float(interval),
        pressure=pressure,
        eviction=eviction,
        targets=config.targets if config is not None else (),
        discover=discover,
        max_matches=config.max_matches if config is not None else DEFAULT_MAX_MATCHES,
        scope=chosen["scope"],
        listen=chosen["listen"],
        state_dir=chosen["state_dir"],
        record=chosen["record"],
        log_format=str(chosen["log_format"]).lower(),
        log_level=str(chosen["log_level"]).lower(),
        kube=chosen["kube"],
        kubeconfig=chosen["kubeconfig"],
        kube_context=chosen["kube_context"],
        namespace=chosen["namespace"],
        resource=chosen["resource"],
        node_name=chosen["node_name"],
        config_path=config.path if config is not None else None,
    )


# --- logging --------------------------------------------------------------------------------


# key=value pairs as the library writes them: values are bare tokens or %r-quoted strings.
_PAIRS = re.compile(r"""(?:^|\s)([A-Za-z_]\w*)=('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|\S*)""")


class JsonFormatter(logging.Formatter):
    """One JSON object per line; ``key=value`` pairs of the message become fields too."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        doc: dict[str, Any] = {
            "time": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
        }
        for key, value in _PAIRS.findall(message):
            if key not in doc:
                doc[key] = value[1:-1] if value[:1] in "'\"" and len(value) > 1 else value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, separators=(",", ":"))


def setup_logging(fmt: str, level: str, stream: IO[str] | None = None) -> None:
    """Route the ``metalmem`` loggers to stderr in the chosen format (idempotent)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    formatter: logging.Formatter = (
        JsonFormatter()
        if fmt == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    if stderr_is_journal(os.environ, handler.stream):  # `journalctl -p` filters on <N>
        formatter = JournalPriority(formatter)
    handler.setFormatter(formatter)
    root = logging.getLogger("metalmem")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False


# --- the agent ------------------------------------------------------------------------------


class Agent:
    """The running pieces and their lifecycle; `run` builds one, tests may too."""

    def __init__(
        self,
        settings: Settings,
        sampler: metalmem.Sampler,
        record: IO[str] | None = None,
        systemd: SystemdNotifier | None = None,
    ) -> None:
        from metalmem.metrics import AgentStats, MetalmemCollector, SampleDurations
        from metalmem.server import Server, make_app

        self.settings = settings
        self.sampler = sampler
        self.stats = AgentStats()
        self.durations = SampleDurations()
        self._unstalled = threading.Event()
        self._unstalled.set()
        self._break_loop = False
        self._tracker = TargetTracker(
            sampler,
            settings.targets,
            discover_pattern=settings.discover,
            pins=PinStore(settings.state_dir),
            max_matches=settings.max_matches,
        )
        # Discovery that matches too much is bad input: refuse it before anything runs.
        self._tracker.refresh()
        if self._tracker.refused is not None:
            raise click.BadParameter(self._tracker.refused, param_hint="'--discover'")
        self._refresh_at = time.monotonic() + TARGET_REFRESH
        self._record = record
        self._demand_lock = threading.Lock()
        self._demand_at = -1e18
        self.unmatched: tuple[str, ...] = ()
        self.reporter: KubeReporter | None = None
        interval = settings.interval or DEFAULT_INTERVAL
        self.classifier = Classifier(settings.pressure, interval=interval)
        self.planner = Planner(settings.eviction, settings.pressure)
        # The library logs levels, evictions, skips and stops itself (key=value lines);
        # the agent adds only what it owns.
        listeners = Listeners(on_sample=[self._on_sample] if record is not None else [])
        self.reporter = self._make_reporter(settings)
        if self.reporter is not None:
            self.reporter.attach(listeners)
        events = None
        if settings.interval > 0:
            try:
                events = sampler.events()
            except (metalmem.Error, OSError) as exc:
                log.info("event=pressure_events_unavailable error=%r fallback=polling", exc)
        self.watchdog = Watchdog(
            sampler,
            self.classifier,
            self._targets,
            interval=interval,
            min_interval=min(0.1, interval),
            events=events,
            listeners=listeners,
            planner=self.planner,
            state_dir=settings.state_dir,
            stopper=self.reporter.stopper if self.reporter is not None else None,
            adopted=lambda: self._tracker.targets,
            durations=self.durations,
        )
        if self.reporter is not None:  # one gate for both stop paths (issue 13)
            self.watchdog.gate.metadata = self.reporter.metadata
            self.reporter.gate = self.watchdog.gate.check
        collector = MetalmemCollector(
            self._state,
            stats=self.stats,
            durations=self.durations,
            version=metalmem.__version__,
            platform=sys.platform,
            policy=lambda: self.classifier.policy,
            interval=lambda: self.watchdog.interval,
        )
        app = make_app(
            self._state,
            collector,
            version=metalmem.__version__,
            interval=lambda: self.watchdog.interval,
            watchdog_enabled=settings.interval > 0,
            policy=lambda: self.classifier.policy,
            unmatched=lambda: self.unmatched,
        )
        host, port = settings.listen
        self.server = Server(app, host, port)
        # `run` passes the real one; an Agent built elsewhere (tests) never talks to systemd.
        self.systemd = systemd if systemd is not None else SystemdNotifier({})

    # -- wiring ------------------------------------------------------------------------------
    def _make_reporter(self, settings: Settings) -> KubeReporter | None:
        """The Kubernetes reporter, started (config loaded), or None when reporting is off.

        Auto mode (no --kube/--no-kube) turns it on when a cluster or a kubeconfig is found,
        and runs on without it if that config cannot be loaded; an explicit --kube that cannot
        load its config is bad input (exit 2). Only here is ``kubernetes`` imported.
        """
        if settings.kube is False:
            log.info("event=kube_disabled reason=--no-kube")
            return None
        from metalmem import kube

        kwargs: dict[str, Any] = {
            "kubeconfig": settings.kubeconfig,
            "context": settings.kube_context,
            "namespace": settings.namespace,
        }
        if settings.resource:
            kwargs["resource"] = settings.resource
        if settings.node_name:
            kwargs["node_name"] = settings.node_name
        try:
            options = kube.KubeOptions(**kwargs)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--resource'") from None
        if settings.kube is None:
            available, reason = kube.kube_available(options)
            if not available:
                log.info("event=kube_disabled reason=%r", reason)
                return None
            log.info("event=kube_enabled reason=%r", reason)
        reporter = kube.KubeReporter(
            options, pressure=settings.pressure, stats=self.stats, state_dir=settings.state_dir
        )
        try:
            reporter.start()
        except kube.KubeConfigError as exc:
            if settings.kube:
                raise click.BadParameter(str(exc), param_hint="'--kubeconfig'") from None
            log.error("event=kube_disabled reason=config_unusable error=%r", str(exc))
            return None
        return reporter

    def _targets(self) -> Sequence[Target]:
        """Called by the watchdog on its own thread: the tracker is not thread-safe."""
        if not self._unstalled.is_set():
            log.warning("event=test_stall")
            self._unstalled.wait()
        if self._break_loop:
            raise RuntimeError("test hook: the loop was told to fail")
        now = time.monotonic()
        if now >= self._refresh_at:
            self._refresh_at = now + TARGET_REFRESH
            self._tracker.refresh()  # logs what was added and removed
            self._note_unmatched()
        targets = self._tracker.targets
        if self.reporter is not None:
            return self.reporter.overlay(targets)
        return targets

    def _note_unmatched(self) -> None:
        """Name configured targets that match nothing, once per change (a typo is silent
        otherwise); /memstats and `status` show the same list."""
        unmatched = tuple(unmatched_targets(self.settings.targets, self._tracker.targets))
        if unmatched != self.unmatched:
            if unmatched:
                log.warning("event=targets_unmatched keys=%s", ",".join(unmatched))
            elif self.unmatched:
                log.info("event=targets_matched keys=%s", ",".join(self.unmatched))
            self.unmatched = unmatched

    def _state(self) -> State:
        """The latest State; with the watchdog off, a scrape samples (at most once a second)."""
        if self.settings.interval > 0:
            return self.watchdog.state
        with self._demand_lock:
            now = time.monotonic()
            if now - self._demand_at >= ON_DEMAND_PERIOD:
                self._demand_at = now
                try:
                    self.watchdog.tick()
                except Exception:
                    log.exception("event=on_demand_sample_failed")
        return self.watchdog.state

    # -- listeners (notifier thread) ---------------------------------------------------------
    def _on_sample(self, state: State) -> None:
        if self._record is not None and state.system is not None:
            from metalmem.replay import record_line

            self._record.write(record_line(state.system) + "\n")
            self._record.flush()

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Bind the port first (a port in use must fail before anything runs), then the rest."""
        self.server.start()
        if self.settings.interval > 0:
            self.watchdog.start()
        log.info(
            "event=started version=%s listen=%s:%d interval=%g mode=%s scope=%s events=%s "
            "thresholds=%s",
            metalmem.__version__,
            self.settings.listen[0],
            self.server.port,
            self.settings.interval,
            self.planner.policy.mode.value,
            self.settings.scope,
            self.watchdog.state.events,
            _thresholds_text(self.classifier.policy),
        )
        # Type=notify: ready once listening and ticking; WATCHDOG=1 only while the loop lives.
        self.systemd.notify(
            "READY=1", f"STATUS=watching; eviction {self.planner.policy.mode.value}"
        )
        self.systemd.start_watchdog(self.is_alive)

    def is_alive(self) -> bool:
        """The loop's heartbeat is fresh (as /healthz judges it); always, with the loop off."""
        from metalmem.server import heartbeat_health

        if self.settings.interval <= 0:
            return True
        state = self.watchdog.state
        return heartbeat_health(state, time.monotonic(), self.watchdog.interval).healthy

    def break_loop(self) -> None:
        """Test hook: the loop's next tick raises, as a bug would."""
        self._break_loop = True

    def stall(self, on: bool) -> None:
        """Test hook: hold the loop inside its next tick (the heartbeat goes stale)."""
        if on:
            self._unstalled.clear()
        else:
            self._unstalled.set()

    def stop(self) -> None:
        """Stop the loop (an in-flight stop finishes its grace), then HTTP, Kubernetes."""
        self.systemd.notify("STOPPING=1")
        self.systemd.close()
        self._unstalled.set()
        grace = max(
            (
                t.stop.with_default_grace(self.planner.policy.grace).grace_seconds
                for t in self._tracker.targets
            ),
            default=0.0,
        )
        self.watchdog.stop(timeout=1.5 + grace + DEFAULT_KILL_TIMEOUT)
        self.server.stop(timeout=0.5)
        if self.reporter is not None:
            self.reporter.flush(1.0)  # the last condition and events, if the API is there
            self.reporter.stop(timeout=0.5)
        if self._record is not None:
            self._record.close()
            self._record = None
        log.info("event=stopped")

    def check_discovery(self, settings: Settings) -> None:
        """Raise ``ValueError`` when ``settings``' discovery would match more processes than
        its cap (a reload is refused then, as a start is)."""
        if settings.discover is not None:
            discover(self.sampler, settings.discover, max_matches=settings.max_matches)

    def reload(self, settings: Settings) -> None:
        """Apply a re-read config: thresholds, eviction policy, targets, discovery, interval.
        The listen address, scope, state dir, record file and Kubernetes need a restart."""
        old = self.settings
        self.classifier.set_policy(settings.pressure)
        self.planner.policy = settings.eviction
        self.planner.pressure = settings.pressure
        if self.reporter is not None:
            self.reporter.set_pressure(settings.pressure)
        if settings.interval > 0 and old.interval > 0:
            self.watchdog.min_interval = min(0.1, settings.interval)
            self.watchdog.interval = settings.interval
        if (settings.targets, settings.discover, settings.max_matches) != (
            old.targets, old.discover, old.max_matches
        ):  # fmt: skip
            # The same tracker: its pins must survive a reload (issue 13, finding 1).
            self._tracker.configure(settings.targets, settings.discover, settings.max_matches)
            self._refresh_at = 0.0
        for name in ("listen", "scope", "state_dir", "record", "kube", "log_format"):
            if getattr(settings, name) != getattr(old, name):
                log.warning("event=reload_needs_restart setting=%s", name)
        if (settings.interval > 0) != (old.interval > 0):
            log.warning("event=reload_needs_restart setting=interval")
        setup_logging(old.log_format, settings.log_level)
        self.settings = dataclasses.replace(
            settings,
            **{n: getattr(old, n) for n in ("listen", "scope", "state_dir", "record", "kube")},
        )


# --- run ------------------------------------------------------------------------------------


def _env(name: str) -> str:
    return "METALMEM_" + name.upper()


def _option(*decls: str, name: str, **kwargs: Any) -> Callable[[Any], Any]:
    kwargs.setdefault("envvar", _env(name))
    kwargs.setdefault("show_envvar", True)
    return click.option(*decls, name, **kwargs)


@click.command()
@_option(
    "--memory-watchdog-interval",
    name="memory_watchdog_interval",
    type=DurationType(minimum=None, maximum=MAX_INTERVAL),
    default=None,
    help="Time between samples (500ms, 2s, 1m); 0 turns the watchdog off, metrics stay. "
    "[default: 2s]",
)
@_option(
    "--memory-pressure-warning",
    name="memory_pressure_warning",
    type=FRACTION,
    default=None,
    help="WARNING below this fraction of memory available. [default: 0.20]",
)
@_option(
    "--memory-pressure-critical",
    name="memory_pressure_critical",
    type=FRACTION,
    default=None,
    help="CRITICAL below this fraction of memory available. [default: 0.10]",
)
@_option(
    "--eviction-enabled",
    name="eviction_enabled",
    is_flag=True,
    default=False,
    help="Enforce: stop the lowest-priority target at CRITICAL (config: eviction.mode).",
)
@_option(
    "--dry-run",
    name="dry_run",
    is_flag=True,
    default=False,
    help="Plan evictions and report them, stop nothing (wins over --eviction-enabled).",
)
@_option(
    "--config",
    name="config_path",
    type=click.Path(dir_okay=False),
    default=None,
    envvar="METALMEM_CONFIG",
    help="TOML config file: [agent], [pressure], [eviction], [[target]], [discovery], [kube].",
)
@_option("--discover", name="discover", default=None, help="Also manage processes matching REGEX.")
@_option(
    "--scope",
    name="scope",
    default=None,
    help="'host' or a cgroup directory to watch instead of the host. [default: host]",
)
@_option(
    "--listen",
    name="listen",
    type=ListenType(),
    default=None,
    help=f"HTTP address for /metrics, /memstats, /healthz, /readyz. [default: {DEFAULT_LISTEN}]",
)
@_option(
    "--state-dir",
    name="state_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Directory for state that must survive a restart (respawn blocks).",
)
@_option(
    "--record",
    name="record",
    type=click.Path(dir_okay=False),
    default=None,
    help="Append every sample as a JSON line to this file (for `replay`).",
)
@_option("--log-format", name="log_format", type=LOG_FORMATS, default=None, help="text or json.")
@_option("--log-level", name="log_level", type=LOG_LEVELS, default=None, help="[default: info]")
@_option(
    "--kube/--no-kube",
    name="kube",
    default=None,
    help="Report to Kubernetes (default: on when in a cluster or a kubeconfig is found).",
)
@_option("--kubeconfig", name="kubeconfig", default=None, help="Path to a kubeconfig file.")
@_option("--kube-context", name="kube_context", default=None, help="The kubeconfig context.")
@_option(
    "--namespace",
    name="namespace",
    default=None,
    help="Only this namespace (default: the namespaces the targets name).",
)
@_option(
    "--resource",
    name="resource",
    default=None,
    help="GROUP/VERSION/PLURAL of the objects. [default: inference.llmkube.dev/v1alpha1/"
    "inferenceservices]",
)
@_option(
    "--node-name", name="node_name", default=None, help="reportingInstance. [default: hostname]"
)
@click.pass_context
def run(ctx: click.Context, /, config_path: str | None, **values: Any) -> None:
    """Run the watchdog, the HTTP endpoints and (optionally) Kubernetes reporting."""
    config = _load(config_path)
    try:
        settings = resolve_settings(ctx, values, config)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    setup_logging(settings.log_format, settings.log_level)
    _raise_fd_limit()
    sampler = _open_sampler(settings.scope)
    try:
        _check_state_dir(settings.state_dir)
        agent = Agent(
            settings,
            sampler,
            record=_open_record(settings.record),
            systemd=SystemdNotifier(os.environ),
        )
    except (click.ClickException, OSError) as exc:
        sampler.close()
        if isinstance(exc, OSError):
            raise click.UsageError(str(exc)) from None
        raise
    try:
        agent.start()
    except OSError as exc:
        agent.stop()
        sampler.close()
        host, port = settings.listen
        raise click.BadParameter(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}", param_hint="'--listen'"
        ) from None
    code = _serve(ctx, agent, values, config_path)
    sampler.close()
    sys.exit(code)


def _load(config_path: str | None) -> Config | None:
    if config_path is None:
        return None
    try:
        return load_config(config_path)
    except ConfigError as exc:
        raise click.UsageError(f"--config {exc}") from None


def _open_sampler(scope: str) -> metalmem.Sampler:
    try:
        return metalmem.Sampler(scope=scope)
    except (metalmem.Error, OSError) as exc:
        raise click.BadParameter(str(exc), param_hint="'--scope'") from None


def _check_state_dir(state_dir: str | None) -> None:
    """Fail at start, not at the first eviction, when the state file could not be written."""
    if state_dir is None:
        return
    try:
        os.makedirs(state_dir, exist_ok=True)
        probe = os.path.join(state_dir, ".metalmem-write-test")
        with open(probe, "w"):
            pass
        os.unlink(probe)
    except OSError as exc:
        raise click.BadParameter(
            f"{state_dir}: {exc.strerror}", param_hint="'--state-dir'"
        ) from None


def _open_record(path: str | None) -> IO[str] | None:
    """The --record file, opened for appending (the agent owns and closes it)."""
    if path is None:
        return None
    try:
        return open(path, "a", encoding="utf-8")
    except OSError as exc:
        raise click.BadParameter(f"{path}: {exc.strerror}", param_hint="'--record'") from None


def _raise_fd_limit(want: int = 8192) -> None:
    """Lift the soft open-files limit toward ``want`` (within the hard limit): the sampler
    pins two fds per target, and 1024 (Linux) or 256 (macOS) is a low default for a daemon."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.info("event=fd_limit_unchanged soft=%d error=%r", soft, exc)


def _mtime(path: str | None) -> tuple[int, int] | None:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


def _serve(ctx: click.Context, agent: Agent, values: Mapping[str, Any], path: str | None) -> int:
    """The main thread: wait for signals and config changes; return the exit status."""
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    pending: list[int] = []

    def handle(signum: int, frame: object) -> None:
        pending.append(signum)

    wanted = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP]
    if os.environ.get(TEST_HOOKS_ENV) == "1":
        wanted += [signal.SIGUSR1, signal.SIGUSR2]
    old_fd = signal.set_wakeup_fd(w)
    old = {s: signal.signal(s, handle) for s in wanted}
    stamp = _mtime(path)
    stalled = False
    # Woken only by a signal, the loop's death or a change in the config's directory: idle,
    # the agent's one periodic wake-up is its tick (issue 15). Without inotify: poll 1 s.
    watch = open_watch(path) if path is not None else None
    agent.watchdog.listeners.on_fatal.append(lambda exc: _poke(w))
    _poke(w)  # a loop that died before the line above is seen by the first pass
    waits: list[Any] = [r] if watch is None else [r, watch]
    timeout = 1.0 if path is not None and watch is None else None
    try:
        while True:
            select.select(waits, [], [], timeout)
            with contextlib.suppress(BlockingIOError):
                os.read(r, 512)
            if watch is not None:
                watch.drain()
            while pending:
                signum = pending.pop(0)
                if signum in (signal.SIGTERM, signal.SIGINT):
                    log.info("event=signal signal=%s action=stop", signal.Signals(signum).name)
                    agent.stop()
                    return EXIT_OK
                if signum == signal.SIGHUP:
                    stamp = _mtime(path)
                    _reload(ctx, agent, values, path, "SIGHUP")
                elif signum == signal.SIGUSR1:
                    stalled = not stalled
                    agent.stall(stalled)
                elif signum == signal.SIGUSR2:
                    agent.break_loop()
            if agent.watchdog.failed is not None:
                log.critical("event=exit reason=loop_died error=%r", agent.watchdog.failed)
                agent.stop()
                return EXIT_FAILURE
            now_stamp = _mtime(path)
            if now_stamp is not None and now_stamp != stamp:
                stamp = now_stamp
                _reload(ctx, agent, values, path, "mtime")
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        signal.set_wakeup_fd(old_fd)
        if watch is not None:
            watch.close()
        os.close(r)
        os.close(w)


def _poke(fd: int) -> None:
    """Wake the main thread (the loop died: it exits 1 at once instead of at its next poll)."""
    with contextlib.suppress(OSError):
        os.write(fd, b"\0")


def _thresholds_text(policy: PressurePolicy) -> str:
    """The thresholds in force as one log token (the start and reload lines carry it)."""
    from metalmem.server import thresholds_dict  # prometheus_client: only where it runs

    return format_thresholds(thresholds_dict(policy))


def _is_blank(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return not f.read(4096).strip()
    except OSError:
        return False  # load_config reports it


def _reload(
    ctx: click.Context, agent: Agent, values: Mapping[str, Any], path: str | None, why: str
) -> bool:
    if path is None:
        log.info("event=config_reload_skipped reason=no_config_file trigger=%s", why)
        return False
    try:
        if _is_blank(path):
            # Valid TOML, but at a reload almost always a save caught half-way (editors
            # truncate, then write): dropping every target on that would be a silent surprise.
            raise ConfigError(f"{path}: the file is empty; keeping the running config")
        settings = resolve_settings(ctx, values, load_config(path))
        agent.check_discovery(settings)
    except (ConfigError, click.BadParameter, TooManyMatches) as exc:
        message = exc.format_message() if isinstance(exc, click.BadParameter) else str(exc)
        agent.stats.config_reload("failure")
        log.error("event=config_reload_failed trigger=%s path=%s error=%r", why, path, message)
        return False
    if agent.settings.targets and not settings.targets:  # an emptied file is valid TOML
        log.warning(
            "event=config_reload_drops_targets path=%s dropped=%d",
            path,
            len(agent.settings.targets),
        )
    agent.reload(settings)
    agent.stats.config_reload("success")
    log.info(
        "event=config_reloaded trigger=%s path=%s thresholds=%s",
        why,
        path,
        _thresholds_text(settings.pressure),
    )
    return True


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
    doc = fetch_memstats(url)
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


def fetch_memstats(url: str, timeout: float = 5.0) -> dict[str, Any]:
    """GET ``url``/memstats as a dict. An unreachable agent exits 1 with one line saying why;
    a URL that answers something other than a /memstats document is bad input (exit 2)."""
    import http.client
    import urllib.error
    import urllib.parse
    import urllib.request

    target = url.rstrip("/") + "/memstats"
    try:
        parts = urllib.parse.urlsplit(target)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        raise click.BadParameter(f"{url!r}: {exc}", param_hint="'--url'") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise click.BadParameter(f"{url!r} is not an http:// URL with a host", param_hint="'--url'")
    try:
        with urllib.request.urlopen(target, timeout=timeout) as resp:
            body = resp.read(16 << 20)
    except ValueError as exc:  # what urlsplit let through and the request refused
        raise click.BadParameter(f"{url!r}: {exc}", param_hint="'--url'") from None
    except urllib.error.HTTPError as exc:
        raise click.BadParameter(
            f"{target} answered HTTP {exc.code} {exc.reason}: not a metalmem agent",
            param_hint="'--url'",
        ) from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        why = getattr(reason, "strerror", None) or str(reason)
        click.echo(f"metalmem-agent: error: cannot reach {target}: {why}", err=True)
        sys.exit(EXIT_FAILURE)
    except TimeoutError:
        click.echo(f"metalmem-agent: error: {target} did not answer in {timeout:g} s", err=True)
        sys.exit(EXIT_FAILURE)
    except (OSError, http.client.HTTPException) as exc:
        why = getattr(exc, "strerror", None) or type(exc).__name__
        click.echo(f"metalmem-agent: error: cannot read {target}: {why}", err=True)
        sys.exit(EXIT_FAILURE)
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        doc = None
    if not isinstance(doc, dict) or not isinstance(doc.get("schema_version"), int):
        raise click.BadParameter(
            f"{target} answered, but not with a metalmem /memstats document",
            param_hint="'--url'",
        )
    return doc


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
    config = _load(config_path)
    pattern = discover if discover is not None else (config.discover if config else None)
    if pattern is not None:
        try:
            check_pattern(pattern, "pattern")
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--discover'") from None
    specs = config.targets if config else ()
    pressure = config.pressure if config else PressurePolicy()
    eviction = config.eviction if config else EvictionPolicy()
    sampler = _open_sampler(scope)
    with sampler:
        targets = TargetTracker(sampler, specs, discover_pattern=pattern).refresh().targets
        system = sampler.system()
        by_pid = sampler.processes(t.pid for t in targets) if targets else {}
        now = time.monotonic()
        assessment = Classifier(pressure).assess(system, now=now)
    unmatched = unmatched_targets(specs, targets)
    by_key = {t.key: by_pid[t.pid] for t in targets if t.pid in by_pid}
    # Rank as if CRITICAL and enforcing, so the table shows who would go first right now.
    planner = Planner(dataclasses.replace(eviction, mode=EvictionMode.DRY_RUN), pressure)
    plan = planner.plan(assessment, system, by_key, targets, now)
    if as_json:
        doc = {
            "level": assessment.level.name,
            "mode": eviction.mode.value,
            "available": system.available,
            "total": system.total,
            "skip_reason": plan.skip_reason.value if plan.skip_reason else None,
            "explanation": plan.explanation,
            "needed_bytes": plan.needed_bytes,
            "unmatched": unmatched,
            "ranking": [
                {
                    "rank": c.rank,
                    "key": c.target.key,
                    "pid": c.target.pid,
                    "priority": c.target.priority.value,
                    "protected": c.target.protected,
                    "footprint": c.footprint,
                    "budget": c.target.budget,
                    "over_budget": c.over_budget,
                    "state": c.state.value,
                    "why": c.why,
                }
                for c in plan.candidates
            ],
        }
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo(
        f"level {assessment.level.name}; available {human_bytes(system.available)} of "
        f"{human_bytes(system.total)}; configured mode {eviction.mode.value}"
    )
    for key in unmatched:
        click.echo(f"target {key}: configured, but matches no running process")
    if not plan.candidates:
        if specs or pattern is not None:
            click.echo("no managed targets: nothing configured matches a running process")
        else:
            click.echo("no managed targets (configure [[target]] tables or --discover)")
    click.echo(plan.explain())


__all__ = ["EXIT_USAGE", "Agent", "Settings", "explain", "resolve_settings", "run", "status"]
