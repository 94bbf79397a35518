"""``hpcbatch events`` (the event stream as JSON lines) and ``hpcbatch console`` (a sign-in link)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from hpcbatch.cli.common import get_client, global_options

FOLLOW_WAIT_S = 20  # the long poll; below the client's 30 s timeout


@click.command()
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events as they happen.")
@click.option("--job", "job_id", metavar="ID", help="Only this job (and its array/node children).")
@click.option("--queue", metavar="Q", help="Only jobs of this queue.")
@click.option("--after", type=click.IntRange(min=0), default=0, show_default=True,
              help="Resume after this event id (the eventId of the last line you saw).")
@global_options
def events(follow: bool, job_id: str | None, queue: str | None, after: int) -> None:
    """Job and node state changes as JSON lines, oldest first, resumable from an event id."""
    client = get_client()
    body: dict[str, Any] = {"maxResults": 1000}
    if job_id:
        body["jobId"] = job_id
    if queue:
        body["jobQueue"] = queue
    while True:
        answer = client.list_events(**body, afterEventId=after, waitSeconds=FOLLOW_WAIT_S if follow else 0)
        for event in answer.get("events") or []:
            sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
        sys.stdout.flush()
        after = int(answer.get("lastEventId", after))
        if not follow and not answer.get("more"):
            return


@click.command()
@global_options
def console() -> None:
    """Print a one-time link that signs you in to the web console (as Jupyter does)."""
    answer = get_client().create_console_link()
    click.echo(f"Open this link within 10 minutes to sign in as {answer['user']} (role {answer['role']}); it works once:")
    click.echo(f"    {answer['url']}")
