"""`metalmem-agent doctor`: check this host for what metalmem needs, with a verdict per check.

The facts and the checks are the library's (:mod:`metalmem.doctor`); this module resolves the
options as `run` would (flags, then ``METALMEM_*`` variables, then the config file), calls
:func:`~metalmem.doctor.gather_facts` and :func:`~metalmem.doctor.run_checks`, and prints the
findings as a table or as JSON (``docs/doctor.schema.json``). It exits 1 if any check fails,
2 for bad input.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import click

import metalmem
from metalmem.configfile import ConfigError, load_config
from metalmem.doctor import (
    DoctorOptions,
    Finding,
    Verdict,
    exit_code,
    gather_facts,
    report_to_dict,
    run_checks,
)
from metalmem.kube.options import DEFAULT_RESOURCE, Resource
from metalmem.pressure import PressurePolicy
from metalmem.sampler import Sampler
from metalmem.targets import check_pattern

from .agent import DEFAULT_LISTEN, ListenType

__all__ = ["doctor", "render_table"]


def render_table(findings: Sequence[Finding]) -> str:
    """An aligned table for people: check, verdict, finding; the fix on the next line."""
    width = max([len("CHECK"), *(len(f.check) for f in findings)])
    lines = [f"{'CHECK':<{width}}  VERDICT  FINDING"]
    for f in findings:
        lines.append(f"{f.check:<{width}}  {f.verdict.value:<7}  {f.finding}")
        if f.fix is not None:
            lines.append(f"{'':<{width}}  {'':<7}  fix: {f.fix}")
    counts = [f"{sum(1 for f in findings if f.verdict == v)} {v.value}" for v in Verdict]
    lines.append(", ".join(counts))
    return "\n".join(lines)


# --- the command ---------------------------------------------------------------------------


def _options(
    config_path: str | None,
    discover: str | None,
    scope: str | None,
    listen: tuple[str, int] | None,
    kube: bool,
    kubeconfig: str | None,
    kube_context: str | None,
) -> DoctorOptions:
    """Flags (and their METALMEM_* variables) over the config file over defaults, as `run`
    resolves them, so doctor checks what the agent would use; bad input exits 2."""
    config = None
    if config_path is not None:
        try:
            config = load_config(config_path)
        except ConfigError as exc:
            raise click.BadParameter(str(exc), param_hint="'--config'") from None
    agent: Mapping[str, Any] = config.agent if config is not None else {}
    kube_file: Mapping[str, Any] = config.kube if config is not None else {}
    if listen is None:
        raw = agent.get("listen", DEFAULT_LISTEN)
        try:
            listen = ListenType().convert(raw, None, None)
        except click.BadParameter as exc:
            raise click.BadParameter(
                f"{config_path}: agent.listen: {exc.message}", param_hint="'--config'"
            ) from None
    if discover is None and config is not None:
        discover = config.discover
    if discover is not None:
        try:
            check_pattern(discover, "pattern")
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--discover'") from None
    scope = scope or str(agent.get("scope", "host"))
    assert listen is not None
    try:
        Resource.parse(str(kube_file.get("resource") or DEFAULT_RESOURCE))
    except ValueError as exc:
        raise click.BadParameter(f"{config_path}: kube.{exc}", param_hint="'--config'") from None
    return DoctorOptions(
        pressure=config.pressure if config is not None else PressurePolicy(),
        targets=tuple(config.targets) if config is not None else (),
        scope=scope,
        listen=listen,
        discover=discover,
        kube=kube or kube_file.get("enabled") is True,
        kubeconfig=kubeconfig or kube_file.get("kubeconfig"),
        kube_context=kube_context or kube_file.get("context"),
        kube_resource=str(kube_file.get("resource") or DEFAULT_RESOURCE),
        kube_namespace=kube_file.get("namespace"),
    )


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    envvar="METALMEM_CONFIG",
    help="The agent's TOML config: targets, thresholds, [agent] listen/scope, [kube].",
)
@click.option(
    "--discover",
    default=None,
    envvar="METALMEM_DISCOVER",
    help="Also check processes whose executable matches REGEX (their model files).",
)
@click.option(
    "--scope",
    default=None,
    envvar="METALMEM_SCOPE",
    help="'host' or a cgroup directory, as for `run`. [default: host]",
)
@click.option(
    "--listen",
    type=ListenType(),
    default=None,
    envvar="METALMEM_LISTEN",
    help=f"The agent's HTTP address: is it free? [default: {DEFAULT_LISTEN}]",
)
@click.option(
    "--kube",
    is_flag=True,
    default=False,
    envvar="METALMEM_KUBE",
    help="Also check that Kubernetes is reachable (GET /version, 3 s).",
)
@click.option(
    "--kubeconfig",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    envvar="METALMEM_KUBECONFIG",
    help="Path to a kubeconfig file (default: in-cluster, then ~/.kube/config).",
)
@click.option(
    "--kube-context",
    "kube_context",
    default=None,
    envvar="METALMEM_KUBE_CONTEXT",
    help="The kubeconfig context.",
)
def doctor(
    as_json: bool,
    config_path: str | None,
    discover: str | None,
    scope: str | None,
    listen: tuple[str, int] | None,
    kube: bool,
    kubeconfig: str | None,
    kube_context: str | None,
) -> None:
    """Check this host for what metalmem needs and print a verdict per check.

    Each check says ok, warn or fail, what it found and the exact fix. Exit status: 0 when
    no check fails, 1 when one does, 2 for bad input.
    """
    options = _options(config_path, discover, scope, listen, kube, kubeconfig, kube_context)
    try:
        sampler = Sampler(scope=options.scope)
    except (metalmem.Error, OSError) as exc:
        raise click.BadParameter(str(exc), param_hint="'--scope'") from None
    with sampler:
        facts = gather_facts(options, sampler)
    findings = run_checks(facts)
    if as_json:
        click.echo(json.dumps(report_to_dict(facts, findings), indent=2))
    else:
        click.echo(render_table(findings))
    sys.exit(exit_code(findings))
