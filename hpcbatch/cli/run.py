"""``hpcbatch run`` (Slurm's srun) and ``hpcbatch alloc`` (salloc).

Inside a multi-node job, ``run`` hands over to the job's own copy of
node_agent/taskstream.py (``$HPCBATCH_RUN``), which starts the command on the job's nodes
through the agents' launcher bridge and prints each node's lines with its name in front.
Outside a job, ``run`` submits a multi-node job whose main node does exactly that, follows
its output and exits with its code. ``alloc`` (and ``run --pty`` outside a job) submits a job
whose main node connects back to this terminal and runs a shell there in a pseudo-terminal
with the job's environment: ``mpirun`` and ``hpcbatch run`` in it use the job's nodes; the
allocation ends when the shell exits or the connection drops.

The nodes connect back over TCP to this machine: the address this machine uses to reach
them (or ``HPCBATCH_CALLBACK_ADDRESS``), as mpirun's and torchrun's own daemons do.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from typing import Any

import click

from hpcbatch.cli.common import get_client, global_options
from hpcbatch.cli.submit import build_submit_body, job_name_from
from hpcbatch.client import Client

CALLBACK_VARIABLE = "HPCBATCH_CALLBACK_ADDRESS"
SHELL_LINE = 'exec "$(command -v bash || echo /bin/sh)" -i'
_FINAL = ("SUCCEEDED", "FAILED")


def _in_job() -> bool:
    return bool(os.environ.get("HPCBATCH_RUN") and os.environ.get("HPCBATCH_LAUNCH_SECRET"))


def callback_address(client: Client) -> str:
    """The address of this machine that the cluster's nodes reach (the route to one of them)."""
    chosen = os.environ.get(CALLBACK_VARIABLE)
    if chosen:
        return chosen
    for node in client.list_nodes().get("nodes", []):
        for address in node.get("addresses") or []:
            probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                probe.connect((address, 9))  # no packet is sent: this only picks the route
                return str(probe.getsockname()[0])
            except OSError:
                continue
            finally:
                probe.close()
    return "127.0.0.1"


def _job_body(nodes: int, command: list[str], *, queue: str | None, name: str | None, vcpus: float | None,
              memory: int | None, gpus: int | None, timeout: int | None,
              env: dict[str, str] | None = None) -> dict[str, Any]:
    return build_submit_body(queue=queue, name=name, job_definition=None, command=command, vcpus=vcpus,
                             memory=memory, gpus=gpus, timeout=timeout, env=env, nodes=nodes)


def _wait_final(client: Client, job_id: str) -> dict[str, Any]:
    return client.wait_jobs([job_id], timeout=None, poll=0.5)[job_id]


def _exit_code(job: dict[str, Any]) -> int:
    code = (job.get("container") or {}).get("exitCode")
    if isinstance(code, int):
        return code
    if job.get("status") != "SUCCEEDED":
        click.echo(f"hpcbatch: job {job.get('jobId')} {job.get('status')}: {job.get('statusReason') or ''}".rstrip(),
                   err=True)
        return 1
    return 0


def _follow(client: Client, job_id: str, stop: threading.Event) -> None:
    """Print the main node's output as it comes, until it is complete (or ``stop``)."""
    offset, attempt = 0, None
    while True:
        page = client.get_job_logs(f"{job_id}#0", attempt=attempt, startFromOffset=offset)
        data = page.get("data") or ""
        if data:
            sys.stdout.write(data)
            sys.stdout.flush()
        offset = int(page.get("nextOffset", offset))
        if attempt is None and page.get("attempt") is not None:
            attempt = int(page["attempt"])
        if page.get("complete") or (stop.is_set() and not data):
            return
        if not data:
            time.sleep(0.2)


def _submit_and_stream(client: Client, body: dict[str, Any]) -> int:
    job_id = str(client.submit_job(**body)["jobId"])
    stop = threading.Event()
    job: dict[str, Any] = {}
    try:
        job = _wait_started_or_final(client, job_id)
        if job.get("status") not in _FINAL or job.get("startedAt"):
            follower = threading.Thread(target=_follow, args=(client, job_id, stop), daemon=True)
            follower.start()
            job = _wait_final(client, job_id)
            stop.set()
            follower.join(timeout=10)
    except KeyboardInterrupt:
        client.terminate_job(jobId=job_id, reason="hpcbatch run interrupted (Ctrl-C)")
        click.echo(f"hpcbatch: job {job_id} terminated", err=True)
        return 130
    return _exit_code(job)


def _wait_started_or_final(client: Client, job_id: str) -> dict[str, Any]:
    while True:
        job = client.describe_jobs(jobs=[job_id])["jobs"][0]
        if job.get("status") in ("RUNNING", *_FINAL):
            return job
        time.sleep(0.2)


def interactive(client: Client, body_for: Any, *, nodes: int, line: str) -> int:
    """Submit a job whose main node runs ``line`` in a pty connected back here; relay it."""
    from node_agent import taskstream

    session = taskstream.Session()
    address = f"{callback_address(client)}:{session.port}"
    size = taskstream._terminal_size()  # noqa: SLF001 - the same module on both ends
    main = ["/bin/sh", "-c", taskstream.attach_command(address, line, "main", {}, size)]
    body = body_for(nodes, main, env=session.env())
    job_id = str(client.submit_job(**body)["jobId"])
    click.echo(f"hpcbatch: job {job_id}: waiting for {nodes} node(s)", err=True)
    state: dict[str, Any] = {}

    def ended() -> tuple[int | None, str | None] | None:
        now = time.monotonic()
        if now - state.get("checked", 0.0) < 0.5:
            return None
        state["checked"] = now
        job = client.describe_jobs(jobs=[job_id])["jobs"][0]
        if job.get("status") in _FINAL:
            return None, f"job {job_id} {job['status']}: {job.get('statusReason') or ''}"
        return None

    try:
        code = taskstream.pty_loop(session, None, ended)
    finally:
        job = client.describe_jobs(jobs=[job_id])["jobs"][0]
        if job.get("status") not in _FINAL:
            client.terminate_job(jobId=job_id, reason="the interactive session ended")
    click.echo(f"hpcbatch: job {job_id} ended", err=True)
    return code


_resource_options = [
    click.option("-q", "--queue", metavar="QUEUE", help="Job queue [default: default]."),
    click.option("-n", "--name", metavar="NAME", help="Job name."),
    click.option("--vcpus", type=click.FloatRange(min=0, min_open=True), help="vCPUs per node."),
    click.option("--memory", type=click.IntRange(min=1), metavar="MiB", help="Memory per node in MiB."),
    click.option("--gpus", type=click.IntRange(min=0), help="Whole GPUs per node."),
    click.option("--timeout", type=click.IntRange(min=1), metavar="S", help="Seconds the job may run."),
]


def resource_options(f: Any) -> Any:
    for option in reversed(_resource_options):
        f = option(f)
    return f


@click.command(context_settings={"allow_interspersed_args": False})
@click.option("-N", "--nodes", type=click.IntRange(1, 1000), metavar="N",
              help="Inside a job: the first N of its nodes [all]. Outside: a job of N nodes [1].")
@click.option("--ntasks-per-node", type=click.IntRange(1, 1024), default=1, metavar="K",
              help="K copies of the command per node (HPCBATCH_LOCAL_TASK tells them apart).")
@click.option("--pty", is_flag=True, help="An interactive terminal on one node (the main node).")
@click.option("--node", metavar="NAME", help="With --pty inside a job: that node instead of the main one.")
@resource_options
@global_options
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(nodes: int | None, ntasks_per_node: int, pty: bool, node: str | None, queue: str | None,
        name: str | None, vcpus: float | None, memory: int | None, gpus: int | None, timeout: int | None,
        command: tuple[str, ...]) -> None:
    """Run a command on every node of a job, each line labelled with its node (srun).

    \b
    Inside a job (a batch script, an alloc shell):
      hpcbatch run -- hostname
      hpcbatch run -- torchrun --nnodes '$NNODES' --node-rank '$NODE_RANK' ... train.py
    Outside a job it submits one, streams its output and exits with its code:
      hpcbatch run --nodes 2 --vcpus 1 -- hostname
    (PATH goes with it.) Like ssh, the words are joined for each node's shell: quote '$VARS' to expand them there.
    """
    args: list[str] = []  # for $HPCBATCH_RUN, less --nodes
    if ntasks_per_node != 1:
        args += ["--ntasks-per-node", str(ntasks_per_node)]
    if pty:
        args.append("--pty")
    if node is not None:
        args += ["--node", node]
    if _in_job():
        script = os.environ["HPCBATCH_RUN"]
        sys.stdout.flush()
        chosen = ["--nodes", str(nodes)] if nodes is not None else []
        os.execv(script, [script, "--run", *chosen, *args, "--", *command])
    client = get_client()

    def body_for(n: int, main: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
        return _job_body(n, main, queue=queue, name=name or job_name_from(f"run-{command[0].split()[0]}"),
                         vcpus=vcpus, memory=memory, gpus=gpus, timeout=timeout, env=env)

    if pty:
        sys.exit(interactive(client, body_for, nodes=nodes or 1, line=" ".join(command)))
    main = ["/bin/sh", "-c", 'exec "$HPCBATCH_RUN" --run "$@"', "hpcbatch-run", *args, "--", *command]
    # srun exports the caller's environment; hpcbatch exports PATH, so `run -- torchrun` finds
    # the same torchrun on a shared filesystem (the rest stays the job definition's).
    env = {"PATH": os.environ["PATH"]} if os.environ.get("PATH") else None
    sys.exit(_submit_and_stream(client, body_for(nodes or 1, main, env)))


@click.command(context_settings={"allow_interspersed_args": False})
@click.option("-N", "--nodes", type=click.IntRange(1, 1000), default=1, show_default=True, metavar="N",
              help="Nodes to hold.")
@resource_options
@global_options
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def alloc(nodes: int, queue: str | None, name: str | None, vcpus: float | None, memory: int | None,
          gpus: int | None, timeout: int | None, command: tuple[str, ...]) -> None:
    """Hold nodes and open a shell with the job's environment there (salloc).

    \b
      hpcbatch alloc --nodes 2 --vcpus 4 --timeout 3600
      $ mpirun python mpi_examples/hello.py   # on exactly those nodes
      $ hpcbatch run -- hostname
      $ exit                                  # the allocation ends
    """
    if _in_job():
        raise click.UsageError("already inside a job: use hpcbatch run there")
    client = get_client()

    def body_for(n: int, main: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
        return _job_body(n, main, queue=queue, name=name or "alloc", vcpus=vcpus, memory=memory, gpus=gpus,
                         timeout=timeout, env=env)

    line = " ".join(command) if command else SHELL_LINE
    sys.exit(interactive(client, body_for, nodes=nodes, line=line))
