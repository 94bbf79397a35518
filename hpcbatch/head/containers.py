"""AWS containerProperties -> how a node runs the image (``protocol.ContainerOptions``); pure.

The head checks a container job once, at submission (``check_container``): what it cannot
honour, or must not (``privileged`` without the cluster's consent, a ``user`` other than the
job's owner, a mount point naming no volume), is a one-line error naming the field. What is
stored is AWS's JSON; ``container_options`` turns it into the typed value the agent gets.

Capabilities: every container runs with none (``--cap-drop all``, node_agent.containers);
``container_capabilities`` in the head's config is the only way to give some back, to every
container job of the cluster (AWS Batch has no per-job field for them). ``check_capabilities``
validates that list when the config is read.
"""

from __future__ import annotations

from typing import Any

from hpcbatch.errors import ClientError
from hpcbatch.protocol import (
    ContainerDevice,
    ContainerMount,
    ContainerOptions,
    ContainerTmpfs,
    ContainerUlimit,
)

CONTAINER_FEATURE = "container"  # what a node with a container runtime offers the scheduler


def check_container(container: dict[str, Any], owner: str, field: str, allow_privileged: bool) -> None:
    """Refuse what a node will not run; ``field`` names the container in the error."""
    refuse_privileged(container, field, allow_privileged)
    if not container.get("image"):
        return
    user = container.get("user")
    if user not in (None, "", owner):
        raise ClientError(f"{field}.user: jobs run as their owner ({owner}) inside the container, not {user}")
    volumes = {v.get("name"): v for v in container.get("volumes") or []}
    for i, volume in enumerate(container.get("volumes") or []):
        source = ((volume.get("host") or {}).get("sourcePath")) or ""
        if volume.get("efsVolumeConfiguration"):
            raise ClientError(f"{field}.volumes[{i}].efsVolumeConfiguration: only host volumes exist here")
        if source and not source.startswith("/"):
            raise ClientError(f"{field}.volumes[{i}].host.sourcePath must be an absolute path, not {source!r}")
    for i, point in enumerate(container.get("mountPoints") or []):
        name = point.get("sourceVolume")
        if name not in volumes:
            raise ClientError(f"{field}.mountPoints[{i}].sourceVolume {name!r} names no volume in volumes")
        if not str(point.get("containerPath", "")).startswith("/"):
            raise ClientError(f"{field}.mountPoints[{i}].containerPath must be an absolute path")
        if not ((volumes[name].get("host") or {}).get("sourcePath")):
            raise ClientError(f"{field}.volumes {name!r}: only host volumes (host.sourcePath) can be mounted")


def refuse_privileged(container: dict[str, Any], field: str, allow_privileged: bool) -> None:
    """``privileged`` only where the cluster's admin allowed it (the head's config)."""
    if container.get("privileged") and not allow_privileged:
        raise ClientError(
            f"{field}.privileged: privileged containers are not allowed on this cluster "
            "(allow_privileged_containers in the head's config)"
        )


# capabilities(7), as podman's --cap-add names them (CAP_ prefix optional in the config).
CAPABILITIES = frozenset({
    "AUDIT_CONTROL", "AUDIT_READ", "AUDIT_WRITE", "BLOCK_SUSPEND", "BPF", "CHECKPOINT_RESTORE", "CHOWN",
    "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "IPC_LOCK", "IPC_OWNER", "KILL", "LEASE",
    "LINUX_IMMUTABLE", "MAC_ADMIN", "MAC_OVERRIDE", "MKNOD", "NET_ADMIN", "NET_BIND_SERVICE", "NET_BROADCAST",
    "NET_RAW", "PERFMON", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYSLOG", "SYS_ADMIN", "SYS_BOOT",
    "SYS_CHROOT", "SYS_MODULE", "SYS_NICE", "SYS_PACCT", "SYS_PTRACE", "SYS_RAWIO", "SYS_RESOURCE",
    "SYS_TIME", "SYS_TTY_CONFIG", "WAKE_ALARM",
})


def check_capabilities(names: list[str], field: str) -> list[str]:
    """``names`` as ``CAP_X``, or a one-line error naming ``field`` and the unknown one."""
    out = []
    for name in names:
        bare = name.upper().removeprefix("CAP_")
        if bare not in CAPABILITIES:
            raise ClientError(f"{field}: {name!r} is not a Linux capability (capabilities(7), e.g. CAP_SYS_NICE)")
        out.append(f"CAP_{bare}")
    return out


def container_options(container: dict[str, Any], capabilities: list[str] | tuple[str, ...] = ()) -> ContainerOptions:
    """The agent's view of containerProperties (already checked by ``check_container``).

    ``capabilities``: what the head's ``container_capabilities`` gives every container back.
    """
    volumes = {v.get("name"): (v.get("host") or {}).get("sourcePath", "") for v in container.get("volumes") or []}
    mounts = [
        ContainerMount(
            source=volumes.get(m.get("sourceVolume"), ""), target=m.get("containerPath", ""),
            read_only=bool(m.get("readOnly", False)),
        )
        for m in container.get("mountPoints") or []
        if volumes.get(m.get("sourceVolume"))
    ]
    linux = container.get("linuxParameters") or {}
    devices = [
        ContainerDevice(
            host_path=d.get("hostPath", ""), container_path=d.get("containerPath", "") or "",
            permissions="".join(_PERMISSION[x] for x in d.get("permissions") or [] if x in _PERMISSION),
        )
        for d in linux.get("devices") or []
    ]
    tmpfs = [
        ContainerTmpfs(path=t["containerPath"], size_mib=int(t["size"]), options=list(t.get("mountOptions") or []))
        for t in linux.get("tmpfs") or []
    ]
    ulimits = [
        ContainerUlimit(name=u["name"], soft=int(u["softLimit"]), hard=int(u["hardLimit"]))
        for u in container.get("ulimits") or []
    ]
    return ContainerOptions(
        mounts=mounts,
        read_only_root=bool(container.get("readonlyRootFilesystem", False)),
        devices=devices,
        shm_size_mib=linux.get("sharedMemorySize"),
        tmpfs=tmpfs,
        init=bool(linux.get("initProcessEnabled", False)),
        ulimits=ulimits,
        privileged=bool(container.get("privileged", False)),
        capabilities=list(capabilities),
    )


_PERMISSION = {"READ": "r", "WRITE": "w", "MKNOD": "m"}
