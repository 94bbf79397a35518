"""Compute environments, job queues and job definitions: ``hpcbatch ce|queue|jobdef ...``.

Every command sends one AWS Batch operation. Options cover the common fields; anything else
goes in ``--cli-input-json`` (the AWS request body), which explicit options override.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from hpcbatch.cli.common import (
    cli_input_json_option,
    get_client,
    global_options,
    json_output,
    load_cli_input_json,
    parse_json_option,
    parse_key_values,
    print_json,
    require,
    resource_requirements,
    tags_option,
)
from hpcbatch.jobspec import merge_body

STATES = click.Choice(["ENABLED", "DISABLED"], case_sensitive=False)


def _send(method: str, body: dict[str, Any], done: str | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = getattr(get_client(), method)(**body)
    if json_output():
        print_json(answer)
    elif done:
        click.echo(done)
    return answer


def _describe(
    method: str,
    result_key: str,
    body: dict[str, Any],
    printer: Callable[[list[dict[str, Any]]], None],
) -> None:
    items = list(get_client().paginate(method, result_key, **body))
    if json_output():
        print_json({result_key: items})
    else:
        printer(items)


def _upper(value: str | None) -> str | None:
    return value.upper() if value else None


# -- compute environments ------------------------------------------------------------------


@click.group()
def ce() -> None:
    """Compute environments: groups of nodes that queues send jobs to."""


_ce_options = [
    click.option("--state", type=STATES, help="ENABLED accepts jobs; DISABLED does not."),
    click.option(
        "--unmanaged-vcpus", type=click.IntRange(min=0), help="unmanagedvCpus (fair share)."
    ),
    click.option(
        "--compute-resources", metavar="JSON", help="computeResources as JSON or file://path."
    ),
    click.option(
        "--service-role", metavar="ARN", help="serviceRole (accepted for AWS compatibility)."
    ),
]


def _with(options: list[Callable[[Any], Any]]) -> Callable[[Any], Any]:
    def decorate(f: Any) -> Any:
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


@ce.command("create")
@click.argument("name", required=False)
@click.option(
    "--type",
    "ce_type",
    type=click.Choice(["UNMANAGED", "MANAGED"], case_sensitive=False),
    help="[default: UNMANAGED]",
)
@_with(_ce_options)
@tags_option
@cli_input_json_option
@global_options
def ce_create(  # noqa: PLR0913 - a click command: each option is a parameter
    name: str | None,
    ce_type: str | None,
    state: str | None,
    unmanaged_vcpus: int | None,
    compute_resources: str | None,
    service_role: str | None,
    tags: tuple[str, ...],
    cli_input_json: str | None,
) -> None:
    """Create a compute environment (CreateComputeEnvironment)."""
    base = load_cli_input_json(cli_input_json)
    body = merge_body(
        base,
        {
            "computeEnvironmentName": name,
            "type": _upper(ce_type) or (None if base.get("type") else "UNMANAGED"),
            "state": _upper(state),
            "unmanagedvCpus": unmanaged_vcpus,
            "computeResources": parse_json_option(compute_resources, "--compute-resources"),
            "serviceRole": service_role,
            "tags": parse_key_values(tags, "--tag") or None,
        },
    )
    require(body, "computeEnvironmentName", hint="give NAME")
    _send(
        "create_compute_environment",
        body,
        f"created compute environment {body['computeEnvironmentName']}",
    )


@ce.command("update")
@click.argument("name", required=False)
@_with(_ce_options)
@cli_input_json_option
@global_options
def ce_update(
    name: str | None,
    state: str | None,
    unmanaged_vcpus: int | None,
    compute_resources: str | None,
    service_role: str | None,
    cli_input_json: str | None,
) -> None:
    """Change a compute environment (UpdateComputeEnvironment)."""
    body = merge_body(
        load_cli_input_json(cli_input_json),
        {
            "computeEnvironment": name,
            "state": _upper(state),
            "unmanagedvCpus": unmanaged_vcpus,
            "computeResources": parse_json_option(compute_resources, "--compute-resources"),
            "serviceRole": service_role,
        },
    )
    require(body, "computeEnvironment", hint="give NAME")
    _send(
        "update_compute_environment",
        body,
        f"updated compute environment {body['computeEnvironment']}",
    )


@ce.command("describe")
@click.argument("names", nargs=-1)
@cli_input_json_option
@global_options
def ce_describe(names: tuple[str, ...], cli_input_json: str | None) -> None:
    """Show compute environments, all of them or those named (DescribeComputeEnvironments)."""
    from hpcbatch.cli.output import print_compute_environments

    body = merge_body(
        load_cli_input_json(cli_input_json), {"computeEnvironments": list(names) or None}
    )
    _describe(
        "describe_compute_environments", "computeEnvironments", body, print_compute_environments
    )


@ce.command("delete")
@click.argument("name", required=False)
@cli_input_json_option
@global_options
def ce_delete(name: str | None, cli_input_json: str | None) -> None:
    """Delete a compute environment; disable it first (DeleteComputeEnvironment)."""
    body = merge_body(load_cli_input_json(cli_input_json), {"computeEnvironment": name})
    require(body, "computeEnvironment", hint="give NAME")
    _send(
        "delete_compute_environment",
        body,
        f"deleted compute environment {body['computeEnvironment']}",
    )


# -- job queues ----------------------------------------------------------------------------


@click.group()
def queue() -> None:
    """Job queues: where jobs wait, in priority order, for their compute environments."""


def _ce_order(ces: tuple[str, ...], order_json: str | None) -> Any:
    """``--ce a --ce b`` -> computeEnvironmentOrder [{order 1, a}, {order 2, b}]."""
    if order_json is not None:
        return parse_json_option(order_json, "--compute-environment-order")
    if not ces:
        return None
    return [{"order": i, "computeEnvironment": name} for i, name in enumerate(ces, 1)]


_queue_options = [
    click.option(
        "--priority",
        type=click.IntRange(min=0),
        help="Higher runs first among queues sharing a CE.",
    ),
    click.option("--state", type=STATES, help="ENABLED accepts jobs; DISABLED does not."),
    click.option(
        "--ce",
        "ces",
        multiple=True,
        metavar="CE",
        help="Compute environment, in order (repeatable).",
    ),
    click.option(
        "--compute-environment-order", metavar="JSON", help="computeEnvironmentOrder as JSON."
    ),
    click.option("--scheduling-policy-arn", metavar="ARN", help="Fair-share scheduling policy."),
    click.option(
        "--cancel-after", "cancel_after", multiple=True, metavar="REASON=SECONDS",
        help="jobStateTimeLimitActions: cancel the job at the head of the queue after SECONDS "
        "RUNNABLE with REASON (e.g. CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY=14400). Repeatable.",
    ),
]


_preempt_options = [
    click.option(
        "--preempts/--no-preempts", default=None,
        help="Its waiting jobs may stop running jobs of lower-priority --preemptible queues "
        "(tag hpcbatch:preempts; docs/scheduling.md).",
    ),
    click.option(
        "--preemptible/--no-preemptible", default=None,
        help="Its running jobs may be stopped (SIGTERM, a grace, SIGKILL) and requeued for a "
        "higher-priority --preempts queue (tag hpcbatch:preemptible).",
    ),
]


def _preempt_tags(preempts: bool | None, preemptible: bool | None) -> dict[str, str]:
    """--preempts/--preemptible as the queue tags that carry them (hpcbatch.model.interrupts)."""
    from hpcbatch.model.interrupts import PREEMPTIBLE_TAG, PREEMPTS_TAG

    tags = {}
    if preempts is not None:
        tags[PREEMPTS_TAG] = str(preempts).lower()
    if preemptible is not None:
        tags[PREEMPTIBLE_TAG] = str(preemptible).lower()
    return tags


def _time_limits(cancel_after: tuple[str, ...]) -> list[dict[str, Any]] | None:
    out = []
    for item in cancel_after:
        reason, eq, seconds = item.rpartition("=")
        if not eq or not reason or not seconds.isdigit():
            raise click.BadParameter(f"{item!r}: expected REASON=SECONDS", param_hint="--cancel-after")
        out.append({"reason": reason, "state": "RUNNABLE", "maxTimeSeconds": int(seconds), "action": "CANCEL"})
    return out or None


@queue.command("create")
@click.argument("name", required=False)
@_with(_queue_options)
@_with(_preempt_options)
@tags_option
@cli_input_json_option
@global_options
def queue_create(  # noqa: PLR0913 - a click command: each option is a parameter
    name: str | None,
    priority: int | None,
    state: str | None,
    ces: tuple[str, ...],
    compute_environment_order: str | None,
    scheduling_policy_arn: str | None,
    cancel_after: tuple[str, ...],
    preempts: bool | None,
    preemptible: bool | None,
    tags: tuple[str, ...],
    cli_input_json: str | None,
) -> None:
    """Create a job queue (CreateJobQueue)."""
    base = load_cli_input_json(cli_input_json)
    body = merge_body(
        base,
        {
            "jobQueueName": name,
            "priority": priority if priority is not None else (None if "priority" in base else 1),
            "state": _upper(state),
            "computeEnvironmentOrder": _ce_order(ces, compute_environment_order),
            "schedulingPolicyArn": scheduling_policy_arn,
            "jobStateTimeLimitActions": _time_limits(cancel_after),
            "tags": {**parse_key_values(tags, "--tag"), **_preempt_tags(preempts, preemptible)} or None,
        },
    )
    require(body, "jobQueueName", hint="give NAME")
    require(body, "computeEnvironmentOrder", hint="give --ce CE")
    _send("create_job_queue", body, f"created job queue {body['jobQueueName']}")


@queue.command("update")
@click.argument("name", required=False)
@_with(_queue_options)
@_with(_preempt_options)
@cli_input_json_option
@global_options
def queue_update(  # noqa: PLR0913 - a click command: each option is a parameter
    name: str | None,
    priority: int | None,
    state: str | None,
    ces: tuple[str, ...],
    compute_environment_order: str | None,
    scheduling_policy_arn: str | None,
    cancel_after: tuple[str, ...],
    preempts: bool | None,
    preemptible: bool | None,
    cli_input_json: str | None,
) -> None:
    """Change a job queue (UpdateJobQueue; --preempts/--preemptible: TagResource first)."""
    body = merge_body(
        load_cli_input_json(cli_input_json),
        {
            "jobQueue": name,
            "priority": priority,
            "state": _upper(state),
            "computeEnvironmentOrder": _ce_order(ces, compute_environment_order),
            "schedulingPolicyArn": scheduling_policy_arn,
            "jobStateTimeLimitActions": _time_limits(cancel_after),
        },
    )
    require(body, "jobQueue", hint="give NAME")
    settings = _preempt_tags(preempts, preemptible)
    if settings:  # UpdateJobQueue takes no tags: tag it, then the update makes the head read them
        found = get_client().describe_job_queues(jobQueues=[body["jobQueue"]]).get("jobQueues") or []
        if not found:
            raise click.ClickException(f"job queue {body['jobQueue']} does not exist")
        get_client().tag_resource(resourceArn=found[0]["jobQueueArn"], tags=settings)
    _send("update_job_queue", body, f"updated job queue {body['jobQueue']}")


@queue.command("describe")
@click.argument("names", nargs=-1)
@cli_input_json_option
@global_options
def queue_describe(names: tuple[str, ...], cli_input_json: str | None) -> None:
    """Show job queues, all of them or those named (DescribeJobQueues)."""
    from hpcbatch.cli.output import print_job_queues

    body = merge_body(load_cli_input_json(cli_input_json), {"jobQueues": list(names) or None})
    _describe("describe_job_queues", "jobQueues", body, print_job_queues)


@queue.command("delete")
@click.argument("name", required=False)
@cli_input_json_option
@global_options
def queue_delete(name: str | None, cli_input_json: str | None) -> None:
    """Delete a job queue; disable it first (DeleteJobQueue)."""
    body = merge_body(load_cli_input_json(cli_input_json), {"jobQueue": name})
    require(body, "jobQueue", hint="give NAME")
    _send("delete_job_queue", body, f"deleted job queue {body['jobQueue']}")


# -- job definitions -----------------------------------------------------------------------


@click.group()
def jobdef() -> None:
    """Job definitions: reusable job templates, versioned as name:revision."""


@jobdef.command("register")
@click.option(
    "--type", "jd_type", type=click.Choice(["container", "multinode"]), help="[default: container]"
)
@click.option("--image", metavar="IMAGE", help="Container image (none: run on the node directly).")
@click.option("--vcpus", type=click.FloatRange(min=0, min_open=True), help="vCPUs per attempt.")
@click.option(
    "--memory", type=click.IntRange(min=1), metavar="MiB", help="Memory per attempt in MiB."
)
@click.option("--gpus", type=click.IntRange(min=0), help="Whole GPUs per attempt.")
@click.option(
    "-e", "--env", multiple=True, metavar="K=V", help="Environment variable (repeatable)."
)
@click.option("--timeout", type=click.IntRange(min=1), metavar="S", help="Seconds per attempt.")
@click.option("--retries", type=click.IntRange(1, 10), metavar="N", help="Attempts in all.")
@click.option(
    "--parameter",
    "parameters",
    multiple=True,
    metavar="K=V",
    help="Default for Ref::K in the command.",
)
@click.option(
    "--container-properties", metavar="JSON", help="containerProperties as JSON or file://path."
)
@click.option(
    "--node-properties", metavar="JSON", help="nodeProperties (multi-node) as JSON or file://path."
)
@tags_option
@cli_input_json_option
@global_options
@click.argument("name", required=False)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def jobdef_register(  # noqa: PLR0913 - a click command: each option is a parameter
    jd_type: str | None,
    image: str | None,
    vcpus: float | None,
    memory: int | None,
    gpus: int | None,
    env: tuple[str, ...],
    timeout: int | None,
    retries: int | None,
    parameters: tuple[str, ...],
    container_properties: str | None,
    node_properties: str | None,
    tags: tuple[str, ...],
    cli_input_json: str | None,
    name: str | None,
    command: tuple[str, ...],
) -> None:
    """Register a job definition: NAME -- COMMAND... (RegisterJobDefinition)."""
    base = load_cli_input_json(cli_input_json)
    requirements = resource_requirements(vcpus, memory, gpus)
    environment = parse_key_values(env, "--env")
    container = merge_body(
        parse_json_option(container_properties, "--container-properties") or {},
        {
            "image": image,
            "command": list(command) or None,
            "resourceRequirements": requirements or None,
            "environment": [{"name": k, "value": v} for k, v in environment.items()] or None,
        },
    )
    body = merge_body(
        base,
        {
            "jobDefinitionName": name,
            "type": jd_type or (None if base.get("type") else "container"),
            "containerProperties": container or None,
            "nodeProperties": parse_json_option(node_properties, "--node-properties"),
            "timeout": {"attemptDurationSeconds": timeout} if timeout is not None else None,
            "retryStrategy": {"attempts": retries} if retries is not None else None,
            "parameters": parse_key_values(parameters, "--parameter") or None,
            "tags": parse_key_values(tags, "--tag") or None,
        },
    )
    require(body, "jobDefinitionName", hint="give NAME")
    answer = _send("register_job_definition", body)
    if not json_output():
        click.echo(f"{answer.get('jobDefinitionName')}:{answer.get('revision')}")


@jobdef.command("describe")
@click.argument("job_definitions", nargs=-1, metavar="[NAME[:REVISION]]...")
@click.option("--name", metavar="NAME", help="Every revision of this name.")
@click.option(
    "--status",
    type=click.Choice(["ACTIVE", "INACTIVE"], case_sensitive=False),
    help="Only this status.",
)
@cli_input_json_option
@global_options
def jobdef_describe(
    job_definitions: tuple[str, ...],
    name: str | None,
    status: str | None,
    cli_input_json: str | None,
) -> None:
    """Show job definitions (DescribeJobDefinitions)."""
    from hpcbatch.cli.output import print_job_definitions

    body = merge_body(
        load_cli_input_json(cli_input_json),
        {
            "jobDefinitions": list(job_definitions) or None,
            "jobDefinitionName": name,
            "status": _upper(status),
        },
    )
    _describe("describe_job_definitions", "jobDefinitions", body, print_job_definitions)


@jobdef.command("deregister")
@click.argument("job_definition", required=False, metavar="NAME:REVISION")
@cli_input_json_option
@global_options
def jobdef_deregister(job_definition: str | None, cli_input_json: str | None) -> None:
    """Mark a job definition revision INACTIVE (DeregisterJobDefinition)."""
    body = merge_body(load_cli_input_json(cli_input_json), {"jobDefinition": job_definition})
    require(body, "jobDefinition", hint="give NAME:REVISION")
    _send("deregister_job_definition", body, f"deregistered {body['jobDefinition']}")
