"""``hpcbatch submit``: one job from a command line or a script, no job definition needed.

The quick form submits against the head's built-in ``hpcbatch-default`` job definition and
puts the command and resources into ``containerOverrides``, as ``aws batch submit-job``
would. This is the hot path (one process per job in scripts and benchmarks): it imports
nothing beyond click and the standard library.
"""

from __future__ import annotations

import os
from typing import Any

import click

from hpcbatch.cli.common import (
    cli_input_json_option,
    get_client,
    global_options,
    json_output,
    load_cli_input_json,
    parse_key_values,
    print_json,
    require,
)
from hpcbatch.jobspec import (
    DEFAULT_JOB_DEFINITION,
    DEFAULT_MULTINODE_DEFINITION,
    SubmitRequest,
    has_command,
    job_name_from,
    submit_job_body,
)

__all__ = ["build_submit_body", "has_command", "job_name_from", "script_directives", "submit"]

DIRECTIVE_PREFIX = "#HPCBATCH"


def build_submit_body(*, base: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """The SubmitJob body for the quick form (``fields``: :class:`SubmitRequest`'s), merged over ``base``."""
    return submit_job_body(SubmitRequest(**fields), base)


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


def _check_signal(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """--signal SIG@SECONDS, checked here so the error names the flag (hpcbatch.model.interrupts)."""
    from hpcbatch.model.interrupts import parse_signal

    if value is None:
        return None
    try:
        return str(parse_signal(value))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _signal_fits(signal: str | None, timeout: int | None) -> None:
    from hpcbatch.model.interrupts import signal_error

    problem = signal_error(signal, timeout) if signal is not None else None
    if problem is not None:
        raise click.BadParameter(problem, param_hint="--signal")


_signal = click.option(
    "--signal", metavar="SIG@SECONDS", callback=_check_signal,
    help="Send SIG (e.g. USR1) SECONDS before the timeout, and when the job is preempted, so it can "
    "checkpoint (Slurm's --signal; tag hpcbatch:signal).",
)
_DIRECTIVE_OPTIONS = (_queue, _name, _nodes, _vcpus, _memory, _gpus, _timeout, _retries, _depends_on, _array_size,
                      _signal)
DIRECTIVE_NAMES = ("queue", "name", "nodes", "vcpus", "memory", "gpus", "timeout", "retries", "depends_on", "array_size",
                   "signal")


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


def _read_script(script: str) -> bytes:
    try:
        with open(script, "rb") as f:
            return f.read()
    except OSError as e:
        raise click.BadParameter(e.strerror or str(e), param_hint="--script") from None


def _with_directives(options: dict[str, Any], text: bytes, script: str) -> dict[str, Any]:
    """``options`` with the script's #HPCBATCH lines filling what the command line did not give."""
    ctx = click.get_current_context()
    given = script_directives(text.decode("utf-8", "replace"), script)
    commandline = click.core.ParameterSource.COMMANDLINE
    return {
        key: given[key] if key in given and ctx.get_parameter_source(key) is not commandline else value
        for key, value in options.items()
    }


def _directories(chdir: str | None) -> tuple[str | None, str | None]:
    """This directory (None if it is gone), and ``--chdir`` made absolute against it."""
    try:
        submit_dir: str | None = os.getcwd()
    except OSError:  # the directory was removed under the shell: the job starts in its work dir
        submit_dir = None
    if chdir is None:
        return submit_dir, None
    if "\0" in chdir:
        raise click.BadParameter("must not contain a NUL byte", param_hint="--chdir")
    if not os.path.isabs(chdir):
        if submit_dir is None:
            raise click.BadParameter(f"{chdir} is relative and this directory is gone", param_hint="--chdir")
        chdir = os.path.join(submit_dir, chdir)
    return submit_dir, os.path.normpath(chdir)


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
@_signal
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
def submit(  # noqa: PLR0913 - a click command: each option is a parameter, by click's design
    queue: str | None,
    name: str | None,
    job_definition: str | None,
    nodes: int | None,
    vcpus: float | None,
    memory: int | None,
    gpus: int | None,
    timeout: int | None,
    retries: int | None,
    signal: str | None,
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
    options: dict[str, Any] = dict(
        queue=queue, name=name, nodes=nodes, vcpus=vcpus, memory=memory, gpus=gpus, timeout=timeout,
        retries=retries, depends_on=depends_on, array_size=array_size, signal=signal,
    )
    text = _read_script(script) if script is not None else b""
    if script is not None:
        options = _with_directives(options, text, script)
    _signal_fits(options.get("signal"), options.get("timeout"))
    submit_dir, chdir = _directories(chdir)
    client = get_client()
    script_id = client.put_script(text) if script is not None else None
    request = SubmitRequest(
        **options, job_definition=job_definition, command=list(command),
        env=parse_key_values(env, "--env", from_env=True), max_running=max_running, share=share,
        priority=priority, allow_unsatisfiable=allow_unsatisfiable, script_id=script_id, script_name=script,
        submit_dir=submit_dir, chdir=chdir,
    )
    body = submit_job_body(request, base)
    if (
        body.get("jobDefinition") in (DEFAULT_JOB_DEFINITION, DEFAULT_MULTINODE_DEFINITION)
        and not command
        and script_id is None
        and not has_command(body)
    ):
        raise click.UsageError(
            "nothing to run: give a command after --, --script FILE, or -d JOBDEF"
        )
    require(body, "jobName", "jobQueue", "jobDefinition")
    answer = client.submit_job(**body)
    if json_output():
        print_json(answer)
    else:
        click.echo(answer.get("jobId", ""))
