"""One SubmitJob body builder for every front end: the CLI's options and the console's form.

A person asks for a job in a few words (a command, resources, nodes, an array size, what it
waits for); :func:`submit_job_body` turns that :class:`SubmitRequest` into AWS Batch's
SubmitJob body, the same way whoever asked (as flux's ``Jobspec.from_command`` builds a legal
spec for every front end). ``hpcbatch submit``, ``hpcbatch run``/``alloc`` and the console's
submit form all call it; tests/unit/test_jobspec.py shows the CLI and the console build the
same body from the same request.

Rules:

- No job definition given: ``hpcbatch-default`` (``hpcbatch-default-mnp`` for ``nodes``);
  the command and resources go into ``containerOverrides``, as ``aws batch submit-job`` would.
- A multi-node job runs its command (or script) on the main node (0) only, as sbatch runs a
  batch script once; every node gets the resources and environment, the others are held for
  mpirun's daemons and ``hpcbatch run``.
- ``None`` means "not given": a field of ``base`` (``--cli-input-json``) then stands.

Only the standard library: ``hpcbatch submit`` imports this on its hot path.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_JOB_DEFINITION",
    "DEFAULT_MULTINODE_DEFINITION",
    "SubmitRequest",
    "has_command",
    "job_name_from",
    "merge_body",
    "resource_requirements",
    "submit_job_body",
]

DEFAULT_JOB_DEFINITION = "hpcbatch-default"
DEFAULT_MULTINODE_DEFINITION = "hpcbatch-default-mnp"
SCRIPT_ID_VARIABLE = "HPCBATCH_SCRIPT_ID"
# hpcbatch extensions the agent reads (node_agent.runner): where the job starts. The submit
# directory is used when the owner can enter it on the node (Slurm's SLURM_SUBMIT_DIR and
# default working directory); --chdir names another.
SUBMIT_DIR_VARIABLE = "HPCBATCH_SUBMIT_DIR"
CHDIR_VARIABLE = "HPCBATCH_CHDIR"
MAX_RUNNING_TAG = "hpcbatch:maxRunning"  # at most N children of the array at once (Slurm's %N)
ALLOW_UNSATISFIABLE_TAG = "hpcbatch:allowUnsatisfiable"  # read by hpcbatch.scheduler.satisfy
SIGNAL_TAG = "hpcbatch:signal"  # hpcbatch.model.interrupts: a warning signal before timeout/preemption


@dataclass(frozen=True, kw_only=True)
class SubmitRequest:
    """One job as a person asks for it; every field is optional (None: not given)."""

    queue: str | None = None
    name: str | None = None
    job_definition: str | None = None
    command: Sequence[str] = ()
    vcpus: float | str | None = None  # per attempt; a string is passed as AWS's value
    memory: int | str | None = None  # MiB
    gpus: int | str | None = None
    timeout: int | None = None  # attemptDurationSeconds
    retries: int | None = None  # retryStrategy.attempts, in all
    env: Mapping[str, str] | None = None
    depends_on: Sequence[str] | None = None  # "ID", "ID:N_TO_N", "SEQUENTIAL"
    array_size: int | None = None
    nodes: int | None = None  # a multi-node job on this many whole nodes
    max_running: int | None = None  # array children at once
    share: str | None = None  # shareIdentifier
    priority: int | None = None  # schedulingPriorityOverride
    allow_unsatisfiable: bool = False
    script_id: str | None = None  # an uploaded script (PutScript) the job runs
    script_name: str | None = None  # its file name, for the default job name
    submit_dir: str | None = None
    chdir: str | None = None
    signal: str | None = None  # "USR1@60": tag hpcbatch:signal (Slurm's --signal; hpcbatch.model.interrupts)


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


def dependency(text: str) -> dict[str, str]:
    """``ID``, ``ID:N_TO_N`` or ``SEQUENTIAL`` -> an AWS JobDependency."""
    if text.upper() == "SEQUENTIAL":
        return {"type": "SEQUENTIAL"}
    job_id, sep, kind = text.rpartition(":")
    if sep and kind.upper() in ("N_TO_N", "SEQUENTIAL"):
        return {"jobId": job_id, "type": kind.upper()}
    return {"jobId": text}


def resource_requirements(
    vcpus: float | str | None, memory: int | str | None, gpus: int | str | None
) -> list[dict[str, str]]:
    """AWS resourceRequirements; the values are strings (``"2"``, ``"0.5"``, ``"4096"``)."""
    return [
        {"type": kind, "value": f"{value:g}" if isinstance(value, float) else str(value)}
        for kind, value in (("VCPU", vcpus), ("MEMORY", memory), ("GPU", gpus))
        if value is not None
    ]


def has_command(body: Mapping[str, Any]) -> bool:
    """Whether a SubmitJob body names a command itself (its overrides, or per-node ranges)."""
    if (body.get("containerOverrides") or {}).get("command"):
        return True
    ranges = (body.get("nodeOverrides") or {}).get("nodePropertyOverrides") or []
    return any(isinstance(r, dict) and (r.get("containerOverrides") or {}).get("command") for r in ranges)


def _merge_named(base: list[Any], new: list[Any], key: str) -> list[Any]:
    """Merge lists of ``{key: ..., ...}`` items; ``new`` replaces items with the same key."""
    replaced = {item.get(key) for item in new if isinstance(item, dict)}
    kept = [item for item in base if not (isinstance(item, dict) and item.get(key) in replaced)]
    return kept + list(new)


# Lists of named items that merge item by item rather than being replaced wholesale.
_NAMED_LISTS = {"environment": "name", "resourceRequirements": "type"}


def merge_body(base: dict[str, Any], explicit: dict[str, Any]) -> dict[str, Any]:
    """``explicit`` over ``base``: nested objects merge, ``None`` means "not given"."""
    out = dict(base)
    for key, value in explicit.items():
        if value is None:
            continue
        old = out.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            out[key] = merge_body(old, value)
        elif key in _NAMED_LISTS and isinstance(value, list) and isinstance(old, list):
            out[key] = _merge_named(old, value, _NAMED_LISTS[key])
        else:
            out[key] = value
    return out


def _environment(request: SubmitRequest, base: Mapping[str, Any]) -> dict[str, str]:
    environment = dict(request.env or {})
    # Where the job starts (the agent decides on the node): after the user's own values.
    # (Not into a multi-node body given whole by --cli-input-json: its nodes take their
    # environment from its own node ranges, and containerOverrides would be refused.)
    if request.submit_dir is not None and not (request.nodes is None and base.get("nodeOverrides")):
        environment.setdefault(SUBMIT_DIR_VARIABLE, request.submit_dir)
    if request.chdir is not None:
        environment.setdefault(CHDIR_VARIABLE, request.chdir)
    if request.script_id:
        environment[SCRIPT_ID_VARIABLE] = request.script_id
    return environment


def _container_overrides(request: SubmitRequest, base: Mapping[str, Any]) -> dict[str, Any]:
    """The command, resources and environment: one container's overrides."""
    overrides: dict[str, Any] = {}
    if request.command or request.script_id:
        overrides["command"] = list(request.command)
    requirements = resource_requirements(request.vcpus, request.memory, request.gpus)
    if requirements:
        overrides["resourceRequirements"] = requirements
    environment = _environment(request, base)
    if environment:
        overrides["environment"] = [{"name": k, "value": v} for k, v in environment.items()]
    return overrides


def _node_overrides(nodes: int, overrides: dict[str, Any]) -> dict[str, Any]:
    """A multi-node job's overrides: the command on the main node (0), the rest on every node."""
    per_node = {k: v for k, v in overrides.items() if k != "command"}
    if "environment" in per_node:  # the script runs on the main node only
        others = [e for e in per_node.pop("environment") if e["name"] != SCRIPT_ID_VARIABLE]
        if others:
            per_node["environment"] = others
    ranges = [{"targetNodes": "0", "containerOverrides": overrides}] if overrides else []
    if nodes > 1 and per_node:
        ranges.append({"targetNodes": "1:", "containerOverrides": per_node})
    return {"numNodes": nodes, **({"nodePropertyOverrides": ranges} if ranges else {})}


def _job_name(request: SubmitRequest, base: Mapping[str, Any], job_definition: str) -> str | None:
    """The name given, else one from the script, the command or the job definition."""
    if request.name is not None or base.get("jobName"):
        return request.name
    if request.script_name:
        return job_name_from(os.path.splitext(os.path.basename(request.script_name))[0])
    if request.command:
        return job_name_from(request.command[0])
    return job_name_from(job_definition.rsplit("/", 1)[-1].split(":", 1)[0])


def _tags(request: SubmitRequest) -> dict[str, str] | None:
    tags: dict[str, str] = {}
    if request.max_running is not None:
        tags[MAX_RUNNING_TAG] = str(request.max_running)
    if request.allow_unsatisfiable:
        tags[ALLOW_UNSATISFIABLE_TAG] = "true"
    if request.signal is not None:
        tags[SIGNAL_TAG] = request.signal
    return tags or None


def submit_job_body(request: SubmitRequest, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The SubmitJob body for ``request``, merged over ``base`` (``--cli-input-json``)."""
    base = base or {}
    overrides = _container_overrides(request, base)
    default_definition = DEFAULT_MULTINODE_DEFINITION if request.nodes is not None else DEFAULT_JOB_DEFINITION
    if request.job_definition is not None:
        job_definition = request.job_definition
    else:
        job_definition = base.get("jobDefinition") or default_definition
    queue = request.queue
    if queue is None and not base.get("jobQueue"):
        queue = "default"
    explicit: dict[str, Any] = {
        "jobName": _job_name(request, base, job_definition),
        "jobQueue": queue,
        "jobDefinition": job_definition,
        "containerOverrides": None if request.nodes is not None else overrides or None,
        "nodeOverrides": None if request.nodes is None else _node_overrides(request.nodes, overrides),
        "timeout": {"attemptDurationSeconds": request.timeout} if request.timeout is not None else None,
        "retryStrategy": {"attempts": request.retries} if request.retries is not None else None,
        "dependsOn": [dependency(j) for j in request.depends_on] if request.depends_on else None,
        "arrayProperties": {"size": request.array_size} if request.array_size is not None else None,
        "tags": _tags(request),
        "shareIdentifier": request.share,
        "schedulingPriorityOverride": request.priority,
    }
    return merge_body(base, explicit)
