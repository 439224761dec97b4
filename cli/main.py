"""metalmem-agent: thin click commands that wire the library together (STYLE rule 19).

Commands parse and validate, call the library, and map its exceptions to exit codes: 2 with
one line naming the parameter for bad input; data goes to stdout, diagnostics to stderr.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

import metalmem
from metalmem.sampler import as_dict

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def human_bytes(value: int | None) -> str:
    """Render bytes for people (binary units); ``-`` for unknown."""
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


class AgentGroup(click.Group):
    """A click group whose usage errors are one line on stderr and exit status 2."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            rv = super().main(*args, **kwargs)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            message = " ".join(exc.format_message().split())
            click.echo(f"metalmem-agent: error: {message}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("metalmem-agent: aborted", err=True)
            sys.exit(EXIT_FAILURE)
        sys.exit(rv if isinstance(rv, int) else EXIT_OK)


@click.group(cls=AgentGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(metalmem.__version__, prog_name="metalmem-agent")
def main() -> None:
    """metalmem-agent: memory-pressure guardian for LLM inference hosts."""


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print exact bytes as JSON.")
@click.option(
    "--pid",
    "pids",
    type=click.IntRange(min=1),
    multiple=True,
    help="A process to sample (repeatable).",
)
@click.option(
    "--scope",
    default="host",
    show_default=True,
    help="'host' or a cgroup directory to sample instead of the host.",
)
def snapshot(as_json: bool, pids: tuple[int, ...], scope: str) -> None:
    """Print the system, GPU and per-process memory figures once."""
    try:
        sampler = metalmem.Sampler(scope=scope)
    except (metalmem.Error, OSError) as exc:
        raise click.BadParameter(str(exc), param_hint="'--scope'") from exc
    with sampler:
        system = sampler.system()
        gpu = sampler.gpu()
        procs = sampler.processes(pids)
    if as_json:
        doc = {
            "version": metalmem.__version__,
            "system": as_dict(system),
            "gpu": as_dict(gpu),
            "processes": {
                str(pid): as_dict(p)
                if isinstance(p, metalmem.ProcessMemory)
                else {"error": type(p).__name__, "message": str(p)}
                for pid, p in procs.items()
            },
        }
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
        return
    rows = [
        ("total", human_bytes(system.total)),
        ("available", human_bytes(system.available)),
        ("free", human_bytes(system.free)),
        ("wired", human_bytes(system.wired)),
        ("compressed", human_bytes(system.compressed)),
        ("swap used", f"{human_bytes(system.swap_used)} of {human_bytes(system.swap_total)}"),
        ("os level", system.os_level.name if system.os_level is not None else "-"),
    ]
    if system.psi is not None:
        rows.append(("psi some/full avg10", f"{system.psi.some_avg10}% / {system.psi.full_avg10}%"))
    click.echo(f"scope: {system.scope}")
    for key, value in rows:
        click.echo(f"  {key:<22} {value}")
    if gpu is None:
        click.echo("gpu: none")
    else:
        click.echo(
            f"gpu: {gpu.name or '-'}  used {human_bytes(gpu.used)} of {human_bytes(gpu.limit)}"
        )
    for pid, p in procs.items():
        if isinstance(p, metalmem.ProcessMemory):
            click.echo(
                f"pid {pid}: footprint {human_bytes(p.footprint)}  rss "
                f"{human_bytes(p.rss)}  swap {human_bytes(p.swap)}  "
                f"wired {human_bytes(p.wired)}  peak {human_bytes(p.peak)}"
            )
        else:
            click.echo(f"pid {pid}: {type(p).__name__}: {p}", err=True)


def run_main() -> None:  # pragma: no cover - console entry for `python -m metalmem_cli`
    sys.exit(main(prog_name=os.path.basename(sys.argv[0])))
