"""The Kubernetes reporter an Agent runs with, or none: the one place the agent decides it.

Auto mode (``kube=None``) turns reporting on when a cluster or a kubeconfig is found, and runs
on without it if that config cannot be loaded; ``kube=True`` with a config that cannot load is
a :class:`~metalmem.ConfigError`. Only here does the agent import ``kubernetes`` (through
:meth:`KubeReporter.start`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .config import AgentConfig
from .errors import ConfigError

if TYPE_CHECKING:
    from .kube import KubeReporter
    from .metrics import AgentStats

log = logging.getLogger("metalmem.agent")


def make_reporter(config: AgentConfig, stats: AgentStats) -> KubeReporter | None:
    """The reporter, started (its config loaded), or None when reporting is off."""
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
