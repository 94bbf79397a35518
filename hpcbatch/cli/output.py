"""Human output: tables of jobs, queues, compute environments, job definitions and nodes.

rich is imported here only, so commands that print no table (``submit``) never load it.
Columns follow ``aws batch``'s names; times are shown relative to now ("3m ago").
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

_REASON_WIDTH = 48


def console(stderr: bool = False) -> Console:
    """A console for a terminal (colour, fitted to its width) or for a pipe (see :func:`show`)."""
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(file=stream, stderr=stderr)
    return Console(file=stream, width=100_000, no_color=True, highlight=False, soft_wrap=True)


def show(*renderables: Any) -> None:
    """Print to stdout; into a pipe or file with no colour, no wrapping, no trailing blanks."""
    if sys.stdout.isatty():
        console().print(*renderables)
        return
    out = console()
    with out.capture() as captured:
        out.print(*renderables)
    sys.stdout.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))


def ago(ms: Any, now: float | None = None) -> str:
    """Epoch milliseconds as "12s ago" / "5m ago" / "3h ago" / "2d ago"; "-" when unset.

    >>> ago(1_000_000, now=1_090.0)
    '1m ago'
    """
    if not isinstance(ms, int | float) or ms <= 0:
        return "-"
    seconds = max(0, int((now if now is not None else time.time()) - ms / 1000))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def truncate(value: Any, width: int = _REASON_WIDTH) -> str:
    """One line of at most ``width`` characters, "…" marking a cut."""
    text = " ".join(str(value or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


def dash(value: Any) -> Text:
    """A cell: "-" when empty; text taken literally (a job named "[bold]" stays so)."""
    if isinstance(value, Text):
        return value
    return Text("-" if value is None or value == "" or value == [] else str(value))


def distinct_suffixes(ids: Sequence[str], shortest: int = 8) -> list[str]:
    """Each id cut to the shortest ending (at least ``shortest`` characters) no other id shares.

    Job ids are time-ordered, so ids made in the same minute share their first characters
    and differ at the end: the end is what tells rows apart.

    >>> distinct_suffixes(["01a24ba9-c0de-7000-8000-00000000aa01", "01a24ba9-c0de-7000-8000-00000000bb01"], 4)
    ['aa01', 'bb01']
    >>> distinct_suffixes(["x-1234567:1", "x-1234567:11", "y-1234567:11"], 2)
    [':1', 'x-1234567:11', 'y-1234567:11']
    """
    unique = sorted({i[::-1] for i in ids})  # reversed: a shared ending is a shared prefix
    need: dict[str, int] = {}
    for k, rev in enumerate(unique):
        longest = 0
        for other in unique[max(0, k - 1): k] + unique[k + 1: k + 2]:
            common = 0
            for a, b in zip(rev, other, strict=False):
                if a != b:
                    break
                common += 1
            longest = max(longest, common)
        need[rev[::-1]] = longest + 1
    return [i[-max(shortest, need[i]):] for i in ids]


def job_id_cells(ids: Sequence[str], room: int | None) -> list[str]:
    """Job ids as a table shows them: whole where ``room`` (columns) holds them, else "…" and
    their distinguishing ends (``room`` None: a pipe, whole ids for scripts)."""
    widest = max((len(i) for i in ids), default=0)
    if room is None or widest <= room:
        return list(ids)
    return [i if len(s) >= len(i) else "…" + s for i, s in zip(ids, distinct_suffixes(ids), strict=True)]


def print_table(
    columns: Sequence[str], rows: Iterable[Sequence[Any]], empty: str = "", keep_whole: int | None = None,
    give_way: int | None = None,
) -> None:
    """Rows under ``columns``; column ``keep_whole`` (an index) is never cut or folded (a job
    id that tells its row apart); with ``give_way`` (an index), only that column is cut when
    the terminal is narrow (a free-text reason), the short ones keep their width."""
    rows = list(rows)
    if not rows:
        if empty:
            console(stderr=True).print(empty, highlight=False)
        return
    table = Table(box=None, pad_edge=False, header_style="bold", show_edge=False)
    for index, name in enumerate(columns):
        if index == keep_whole:
            width = max(len(name), *(len(str(r[index] or "")) for r in rows))
            table.add_column(name, no_wrap=True, min_width=width)
            continue
        if give_way is not None and index != give_way:
            width = min(24, max(len(name), *(len(dash(r[index]).plain) for r in rows)))
            table.add_column(name, overflow="fold", no_wrap=True, min_width=width)
            continue
        table.add_column(name, overflow="fold", no_wrap=True)
    for row in rows:
        table.add_row(*(dash(cell) for cell in row))
    show(table)


_STATUS_STYLE = {"SUCCEEDED": "green", "FAILED": "red", "RUNNING": "cyan", "STARTING": "cyan"}


def _status(status: Any) -> Text:
    return Text(str(status), style=_STATUS_STYLE.get(str(status), "")) if status else dash(status)


def _node(job: dict[str, Any]) -> Any:
    node = job.get("nodeName")
    if node is None:
        attempts = job.get("attempts") or []
        node = attempts[-1].get("nodeName") if attempts else None
    return node


def print_jobs(jobs: Iterable[dict[str, Any]], queue: str | None = None) -> None:
    """JobSummary or JobDetail dicts, one row each.

    On a terminal too narrow for whole ids the JOB ID column shows each id's distinguishing
    end ("…" first) rather than a cut-off beginning that every row shares.
    """
    rows = [
        [
            str(j.get("jobId") or ""),
            j.get("jobName"),
            _short_arn(j.get("jobQueue") or queue),
            _status(j.get("status")),
            j.get("owner"),
            _node(j),
            ago(j.get("createdAt")),
            truncate(j.get("statusReason")),
        ]
        for j in jobs
    ]
    columns = ["JOB ID", "NAME", "QUEUE", "STATUS", "OWNER", "NODE", "CREATED", "REASON"]
    if rows and sys.stdout.isatty():  # the room the short columns and a 20-wide reason leave
        others = sum(
            min(24, max(len(name), *(len(dash(r[k]).plain) for r in rows))) + 2 for k, name in enumerate(columns[1:-1], 1)
        )
        room = max(12, console().width - others - 20)
        for row, shown in zip(rows, job_id_cells([r[0] for r in rows], room), strict=True):
            row[0] = shown
    print_table(columns, rows, empty="no jobs", keep_whole=0, give_way=len(columns) - 1)


def print_job_details(jobs: Iterable[dict[str, Any]]) -> None:
    """One block per JobDetail: the fields people look for, then the attempts."""
    for i, job in enumerate(jobs):
        if i:
            show("")
        container = job.get("container") or {}
        fields: list[tuple[str, Any]] = [
            ("jobId", job.get("jobId")),
            ("jobName", job.get("jobName")),
            ("jobQueue", _short_arn(job.get("jobQueue"))),
            ("jobDefinition", _short_arn(job.get("jobDefinition"))),
            ("status", _status(job.get("status"))),
            ("statusReason", job.get("statusReason")),
            ("owner", job.get("owner")),
            ("nodeName", _node(job)),
            ("command", " ".join(map(str, container.get("command") or [])) or None),
            ("resources", _requirements(container.get("resourceRequirements"))),
            ("exitCode", container.get("exitCode")),
            ("gpus", ", ".join(container.get("gpuIds") or []) or None),
            ("gpuUsage", _gpu_usage(container.get("gpuUsage"))),
            ("createdAt", _when(job.get("createdAt"))),
            ("startedAt", _when(job.get("startedAt"))),
            ("stoppedAt", _when(job.get("stoppedAt"))),
        ]
        depends = [d.get("jobId") for d in job.get("dependsOn") or []]
        if depends:
            fields.append(("dependsOn", ", ".join(map(str, depends))))
        table = Table(box=None, show_header=False, pad_edge=False)
        table.add_column(style="bold")
        table.add_column()
        for key, value in fields:
            if value is not None and value != "":
                table.add_row(key, dash(value))
        show(table)
        attempts = job.get("attempts") or []
        if attempts:
            att = Table(box=None, pad_edge=False, header_style="bold", title_justify="left")
            for name in ("ATTEMPT", "NODE", "EXIT", "STARTED", "STOPPED", "REASON"):
                att.add_column(name, no_wrap=True)
            for n, a in enumerate(attempts, 1):
                c = a.get("container") or {}
                att.add_row(
                    str(n),
                    dash(a.get("nodeName")),
                    dash(c.get("exitCode")),
                    ago(a.get("startedAt")),
                    ago(a.get("stoppedAt")),
                    dash(truncate(c.get("reason") or a.get("statusReason"), 60)),
                )
            show(att)


def _gpu_usage(usage: Any) -> str | None:
    """``GPU-x util 87% (peak 99%) mem 30.1G (peak 31.0G)`` per GPU, from NVML samples."""
    if not usage:
        return None
    return "; ".join(
        f"{u.get('gpuId')} util {u.get('utilizationPercent')}% (peak {u.get('peakUtilizationPercent')}%) "
        f"mem {u.get('memoryUsedMiB', 0) / 1024:.1f}G (peak {u.get('peakMemoryUsedMiB', 0) / 1024:.1f}G)"
        for u in usage
        if isinstance(u, dict)
    )


def _when(ms: Any) -> str | None:
    if not isinstance(ms, int | float) or ms <= 0:
        return None
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))
    return f"{stamp} ({ago(ms)})"


def _short_arn(value: Any) -> Any:
    """``arn:aws:batch:...:job-queue/name`` -> ``name``; names pass through."""
    if isinstance(value, str) and value.startswith("arn:"):
        return value.rsplit("/", 1)[-1]
    return value


def _requirements(reqs: Any) -> str | None:
    if not reqs:
        return None
    return ", ".join(f"{r.get('type')}={r.get('value')}" for r in reqs if isinstance(r, dict))


def print_compute_environments(ces: Iterable[dict[str, Any]]) -> None:
    print_table(
        ["NAME", "TYPE", "STATE", "STATUS", "VCPUS", "REASON"],
        (
            [
                c.get("computeEnvironmentName"),
                c.get("type"),
                c.get("state"),
                c.get("status"),
                c.get("unmanagedvCpus"),
                truncate(c.get("statusReason")),
            ]
            for c in ces
        ),
        empty="no compute environments",
    )


def print_job_queues(queues: Iterable[dict[str, Any]]) -> None:
    def order(q: dict[str, Any]) -> str:
        items = sorted(q.get("computeEnvironmentOrder") or [], key=lambda o: o.get("order", 0))
        return ",".join(str(_short_arn(o.get("computeEnvironment"))) for o in items)

    print_table(
        ["NAME", "PRIORITY", "STATE", "STATUS", "COMPUTE ENVIRONMENTS", "REASON"],
        (
            [
                q.get("jobQueueName"),
                q.get("priority"),
                q.get("state"),
                q.get("status"),
                order(q),
                truncate(q.get("statusReason")),
            ]
            for q in queues
        ),
        empty="no job queues",
    )


def print_job_definitions(jds: Iterable[dict[str, Any]]) -> None:
    def command(jd: dict[str, Any]) -> str:
        cmd = (jd.get("containerProperties") or {}).get("command") or []
        return truncate(" ".join(map(str, cmd)), 40)

    def resources(jd: dict[str, Any]) -> str | None:
        return _requirements((jd.get("containerProperties") or {}).get("resourceRequirements"))

    print_table(
        ["NAME", "TYPE", "STATUS", "RESOURCES", "COMMAND"],
        (
            [
                f"{jd.get('jobDefinitionName')}:{jd.get('revision')}",
                jd.get("type"),
                jd.get("status"),
                resources(jd),
                command(jd),
            ]
            for jd in jds
        ),
        empty="no job definitions",
    )


def print_nodes(nodes: Iterable[dict[str, Any]]) -> None:
    def fabric(node: dict[str, Any]) -> str:
        kind = node.get("fabricKind")
        if not kind:
            return "-"
        where = ",".join(node.get("fabricDevices") or []) or node.get("fabricInterface") or ""
        address = node.get("fabricAddress")
        return f"{kind}:{where}" + (f" {address}" if address else "")

    def gib(mib: Any) -> str:
        return f"{mib / 1024:.1f}G" if isinstance(mib, int | float) else "-"

    def gpus(node: dict[str, Any]) -> str:
        total = len(node.get("gpus") or [])
        if not total:
            return "-"
        bad = len(node.get("unhealthyGpus") or {})
        free = node.get("freeGpus", total - (node.get("allocatedGpus") or 0) - bad)
        return f"{free}/{node.get('allocatedGpus') or 0}/{bad}"
    def images(node: dict[str, Any]) -> str:
        cached = node.get("images") or []
        if not node.get("containerRuntime"):
            return "-"  # no runtime: no container jobs here
        return ",".join(cached) if len(cached) <= 2 else f"{len(cached)} images"

    def jobs(node: dict[str, Any]) -> str:
        running = node.get("runningJobs") or []
        return str(len(running)) if len(running) > 2 else ",".join(running) or "-"

    print_table(
        ["NAME", "STATE", "CE", "GROUP", "VCPUS", "MEMORY", "GPUS F/U/BAD", "FABRIC", "IMAGES", "JOBS", "HEARTBEAT", "REASON"],
        (
            [
                n.get("name"),
                n.get("state"),
                n.get("computeEnvironment"),
                n.get("placementGroup") or "-",
                f"{n.get('allocatedVcpus') or 0:g}/{n.get('vcpus') or 0:g}",
                f"{gib(n.get('allocatedMemoryMiB') or 0)}/{gib(n.get('memoryMiB'))}",
                gpus(n),
                fabric(n),
                images(n),
                jobs(n),
                ago(n.get("lastHeartbeatAt")),
                truncate(n.get("stateReason")),
            ]
            for n in nodes
        ),
        empty="no nodes",
    )


def fold_nodes(names: Iterable[str]) -> str:
    """``node1 node2 node3`` -> ``node[1-3]`` (ClusterShell's hostlist notation)."""
    names = [n for n in names if n]
    if not names:
        return "-"
    from ClusterShell.NodeSet import NodeSet, NodeSetException

    try:
        return str(NodeSet.fromlist(names))
    except NodeSetException:  # a name NodeSet cannot parse: show them as they are
        return ",".join(names)
