"""`metalmem-agent run`, `status` and `explain` (the agent issue)."""

from __future__ import annotations

import click


@click.command()
def run() -> None:
    """Run the watchdog, the HTTP endpoints and (optionally) Kubernetes reporting."""
    raise click.ClickException("run: not implemented yet")
