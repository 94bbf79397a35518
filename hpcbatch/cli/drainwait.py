"""``hpcbatch nodes drain --wait``: poll the head until a draining node has no jobs left."""

from __future__ import annotations

import time
from typing import Any

import click

from hpcbatch.client import Client

POLL_S = 0.5


def _node(client: Client, name: str) -> dict[str, Any] | None:
    for node in client.all_nodes():
        if node.get("name") == name:
            return dict(node)
    return None


def wait_drained(client: Client, name: str, timeout: float) -> None:
    """Return when ``name`` is DRAINED (or DOWN: nothing runs there); exit 1 after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        node = _node(client, name) or {}
        state = node.get("state")
        if state in ("DRAINED", "DOWN"):
            click.echo(f"{name} {state}" + (f": {node.get('stateReason')}" if node.get("stateReason") else ""))
            return
        if state == "ACTIVE":  # someone resumed it meanwhile: waiting would never end
            raise click.ClickException(f"{name} was resumed while draining")
        if time.monotonic() >= deadline:
            jobs = ", ".join(node.get("runningJobs") or []) or "none listed"
            raise click.ClickException(
                f"{name} still {state or 'unknown'} after {timeout:g} s (running jobs: {jobs}); "
                "it stays drained: wait longer, or terminate those jobs"
            )
        time.sleep(POLL_S)
