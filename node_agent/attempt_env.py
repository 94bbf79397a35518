"""What a ``StartAttempt`` order becomes on this node: the runner's spec and the launch grant.

Pure apart from the owner's uid lookup (the passwd database): the job's environment (the
order's variables, the node's GPUs, the multi-node bridge and fabric settings), its files
and its CPUs.
"""

from __future__ import annotations

import pwd
from dataclasses import dataclass
from pathlib import Path

from hpcbatch import protocol as p
from node_agent.bridge import (
    LaunchGrant,
    MultinodeLaunch,
    job_environment,
    job_files,
    parent_job_id,
    slots_per_node,
)
from node_agent.cpu_binding import gpu_local_cpus
from node_agent.runner import AttemptSpec


def gpu_environment(gpu_ids: list[str], node_gpus: list[str]) -> dict[str, str]:
    """The variables that show a job only the GPUs it holds: none at all when it holds none.

    ``NVIDIA_VISIBLE_DEVICES`` (container runtimes) gets the ids/UUIDs as the head chose
    them; ``CUDA_VISIBLE_DEVICES`` gets their positions in the node's GPU list ("1,2"),
    which is NVML's order, so ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` makes CUDA count the same
    way. An id the node does not list is passed through as is (CUDA also takes UUIDs).
    """
    if not gpu_ids:
        # On a GPU node a job that asked for no GPUs must not see (and use) the others'.
        return {"CUDA_VISIBLE_DEVICES": "", "NVIDIA_VISIBLE_DEVICES": "void"} if node_gpus else {}
    cuda = [str(node_gpus.index(g)) if g in node_gpus else g for g in gpu_ids]
    return {
        "CUDA_VISIBLE_DEVICES": ",".join(cuda),
        "NVIDIA_VISIBLE_DEVICES": ",".join(gpu_ids),
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
    }


def uid_of(user: str) -> int | None:
    """The uid of ``user``, or None when this node does not know the name."""
    try:
        return pwd.getpwnam(user).pw_uid
    except (KeyError, ValueError):
        return None


@dataclass(frozen=True)
class NodeSetting:
    """What every attempt on this node starts from."""

    base_env: dict[str, str]  # the agent's PATH, locale and home (not for images)
    hostname: str
    facts: p.NodeFacts
    cpus: list[int]  # the CPUs the agent may hand out
    launch_socket: Path  # the launcher bridge's


def attempt_spec(msg: p.StartAttempt, node: NodeSetting, work_dir: Path) -> AttemptSpec:
    """The runner's spec for an order: ``work_dir`` is where its files go (Runner.job_dir)."""
    facts = node.facts
    # An image brings its own PATH, locale and home: only the job's variables go in.
    env = {} if msg.image else dict(node.base_env)
    env.update(msg.environment)
    env["HOSTNAME"] = node.hostname
    env.update(gpu_environment(msg.gpu_ids, facts.gpus))
    files: tuple[tuple[str, bytes, int], ...] = ()
    if msg.hosts:  # a multi-node job: its nodes, the launcher bridge, the fabric
        files = job_files(msg.hosts, slots_per_node(env))
        launch = MultinodeLaunch(hosts=msg.hosts, work_dir=work_dir, launch_socket=node.launch_socket,
                                 secret=msg.launch_secret, owner_is_root=uid_of(msg.owner) == 0)
        env.update(job_environment(launch, environment=env, fabric=facts))
    return AttemptSpec(
        attempt_id=msg.attempt_id,
        job_id=msg.job_id,
        attempt_number=msg.attempt_number,
        command=msg.command,
        environment=env,
        vcpus=msg.vcpus,
        memory_mib=msg.memory_mib,
        gpus=msg.gpus,
        timeout_s=msg.timeout_s,
        image=msg.image,
        container=msg.container,
        script=msg.script,
        user=msg.owner,  # never None here: an ownerless job must not run as the agent (root)
        hold=msg.hold,
        multinode=bool(msg.hosts),
        warning_signal=msg.warning_signal,
        warning_s=msg.warning_s,
        files=files,
        cpus=tuple(gpu_local_cpus(msg.gpu_ids, facts.gpu_facts, node.cpus)) if msg.gpu_ids else (),
    )


def launch_grant(msg: p.StartAttempt, uid: int | None) -> LaunchGrant | None:
    """What a started multi-node attempt (running as ``uid``) may launch, or None."""
    if not (msg.hosts and msg.launch_secret and uid is not None):
        return None
    return LaunchGrant(attempt_id=msg.attempt_id, job_id=parent_job_id(msg.job_id), secret=msg.launch_secret,
                       uid=uid, hosts=tuple(msg.hosts))
