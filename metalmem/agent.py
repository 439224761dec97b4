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
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any

from .config import DEFAULT_INTERVAL, AgentConfig
from .errors import ConfigError, Error, NoSuchProcess
from .eviction import Planner
from .pins import PinStore
from .pressure import SIGNAL_TABLE, Classifier, PressurePolicy
from .process import DEFAULT_KILL_TIMEOUT, StopRecord, StopResult
from .procstate import is_zombie
from .sampler import Sampler
from .systemd import SystemdNotifier
from .targets import Target, TargetSpec, TargetTracker, TooManyMatches, discover
from .watchdog import Listeners, State, Watchdog

if TYPE_CHECKING:
    from .kube import KubeReporter

__all__ = ["Agent", "StopAction", "format_thresholds", "thresholds_text", "unmatched_targets"]

log = logging.getLogger("metalmem.agent")

TARGET_REFRESH = 5.0  # seconds between re-resolving targets and re-running discovery
ON_DEMAND_PERIOD = 1.0  # loop off: a scrape samples at most this often

StopAction = Callable[[Target], object]
"""A host's own way to stop a target it owns: called after the safety gate passed it; returns
once the process has exited, or a :class:`~metalmem.StopRecord` saying what happened."""


def unmatched_targets(specs: Iterable[TargetSpec], targets: Iterable[Target]) -> list[str]:
    """Keys of configured targets that name no live process right now.

    Resolution drops such a spec without a word (a stopped service is normal), so without this
    a typo in a ``cmdline`` pattern looks exactly like a host with nothing to manage. A
    ``cmdline`` spec that matched several processes has keys ``key#pid``: any of them counts.
    """
    live = {re.sub(r"#\d+$", "", t.key) for t in targets}
    return [s.key for s in specs if s.key not in live]


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
        registry: Any = None,
        serve_http: bool = True,
        sampler: Sampler | None = None,
        systemd: SystemdNotifier | None = None,
    ) -> None:
        from .metrics import AgentStats, SampleDurations

        self.config = config
        self.stats = AgentStats()
        self.durations = SampleDurations()
        self.unmatched: tuple[str, ...] = ()
        self.reporter: KubeReporter | None = None
        self.server: Any = None
        self.systemd = systemd if systemd is not None else SystemdNotifier({})
        self._record: IO[str] | None = None
        self._phase = "new"
        self._unstalled = threading.Event()
        self._unstalled.set()
        self._break_loop = False
        self._demand_lock = threading.Lock()
        self._demand_at = -1e18
        self._stop_target = stop_target
        self._host_registry: tuple[Any, Any] | None = None
        self._owns_sampler = sampler is None
        self.sampler = sampler if sampler is not None else _open_sampler(config.scope)
        try:
            self._build(listeners or Listeners())
            self._wire_http(registry, serve_http)
        except BaseException:
            self._release()
            raise

    def _build(self, listeners: Listeners) -> None:
        config = self.config
        _check_state_dir(config.state_dir)
        self._record = _open_record(config.record)
        self._tracker = TargetTracker(
            self.sampler,
            config.targets,
            discover_pattern=config.discover,
            pins=PinStore(config.state_dir),
            max_matches=config.max_matches,
        )
        self._tracker.refresh()  # discovery that matches too much is bad input: refuse it now
        if self._tracker.refused is not None:
            raise ConfigError(self._tracker.refused, key="discover")
        self._refresh_at = time.monotonic() + TARGET_REFRESH
        interval = config.interval or DEFAULT_INTERVAL
        self.classifier = Classifier(config.pressure, interval=interval)
        self.planner = Planner(config.eviction, config.pressure)
        listeners.on_sample.append(self._on_sample)
        from .kubesetup import make_reporter

        self.reporter = make_reporter(config, self.stats)
        if self.reporter is not None:
            self.reporter.attach(listeners)
        events = None
        if config.interval > 0:
            try:
                events = self.sampler.events()
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
            stopper=self._host_stop if self._stop_target is not None else stopper,
            adopted=lambda: self._tracker.targets,
        )
        if self.reporter is not None:  # one gate for both stop paths (issue 13)
            self.watchdog.gate.metadata = self.reporter.metadata
            self.reporter.gate = self.watchdog.gate.check

    def _wire_http(self, registry: Any, serve: bool) -> None:
        """The collector (in ``registry`` too when given), the WSGI app, and its server."""
        from . import __version__
        from .metrics import MetalmemCollector, make_registry
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
            make_registry(collector),
            version=__version__,
            interval=lambda: self.watchdog.interval,
            watchdog_enabled=self.config.interval > 0,
            policy=lambda: self.classifier.policy,
            unmatched=lambda: self.unmatched,
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
            (t.stop.with_default_grace(policy.grace).grace_seconds for t in self._tracker.targets),
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
        if config.discover is not None:
            try:
                discover(self.sampler, config.discover, max_matches=config.max_matches)
            except TooManyMatches as exc:
                raise ConfigError(str(exc), key="discover") from None
        old = self.config
        self.classifier.set_policy(config.pressure)
        self.planner.policy = config.eviction
        self.planner.pressure = config.pressure
        if self.reporter is not None:
            self.reporter.set_pressure(config.pressure)
        if config.interval > 0 and old.interval > 0:
            self.watchdog.min_interval = min(0.1, config.interval)
            self.watchdog.interval = config.interval
        if (config.targets, config.discover, config.max_matches) != (
            old.targets, old.discover, old.max_matches
        ):  # fmt: skip
            # The same tracker: its pins must survive a reload (issue 13, finding 1).
            self._tracker.configure(config.targets, config.discover, config.max_matches)
            self._refresh_at = 0.0
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
        """On the loop thread: the tracker is not thread-safe."""
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
        return self.reporter.overlay(targets) if self.reporter is not None else targets

    def _note_unmatched(self) -> None:
        """Name configured targets that match nothing, once per change (a typo is silent
        otherwise); /memstats and `status` show the same list."""
        unmatched = tuple(unmatched_targets(self.config.targets, self._tracker.targets))
        if unmatched != self.unmatched:
            if unmatched:
                log.warning("event=targets_unmatched keys=%s", ",".join(unmatched))
            elif self.unmatched:
                log.info("event=targets_matched keys=%s", ",".join(self.unmatched))
            self.unmatched = unmatched

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
        self.durations.observe(state.sample_duration)
        if self._record is not None and state.system is not None:
            from .replay import record_line

            self._record.write(record_line(state.system) + "\n")
            self._record.flush()

    def _host_stop(self, target: Target, sampler: Sampler) -> StopRecord:
        """The host's stop action, for a victim the gate has just passed (on the stop thread).
        Unless it returns a StopRecord, the process's exit is checked here."""
        started = time.monotonic()
        assert self._stop_target is not None
        outcome = self._stop_target(target)
        if isinstance(outcome, StopRecord):
            return outcome
        try:
            gone = sampler.process(target.pid).start_time != target.start_time
        except NoSuchProcess:
            gone = True
        gone = gone or is_zombie(sampler.root, target.pid)
        result = StopResult.TERMINATED if gone else StopResult.FAILED
        message = (
            "the host's stop action ended it"
            if gone
            else "still running after the host's stop action"
        )
        return StopRecord(
            target.key, target.pid, target.start_time, result, ("host",),
            time.monotonic() - started, message,
        )  # fmt: skip


_FMT = {spec.signal.value: spec.fmt for spec in SIGNAL_TABLE}


def format_thresholds(
    thresholds: Mapping[str, Mapping[str, float | None]], *, human: bool = False
) -> str:
    """``signal=warning/critical`` per signal (``-`` where a level is off), from
    :func:`metalmem.server.thresholds_dict` or /memstats' ``thresholds``.

    Plain numbers in the signal's unit make one log token (``human=False``); ``human`` uses the
    classifier's own renderings (``20.0%``, ``4.0 MiB/s``) for `status`, space-separated.
    """
    parts = []
    for signal, levels in thresholds.items():
        fmt = _FMT.get(signal) if human else None
        shown = [
            "-" if v is None else (fmt(v) if fmt is not None else _number(v))
            for v in (levels.get("warning"), levels.get("critical"))
        ]
        parts.append(
            f"{signal} {shown[0]} / {shown[1]}" if human else f"{signal}={'/'.join(shown)}"
        )
    return ("; " if human else ",").join(parts)


def thresholds_text(policy: PressurePolicy) -> str:
    """The thresholds in force as one log token (the start and reload lines carry it)."""
    from .server import thresholds_dict  # prometheus_client: only where it runs

    return format_thresholds(thresholds_dict(policy))


def _number(v: float) -> str:
    """Exact for whole numbers (bytes per second), shortest repr otherwise."""
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def _open_sampler(scope: str) -> Sampler:
    try:
        return Sampler(scope=scope)
    except (Error, OSError) as exc:
        raise ConfigError(f"scope: {exc}", key="scope", detail=str(exc)) from None


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
        detail = f"{state_dir}: {exc.strerror}"
        raise ConfigError(f"state_dir: {detail}", key="state_dir", detail=detail) from None


def _open_record(path: str | None) -> IO[str] | None:
    """The record file, opened for appending (the agent owns and closes it)."""
    if path is None:
        return None
    try:
        return open(path, "a", encoding="utf-8")
    except OSError as exc:
        detail = f"{path}: {exc.strerror}"
        raise ConfigError(f"record: {detail}", key="record", detail=detail) from None
