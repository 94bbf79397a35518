"""Job commands: describe, list, cancel, terminate, logs, wait."""

from __future__ import annotations

import getpass
import sys
import time
from collections import Counter
from typing import Any

import click

from hpcbatch.cli.common import (
    cli_input_json_option,
    get_client,
    global_options,
    json_output,
    load_cli_input_json,
    print_json,
    require,
)
from hpcbatch.cli.timetext import human_reason, start_time
from hpcbatch.errors import HpcbatchError
from hpcbatch.jobspec import merge_body

JOB_STATUSES = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED")
# AWS ListJobs filter names, plus hpcbatch's OWNER (the head's extension for --user).
FILTER_NAMES = ("JOB_NAME", "JOB_DEFINITION", "BEFORE_CREATED_AT", "AFTER_CREATED_AT", "OWNER")


@click.command()
@click.argument("job_ids", nargs=-1, metavar="JOBID...")
@cli_input_json_option
@global_options
def describe(job_ids: tuple[str, ...], cli_input_json: str | None) -> None:
    """Show jobs in detail (DescribeJobs)."""
    body = merge_body(load_cli_input_json(cli_input_json), {"jobs": list(job_ids) or None})
    require(body, "jobs", hint="give JOBID...")
    client = get_client()
    # AWS takes at most 100 ids per DescribeJobs; ask for the chunks in parallel.
    ids = list(body["jobs"])
    futures = [
        client.describe_jobs_async(**{**body, "jobs": ids[i : i + 100]})
        for i in range(0, len(ids), 100)
    ]
    jobs = [job for f in futures for job in f.result().get("jobs") or []]
    if json_output():
        print_json({"jobs": jobs})
        return
    found = {j.get("jobId") for j in jobs}
    missing = [j for j in ids if j not in found]
    from hpcbatch.cli.output import print_job_details

    print_job_details(jobs)
    if missing:
        click.echo(f"error: no job with id {', '.join(missing)}", err=True)
        sys.exit(3)


@click.command("list")
@click.option("-q", "--queue", metavar="QUEUE", help="Only this job queue.")
@click.option(
    "--status",
    type=click.Choice(JOB_STATUSES, case_sensitive=False),
    help="Only jobs in this status [default: all].",
)
@click.option("--user", metavar="USER", help="Only jobs of this owner ('me' for you).")
@click.option(
    "--filter",
    "filters",
    multiple=True,
    metavar="NAME=VALUE",
    help=f"ListJobs filter: {', '.join(FILTER_NAMES)}.",
)
@click.option("--array-job", metavar="JOBID", help="The children of this array job.")
@click.option("--multinode-job", metavar="JOBID", help="The nodes of this multi-node job.")
@click.option(
    "--max",
    "max_items",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="At most N jobs.",
)
@click.option(
    "--all", "all_items", is_flag=True, help="Every job, however many (follows every page)."
)
@click.option(
    "--start", "start", is_flag=True,
    help="Waiting (RUNNABLE) jobs with their expected start from the scheduler's plan, soonest first "
    "(as squeue --start).",
)
@cli_input_json_option
@global_options
def list_jobs(  # noqa: PLR0913 - a click command: each option is a parameter
    queue: str | None,
    status: str | None,
    user: str | None,
    filters: tuple[str, ...],
    array_job: str | None,
    multinode_job: str | None,
    max_items: int,
    all_items: bool,
    cli_input_json: str | None,
    start: bool = False,
) -> None:
    """List jobs, newest first (ListJobs)."""
    if start:
        status = status or "RUNNABLE"
    parsed: list[dict[str, Any]] = []
    for f in filters:
        name, eq, value = f.partition("=")
        if not eq or not name:
            raise click.BadParameter(f"{f!r} is not NAME=VALUE", param_hint="--filter")
        parsed.append({"name": name.upper(), "values": [value]})
    if user:
        parsed.append({"name": "OWNER", "values": [getpass.getuser() if user == "me" else user]})
    body = merge_body(
        load_cli_input_json(cli_input_json),
        {
            "jobQueue": queue,
            "jobStatus": status.upper() if status else None,
            "arrayJobId": array_job,
            "multiNodeJobId": multinode_job,
            "filters": parsed or None,
        },
    )
    if not any(body.get(k) for k in ("jobStatus", "filters", "arrayJobId", "multiNodeJobId")):
        # AWS answers RUNNING jobs only when neither a status nor a filter is given; any
        # filter returns every status, so "every job created since 1970" lists them all.
        body["filters"] = [{"name": "AFTER_CREATED_AT", "values": ["0"]}]
    limit = None if all_items else max_items
    if limit is not None:
        body.setdefault("maxResults", min(limit, 100))
    # AWS ignores jobStatus when filters are given; keep the user's --status meaning anyway.
    status_filter = body.get("jobStatus") if body.get("filters") else None
    jobs: list[dict[str, Any]] = []
    for job in get_client().paginate("list_jobs", "jobSummaryList", **body):
        if status_filter and job.get("status") != status_filter:
            continue
        jobs.append(job)
        if limit is not None and len(jobs) >= limit:
            break
    if start:
        _print_starts(jobs)
        return
    if json_output():
        print_json({"jobSummaryList": jobs})
        return
    from hpcbatch.cli.output import print_jobs

    print_jobs(jobs, queue=body.get("jobQueue"))


def _print_starts(jobs: list[dict[str, Any]]) -> None:
    """``list --start``: each job's ``hpcbatchExpectedStartAt`` (DescribeJobs), soonest first."""
    client = get_client()
    ids = [j["jobId"] for j in jobs]
    futures = [client.describe_jobs_async(jobs=ids[i : i + 100]) for i in range(0, len(ids), 100)]
    at = {d.get("jobId"): d.get("hpcbatchExpectedStartAt") for f in futures for d in f.result().get("jobs") or []}
    for job in jobs:
        if at.get(job["jobId"]) is not None:
            job["hpcbatchExpectedStartAt"] = at[job["jobId"]]
    jobs.sort(key=lambda j: (j.get("hpcbatchExpectedStartAt") is None, j.get("hpcbatchExpectedStartAt") or 0))
    if json_output():
        print_json({"jobSummaryList": jobs})
        return
    from hpcbatch.cli.output import print_table, truncate

    print_table(
        ["JOB ID", "NAME", "QUEUE", "OWNER", "START TIME", "REASON"],
        (
            [j.get("jobId"), j.get("jobName"), str(j.get("jobQueue") or "").rsplit("/", 1)[-1], j.get("owner"),
             start_time(j.get("hpcbatchExpectedStartAt")), truncate(j.get("statusReason"))]
            for j in jobs
        ),
        empty="no waiting jobs",
    )


def _default_reason(verb: str) -> str:
    return f"{verb} by {getpass.getuser()} with hpcbatch"


def _stop_command(name: str, method: str, verb: str, doc: str) -> click.Command:
    """cancel and terminate: same shape, one AWS call per job, sent in parallel."""

    @click.command(name, help=doc)
    @click.argument("job_ids", nargs=-1, metavar="JOBID...")
    @click.option("--reason", metavar="TEXT", help="Recorded as the job's statusReason.")
    @cli_input_json_option
    @global_options
    def command(job_ids: tuple[str, ...], reason: str | None, cli_input_json: str | None) -> None:
        base = load_cli_input_json(cli_input_json)
        ids = list(job_ids) or ([base["jobId"]] if base.get("jobId") else [])
        if not ids:
            raise click.UsageError("jobId is required: give JOBID... or put it in --cli-input-json")
        client = get_client()
        reason_text = reason or base.get("reason") or _default_reason(verb)
        call = getattr(client, method + "_async")
        futures = [(j, call(**merge_body(base, {"jobId": j, "reason": reason_text}))) for j in ids]
        errors = 0
        for job_id, future in futures:
            try:
                future.result()
            except HpcbatchError as e:
                if len(ids) == 1:
                    raise
                click.echo(f"error: {job_id}: {e}", err=True)
                errors += 1
                continue
            if json_output():
                print_json({"jobId": job_id})
            else:
                click.echo(f"{job_id} {verb}")
        if errors:
            sys.exit(3)

    return command


cancel = _stop_command(
    "cancel",
    "cancel_job",
    "cancelled",
    "Cancel jobs that have not started yet (CancelJob); running jobs go on.",
)
terminate = _stop_command(
    "terminate",
    "terminate_job",
    "terminated",
    "Terminate jobs, killing them if they are running (TerminateJob).",
)


@click.command()
@click.argument("job_id", metavar="JOBID")
@click.option(
    "--attempt",
    type=click.IntRange(min=1),
    metavar="N",
    help="Attempt number, 1 first, as AWS_BATCH_JOB_ATTEMPT counts [default: latest].",
)
@click.option("-f", "--follow", is_flag=True, help="Keep printing output until the attempt ends.")
@click.option(
    "--poll", type=click.FloatRange(min=0.05), default=0.5, show_default=True, hidden=True
)
@global_options
def logs(job_id: str, attempt: int | None, follow: bool, poll: float) -> None:
    """Print a job's output (stdout and stderr, as captured)."""
    client = get_client()
    index = None if attempt is None else attempt - 1  # the API counts attempts from 0
    offset = 0
    out = sys.stdout
    while True:
        page = client.get_job_logs(job_id, attempt=index, startFromOffset=offset)
        data = page.get("data") or ""
        if data:
            out.write(data)
            out.flush()
        offset = int(page.get("nextOffset", offset))
        # Pin the attempt once known, so a retry starting meanwhile doesn't switch streams.
        if index is None and page.get("attempt") is not None:
            index = int(page["attempt"])
        if page.get("complete"):
            return
        if not data:
            if not follow:
                return
            time.sleep(poll)


@click.command()
@click.argument("job_ids", nargs=-1, required=True, metavar="JOBID...")
@click.option(
    "--timeout", type=click.FloatRange(min=0), metavar="S", help="Give up after S seconds (exit 1)."
)
@click.option(
    "--poll",
    type=click.FloatRange(min=0.05),
    default=1.0,
    show_default=True,
    help="Seconds between checks, at most.",
)
@global_options
def wait(job_ids: tuple[str, ...], timeout: float | None, poll: float) -> None:
    """Wait for jobs to end; exit 0 if all SUCCEEDED, 1 if any FAILED."""
    client = get_client()
    status = None
    if sys.stderr.isatty():
        from hpcbatch.cli.output import console

        status = console(stderr=True).status(f"waiting for {len(job_ids)} job(s)")
        status.start()

    reasons: dict[str, tuple[Any, Any]] = {}

    def progress(latest: dict[str, dict[str, Any]]) -> None:
        tell_reasons(latest, reasons, status)
        if status is None:
            return
        counts = Counter(str(j.get("status")) for j in latest.values())
        text = f"waiting for {len(job_ids)} job(s): " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        # An array shows its children's progress: a bar of done over size, and the counts.
        for job in latest.values():
            array = job.get("arrayProperties") or {}
            summary, size = array.get("statusSummary"), array.get("size")
            if summary and size:
                done = summary.get("SUCCEEDED", 0) + summary.get("FAILED", 0)
                filled = int(30 * done / size)
                busy = ", ".join(f"{n} {s}" for s, n in summary.items() if n and s not in ("SUCCEEDED", "FAILED"))
                text += (
                    f"\n  {job.get('jobName')} [{'#' * filled}{'.' * (30 - filled)}] {done}/{size} done"
                    f" ({summary.get('SUCCEEDED', 0)} ok, {summary.get('FAILED', 0)} failed{', ' + busy if busy else ''})"
                )
        status.update(text)

    try:
        final = client.wait_jobs(list(job_ids), timeout=timeout, poll=poll, on_progress=progress)
    except TimeoutError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    finally:
        if status is not None:
            status.stop()
    jobs = [final[j] for j in dict.fromkeys(job_ids)]
    if json_output():
        print_json({"jobs": jobs})
    else:
        from hpcbatch.cli.output import print_jobs

        print_jobs(jobs)
    if any(j.get("status") != "SUCCEEDED" for j in jobs):
        sys.exit(1)


def tell_reasons(latest: dict[str, dict[str, Any]], seen: dict[str, tuple[Any, Any]], status: Any) -> None:
    """Print a job's status and reason to stderr each time they change, so a wait is never silent."""
    for job_id, job in latest.items():
        now = (job.get("status"), job.get("statusReason"))
        if seen.get(job_id) == now:
            continue
        seen[job_id] = now
        if now[0] in ("SUCCEEDED", "FAILED") or not now[1]:
            continue  # the end is printed below, and a status without a reason says nothing new
        line = f"{job_id}: {now[0]}: {human_reason(str(now[1]), time.time())}"
        if status is not None:
            status.console.print(line, markup=False, highlight=False)
        else:
            click.echo(line, err=True)
