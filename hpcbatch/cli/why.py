"""``hpcbatch why JOB``: why a job waits (or what happened to it), in the scheduler's words."""

from __future__ import annotations

import click

from hpcbatch.cli.common import get_client, global_options, json_output, print_json
from hpcbatch.cli.jobs import start_time


@click.command()
@click.argument("job_id")
@global_options
def why(job_id: str) -> None:
    """Show JOB's state, the scheduler's reason, its place in the queue and recent decisions."""
    answer = get_client().call("/hpcbatch/v1/whyjob", {"jobId": job_id})
    if json_output():
        print_json(answer)
        return
    click.echo(f"{answer['jobId']}: {answer['status']}")
    if answer.get("statusReason"):
        click.echo(f"  reason: {answer['statusReason']}")
    if answer.get("queuePosition"):
        click.echo(f"  position in its queue: {answer['queuePosition']} of {answer['queueLength']}")
    if answer.get("expectedStartAt") is not None:  # the scheduler's plan (squeue --start)
        click.echo(f"  expected start: {start_time(answer['expectedStartAt'])}")
    if answer.get("dependsOn"):
        click.echo(f"  depends on: {', '.join(str(d) for d in answer['dependsOn'])}")
    for entry in answer.get("decisions") or []:
        click.echo(f"  scheduler: {entry['decision']}")
