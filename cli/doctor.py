"""`metalmem-agent doctor`: check the host and say what to fix (filled in by the docs issue)."""

from __future__ import annotations

import click


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
def doctor(as_json: bool) -> None:
    """Check this host for what metalmem needs and print a verdict per check."""
    raise click.ClickException("doctor: not implemented yet")
