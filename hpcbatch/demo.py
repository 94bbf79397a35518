"""The Quick start demo: a local cluster, a handful of jobs, their states and their output.

The headline is a 4-node MPI job beside the single jobs: its ranks on four hosts and the
fabric settings each node got. Four hosts need network namespaces, so as root the demo's
cluster is ``cluster up --netns`` (every node its own hostname, management network and
fabric); elsewhere it is on loopback and the MPI job is left out, saying why.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from hpcbatch.cli.output import distinct_suffixes, fold_nodes
from hpcbatch.client import Client
from hpcbatch.localcluster import LocalCluster
from hpcbatch.localrecord import ClusterShape

REPO = Path(__file__).resolve().parents[1]
MPIRUN = Path(sys.executable).parent / "mpirun"
# What the demo's MPI job prints of its environment: where its traffic goes.
FABRIC_SETTINGS = ("OMPI_MCA_btl_tcp_if_include", "NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME", "OMPI_MCA_pml",
                   "OMPI_MCA_btl", "FI_PROVIDER", "UCX_NET_DEVICES", "MASTER_ADDR")

SCRIPT = """#!/bin/sh
echo "fetched and run on $(hostname) as job $AWS_BATCH_JOB_ID, args: $*"
"""


def _submit(client: Client, name: str, command: list[str], **extra: Any) -> str:
    body: dict[str, Any] = {
        "jobName": name,
        "jobQueue": "default",
        "jobDefinition": "hpcbatch-default",
        "containerOverrides": {"command": command, **extra.pop("overrides", {})},
        **extra,
    }
    return str(client.submit_job(**body)["jobId"])


def _submit_mpi(client: Client, nodes: int) -> str:
    """A ``nodes``-node job whose main node prints its fabric settings, then runs mpirun
    (hello from every rank); the other nodes are held for mpirun's daemons."""
    settings = "|".join(FABRIC_SETTINGS)
    command = [
        "sh", "-c",
        f"env | grep -E '^({settings})=' | sort | sed 's/^/fabric: /'; "
        f"exec {MPIRUN} {sys.executable} {REPO / 'mpi_examples' / 'hello.py'}",
    ]
    per_node = {"resourceRequirements": [{"type": "VCPU", "value": "2"}]}
    body = {
        "jobName": "mpi-hello", "jobQueue": "default", "jobDefinition": "hpcbatch-default-mnp",
        "nodeOverrides": {"numNodes": nodes, "nodePropertyOverrides": [
            {"targetNodes": "0", "containerOverrides": {"command": command, **per_node}},
            {"targetNodes": "1:", "containerOverrides": per_node},
        ]},
        "timeout": {"attemptDurationSeconds": 120},
    }
    return str(client.submit_job(**body)["jobId"])


def _id_cells(ids: list[str], width: int) -> list[str]:
    """Whole ids on a wide console; else the end of each id that tells the rows apart."""
    if width >= 150:
        return ids
    return ["…" + end if len(end) < len(i) else i for i, end in zip(ids, distinct_suffixes(ids), strict=True)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="demo", description="Run the hpcbatch demo on a local cluster.")
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--down", action="store_true", help="stop the cluster when the demo ends")
    parser.add_argument("--loopback", action="store_true",
                        help="no network namespaces even as root (no multi-node MPI job then)")
    args = parser.parse_args(argv)
    console = Console()
    cluster = LocalCluster()
    _start_cluster(console, cluster, args)
    assert cluster.endpoint is not None
    client = Client(cluster.endpoint)
    try:
        nodes = client.all_nodes()
        console.print(f"head {cluster.endpoint}; nodes: {', '.join(n['name'] + ' ' + n['state'] for n in nodes)}")
        jobs = _submit_jobs(console, client, cluster, args, len(nodes))
        console.print(f"submitted {len(jobs)} jobs; waiting for them to finish ...")
        _wait_all(client, jobs)
        details = client.describe_jobs(jobs=list(jobs.values()))["jobs"]
        console.print(_jobs_table(console, client, jobs, details))
        _print_outputs(console, client, jobs, details)
        console.print(
            "\nTry it yourself:  [bold]source .venv/bin/activate; export HPCBATCH_HOME=$PWD/.hpcbatch[/]\n"
            "  hpcbatch submit -- echo hi      hpcbatch list      hpcbatch logs JOBID      hpcbatch nodes list\n"
            "  hpcbatch submit --nodes 4 --vcpus 2 -- mpirun python mpi_examples/hello.py   (as root: the netns cluster)\n"
            "Stop the cluster: hpcbatch cluster down"
        )
    finally:
        client.close()
        if args.down:
            cluster.down()
            console.print("cluster stopped")
    return 0


def _start_cluster(console: Console, cluster: LocalCluster, args: argparse.Namespace) -> None:
    """Use the local cluster that runs, or start one (in namespaces as root, unless --loopback)."""
    if cluster.status().running:
        console.print(f"[bold]Using the local cluster already running at {cluster.endpoint}[/]")
        return
    netns = os.geteuid() == 0 and not args.loopback
    where = "each in its own network namespace" if netns else "on loopback"
    console.print(f"[bold]Starting a local cluster: 1 head + {args.nodes} agents {where} ...[/]")
    cluster.up(ClusterShape(nodes=args.nodes, netns=netns))


def _submit_jobs(
    console: Console, client: Client, cluster: LocalCluster, args: argparse.Namespace, node_count: int
) -> dict[str, str]:
    """The demo's jobs by role: hello, a retry, a memory limit, a script, a dependency, MPI."""
    script_id = client.put_script(SCRIPT)
    jobs = {
        "hello": _submit(client, "hello", ["sh", "-c", "echo hello from $HOSTNAME, job $AWS_BATCH_JOB_ID on $AWS_BATCH_CE_NAME"]),
        "retry": _submit(client, "flaky", ["sh", "-c", "echo attempt $AWS_BATCH_JOB_ATTEMPT; exit 3"], retryStrategy={"attempts": 2}),
        "memory": _submit(
            client, "memory-hog",
            [sys.executable, "-c", "b = bytearray(400 << 20); import time; time.sleep(5)"],
            overrides={"resourceRequirements": [{"type": "MEMORY", "value": "128"}]},
        ),
        "script": _submit(
            client, "script", ["one", "two"],
            overrides={"environment": [{"name": "HPCBATCH_SCRIPT_ID", "value": script_id}]},
        ),
    }
    first = jobs["hello"]
    jobs["after"] = _submit(client, "after-hello", ["echo", "ran after hello finished"], dependsOn=[{"jobId": first}])
    mpi_nodes = min(4, node_count)
    if cluster.netns_layout is None:
        why = ("this cluster is on loopback: stop it (hpcbatch cluster down) and run the demo again"
               if os.geteuid() == 0 and not args.loopback else "the demo makes them as root only")
        console.print(f"[yellow]no multi-node MPI job: four hosts need network namespaces ({why})[/]")
    elif not MPIRUN.exists():
        console.print(f"[yellow]no multi-node MPI job: no mpirun at {MPIRUN} (scripts/setup installs it)[/]")
    elif mpi_nodes > 1:
        jobs["mpi"] = _submit_mpi(client, mpi_nodes)
    return jobs


def _wait_all(client: Client, jobs: dict[str, str], timeout: float = 120) -> None:
    """Until every job has ended, or ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        details = client.describe_jobs(jobs=list(jobs.values()))["jobs"]
        if all(d["status"] in ("SUCCEEDED", "FAILED") for d in details):
            return
        time.sleep(0.2)


def _jobs_table(console: Console, client: Client, jobs: dict[str, str], details: list[dict[str, Any]]) -> Table:
    """One row a job: name, id, status, attempts, node (the MPI job's hosts folded), exit, reason."""
    table = Table(title="Jobs")
    mpi_hosts: list[str] = []
    if "mpi" in jobs:
        num = int(next(d for d in details if d["jobId"] == jobs["mpi"])["nodeProperties"]["numNodes"])
        children = client.describe_jobs(jobs=[f"{jobs['mpi']}#{i}" for i in range(num)])["jobs"]
        mpi_hosts = [c.get("nodeName") or "" for c in children]
    ids = _id_cells([d["jobId"] for d in details], console.width)
    rows = []
    for d, shown in zip(details, ids, strict=True):
        c = d.get("container", {})
        node = fold_nodes(mpi_hosts) if d["jobId"] == jobs.get("mpi") else d.get("nodeName", "-")
        rows.append([
            d["jobName"], shown, d["status"], str(len(d["attempts"])), node,
            str(c.get("exitCode", "-")),
            c.get("reason") or (d.get("statusReason", "") if d["status"] == "FAILED" else ""),
        ])
    columns = ("name", "job id", "status", "attempts", "node", "exit", "reason")
    for k, col in enumerate(columns):  # only the reason gives way on a narrow console
        if col == "reason":
            table.add_column(col, overflow="fold")
        else:
            table.add_column(col, no_wrap=True, min_width=max(len(col), *(len(r[k]) for r in rows)))
    for row in rows:
        table.add_row(*row)
    return table


def _print_outputs(console: Console, client: Client, jobs: dict[str, str], details: list[dict[str, Any]]) -> None:
    """Every attempt's output, and where the MPI job's ranks ran."""
    for d in details:
        log_id = f"{d['jobId']}#0" if d["jobId"] == jobs.get("mpi") else d["jobId"]
        for i in range(len(d["attempts"])):
            out = client.get_job_logs(log_id, attempt=i)["data"].rstrip()
            if out:
                console.print(f"[bold]{d['jobName']}[/] attempt {i + 1} output:\n{out}", highlight=False)
    if "mpi" in jobs:
        out = client.get_job_logs(f"{jobs['mpi']}#0")["data"]
        ranks = re.findall(r"hello from rank \d+ of \d+ on (\S+)", out)
        console.print(
            f"[bold]mpi-hello[/]: {len(ranks)} ranks on {len(set(ranks))} hosts ({fold_nodes(sorted(set(ranks)))}), "
            "started by one mpirun through the node agents (no SSH), traffic on the fabric above"
        )


if __name__ == "__main__":
    sys.exit(main())
