"""What an Agent opens from its AgentConfig: the sampler, the state directory, the record file
and the Kubernetes reporter. Each failure is a :class:`~metalmem.ConfigError` naming the key,
raised before anything runs, so a front end can point at the flag or line that set it.
"""

from __future__ import annotations

import logging
import os
from typing import IO, TYPE_CHECKING, Any

from .config import AgentConfig
from .errors import ConfigError, Error
from .sampler import Sampler

if TYPE_CHECKING:
    from .kube import KubeReporter
    from .metrics import AgentStats

log = logging.getLogger("metalmem.agent")


def open_sampler(scope: str) -> Sampler:
    try:
        return Sampler(scope=scope)
    except (Error, OSError) as exc:
        raise ConfigError(f"scope: {exc}", key="scope", detail=str(exc)) from None


def check_state_dir(state_dir: str | None) -> None:
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


def open_record(path: str | None) -> IO[str] | None:
    """The record file, opened for appending (the agent owns and closes it)."""
    if path is None:
        return None
    try:
        return open(path, "a", encoding="utf-8")
    except OSError as exc:
        detail = f"{path}: {exc.strerror}"
        raise ConfigError(f"record: {detail}", key="record", detail=detail) from None


def make_reporter(config: AgentConfig, stats: AgentStats) -> KubeReporter | None:
    """The Kubernetes reporter, started (its config loaded), or None when reporting is off.

    Auto mode (``kube=None``) turns reporting on when a cluster or a kubeconfig is found, and
    runs on without it if that config cannot be loaded; ``kube=True`` with a config that
    cannot load is an error. Only here does the agent import ``kubernetes`` (through
    :meth:`KubeReporter.start`).
    """
    if config.kube is False:  # named as the agent's flag says it (kube=False for a host)
        log.info("event=kube_disabled reason=--no-kube")
        return None
    from . import kube

    kwargs: dict[str, Any] = {
        "kubeconfig": config.kubeconfig,
        "context": config.kube_context,
        "namespace": config.namespace,
    }
    if config.resource:
        kwargs["resource"] = config.resource
    if config.node_name:
        kwargs["node_name"] = config.node_name
    try:
        options = kube.KubeOptions(**kwargs)
    except ValueError as exc:
        raise ConfigError(f"resource: {exc}", key="resource", detail=str(exc)) from None
    if config.kube is None:
        available, reason = kube.kube_available(options)
        if not available:
            log.info("event=kube_disabled reason=%r", reason)
            return None
        log.info("event=kube_enabled reason=%r", reason)
    reporter = kube.KubeReporter(
        options, pressure=config.pressure, stats=stats, state_dir=config.state_dir
    )
    try:
        reporter.start()
    except kube.KubeConfigError as exc:
        if config.kube:
            raise ConfigError(f"kubeconfig: {exc}", key="kubeconfig", detail=str(exc)) from None
        log.error("event=kube_disabled reason=config_unusable error=%r", str(exc))
        return None
    return reporter
