"""``hpcbatch why JOB``: why a job waits (or what happened to it), in the scheduler's words.

The scheduler speaks in seconds since the epoch (``t=1765036800``: it has no clock and no
time zone); people read local times, so ``human_reason`` turns every ``t=SECONDS`` into
``15:20:00 local time (in 3 min)`` before a reason is shown (here and in ``hpcbatch wait``).
"""

from __future__ import annotations

import re
import time

import click

from hpcbatch.cli.common import get_client, global_options, json_output, print_json
from hpcbatch.cli.jobs import start_time

_EPOCH = re.compile(r"\bt=(\d{9,}(?:\.\d+)?)")


def in_words(delta_s: float) -> str:
    """A duration from now, as a person says it: ``in 40 s``, ``in 3 min``, ``in 2 h 5 min``.

    >>> in_words(40), in_words(185), in_words(7500), in_words(-5)
    ('in 40 s', 'in 3 min', 'in 2 h 5 min', 'now')
    """
    if delta_s < 1:
        return "now"
    if delta_s < 60:
        return f"in {delta_s:.0f} s"
    minutes = round(delta_s / 60)
    if minutes < 60:
        return f"in {minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"in {hours} h {minutes} min" if minutes else f"in {hours} h"


def local_time(t: float, now_s: float) -> str:
    """``HH:MM:SS local time``, with the date when it is not today."""
    stamp, today = time.localtime(t), time.localtime(now_s)
    if stamp[:3] == today[:3]:
        return time.strftime("%H:%M:%S local time", stamp)
    return time.strftime("%Y-%m-%d %H:%M:%S local time", stamp)


def human_reason(text: str, now_s: float) -> str:
    """``text`` with every ``t=EPOCH_SECONDS`` shown as a local time and how far off it is."""
    def one(m: re.Match[str]) -> str:
        t = float(m.group(1))
        return f"{local_time(t, now_s)} ({in_words(t - now_s)})"

    return _EPOCH.sub(one, text)


@click.command()
@click.argument("job_id")
@global_options
def why(job_id: str) -> None:
    """Show JOB's state, the scheduler's reason, its place in the queue and recent decisions."""
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
    for entry in answer.get("decisions") or []:
        click.echo(f"  scheduler: {human_reason(entry['decision'], now)}")
