"""AWS containerProperties -> how a node runs the image (``protocol.ContainerOptions``); pure.

The head checks a container job once, at submission (``check_container``): what it cannot
honour, or must not (``privileged`` without the cluster's consent, a ``user`` other than the
job's owner, a mount point naming no volume), is a one-line error naming the field. What is
stored is AWS's JSON; ``container_options`` turns it into the typed value the agent gets.
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


def container_options(container: dict[str, Any]) -> ContainerOptions:
    """The agent's view of containerProperties (already checked by ``check_container``)."""
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
    )


_PERMISSION = {"READ": "r", "WRITE": "w", "MKNOD": "m"}
