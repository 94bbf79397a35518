"""Containers and job definitions: RegisterJobDefinition and the container shapes it shares.

Rules / theory of operation:

- Every string that reaches exec, an environment, podman or a path is checked here, before
  anything is stored (docs/security.md): environment names hold no ``=`` and never a reserved
  name (``AWS_BATCH_*``, the GPU visibility variables); paths that become podman's
  ``--volume``/``--device``/``--tmpfs`` arguments are absolute and normal and hold no ``:``
  or ``,`` (they would smuggle mount options); an image never begins with ``-``.
- The container shapes are the same in containerProperties, containerOverrides (SubmitJob)
  and ecsProperties' task container; their hooks are keyed by botocore shape name.
- ``ecsProperties`` maps onto the containerProperties hpcbatch runs (``ecs_container``): one
  task, one essential container; what an ECS task can say that one container on a node
  cannot is refused by name. EKS and consumable resources are refused.
- What the cluster's admin allows a container (host paths, devices, shared memory, tmpfs,
  ulimits) depends on the head's config: ``hpcbatch.container_limits``, a separate call.
"""

from __future__ import annotations

import posixpath
import re
from typing import Any

from hpcbatch.errors import ClientError
from hpcbatch.validation.common import _NOT_SUPPORTED, Hook, _Bad, _name, _range, _show

# Resource values are strings on the wire; the digit counts are bounded so int()/float() can
# never meet a pathological value ([0-9], not \d, which accepts non-ASCII digits).
_WHOLE = re.compile(r"\A[0-9]{1,15}\Z")
_DECIMAL = re.compile(r"\A(?:[0-9]{1,9}(?:\.[0-9]{0,9})?|\.[0-9]{1,9})\Z")


# Variables the agent sets from the GPUs the scheduler granted (node_agent.main.gpu_environment),
# and their kin on other vendors' stacks: a job that set them itself could reach GPUs another
# job holds, or renumber its own (CUDA_DEVICE_ORDER) so an index names another job's GPU.
RESERVED_ENVIRONMENT: frozenset[str] = frozenset({
    "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "NVIDIA_VISIBLE_DEVICES",
    "NVIDIA_MIG_CONFIG_DEVICES", "NVIDIA_MIG_MONITOR_DEVICES", "ROCR_VISIBLE_DEVICES",
    "HIP_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL", "ZE_AFFINITY_MASK", "ONEAPI_DEVICE_SELECTOR",
})  # fmt: skip
# hpcbatch extensions: where the job starts (the agent enters it as the owner, else the job's
# private work dir; node_agent.runner). Absolute paths only: relative to what, on the node?
WORKING_DIRECTORY_ENVIRONMENT: frozenset[str] = frozenset({"HPCBATCH_SUBMIT_DIR", "HPCBATCH_CHDIR"})
RESERVED_ENVIRONMENT_PREFIXES = ("AWS_BATCH_",)  # AWS Batch sets these in every container itself

# AWS's Ulimit.name values (API reference: Ulimit).
ULIMIT_NAMES: frozenset[str] = frozenset({
    "core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile", "nproc",
    "rss", "rtprio", "rttime", "sigpending", "stack",
})  # fmt: skip
# Tmpfs.mountOptions a job may give: AWS's list less what would weaken the mount (suid, dev),
# turn it into another mount (bind, remount, propagation) or fight the size field.
_TMPFS_OPTIONS = frozenset({
    "defaults", "ro", "rw", "nosuid", "nodev", "exec", "noexec", "sync", "async", "dirsync",
    "atime", "noatime", "diratime", "nodiratime", "relatime", "norelatime", "strictatime",
    "nostrictatime",
})  # fmt: skip
_TMPFS_VALUED = re.compile(r"\A(?:mode=[0-7]{3,4}|(?:uid|gid|nr_inodes)=[0-9]{1,10})\Z")


# --- container shapes (containerProperties, containerOverrides, ECS task containers) --------


def _environment_variable(v: dict[str, Any]) -> None:
    name = v.get("name")
    if not name:
        raise _Bad(" must not be empty", "name")
    if "=" in name:  # NAME=VALUE: an = in the name would make another variable
        raise _Bad(f" must not contain '=' (got {_show(name)})", "name")
    for prefix in RESERVED_ENVIRONMENT_PREFIXES:
        if name.startswith(prefix):
            raise _Bad(f": {prefix} is a reserved prefix (got {_show(name)})", "name")
    if name in RESERVED_ENVIRONMENT:
        raise _Bad(f": {name} is reserved: hpcbatch sets it from the GPUs the job was granted "
                   "(ask for GPUs with resourceRequirements type GPU)", "name")
    if name in WORKING_DIRECTORY_ENVIRONMENT:
        value = v.get("value") or ""
        if not value.startswith("/") or len(value) > 4095:
            raise _Bad(f" of {name} must be an absolute directory path, at most 4095 characters "
                       f"(got {_show(value)})", "value")


def _resource_requirement(v: dict[str, Any]) -> None:
    kind, value = v["type"], v["value"]
    if kind == "VCPU" and not (_DECIMAL.match(value) and float(value) > 0):
        raise _Bad(f" must be a number greater than 0 for VCPU (got {_show(value)})", "value")
    if kind == "MEMORY" and not (_WHOLE.match(value) and int(value) >= 4):
        raise _Bad(f" must be a whole number of MiB, at least 4, for MEMORY (got {_show(value)})",
                   "value")
    if kind == "GPU" and not _WHOLE.match(value):
        raise _Bad(f" must be a whole number of GPUs, 0 or more (got {_show(value)})", "value")


def _resource_requirements(v: list[dict[str, Any]]) -> None:
    seen: set[str] = set()
    for i, req in enumerate(v):
        if req["type"] in seen:
            raise _Bad(f": {req['type']} is given twice; give each type once", i, "type")
        seen.add(req["type"])


def _container(v: dict[str, Any]) -> None:
    # Legacy top-level vcpus/memory, superseded by resourceRequirements but still accepted.
    if "vcpus" in v:
        _range(v["vcpus"], 1, None, "vcpus")
    if "memory" in v:
        _range(v["memory"], 4, None, "memory")
    image = v.get("image")
    if image and (not image.strip() or image.startswith("-")):
        # podman would read "-..." as an option; blanks name no image ("" is none: a bare job).
        raise _Bad(f" must name an image and must not begin with '-' (got {_show(image)})", "image")


def _path(value: str, *path: str | int) -> None:
    """A path that becomes part of a podman mount argument: absolute, normal, no : or ,."""
    if not value.startswith("/"):
        raise _Bad(f" must be an absolute path (got {_show(value)})", *path)
    if ":" in value or "," in value:
        raise _Bad(f" must not contain ':' or ',': podman would read them as mount options "
                   f"(got {_show(value)})", *path)
    if posixpath.normpath(value) != value:
        raise _Bad(f" must be a normal path, without '.', '..', '//' or a trailing '/' "
                   f"(got {_show(value)})", *path)


def _host(v: dict[str, Any]) -> None:
    if "sourcePath" in v:
        _path(v["sourcePath"], "sourcePath")


def _mount_point(v: dict[str, Any]) -> None:
    if "containerPath" in v:
        _path(v["containerPath"], "containerPath")


def _device(v: dict[str, Any]) -> None:
    _path(v["hostPath"], "hostPath")
    if v.get("containerPath"):
        _path(v["containerPath"], "containerPath")


def _tmpfs(v: dict[str, Any]) -> None:
    _path(v["containerPath"], "containerPath")
    _range(v["size"], 1, None, "size")
    for i, option in enumerate(v.get("mountOptions") or ()):
        if option not in _TMPFS_OPTIONS and not _TMPFS_VALUED.match(option):
            hint = " (hpcbatch mounts every tmpfs nosuid,nodev)" if option in ("suid", "dev") else ""
            raise _Bad(f" {_show(option)} is not allowed{hint}; allowed: {', '.join(sorted(_TMPFS_OPTIONS))}, "
                       "mode=, uid=, gid=, nr_inodes=", "mountOptions", i)


def _ulimit(v: dict[str, Any]) -> None:
    name, soft, hard = v["name"], v["softLimit"], v["hardLimit"]
    if name not in ULIMIT_NAMES:
        raise _Bad(f" must be one of {', '.join(sorted(ULIMIT_NAMES))} (got {_show(name)})", "name")
    _range(soft, -1, None, "softLimit")
    _range(hard, -1, None, "hardLimit")
    if hard != -1 and (soft == -1 or soft > hard):
        raise _Bad(f" must not exceed hardLimit ({hard}) (got {soft})", "softLimit")


def _linux_parameters(v: dict[str, Any]) -> None:
    if "sharedMemorySize" in v:
        _range(v["sharedMemorySize"], 1, None, "sharedMemorySize")


# --- ecsProperties and RegisterJobDefinition ------------------------------------------------


# TaskContainerProperties members that have a containerProperties twin of the same name.
_ECS_SAME = ("image", "command", "environment", "resourceRequirements", "mountPoints", "linuxParameters",
             "ulimits", "privileged", "readonlyRootFilesystem", "user", "logConfiguration", "secrets",
             "repositoryCredentials")
# EcsTaskProperties members with a containerProperties twin (taskRoleArn is ECS's jobRoleArn).
_ECS_TASK = {"volumes": "volumes", "executionRoleArn": "executionRoleArn", "taskRoleArn": "jobRoleArn",
             "networkConfiguration": "networkConfiguration", "runtimePlatform": "runtimePlatform",
             "ephemeralStorage": "ephemeralStorage", "enableExecuteCommand": "enableExecuteCommand"}
# What an ECS task can say that one process (or one podman container) on a node cannot.
_ECS_UNMAPPED_TASK = ("platformVersion", "ipcMode", "pidMode", "networkMode")
_ECS_UNMAPPED_CONTAINER = ("dependsOn", "firelensConfiguration", "startTimeout", "stopTimeout")


def ecs_container(ecs: dict[str, Any], field: str = "ecsProperties") -> dict[str, Any]:
    """AWS ``ecsProperties`` as the containerProperties hpcbatch runs: one task, one essential container.

    Raises ClientError naming the member that cannot be mapped. ``ecs`` passed the shape walk.
    """
    try:
        return _ecs_container(ecs, field)
    except _Bad as e:
        raise ClientError(e.render("RegisterJobDefinition")) from None


def _ecs_container(ecs: dict[str, Any], field: str) -> dict[str, Any]:
    tasks = ecs["taskProperties"]
    if len(tasks) != 1:
        raise _Bad(f" must hold exactly one task (got {len(tasks)})", field, "taskProperties")
    task = tasks[0]
    where = (field, "taskProperties", 0)
    for name in _ECS_UNMAPPED_TASK:
        if name in task:
            raise _Bad(" cannot be honoured: hpcbatch runs one container per job on its own nodes; remove it",
                       *where, name)
    containers = task["containers"]
    essential = [i for i, c in enumerate(containers) if c.get("essential", True)]
    if len(containers) != 1 or len(essential) != 1:
        raise _Bad(f" must hold exactly one essential container: hpcbatch runs one container per job "
                   f"(got {len(containers)}, {len(essential)} essential)", *where, "containers")
    ecs_one = containers[0]
    for name in _ECS_UNMAPPED_CONTAINER:
        if name in ecs_one:
            raise _Bad(" cannot be honoured: hpcbatch runs one container per job; remove it",
                       *where, "containers", 0, name)
    container = {k: ecs_one[k] for k in _ECS_SAME if k in ecs_one}
    for name, twin in _ECS_TASK.items():
        if name in task:
            container[twin] = task[name]
    return container


def _ecs_properties(v: dict[str, Any], field: str, *path: str | int) -> None:
    """Check that ``v[field]`` maps (``ecs_container``); the error names where it sits."""
    try:
        _ecs_container(v[field], field)
    except _Bad as e:
        e.parts.extend(reversed(path))
        raise


def _register_job_definition(v: dict[str, Any]) -> None:
    _name(v, "jobDefinitionName")
    if "schedulingPriority" in v:
        _range(v["schedulingPriority"], 0, 9999, "schedulingPriority")
    for field in ("eksProperties", "consumableResourceProperties"):
        if field in v:
            raise _Bad(_NOT_SUPPORTED.format(field), field)
    _node_range_entries(v)
    has_container = _top_ecs_properties(v) or "containerProperties" in v
    if v["type"] == "container":
        _container_definition(v, has_container)
    else:  # multinode; the deeper range rules live with the multinode model
        _multinode_definition(v, has_container)


def _node_range_entries(v: dict[str, Any]) -> None:
    """Each node range: no EKS or consumable resources; a container or ecsProperties, not both."""
    for i, entry in enumerate((v.get("nodeProperties") or {}).get("nodeRangeProperties") or ()):
        for field in ("eksProperties", "consumableResourceProperties"):
            if field in entry:
                raise _Bad(_NOT_SUPPORTED.format(field), "nodeProperties", "nodeRangeProperties", i, field)
        if "ecsProperties" in entry:
            if "container" in entry:
                raise _Bad(": give container or ecsProperties, not both", "nodeProperties",
                           "nodeRangeProperties", i, "ecsProperties")
            _ecs_properties(entry, "ecsProperties", "nodeProperties", "nodeRangeProperties", i)


def _top_ecs_properties(v: dict[str, Any]) -> bool:
    """Whether a container definition gives its container as ecsProperties (checked to map)."""
    if "ecsProperties" not in v:
        return False
    if v["type"] != "container":
        raise _Bad(" is for type container; a multinode definition gives ecsProperties per node range "
                   "(nodeProperties.nodeRangeProperties[].ecsProperties)", "ecsProperties")
    if "containerProperties" in v:
        raise _Bad(": give containerProperties or ecsProperties, not both", "ecsProperties")
    _ecs_properties(v, "ecsProperties")
    return True


def _container_definition(v: dict[str, Any], has_container: bool) -> None:
    if not has_container:
        raise _Bad(" (or ecsProperties) is required when type is container", "containerProperties")
    if "nodeProperties" in v:
        raise _Bad(" is only for type multinode; remove it or set type to multinode",
                   "nodeProperties")


def _multinode_definition(v: dict[str, Any], has_container: bool) -> None:
    if "nodeProperties" not in v:
        raise _Bad(" is required when type is multinode", "nodeProperties")
    if has_container:
        raise _Bad(" is only for type container; put the container in "
                   "nodeProperties.nodeRangeProperties", "containerProperties")
    nodes = v["nodeProperties"]
    _range(nodes["numNodes"], 1, None, "nodeProperties", "numNodes")
    _range(nodes["mainNode"], 0, nodes["numNodes"] - 1, "nodeProperties", "mainNode")


SHAPE_HOOKS: dict[str, Hook] = {
    "KeyValuePair": _environment_variable,  # only used for container environment lists
    "EksContainerEnvironmentVariable": _environment_variable,
    "ResourceRequirement": _resource_requirement,
    "ResourceRequirements": _resource_requirements,
    "ContainerProperties": _container,
    "ContainerOverrides": _container,
    "TaskContainerProperties": _container,  # ecsProperties' container: the same image rule
    "Host": _host,
    "MountPoint": _mount_point,
    "Device": _device,
    "Tmpfs": _tmpfs,
    "Ulimit": _ulimit,
    "LinuxParameters": _linux_parameters,
}


OPERATION_HOOKS: dict[str, Hook] = {"RegisterJobDefinition": _register_job_definition}
