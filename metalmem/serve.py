"""Running an Agent in the foreground: signals, config reloads, the exit status.

``metalmem.run(config)`` is ``uvicorn.run``'s counterpart: it builds an :class:`~metalmem.Agent`,
starts it and serves until SIGTERM or SIGINT (exit 0) or the loop's death (exit 1, so that a
supervisor restarts it). SIGHUP, or a change of the config file ``watch`` names, reloads
through ``reload_config``. Handlers exist only while serving, only set a flag, and the previous
ones are restored (STYLE rule 13). A host application with its own main loop calls
``Agent.start``/``stop``/``reload`` instead.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from typing import Any

from .agent import Agent
from .config import AgentConfig
from .errors import ConfigError
from .signals import SignalWaiter
from .thresholdtext import thresholds_text
from .watchfile import open_watch

__all__ = ["EXIT_FAILURE", "EXIT_OK", "raise_fd_limit", "run", "serve"]

log = logging.getLogger("metalmem.agent")

EXIT_OK = 0
EXIT_FAILURE = 1


def run(
    config: AgentConfig,
    *,
    reload_config: Callable[[], AgentConfig] | None = None,
    test_hooks: bool = False,
    **agent_options: Any,
) -> int:
    """Build, start and serve an Agent in the main thread, as a daemon (the open-files soft
    limit is lifted first: two fds per target); returns the exit status. Raises
    :class:`~metalmem.ConfigError` for a setting it cannot use, before anything runs."""
    raise_fd_limit()
    agent = Agent(config, **agent_options)
    agent.start()
    return serve(
        agent, reload_config=reload_config, watch=config.config_path, test_hooks=test_hooks
    )


def serve(
    agent: Agent,
    *,
    reload_config: Callable[[], AgentConfig] | None = None,
    watch: str | None = None,
    test_hooks: bool = False,
) -> int:
    """Wait for signals and changes of ``watch``, stop ``agent`` at the end; the exit status.
    ``test_hooks``: SIGUSR1 stalls/unstalls the loop, SIGUSR2 makes its next tick raise."""
    wanted = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP]
    if test_hooks:
        wanted += [signal.SIGUSR1, signal.SIGUSR2]
    stamp = _mtime(watch)
    stalled = False
    # Woken only by a signal, the loop's death or a change in the config's directory: idle,
    # the agent's one periodic wake-up is its tick (issue 15). Without inotify: poll 1 s.
    inotify = open_watch(watch) if watch is not None else None
    also = [] if inotify is None else [inotify]
    timeout = 1.0 if watch is not None and inotify is None else None
    with SignalWaiter(wanted) as signals:
        agent.watchdog.listeners.on_fatal.append(lambda exc: signals.poke())
        signals.poke()  # a loop that died before the line above is seen by the first pass
        try:
            while True:
                signals.wait(timeout, *also)
                if inotify is not None:
                    inotify.drain()
                for signum in signals.pop():
                    if signum in (signal.SIGTERM, signal.SIGINT):
                        name = signal.Signals(signum).name
                        log.info("event=signal signal=%s action=stop", name)
                        agent.stop()
                        return EXIT_OK
                    if signum == signal.SIGHUP:
                        stamp = _mtime(watch)
                        reload_from(agent, reload_config, watch, "SIGHUP")
                    elif signum == signal.SIGUSR1:
                        stalled = not stalled
                        agent.stall(stalled)
                    elif signum == signal.SIGUSR2:
                        agent.break_loop()
                if agent.watchdog.failed is not None:
                    log.critical("event=exit reason=loop_died error=%r", agent.watchdog.failed)
                    agent.stop()
                    return EXIT_FAILURE
                now_stamp = _mtime(watch)
                if now_stamp is not None and now_stamp != stamp:
                    stamp = now_stamp
                    reload_from(agent, reload_config, watch, "mtime")
        finally:
            if inotify is not None:
                inotify.close()


def reload_from(
    agent: Agent, reload_config: Callable[[], AgentConfig] | None, path: str | None, why: str
) -> bool:
    """Reload ``agent`` with ``reload_config()``; a refusal keeps the running config (logged
    and counted, as a success is)."""
    if reload_config is None:
        log.info("event=config_reload_skipped reason=no_config_file trigger=%s", why)
        return False
    before = agent.config.targets
    try:
        if path is not None and _is_blank(path):
            # Valid TOML, but at a reload almost always a save caught half-way (editors
            # truncate, then write): dropping every target on that would be a silent surprise.
            raise ConfigError(f"{path}: the file is empty; keeping the running config")
        config = reload_config()
        agent.reload(config)
    except ConfigError as exc:
        agent.stats.config_reload("failure")
        log.error("event=config_reload_failed trigger=%s path=%s error=%r", why, path, str(exc))
        return False
    if before and not config.targets:  # an emptied file is valid TOML
        log.warning("event=config_reload_drops_targets path=%s dropped=%d", path, len(before))
    agent.stats.config_reload("success")
    log.info(
        "event=config_reloaded trigger=%s path=%s thresholds=%s",
        why,
        path,
        thresholds_text(config.pressure),
    )
    return True


def raise_fd_limit(want: int = 8192) -> None:
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


def _is_blank(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return not f.read(4096).strip()
    except OSError:
        return False  # reading it again reports it
