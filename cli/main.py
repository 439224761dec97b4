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

from .common import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, DurationType, human_bytes

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "DurationType", "human_bytes", "main"]

PID_MAX = 2**31 - 1  # pid_t is int32 on Linux and macOS; a larger --pid is bad input
RECORD_MAX_INTERVAL = 86400.0  # a day: longer cannot be slept in one select() everywhere


class AgentGroup(click.Group):
    """A click group whose usage errors are one line on stderr and exit status 2.

    ``doctor`` is imported only when asked for (or listed): its probes bring urllib, ssl,
    email and plistlib, ~7 MiB that a running agent would otherwise carry (issue 15)."""

    lazy = {"doctor": (".doctor", "doctor")}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            import importlib

            module, name = self.lazy[cmd_name]
            self.add_command(getattr(importlib.import_module(module, __package__), name), cmd_name)
        return super().get_command(ctx, cmd_name)

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        argv = args[0] if args else kwargs.get("args")
        if argv is None:
            argv = sys.argv[1:]
        if not argv:  # click would fold the whole help into one "error:" line
            commands = ", ".join(sorted(self.commands))
            click.echo(
                f"metalmem-agent: error: missing command ({commands}); see metalmem-agent --help",
                err=True,
            )
            sys.exit(EXIT_USAGE)
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
    type=click.IntRange(min=1, max=PID_MAX),
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
    gone = [str(pid) for pid, p in procs.items() if isinstance(p, metalmem.NoSuchProcess)]
    if gone:
        raise click.BadParameter(f"no such process: {', '.join(gone)}", param_hint="'--pid'")
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
        _exit_if_unreadable(procs)
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
    _exit_if_unreadable(procs)


def _exit_if_unreadable(procs: dict[int, Any]) -> None:
    """Exit 1 when a process exists but could not be read (AccessDenied): the figures asked
    for are missing, which a script must be able to tell from a complete snapshot."""
    if any(not isinstance(p, metalmem.ProcessMemory) for p in procs.values()):
        sys.exit(EXIT_FAILURE)


def run_main() -> None:  # pragma: no cover - console entry for `python -m metalmem_cli`
    sys.exit(main(prog_name=os.path.basename(sys.argv[0])))


# --- record / replay (issue 4) -----------------------------------------------------------------


@main.command()
@click.option(
    "--interval",
    type=DurationType(maximum=RECORD_MAX_INTERVAL),
    default="2s",
    show_default=True,
    help="Time between samples: 500ms, 2s, 1m, or seconds.",
)
@click.option(
    "--count",
    type=click.IntRange(min=1),
    default=None,
    help="Stop after this many samples (default: until SIGINT or SIGTERM).",
)
@click.option(
    "--output",
    "-o",
    type=click.File("w", encoding="utf-8", lazy=False),
    default="-",
    show_default=True,
    help="File to write the JSON lines to ('-' is stdout).",
)
@click.option(
    "--scope",
    default="host",
    show_default=True,
    help="'host' or a cgroup directory to sample instead of the host.",
)
def record(interval: float, count: int | None, output: Any, scope: str) -> None:
    """Record samples of this host as JSON lines, one per tick, for `replay`.

    Each line is written and flushed as it is taken, so a recording stopped by SIGINT or
    SIGTERM is complete up to its last tick; stopping that way exits 0. On a terminal, a
    progress line on stderr counts the samples (nothing when stderr is piped or a file).
    """
    from metalmem.replay import record as record_samples

    try:
        sampler = metalmem.Sampler(scope=scope)
    except (metalmem.Error, OSError) as exc:
        raise click.BadParameter(str(exc), param_hint="'--scope'") from exc
    progress = _Progress(sys.stderr, count, str(getattr(output, "name", "-")))
    with sampler:
        try:
            taken = record_samples(
                sampler, output, interval=interval, count=count,
                on_sample=lambda n, s: progress.update(n, s.available, s.total),
            )  # fmt: skip
        except (metalmem.Error, OSError) as exc:
            click.echo(f"metalmem-agent: error: sampling failed: {exc}", err=True)
            sys.exit(EXIT_FAILURE)
    progress.done(taken)


class _Progress:
    """``record``'s progress on a terminal: one line rewritten in place (``\r``) per sample.

    Silent unless ``stream`` is a TTY, so a pipe or a log file gets only the data; when the
    JSON lines themselves go to that same terminal, they are the progress and this stays quiet.
    """

    def __init__(self, stream: Any, count: int | None, target: str) -> None:
        self._stream = stream
        shares_terminal = target in ("-", "<stdout>") and sys.stdout.isatty()
        self.enabled = bool(stream.isatty()) and not shares_terminal
        self._of = f" of {count}" if count is not None else ""
        self._target = target

    def update(self, taken: int, available: int | None, total: int | None) -> None:
        if not self.enabled:
            return
        share = f", available {available / total:.1%}" if available is not None and total else ""
        self._stream.write(f"\rrecorded {taken}{self._of} samples to {self._target}{share}  ")
        self._stream.flush()

    def done(self, taken: int) -> None:
        if self.enabled:
            self._stream.write(f"\rrecorded {taken} samples to {self._target}\x1b[K\n")
            self._stream.flush()


@main.command()
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option(
    "--warning",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=metalmem.PressurePolicy().warning_available,
    show_default=True,
    help="WARNING below this fraction of memory available.",
)
@click.option(
    "--critical",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=metalmem.PressurePolicy().critical_available,
    show_default=True,
    help="CRITICAL below this fraction of memory available.",
)
@click.option(
    "--interval",
    type=DurationType(),
    default=None,
    help="The recording's tick (default: inferred from its timestamps).",
)
@click.option("--all", "every_tick", is_flag=True, help="Print every tick, not only changes.")
@click.option("--json", "as_json", is_flag=True, help="Print each tick's assessment as JSON.")
def replay(
    file: str,
    warning: float,
    critical: float,
    interval: float | None,
    every_tick: bool,
    as_json: bool,
) -> None:
    """Replay a recording through the classifier and print the timeline of levels and reasons.

    The recorded clock drives the classifier, so replaying a file twice prints the same.
    """
    from metalmem.replay import ReplayError, render_timeline
    from metalmem.replay import replay as replay_lines

    try:
        policy = metalmem.PressurePolicy(warning_available=warning, critical_available=critical)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--warning' / '--critical'") from exc
    try:
        with click.open_file(file, "r", encoding="utf-8") as f:
            entries = replay_lines(f, policy, interval)
    except OSError as exc:
        raise click.BadParameter(
            f"cannot read {file}: {exc.strerror or exc}", param_hint="'FILE'"
        ) from exc
    except UnicodeDecodeError as exc:
        raise click.BadParameter(f"{file}: not UTF-8 text: {exc}", param_hint="'FILE'") from exc
    except ReplayError as exc:
        raise click.BadParameter(f"{file}:{exc.line}: {exc.msg}", param_hint="'FILE'") from exc
    if as_json:
        for entry in entries:
            doc = {"line": entry.line, **metalmem.assessment_to_dict(entry.assessment)}
            click.echo(json.dumps(doc, sort_keys=True))
        return
    for text in render_timeline(entries, every_tick=every_tick):
        click.echo(text)


# --- commands in their own modules ---------------------------------------------------------------
# Imported last: they use the helpers above, and `main` stays the one entry point.
from .agent import explain, run, status  # noqa: E402

main.add_command(run)
main.add_command(status)
main.add_command(explain)
