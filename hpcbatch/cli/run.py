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
import subprocess
import sys
import threading
import time
from typing import Any

import click

from hpcbatch.cli.common import get_client, global_options
from hpcbatch.cli.submit import build_submit_body, job_name_from
from hpcbatch.client import Client
from hpcbatch.errors import HpcbatchError

CALLBACK_VARIABLE = "HPCBATCH_CALLBACK_ADDRESS"
CONNECT_TIMEOUT_S = 30.0
SHELL_LINE = 'exec "$(command -v bash || echo /bin/sh)" -i'
_FINAL = ("SUCCEEDED", "FAILED")


def _in_job() -> bool:
    return bool(os.environ.get("HPCBATCH_RUN") and os.environ.get("HPCBATCH_LAUNCH_SECRET"))


def callback_address(client: Client) -> str:
    """The address of this machine that the cluster's nodes reach (the route to one of them)."""
    chosen = os.environ.get(CALLBACK_VARIABLE)
    if chosen:
        return chosen
    for node in client.all_nodes():
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


class JobShape:
    """What the user asked the job to be, less its command: the options shared by run and alloc."""

    def __init__(self, client: Client, nodes: int, **options: Any) -> None:
        self.client, self.nodes, self.options = client, nodes, options

    def body(self, command: list[str], env: dict[str, str], script: bytes | None = None) -> dict[str, Any]:
        """A SubmitJob body: a gang of ``nodes`` (command on the main node), or one plain job.

        A 1-node job is a plain one (no launcher bridge): what would come from the job's
        ``$HPCBATCH_RUN`` comes as its uploaded script instead.
        """
        script_id = self.client.put_script(script) if script is not None else None
        return build_submit_body(job_definition=None, command=command, env={**_exported(), **env},
                                 nodes=self.nodes if self.nodes > 1 else None, script_id=script_id,
                                 **self.options)


def _exported() -> dict[str, str]:
    """srun and salloc export the caller's environment; hpcbatch exports PATH, so `run --
    torchrun` finds the same torchrun on a shared filesystem (the rest stays the job's)."""
    return {"PATH": os.environ["PATH"]} if os.environ.get("PATH") else {}


def _taskstream_script() -> bytes:
    from node_agent import launcher, taskstream

    return launcher.script_text(taskstream.__file__).encode()


def _exit_code(job: dict[str, Any]) -> int:
    code = (job.get("container") or {}).get("exitCode")
    if isinstance(code, int):
        return code
    if job.get("status") != "SUCCEEDED":
        click.echo(f"hpcbatch: job {job.get('jobId')} {job.get('status')}: {job.get('statusReason') or ''}".rstrip(),
                   err=True)
        return 1
    return 0


def _follow(client: Client, job_id: str, label: str, stop: threading.Event) -> None:
    """Print the (main node's) output as it comes, each line after ``label``, until complete."""
    offset, attempt, partial = 0, None, ""
    while True:
        page = client.get_job_logs(job_id, attempt=attempt, startFromOffset=offset)
        data = page.get("data") or ""
        if data and label:
            lines = (partial + data).split("\n")
            partial = lines.pop()
            data = "".join(f"{label}: {line}\n" for line in lines)
        if data:
            sys.stdout.write(data)
            sys.stdout.flush()
        offset = int(page.get("nextOffset", offset))
        if attempt is None and page.get("attempt") is not None:
            attempt = int(page["attempt"])
        if page.get("complete") or (stop.is_set() and not page.get("data")):
            if partial:
                sys.stdout.write(f"{label}: {partial}\n")
            return
        if not page.get("data"):
            time.sleep(0.2)


def _submit_and_stream(client: Client, body: dict[str, Any], gang: bool) -> int:
    job_id = str(client.submit_job(**body)["jobId"])
    stop = threading.Event()
    job: dict[str, Any] = {}
    try:
        job = _wait_started_or_final(client, job_id)
        if job.get("status") not in _FINAL or job.get("startedAt"):
            # A gang's main node prints labelled lines already; a 1-node job's get its node's name.
            source, label = (f"{job_id}#0", "") if gang else (job_id, str(job.get("nodeName") or "node"))
            follower = threading.Thread(target=_follow, args=(client, source, label, stop), daemon=True)
            follower.start()
            job = client.wait_jobs([job_id], timeout=None, poll=0.5)[job_id]
            stop.set()
            follower.join(timeout=10)
    except KeyboardInterrupt:
        client.terminate_job(jobId=job_id, reason="hpcbatch run interrupted (Ctrl-C)")
        click.echo(f"hpcbatch: job {job_id} terminated", err=True)
        return 130
    return _exit_code(job)


def _wait_started_or_final(client: Client, job_id: str) -> dict[str, Any]:
    said: list[str] = []
    while True:
        job = client.describe_jobs(jobs=[job_id])["jobs"][0]
        if job.get("status") in ("RUNNING", *_FINAL):
            return job
        _say_waiting(job, said)
        time.sleep(0.2)


def _say_waiting(job: dict[str, Any], said: list[str]) -> None:
    """One line on stderr each time the reason a job waits changes (never leave one guessing)."""
    reason = job.get("statusReason")
    if reason and (not said or said[-1] != reason):
        said.append(reason)
        click.echo(f"hpcbatch: job {job.get('jobId')} {job.get('status')}: {reason}", err=True)


def _last_line(client: Client, job_id: str) -> str:
    """The last line a job printed (why its task could not connect back, say), or ""."""
    try:
        data = str(client.get_job_logs(job_id).get("data") or "")
    except HpcbatchError:
        return ""
    lines = [line for line in data.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def interactive(shape: JobShape, line: str) -> int:
    """Submit a job whose main node runs ``line`` in a pty connected back here; relay it."""
    from node_agent import taskstream

    client = shape.client
    session = taskstream.Session(callback_address(client))
    address = f"{session.address}:{session.port}"
    rows, cols = taskstream._terminal_size()  # noqa: SLF001 - the same module on both ends
    attach = ["--attach", address, "--label", "main", "--pty", f"{rows}x{cols}", "--", line]
    env = {**session.env(), "TERM": os.environ.get("TERM") or "xterm"}
    if shape.nodes > 1:
        body = shape.body(["/bin/sh", "-c", 'exec "$HPCBATCH_RUN" "$@"', "hpcbatch-run", *attach], env)
    else:
        body = shape.body(attach, env, script=_taskstream_script())
    job_id = str(client.submit_job(**body)["jobId"])
    click.echo(f"hpcbatch: job {job_id}: waiting for {shape.nodes} node(s)", err=True)
    state: dict[str, Any] = {"checked": 0.0, "final": None}
    said: list[str] = []

    def ended() -> tuple[int | None, str | None] | None:
        now = time.monotonic()
        if state["final"] is None and now - state["checked"] >= 0.5:
            state["checked"] = now
            job = client.describe_jobs(jobs=[job_id])["jobs"][0]
            if job.get("status") not in ("RUNNING", *_FINAL):
                _say_waiting(job, said)
            if job.get("status") in _FINAL:
                why = f"job {job_id} {job['status']}: {job.get('statusReason') or ''}"
                last = _last_line(client, f"{job_id}#0" if shape.nodes > 1 else job_id)
                state["final"] = (None, f"{why} ({last})" if last else why)
        return state["final"]

    try:
        code = taskstream.pty_loop(session, None, ended)
    finally:
        # The shell's end ends the job by itself (it was the main node's command): give it a
        # moment, so a shell that exited 0 leaves a SUCCEEDED job; else (interrupted) end it.
        deadline = time.monotonic() + (10.0 if session.codes else 0.0)
        while True:
            job = client.describe_jobs(jobs=[job_id])["jobs"][0]
            if job.get("status") in _FINAL or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        if job.get("status") not in _FINAL:
            client.terminate_job(jobId=job_id, reason="the interactive session ended")
    click.echo(f"hpcbatch: job {job_id} ended", err=True)
    return code


def _node_index(client: Client, job: dict[str, Any], node: str | None) -> int:
    """``--node`` (a node name or an index) as the job's node index; the main node without it."""
    main = int((job.get("nodeProperties") or {}).get("mainNode", 0))
    if node is None:
        return main
    if node.isdigit():
        return int(node)
    count = int((job.get("nodeProperties") or {}).get("numNodes", 1))
    if count <= 1:
        names = [job.get("nodeName")]
    else:
        children = client.describe_jobs(jobs=[f"{job['jobId']}#{i}" for i in range(count)])["jobs"]
        names = [c.get("nodeName") for c in sorted(children, key=lambda c: c.get("nodeDetails", {}).get("nodeIndex", 0))]
    if node not in names:
        raise click.BadParameter(f"{node} is not one of job {job['jobId']}'s nodes ({', '.join(map(str, names))})",
                                 param_hint="--node")
    return names.index(node)


def attach_to_job(client: Client, job_id: str, node: str | None, line: str) -> int:
    """``run --pty --jobid``: a shell (``line``) in a running job's attempt on one node, here."""
    from node_agent import launcher, taskstream

    jobs = client.describe_jobs(jobs=[job_id])["jobs"]
    if not jobs:
        raise click.BadParameter(f"job {job_id} does not exist", param_hint="--jobid")
    job = jobs[0]
    if job.get("status") != "RUNNING":
        raise click.BadParameter(f"job {job_id} is {job.get('status')}, not RUNNING", param_hint="--jobid")
    index = _node_index(client, job, node)
    session = taskstream.Session(callback_address(client))
    address = f"{session.address}:{session.port}"
    rows, cols = taskstream._terminal_size()  # noqa: SLF001 - the same module on both ends
    # The job may hold no copy of the stream script (a 1-node job): it comes on stdin.
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else "python3"
    source = launcher.script_text(taskstream.__file__)
    marker = "HPCBATCH_TASKSTREAM_" + session.token[:8]
    env = {**session.env(), "TERM": os.environ.get("TERM") or "xterm"}
    command = (taskstream.attach_command(address, line, "attach", env, (rows, cols))
               .replace('exec "${HPCBATCH_RUN:-.hpcbatch-run}"', f"exec {python} -I -")
               + f" <<'{marker}'\n{source}\n{marker}\n")
    started = client.start_job_task(jobId=job_id, nodeIndex=index, command=command)
    click.echo(f"hpcbatch: attaching to job {job_id} on {started.get('nodeName')}", err=True)
    deadline = time.monotonic() + CONNECT_TIMEOUT_S

    def ended() -> tuple[int | None, str | None] | None:
        if time.monotonic() > deadline:
            return None, (f"the task on {started.get('nodeName')} did not connect back to {address} within "
                          f"{CONNECT_TIMEOUT_S:.0f} s (set {CALLBACK_VARIABLE} to an address the nodes reach)")
        return None

    return taskstream.pty_loop(session, None, ended)


def _run_here(line: str, pty: bool) -> int:
    """``hpcbatch run`` inside a 1-node job (no other node): the command on this node."""
    if pty:
        os.execv("/bin/sh", ["/bin/sh", "-c", line])
    label = socket.gethostname().encode()
    proc = subprocess.Popen(["/bin/sh", "-c", line], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    for chunk in proc.stdout:
        sys.stdout.buffer.write(label + b": " + chunk if chunk.endswith(b"\n") else label + b": " + chunk + b"\n")
        sys.stdout.buffer.flush()
    code = proc.wait()
    return 128 - code if code < 0 else code


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
@click.option("--node", metavar="NAME", help="With --pty: that node (name, or index with --jobid) [the main node].")
@click.option("--jobid", metavar="JOBID", help="With --pty: a shell in this running job of yours, from outside it.")
@resource_options
@global_options
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(  # noqa: PLR0913 - a click command: each option is a parameter
    nodes: int | None, ntasks_per_node: int, pty: bool, node: str | None, jobid: str | None, queue: str | None,
    name: str | None, vcpus: float | None, memory: int | None, gpus: int | None, timeout: int | None,
    command: tuple[str, ...]
) -> None:
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
    if jobid is not None:
        if not pty:
            raise click.UsageError("--jobid needs --pty (a shell in a running job)")
        sys.exit(attach_to_job(get_client(), jobid, node, " ".join(command)))
    if _in_job():
        script = os.environ["HPCBATCH_RUN"]
        sys.stdout.flush()
        chosen = ["--nodes", str(nodes)] if nodes is not None else []
        os.execv(script, [script, "--run", *chosen, *args, "--", *command])
    if os.environ.get("AWS_BATCH_JOB_ID") and not os.environ.get("HPCBATCH_LAUNCH_SECRET"):
        if (nodes or 1) > 1:
            raise click.UsageError(f"--nodes {nodes}: this job runs on one node")
        sys.exit(_run_here(" ".join(command), pty))
    client = get_client()
    shape = JobShape(client, nodes or 1, queue=queue, name=name or job_name_from(f"run-{command[0].split()[0]}"),
                     vcpus=vcpus, memory=memory, gpus=gpus, timeout=timeout)
    if pty:
        sys.exit(interactive(shape, " ".join(command)))
    if shape.nodes == 1 and ntasks_per_node > 1:
        raise click.UsageError("--ntasks-per-node needs a job of 2 or more nodes (--nodes N) outside a job")
    if shape.nodes > 1:
        body = shape.body(["/bin/sh", "-c", 'exec "$HPCBATCH_RUN" --run "$@"', "hpcbatch-run", *args, "--", *command],
                          {})
    else:
        body = shape.body(["/bin/sh", "-c", " ".join(command)], {})
    sys.exit(_submit_and_stream(client, body, gang=shape.nodes > 1))


@click.command(context_settings={"allow_interspersed_args": False})
@click.option("-N", "--nodes", type=click.IntRange(1, 1000), default=1, show_default=True, metavar="N",
              help="Nodes to hold.")
@resource_options
@global_options
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def alloc(  # noqa: PLR0913 - a click command: each option is a parameter
    nodes: int, queue: str | None, name: str | None, vcpus: float | None, memory: int | None,
    gpus: int | None, timeout: int | None, command: tuple[str, ...]
) -> None:
    """Hold nodes and open a shell with the job's environment there (salloc).

    \b
      hpcbatch alloc --nodes 2 --vcpus 4 --timeout 3600
      $ mpirun python mpi_examples/hello.py   # on exactly those nodes
      $ hpcbatch run -- hostname
      $ exit                                  # the allocation ends
    """
    if os.environ.get("AWS_BATCH_JOB_ID"):
        raise click.UsageError("already inside a job: use hpcbatch run there")
    shape = JobShape(get_client(), nodes, queue=queue, name=name or "alloc", vcpus=vcpus, memory=memory, gpus=gpus,
                     timeout=timeout)
    sys.exit(interactive(shape, " ".join(command) if command else SHELL_LINE))
