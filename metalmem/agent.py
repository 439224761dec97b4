"""metalmem.Agent: the guardian as one object that a host application starts, reloads, stops.

It composes sampler -> target tracker -> watchdog (classifier, planner, safety gate, stop) ->
metrics, HTTP and (optionally) Kubernetes, as ``metalmem-agent run`` does, which is a thin layer
over it (uvicorn's Config/Server split). A host passes its own hooks: listeners, a stop action
for the targets it owns, a Prometheus registry, and whether the agent serves HTTP itself or
hands the WSGI app out to be mounted. Every stop, the host's included, passes the safety gate.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING, Any

from .config import DEFAULT_INTERVAL, AgentConfig
from .errors import ConfigError, Error
from .eviction import Planner
from .hoststop import StopAction, host_stopper
from .managed import ManagedTargets
from .pressure import Classifier
from .process import DEFAULT_KILL_TIMEOUT
from .sampler import PressureEvents, Sampler
from .systemd import SystemdNotifier
from .targets import Target
from .thresholdtext import thresholds_text
from .watchdog import Listeners, State, Watchdog
from .wiring import check_state_dir, make_reporter, open_record, open_sampler

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from .kube import KubeReporter
    from .server import Server

__all__ = ["Agent", "StopAction"]

log = logging.getLogger("metalmem.agent")

ON_DEMAND_PERIOD = 1.0  # loop off: a scrape samples at most this often


class Agent:
    """The guardian. ``start()`` binds HTTP (when ``serve_http``) and starts the loop;
    ``stop()`` ends both; an Agent runs once (build another to run again). A context manager.

    ``listeners`` receive the watchdog's calls (level changes, evictions, skips, ...) on its
    notifier thread. ``stop_target`` (:data:`StopAction`) replaces the signal path and the
    Kubernetes suspend for every eviction; the gate still decides who may be stopped.
    ``registry``: a Prometheus registry to register the metalmem collector in (nothing else).
    ``wsgi_app`` serves /metrics, /memstats, /healthz, /readyz, for mounting elsewhere.
    Bad settings raise :class:`~metalmem.ConfigError` naming the key, before anything runs.
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        listeners: Listeners | None = None,
        stop_target: StopAction | None = None,
        registry: CollectorRegistry | None = None,
        serve_http: bool = True,
        sampler: Sampler | None = None,
        systemd: SystemdNotifier | None = None,
    ) -> None:
        from .durations import SampleDurations
        from .metrics import AgentStats

        self.config = config
        self.stats = AgentStats()
        self.durations = SampleDurations()
        self.reporter: KubeReporter | None = None
        self.server: Server | None = None
        self.systemd = systemd if systemd is not None else SystemdNotifier({})
        self._record: IO[str] | None = None
        self._events: PressureEvents | None = None
        self._phase = "new"
        self._unstalled = threading.Event()
        self._unstalled.set()
        self._break_loop = False
        self._demand_lock = threading.Lock()
        self._demand_at = -1e18
        self._stop_target = stop_target
        self._host_registry: tuple[Any, Any] | None = None
        self._owns_sampler = sampler is None
        self.sampler = sampler if sampler is not None else open_sampler(config.scope)
        try:
            self._build(listeners or Listeners())
            self._wire_http(registry, serve_http)
        except BaseException:
            self._release()
            raise

    def _build(self, listeners: Listeners) -> None:
        config = self.config
        check_state_dir(config.state_dir)
        self._record = open_record(config.record)
        self.targets = ManagedTargets(self.sampler, config)
        interval = config.interval or DEFAULT_INTERVAL
        self.classifier = Classifier(config.pressure, interval=interval)
        self.planner = Planner(config.eviction, config.pressure)
        if self._record is not None:  # the histogram is fed on the loop thread (issue 15)
            listeners.on_sample.append(self._on_sample)
        self.reporter = make_reporter(config, self.stats)
        if self.reporter is not None:
            self.reporter.attach(listeners)
        events = self._events = None
        if config.interval > 0:
            try:
                events = self._events = self.sampler.events()
            except (Error, OSError) as exc:
                log.info("event=pressure_events_unavailable error=%r fallback=polling", exc)
        stopper = self.reporter.stopper if self.reporter is not None else None
        self.watchdog = Watchdog(
            self.sampler,
            self.classifier,
            self._targets,
            interval=interval,
            min_interval=min(0.1, interval),
            events=events,
            listeners=listeners,
            planner=self.planner,
            state_dir=config.state_dir,
            stopper=host_stopper(self._stop_target) if self._stop_target is not None else stopper,
            adopted=lambda: self.targets.adopted,
            durations=self.durations,
        )
        if self.reporter is not None:  # one gate for both stop paths (issue 13)
            self.watchdog.gate.metadata = self.reporter.metadata
            self.reporter.gate = self.watchdog.gate.check

    def _wire_http(self, registry: CollectorRegistry | None, serve: bool) -> None:
        """The collector (in ``registry`` too when given), the WSGI app, and its server."""
        from . import __version__
        from .metrics import MetalmemCollector
        from .server import Server, make_app

        collector = MetalmemCollector(
            self._state,
            stats=self.stats,
            durations=self.durations,
            version=__version__,
            platform=sys.platform,
            policy=lambda: self.classifier.policy,
            interval=lambda: self.watchdog.interval,
        )
        if registry is not None:  # the host's: only ours goes in, and leaves with the agent
            registry.register(collector)
            self._host_registry = (registry, collector)
        self.wsgi_app = make_app(
            self._state,
            collector,  # written by metalmem/exposition.py, not through a registry
            version=__version__,
            interval=lambda: self.watchdog.interval,
            watchdog_enabled=self.config.interval > 0,
            policy=lambda: self.classifier.policy,
            unmatched=lambda: self.targets.unmatched,
        )
        if serve:
            self.server = Server(self.wsgi_app, *self.config.listen)

    # -- readers -----------------------------------------------------------------------------
    @property
    def state(self) -> State:
        """The latest State (with the loop off, sampled now, at most once a second)."""
        return self._state()

    @property
    def port(self) -> int | None:
        """The bound HTTP port once started (``None`` when not serving)."""
        return self.server.port if self.server is not None else None

    def is_alive(self) -> bool:
        """The loop's heartbeat is fresh (as /healthz judges it); always, with the loop off."""
        from .server import heartbeat_health

        if self.config.interval <= 0:
            return True
        return heartbeat_health(
            self.watchdog.state, time.monotonic(), self.watchdog.interval
        ).healthy

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Bind the port first (a port in use fails before anything runs), then the loop."""
        from . import __version__

        if self._phase != "new":
            raise RuntimeError(f"this Agent is {self._phase}; an Agent runs once")
        self._phase = "running"
        if self.server is not None:
            try:
                self.server.start()
            except OSError as exc:
                self.stop()
                host, port = self.config.listen
                msg = f"cannot listen on {host}:{port}: {exc.strerror or exc}"
                raise ConfigError(msg, key="listen") from None
        if self.config.interval > 0:
            self.watchdog.start()
        log.info(
            "event=started version=%s listen=%s:%s interval=%g mode=%s scope=%s events=%s "
            "thresholds=%s",
            __version__,
            self.config.listen[0] if self.server is not None else "-",
            self.port if self.server is not None else "-",
            self.config.interval,
            self.planner.policy.mode.value,
            self.config.scope,
            self.watchdog.state.events,
            thresholds_text(self.classifier.policy),
        )
        # Type=notify: ready once listening and ticking; WATCHDOG=1 only while the loop lives.
        self.systemd.notify(
            "READY=1", f"STATUS=watching; eviction {self.planner.policy.mode.value}"
        )
        self.systemd.start_watchdog(self.is_alive)

    def stop(self) -> None:
        """Stop the loop (an in-flight stop finishes its grace), then HTTP, Kubernetes."""
        if self._phase == "stopped":
            return
        self._phase = "stopped"
        self.systemd.notify("STOPPING=1")
        self.systemd.close()
        self._unstalled.set()
        policy = self.planner.policy
        grace = max(
            (t.stop.with_default_grace(policy.grace).grace_seconds for t in self.targets.adopted),
            default=0.0,
        )
        self.watchdog.stop(timeout=1.5 + grace + DEFAULT_KILL_TIMEOUT)
        if self.server is not None:
            self.server.stop(timeout=0.5)
        if self.reporter is not None:
            self.reporter.flush(1.0)  # the last condition and events, if the API is there
        self._release()
        log.info("event=stopped")

    def _release(self) -> None:
        if self._events is not None:
            self._events.close()
            self._events = None
        if self._host_registry is not None:
            registry, collector = self._host_registry
            registry.unregister(collector)
            self._host_registry = None
        if self.reporter is not None:
            self.reporter.stop(timeout=0.5)
        if self._record is not None:
            self._record.close()
            self._record = None
        if self._owns_sampler:
            self.sampler.close()

    def __enter__(self) -> Agent:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reload(self, config: AgentConfig) -> None:
        """Apply a new config: thresholds, eviction policy, targets, discovery, interval, log
        level. Listen address, scope, state dir, record file, Kubernetes and switching the loop
        on or off need a restart (logged, kept). Raises ConfigError and changes nothing when
        the new discovery would match more than its cap."""
        old = self.config
        self.targets.configure(old, config)  # first: it may refuse the new discovery
        self.classifier.set_policy(config.pressure)
        self.planner.policy = config.eviction
        self.planner.pressure = config.pressure
        if self.reporter is not None:
            self.reporter.set_pressure(config.pressure)
        if config.interval > 0 and old.interval > 0:
            self.watchdog.min_interval = min(0.1, config.interval)
            self.watchdog.interval = config.interval
        fixed = ("listen", "scope", "state_dir", "record", "kube", "log_format")
        for name in fixed:
            if getattr(config, name) != getattr(old, name):
                log.warning("event=reload_needs_restart setting=%s", name)
        if (config.interval > 0) != (old.interval > 0):
            log.warning("event=reload_needs_restart setting=interval")
        if config.log_level != old.log_level:
            logging.getLogger("metalmem").setLevel(config.log_level.upper())
        self.config = dataclasses.replace(config, **{n: getattr(old, n) for n in fixed})

    # -- test hooks (metalmem-agent's SIGUSR1/SIGUSR2 under METALMEM_TEST_HOOKS=1) -------------
    def break_loop(self) -> None:
        """The loop's next tick raises, as a bug would."""
        self._break_loop = True

    def stall(self, on: bool) -> None:
        """Hold the loop inside its next tick (the heartbeat goes stale)."""
        if on:
            self._unstalled.clear()
        else:
            self._unstalled.set()

    # -- called by the watchdog --------------------------------------------------------------
    def _targets(self) -> Sequence[Target]:
        """On the loop thread (the tracker is not thread-safe), with the test hooks."""
        if not self._unstalled.is_set():
            log.warning("event=test_stall")
            self._unstalled.wait()
        if self._break_loop:
            raise RuntimeError("test hook: the loop was told to fail")
        targets = self.targets.current()
        return self.reporter.overlay(targets) if self.reporter is not None else targets

    def _state(self) -> State:
        if self.config.interval > 0:
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

    def _on_sample(self, state: State) -> None:
        if self._record is not None and state.system is not None:
            from .replay import record_line

            self._record.write(record_line(state.system) + "\n")
            self._record.flush()
