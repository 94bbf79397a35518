"""What an agent is told to start: the ``StartAttempt`` message for one attempt, built pure.

The engine (hpcbatch.head.engine) gathers the facts (the job's script from the store, and
for a node of a multi-node job its parent, the node's facts and the environment that finds
the main node, hpcbatch.head.gangs) and sends what ``start_message`` returns once the
attempt is committed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hpcbatch import protocol as p
from hpcbatch.head.containers import container_options
from hpcbatch.model.interrupts import warning_signal
from hpcbatch.model.jobs import Attempt, JobRecord
from hpcbatch.model.multinode import whole_node


@dataclass(frozen=True)
class GangStart:
    """What one node (JOBID#i) of a multi-node job starts with besides its own record."""

    parent: JobRecord
    node_environment: dict[str, str]  # AWS's multi-node variables and the main node's address
    facts: p.NodeFacts | None  # the node's, as registered: whole nodes are whole


def start_message(job: JobRecord, attempt: Attempt, *, script: bytes | None, capabilities: list[str],
                  gang: GangStart | None = None) -> p.StartAttempt:
    """The start of ``attempt`` (the job's last): command, AWS_BATCH_* environment, resources."""
    env = dict(job.environment)
    env.update(
        AWS_BATCH_JOB_ID=job.job_id,
        AWS_BATCH_JOB_ATTEMPT=str(len(job.attempts)),
        AWS_BATCH_JQ_NAME=job.job_queue,
        AWS_BATCH_CE_NAME=attempt.compute_environment,
    )
    # ECS sets it in every AWS Batch container on EC2; Metaflow's @batch reads it (KeyError without).
    env.setdefault("AWS_EXECUTION_ENV", "AWS_ECS_EC2")
    multi: dict[str, Any] = {}
    vcpus, memory_mib = job.resources.vcpus, job.resources.memory_mib
    if gang is not None:
        facts = gang.facts
        if facts is not None:  # whole nodes are whole: what the job does not name is the node's
            vcpus, memory_mib = whole_node(job.container, vcpus, memory_mib, facts.vcpus, facts.memory_mib)
        env["AWS_BATCH_JOB_ATTEMPT"] = str(len(gang.parent.attempts))
        env.update(gang.node_environment)
        multi = {
            "hosts": list(gang.parent.hosts),
            "node_index": job.node_index,
            "launch_secret": gang.parent.launch_secret,
            "hold": not job.command and job.script_id is None,
        }
    return p.StartAttempt(
        attempt_id=attempt.attempt_id,
        job_id=job.job_id,
        attempt_number=len(job.attempts),
        command=job.command,
        environment=env,
        vcpus=vcpus,
        memory_mib=memory_mib,
        gpus=job.resources.gpus,
        gpu_ids=list(attempt.gpus),
        timeout_s=job.timeout_s,
        image=job.image,
        container=container_options(job.container, capabilities) if job.image else None,
        script=script,
        log_stream_name=attempt.log_stream_name,
        owner=job.owner,
        **multi,
        **_warning(gang.parent if gang is not None else job),
    )


def _warning(job: JobRecord) -> dict[str, Any]:
    """The job's warning signal (tag hpcbatch:signal; a multi-node job's is its parent's)."""
    spec = warning_signal(job.tags)
    return {} if spec is None else {"warning_signal": spec.name, "warning_s": spec.seconds}
