"""``hpcbatch submit``: one job from a command line or a script, no job definition needed.

The quick form submits against the head's built-in ``hpcbatch-default`` job definition and
puts the command and resources into ``containerOverrides``, as ``aws batch submit-job``
would. This is the hot path (one process per job in scripts and benchmarks): it imports
nothing beyond click and the standard library.
"""

from __future__ import annotations

import os
import re
from typing import Any

import click

from hpcbatch.cli.common import (
    cli_input_json_option,
    get_client,
    global_options,
    json_output,
    load_cli_input_json,
    merge_body,
    parse_key_values,
    print_json,
    require,
    resource_requirements,
)

DEFAULT_JOB_DEFINITION = "hpcbatch-default"
DEFAULT_MULTINODE_DEFINITION = "hpcbatch-default-mnp"
SCRIPT_ID_VARIABLE = "HPCBATCH_SCRIPT_ID"
# hpcbatch extensions the agent reads (node_agent.runner): where the job starts. The submit
# directory is used when the owner can enter it on the node (Slurm's SLURM_SUBMIT_DIR and
# default working directory); --chdir names another.
SUBMIT_DIR_VARIABLE = "HPCBATCH_SUBMIT_DIR"
CHDIR_VARIABLE = "HPCBATCH_CHDIR"
DIRECTIVE_PREFIX = "#HPCBATCH"


def job_name_from(text: str) -> str:
    """A legal AWS job name (letters, digits, ``-``, ``_``; alphanumeric first; ≤128).

    >>> job_name_from("/usr/bin/python3.11")
    'python3_11'
    >>> job_name_from("--weird")
    'weird'
    """
    name = re.sub(r"[^A-Za-z0-9_-]", "_", os.path.basename(text.rstrip("/")))
    name = re.sub(r"^[^A-Za-z0-9]+", "", name)[:128]
    return name or "job"


def _dependency(text: str) -> dict[str, str]:
    """``ID``, ``ID:N_TO_N`` or ``SEQUENTIAL`` -> an AWS JobDependency."""
    if text.upper() == "SEQUENTIAL":
        return {"type": "SEQUENTIAL"}
    job_id, sep, kind = text.rpartition(":")
    if sep and kind.upper() in ("N_TO_N", "SEQUENTIAL"):
        return {"jobId": job_id, "type": kind.upper()}
    return {"jobId": text}


def has_command(body: dict[str, Any]) -> bool:
    """Whether a SubmitJob body names a command itself (its overrides, or per-node ranges)."""
    if (body.get("containerOverrides") or {}).get("command"):
        return True
    ranges = (body.get("nodeOverrides") or {}).get("nodePropertyOverrides") or []
    return any(isinstance(r, dict) and (r.get("containerOverrides") or {}).get("command") for r in ranges)


def build_submit_body(
    *,
    queue: str | None,
    name: str | None,
    job_definition: str | None,
    command: list[str],
    vcpus: float | None = None,
    memory: int | None = None,
    gpus: int | None = None,
    timeout: int | None = None,
    retries: int | None = None,
    env: dict[str, str] | None = None,
    depends_on: list[str] | None = None,
    array_size: int | None = None,
    script_id: str | None = None,
    script_name: str | None = None,
    base: dict[str, Any] | None = None,
    nodes: int | None = None,
    max_running: int | None = None,
    submit_dir: str | None = None,
    chdir: str | None = None,
) -> dict[str, Any]:
    """The SubmitJob body for the quick form, merged over ``base`` (``--cli-input-json``)."""
    base = base or {}
    overrides: dict[str, Any] = {}
    if command or script_id:
        overrides["command"] = list(command)
    requirements = resource_requirements(vcpus, memory, gpus)
    if requirements:
        overrides["resourceRequirements"] = requirements
    environment = dict(env or {})
    # Where the job starts (the agent decides on the node): after the user's own -e values.
    # (Not into a multi-node body given whole by --cli-input-json: its nodes take their
    # environment from its own node ranges, and containerOverrides would be refused.)
    if submit_dir is not None and not (nodes is None and base.get("nodeOverrides")):
        environment.setdefault(SUBMIT_DIR_VARIABLE, submit_dir)
    if chdir is not None:
        environment.setdefault(CHDIR_VARIABLE, chdir)
    if script_id:
        environment[SCRIPT_ID_VARIABLE] = script_id
    if environment:
        overrides["environment"] = [{"name": k, "value": v} for k, v in environment.items()]

    default_jd = DEFAULT_MULTINODE_DEFINITION if nodes is not None else DEFAULT_JOB_DEFINITION
    jd = job_definition or base.get("jobDefinition") or default_jd
    if name is None and not base.get("jobName"):
        if script_name:
            name = job_name_from(os.path.splitext(os.path.basename(script_name))[0])
        elif command:
            name = job_name_from(command[0])
        else:
            name = job_name_from(jd.rsplit("/", 1)[-1].split(":", 1)[0])
    node_overrides = None
    if nodes is not None:
        # A multi-node job: the command (or script) runs on the main node (0) only, as
        # sbatch runs a batch script once; every node gets the resources and environment,
        # and the others are held for mpirun's daemons and `hpcbatch run`.
        per_node = {k: v for k, v in overrides.items() if k != "command"}
        if script_id and "environment" in per_node:
            others = [e for e in per_node["environment"] if e["name"] != SCRIPT_ID_VARIABLE]
            per_node = {k: v for k, v in per_node.items() if k != "environment"}
            if others:
                per_node["environment"] = others
        ranges = [{"targetNodes": "0", "containerOverrides": overrides}] if overrides else []
        if nodes > 1 and per_node:
            ranges.append({"targetNodes": "1:", "containerOverrides": per_node})
        node_overrides = {"numNodes": nodes, **({"nodePropertyOverrides": ranges} if ranges else {})}
        overrides = {}
    explicit: dict[str, Any] = {
        "jobName": name,
        "jobQueue": queue or (None if base.get("jobQueue") else "default"),
        "jobDefinition": jd,
        "containerOverrides": overrides or None,
        "nodeOverrides": node_overrides,
        "timeout": {"attemptDurationSeconds": timeout} if timeout is not None else None,
        "retryStrategy": {"attempts": retries} if retries is not None else None,
        "dependsOn": [_dependency(j) for j in depends_on] if depends_on else None,
        "arrayProperties": {"size": array_size} if array_size is not None else None,
        # hpcbatch extension: at most N children of the array at once (Slurm's %N).
        "tags": {"hpcbatch:maxRunning": str(max_running)} if max_running is not None else None,
    }
    return merge_body(base, explicit)


# The options a script's #HPCBATCH lines may also set (as #SBATCH lines do), one definition
# for both: the command line and the directives parse and check them alike.
_queue = click.option("-q", "--queue", metavar="QUEUE", help="Job queue [default: default].")
_name = click.option(
    "-n", "--name", metavar="NAME", help="Job name [default: from the command or script]."
)
_nodes = click.option(
    "--nodes", type=click.IntRange(1, 1000), metavar="N",
    help="A multi-node (MPI) job on N whole nodes; the command or script runs on the main node.",
)
_vcpus = click.option("--vcpus", type=click.FloatRange(min=0, min_open=True), help="vCPUs per attempt.")
_memory = click.option(
    "--memory", type=click.IntRange(min=1), metavar="MiB", help="Memory per attempt in MiB."
)
_gpus = click.option("--gpus", type=click.IntRange(min=0), help="Whole GPUs per attempt.")
_timeout = click.option(
    "--timeout", type=click.IntRange(min=1), metavar="S", help="Seconds per attempt (not retried)."
)
_retries = click.option(
    "--retries",
    type=click.IntRange(1, 10),
    metavar="N",
    help="Attempts in all (retryStrategy.attempts).",
)
_depends_on = click.option(
    "--depends-on", multiple=True, metavar="JOBID[:N_TO_N]",
    help="Start after JOBID succeeds; JOBID:N_TO_N pairs array children; SEQUENTIAL runs this array in order.",
)
_array_size = click.option(
    "--array-size", type=click.IntRange(2, 10000), metavar="N", help="An array job of N children."
)
_DIRECTIVE_OPTIONS = (_queue, _name, _nodes, _vcpus, _memory, _gpus, _timeout, _retries, _depends_on, _array_size)
DIRECTIVE_NAMES = ("queue", "name", "nodes", "vcpus", "memory", "gpus", "timeout", "retries", "depends_on", "array_size")


def _directive_command() -> click.Command:
    command = click.Command("#HPCBATCH", callback=lambda **_: None, add_help_option=False)
    for option in _DIRECTIVE_OPTIONS:
        command = option(command)
    return command


def script_directives(text: str, script: str) -> dict[str, Any]:
    """The submit options of a script's ``#HPCBATCH`` lines, as sbatch reads ``#SBATCH``.

    They are read from the top of the script (after the ``#!`` line) up to the first line
    that is neither blank nor a comment; a later line wins over an earlier one, and
    ``--depends-on`` accumulates. A bad line is a usage error naming the script and line.
    """
    import shlex

    found: dict[str, Any] = {}
    command = _directive_command()
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            break  # the script proper begins: sbatch stops reading directives here too
        if not stripped.startswith(DIRECTIVE_PREFIX) or stripped[len(DIRECTIVE_PREFIX):][:1] not in ("", " ", "\t"):
            continue
        where = f"{script} line {number}: {stripped}"
        try:
            args = shlex.split(stripped[len(DIRECTIVE_PREFIX):], comments=True)
            ctx = command.make_context(DIRECTIVE_PREFIX, args)
        except ValueError as e:  # shlex: an unclosed quote
            raise click.UsageError(f"{where}: {e}") from None
        except click.NoSuchOption as e:
            allowed = ", ".join(f"--{n.replace('_', '-')}" for n in DIRECTIVE_NAMES)
            raise click.UsageError(f"{where}: {e.format_message()} #HPCBATCH lines take {allowed}") from None
        except click.ClickException as e:
            raise click.UsageError(f"{where}: {e.format_message()}") from None
        for key, value in ctx.params.items():
            if ctx.get_parameter_source(key) is not click.core.ParameterSource.COMMANDLINE:
                continue
            if key == "depends_on":
                found[key] = (*found.get(key, ()), *value)
            else:
                found[key] = value
    return found


@click.command(context_settings={"allow_interspersed_args": False})
@_queue
@_name
@click.option(
    "-d",
    "--job-definition",
    metavar="JD",
    help=f"name[:revision] [default: {DEFAULT_JOB_DEFINITION}].",
)
@_nodes
@_vcpus
@_memory
@_gpus
@_timeout
@_retries
@click.option(
    "-e", "--env", multiple=True, metavar="K=V", help="Environment variable; bare K copies $K."
)
@_depends_on
@click.option("--max-running", type=click.IntRange(min=1), metavar="N", help="At most N array children at once.")
@click.option("--share", metavar="ID", help="shareIdentifier: required on a fair-share queue, refused elsewhere.")
@click.option("--priority", type=click.IntRange(0, 9999), metavar="N",
              help="schedulingPriorityOverride: higher runs first inside its share.")
@_array_size
@click.option(
    "--script",
    type=click.Path(exists=True, dir_okay=False),
    metavar="FILE",
    help="Upload FILE and run it (once, on the main node); its #HPCBATCH lines set options; "
    "the arguments after -- become its arguments.",
)
@click.option(
    "--chdir", "-D", metavar="DIR",
    help="Start the job in DIR (relative: to this directory) [default: this directory where "
    "the node has it, else the job's private work dir].",
)
@click.option("--allow-unsatisfiable", is_flag=True,
              help="Queue the job even if no node set can hold it now (nodes to come); hpcbatch extension.")
@cli_input_json_option
@global_options
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def submit(
    queue: str | None,
    name: str | None,
    job_definition: str | None,
    nodes: int | None,
    vcpus: float | None,
    memory: int | None,
    gpus: int | None,
    timeout: int | None,
    retries: int | None,
    env: tuple[str, ...],
    depends_on: tuple[str, ...],
    max_running: int | None,
    share: str | None,
    priority: int | None,
    array_size: int | None,
    script: str | None,
    chdir: str | None,
    cli_input_json: str | None,
    command: tuple[str, ...],
    allow_unsatisfiable: bool = False,
) -> None:
    """Submit a job; print its id.

    \b
      hpcbatch submit -- hostname
      hpcbatch submit -q gpu --gpus 1 --vcpus 8 --memory 32000 -- python train.py
      hpcbatch submit --script run.sh -- input.dat      # uploads run.sh
      hpcbatch submit --nodes 4 --vcpus 2 -- mpirun python app.py
      hpcbatch submit --nodes 4 --script job.sh         # job.sh runs once, on node 0
      JOB=$(hpcbatch submit -- sleep 10); hpcbatch wait $JOB

    
    A script's #HPCBATCH lines at its top set options, as #SBATCH lines do
    (the command line wins):  #HPCBATCH --nodes 4 --vcpus 2 --timeout 600
    The job starts in this directory where its node has it (a shared filesystem).
    """
    base = load_cli_input_json(cli_input_json)
    script_id = None
    text = b""
    if script is not None:
        try:
            with open(script, "rb") as f:
                text = f.read()
        except OSError as e:
            raise click.BadParameter(e.strerror or str(e), param_hint="--script") from None
        ctx = click.get_current_context()
        given = script_directives(text.decode("utf-8", "replace"), script)
        chosen = {
            key: given[key] if key in given and ctx.get_parameter_source(key) is not click.core.ParameterSource.COMMANDLINE
            else value
            for key, value in dict(
                queue=queue, name=name, nodes=nodes, vcpus=vcpus, memory=memory, gpus=gpus, timeout=timeout,
                retries=retries, depends_on=depends_on, array_size=array_size,
            ).items()
        }
        queue, name, nodes, vcpus, memory, gpus = (chosen[k] for k in ("queue", "name", "nodes", "vcpus", "memory", "gpus"))
        timeout, retries, depends_on, array_size = (chosen[k] for k in ("timeout", "retries", "depends_on", "array_size"))
    try:
        submit_dir = os.getcwd()
    except OSError:  # the directory was removed under the shell: the job starts in its work dir
        submit_dir = None
    if chdir is not None:
        if "\0" in chdir:
            raise click.BadParameter("must not contain a NUL byte", param_hint="--chdir")
        if not os.path.isabs(chdir):
            if submit_dir is None:
                raise click.BadParameter(f"{chdir} is relative and this directory is gone", param_hint="--chdir")
            chdir = os.path.join(submit_dir, chdir)
        chdir = os.path.normpath(chdir)
    client = get_client()
    if script is not None:
        script_id = client.put_script(text)
    body = build_submit_body(
        queue=queue,
        name=name,
        job_definition=job_definition,
        command=list(command),
        vcpus=vcpus,
        memory=memory,
        gpus=gpus,
        timeout=timeout,
        retries=retries,
        env=parse_key_values(env, "--env", from_env=True),
        depends_on=list(depends_on),
        array_size=array_size,
        script_id=script_id,
        script_name=script,
        base=base,
        nodes=nodes,
        max_running=max_running,
        submit_dir=submit_dir,
        chdir=chdir,
    )
    if (
        body.get("jobDefinition") in (DEFAULT_JOB_DEFINITION, DEFAULT_MULTINODE_DEFINITION)
        and not command
        and script_id is None
        and not has_command(body)
    ):
        raise click.UsageError(
            "nothing to run: give a command after --, --script FILE, or -d JOBDEF"
        )
    if allow_unsatisfiable:  # the tag hpcbatch.scheduler.satisfy reads (issue 18)
        body["tags"] = {**(body.get("tags") or {}), "hpcbatch:allowUnsatisfiable": "true"}
    if share is not None:
        body["shareIdentifier"] = share
    if priority is not None:
        body["schedulingPriorityOverride"] = priority
    require(body, "jobName", "jobQueue", "jobDefinition")
    answer = client.submit_job(**body)
    if json_output():
        print_json(answer)
    else:
        click.echo(answer.get("jobId", ""))
