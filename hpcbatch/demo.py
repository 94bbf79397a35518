"""The Quick start demo: a local cluster, a handful of jobs, their states and their output."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from hpcbatch.client import Client
from hpcbatch.localcluster import LocalCluster

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="demo", description="Run the hpcbatch demo on a local cluster.")
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--down", action="store_true", help="stop the cluster when the demo ends")
    args = parser.parse_args(argv)
    console = Console()
    cluster = LocalCluster()
    status = cluster.status()
    if status.running:
        console.print(f"[bold]Using the local cluster already running at {cluster.endpoint}[/]")
    else:
        console.print(f"[bold]Starting a local cluster: 1 head + {args.nodes} agents on loopback ...[/]")
        cluster.up(nodes=args.nodes)
    assert cluster.endpoint is not None
    client = Client(cluster.endpoint)
    try:
        nodes = client.list_nodes()["nodes"]
        console.print(f"head {cluster.endpoint}; nodes: {', '.join(n['name'] + ' ' + n['state'] for n in nodes)}")
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
        console.print(f"submitted {len(jobs)} jobs; waiting for them to finish ...")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            details = client.describe_jobs(jobs=list(jobs.values()))["jobs"]
            if all(d["status"] in ("SUCCEEDED", "FAILED") for d in details):
                break
            time.sleep(0.2)
        table = Table(title="Jobs")
        for col in ("name", "job id", "status", "attempts", "node", "exit", "reason"):
            table.add_column(col)
        for d in client.describe_jobs(jobs=list(jobs.values()))["jobs"]:
            c = d.get("container", {})
            table.add_row(
                d["jobName"], d["jobId"], d["status"], str(len(d["attempts"])), d.get("nodeName", "-"),
                str(c.get("exitCode", "-")),
                c.get("reason") or (d.get("statusReason", "") if d["status"] == "FAILED" else ""),
            )
        console.print(table)
        for d in client.describe_jobs(jobs=list(jobs.values()))["jobs"]:
            for i in range(len(d["attempts"])):
                out = client.get_job_logs(d["jobId"], attempt=i)["data"].rstrip()
                if out:
                    console.print(f"[bold]{d['jobName']}[/] attempt {i + 1} output:\n{out}")
        console.print(
            "\nTry it yourself:  [bold]source .venv/bin/activate; export HPCBATCH_HOME=$PWD/.hpcbatch[/]\n"
            "  hpcbatch submit -- echo hi      hpcbatch list      hpcbatch logs JOBID      hpcbatch nodes list\n"
            "Stop the cluster: hpcbatch cluster down"
        )
    finally:
        client.close()
        if args.down:
            cluster.down()
            console.print("cluster stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
