"""``hpcbatch why JOB``: why a job waits (or what happened to it), in the scheduler's words.

Times in the scheduler's words (``t=SECONDS``) are shown as local times
(``hpcbatch.cli.timetext.human_reason``).
"""

from __future__ import annotations

import time

import click

from hpcbatch.cli.common import get_client, global_options, json_output, print_json
from hpcbatch.cli.timetext import human_reason, start_time


@click.command()
@click.argument("job_id")
@global_options
def why(job_id: str) -> None:
    """Show JOB's state, the scheduler's reason, its place in the queue, recent decisions and what caused the last."""
    answer = get_client().why_job(jobId=job_id)
    if json_output():
        print_json(answer)
        return
    now = time.time()
    click.echo(f"{answer['jobId']}: {answer['status']}")
    if answer.get("statusReason"):
        click.echo(f"  reason: {human_reason(answer['statusReason'], now)}")
    if answer.get("allowUnsatisfiable"):
        click.echo("  accepted with --allow-unsatisfiable (hpcbatch extension, tag hpcbatch:allowUnsatisfiable): "
                   "queued although no node set may hold it")
    if answer.get("queuePosition"):
        click.echo(f"  position in its queue: {answer['queuePosition']} of {answer['queueLength']}")
    if answer.get("expectedStartAt") is not None:  # the scheduler's plan (squeue --start)
        click.echo(f"  expected start: {start_time(answer['expectedStartAt'])}")
    if answer.get("dependsOn"):
        click.echo(f"  depends on: {', '.join(str(d) for d in answer['dependsOn'])}")
    decisions = answer.get("decisions") or []
    for entry in decisions:
        click.echo(f"  scheduler: {human_reason(entry['decision'], now)}")
    if decisions and decisions[-1].get("causes"):  # the events that led to the latest decision
        click.echo(f"  caused by: {', '.join(_cause_text(c) for c in decisions[-1]['causes'])}")


def _cause_text(cause: dict[str, str]) -> str:
    """``JobRunnable JOB (event e12)``, ``NodeJoined (event e13)``."""
    about = f" {cause['jobId']}" if cause.get("jobId") else ""
    return f"{cause['type']}{about} (event {cause['eventId']})"
