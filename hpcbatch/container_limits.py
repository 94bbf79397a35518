"""What the cluster's admin allows a container: host paths, devices, shared memory, tmpfs, ulimits.

These limits depend on the head's config (``container_*`` keys), so they are checked apart
from the request's shape (``hpcbatch.validation``), by the service at registration and at
submission: a definition registered under looser limits is checked again when a job uses it.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Mapping
from typing import Any

from hpcbatch.errors import ClientError

__all__ = ["DEFAULT_ULIMIT_CAPS", "ContainerLimits", "check_container_limits"]

# Ulimits a job may set unless the head's config says otherwise: name -> the highest
# hardLimit (-1: any, unlimited included). memlock and stack unlimited are what RDMA/MPI and
# Fortran codes ask for; locked and shared memory still count against the job's memory
# cgroup. Names not listed (nice, rtprio, rttime, msgqueue, sigpending) are refused.
DEFAULT_ULIMIT_CAPS: dict[str, int] = {
    "nofile": 1_048_576, "nproc": 65_536, "memlock": -1, "stack": -1, "core": -1,
    "cpu": -1, "fsize": -1, "data": -1, "rss": -1, "locks": -1,
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ContainerLimits:
    """What a container may ask of its node; each field is one key of the head's config.

    The defaults are the safe ones: no host path, no device (the GPUs the scheduler grants
    are no definition's devices), shared memory and tmpfs up to the container's own memory.
    """

    host_paths: tuple[str, ...] = ()  # container_host_paths: mountable read-write (and below)
    host_paths_read_only: tuple[str, ...] = ()  # container_host_paths_read_only
    devices: tuple[str, ...] = ()  # container_devices: host device paths, globs allowed
    max_shared_memory_mib: int = 0  # container_max_shared_memory_mib; 0: the container's memory
    max_tmpfs_mib: int = 0  # container_max_tmpfs_mib (all tmpfs together); 0: the container's memory
    ulimits: Mapping[str, int] = dataclasses.field(default_factory=lambda: dict(DEFAULT_ULIMIT_CAPS))  # container_ulimits


def _under(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def _container_memory(container: dict[str, Any]) -> int:
    from hpcbatch.model.jobs import resource_request  # the scheduler's reading of MEMORY

    return resource_request(container).memory_mib


def check_container_limits(container: dict[str, Any], field: str, limits: ContainerLimits) -> None:
    """Refuse what the head's config does not allow ``container`` (AWS containerProperties).

    ``field`` names the container in the error ("containerProperties"); every message names
    the member and the config key that would allow it. Shapes and path syntax were checked
    by ``validate_request`` already.
    """
    _check_host_paths(container, field, limits)
    linux = container.get("linuxParameters") or {}
    _check_devices(linux, field, limits)
    _check_memory_mounts(container, linux, field, limits)
    _check_ulimits(container, field, limits)


_CONFIG = "in the head's config"


def _check_host_paths(container: dict[str, Any], field: str, limits: ContainerLimits) -> None:
    """Host volumes only under the allowed paths; read-write only under the read-write ones."""
    sources: dict[Any, str] = {}
    for i, volume in enumerate(container.get("volumes") or []):
        source = (volume.get("host") or {}).get("sourcePath")
        if not source:
            continue
        sources[volume.get("name")] = source
        if not _under(source, limits.host_paths + limits.host_paths_read_only):
            raise ClientError(
                f"{field}.volumes[{i}].host.sourcePath {source} is not a host path this cluster allows "
                f"(container_host_paths or container_host_paths_read_only {_CONFIG})"
            )
    for i, point in enumerate(container.get("mountPoints") or []):
        source = sources.get(point.get("sourceVolume"))
        if source is None or _under(source, limits.host_paths) or point.get("readOnly"):
            continue
        raise ClientError(
            f"{field}.mountPoints[{i}].readOnly must be true: host path {source} may only be mounted "
            f"read-only (container_host_paths_read_only {_CONFIG})"
        )


def _check_devices(linux: dict[str, Any], field: str, limits: ContainerLimits) -> None:
    for i, device in enumerate(linux.get("devices") or []):
        host = device.get("hostPath", "")
        if not any(fnmatch.fnmatchcase(host, pattern) for pattern in limits.devices):
            raise ClientError(
                f"{field}.linuxParameters.devices[{i}].hostPath {host} is not a device this cluster "
                f"passes to containers (container_devices {_CONFIG}; GPUs are asked for with "
                "resourceRequirements type GPU)"
            )


def _check_memory_mounts(container: dict[str, Any], linux: dict[str, Any], field: str, limits: ContainerLimits) -> None:
    """Shared memory and tmpfs: each within its cap (0: the container's own memory)."""
    memory: int | None = None
    shm = linux.get("sharedMemorySize")
    if shm is not None:
        memory = _container_memory(container)
        cap = limits.max_shared_memory_mib or memory
        if shm > cap:
            raise ClientError(
                f"{field}.linuxParameters.sharedMemorySize must be at most {cap} MiB (got {shm}; "
                f"container_max_shared_memory_mib {_CONFIG}, 0 meaning the container's memory)"
            )
    tmpfs = linux.get("tmpfs") or []
    if tmpfs:
        total = sum(int(t.get("size") or 0) for t in tmpfs)
        cap = limits.max_tmpfs_mib or (memory if memory is not None else _container_memory(container))
        if total > cap:
            raise ClientError(
                f"{field}.linuxParameters.tmpfs sizes must add up to at most {cap} MiB (got {total}; "
                f"container_max_tmpfs_mib {_CONFIG}, 0 meaning the container's memory)"
            )


def _check_ulimits(container: dict[str, Any], field: str, limits: ContainerLimits) -> None:
    for i, ulimit in enumerate(container.get("ulimits") or []):
        name, hard = ulimit.get("name"), ulimit.get("hardLimit")
        if name not in limits.ulimits:
            allowed = ", ".join(sorted(limits.ulimits)) or "none"
            raise ClientError(
                f"{field}.ulimits[{i}].name {name} is not a limit jobs may set here (allowed: {allowed}; "
                f"container_ulimits {_CONFIG})"
            )
        cap = limits.ulimits[name]
        if cap != -1 and (hard == -1 or hard > cap):
            raise ClientError(
                f"{field}.ulimits[{i}].hardLimit must be at most {cap} for {name} (got {hard}; "
                f"container_ulimits {_CONFIG})"
            )


