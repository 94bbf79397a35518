"""Validate AWS Batch API request bodies at the edge: botocore's shapes plus AWS Batch's limits.

Rules / theory of operation:

- The shape walk follows botocore's service model for ``batch`` (the model boto3 and the AWS
  CLI serialise from), so a field the real API takes is accepted and a typo is not.
- Each input shape is compiled once, on first use, into a closure; a request then costs one
  closure call per value and no model look-ups (SubmitJob is on the hot path).
- Limits AWS documents but the model does not carry (name rules, retry limits, reserved
  environment names, ...) are hooks keyed by shape name or by operation; they run after the
  shape walk, so they may trust types and required members.
- The field path is built only on failure: each enclosing level adds its segment to the
  internal error as it propagates, so a valid request never formats a string.
- A member whose value is JSON null is dropped from the body, as AWS treats null as absent.
- Map min/max from the model are not enforced: an empty ``tags: {}`` means "no tags" and
  the 50-tag limit is a semantic rule below.
- Every string that reaches exec, an environment, podman or a path is checked here, before
  anything is stored (docs/security.md): no string of any operation may hold a NUL byte (a
  NUL kills ``execve`` and, unchecked, the agent that tried); environment names hold no
  ``=`` and never a reserved name (``AWS_BATCH_*``, the GPU visibility variables); paths that
  become podman's ``--volume``/``--device``/``--tmpfs`` arguments hold no ``:`` or ``,``
  (they would smuggle mount options); an image never begins with ``-``.
- What the cluster's admin allows a container (host paths, devices, shared memory, tmpfs,
  ulimits) depends on the head's config, so it is a separate call,
  ``check_container_limits`` (hpcbatch.container_limits, re-exported here), made by the
  service at registration and at submission.

Past 800 lines, for a reason: the shape compiler and the semantic hooks it calls are one walk
that shares the failure type (``_Bad``) and the way a failure's field path is built; split,
each half would reach into the other's internals. The admin's container limits, which need
none of that, live in ``hpcbatch.container_limits``.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import posixpath
import re
import threading
import unicodedata
from collections.abc import Callable
from typing import Any

# Re-exported: the head's config and service, and the tests, import these from here.
from hpcbatch.container_limits import DEFAULT_ULIMIT_CAPS as DEFAULT_ULIMIT_CAPS
from hpcbatch.container_limits import ContainerLimits as ContainerLimits
from hpcbatch.container_limits import check_container_limits as check_container_limits
from hpcbatch.errors import ClientError
from hpcbatch.model import interrupts
from hpcbatch.operations import OPERATIONS as OPERATION_TABLE

# The AWS operations validated against botocore's input shapes (hpcbatch.operations' table).
OPERATIONS: frozenset[str] = frozenset(op.name for op in OPERATION_TABLE if op.validated == "aws")
# Operations whose resource is in the path (/v1/tags/{resourceArn}) and which AWS serves by
# POST, DELETE and GET: not in ``route_table``; see ``rest_routes``.
TAG_OPERATIONS: frozenset[str] = frozenset(op.name for op in OPERATION_TABLE if op.validated == "aws" and op.rest)

# AWS Batch names: 1-128 ASCII letters, digits, hyphens and underscores, starting with a
# letter or digit. \A..\Z rather than ^..$ so .match() accepts neither a prefix nor "name\n".
NAME_PATTERN: re.Pattern[str] = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_-]{0,127}\Z")

SUBMIT_JOB_MAX_BYTES = 30 * 1024  # AWS Batch service quota: a SubmitJob payload is <= 30 KiB
JOB_DEFINITION_MAX_BYTES = 24 * 1024  # AWS Batch service quota: a job definition is <= 24 KiB
MAX_TAGS = 50  # AWS: "maximum number of tags per resource: 50"

# EvaluateOnExit globs (AWS API reference): onExitCode "can contain only numbers, and can end
# with an asterisk"; onReason/onStatusReason "letters, numbers, periods (.), colons (:), and
# white space", optionally ending with an asterisk.
_EXIT_CODE_GLOB = re.compile(r"\A(?:[0-9]+\*?|\*)\Z")
_REASON_GLOB = re.compile(r"\A[A-Za-z0-9.:\s]*\*?\Z", re.ASCII)
# Resource values are strings on the wire; the digit counts are bounded so int()/float() can
# never meet a pathological value ([0-9], not \d, which accepts non-ASCII digits).
_WHOLE = re.compile(r"\A[0-9]{1,15}\Z")
_DECIMAL = re.compile(r"\A(?:[0-9]{1,9}(?:\.[0-9]{0,9})?|\.[0-9]{1,9})\Z")

_INT32 = (-(2**31), 2**31 - 1)  # botocore "integer" is a 32-bit Java int on AWS's side
_INT64 = (-(2**63), 2**63 - 1)

Check = Callable[[Any], None]
Hook = Callable[[Any], None]


class _Key(str):
    """A map key in an error path, rendered as ``["key"]`` rather than ``.key``."""


class _Bad(Exception):
    """A failure on its way up the walk; each enclosing level appends its path segment."""

    def __init__(self, tail: str, *path: str | int, head: str = "", hint: str | None = None):
        super().__init__(tail)
        self.head, self.tail, self.hint = head, tail, hint
        self.parts: list[str | int] = list(reversed(path))  # innermost first, as we unwind

    def render(self, operation: str) -> str:
        path = ""
        for part in reversed(self.parts):
            if isinstance(part, _Key):
                path += f"[{json.dumps(_clip(part))}]"
            elif isinstance(part, int):
                path += f"[{part}]"
            else:
                path += f".{part}" if path else part
        if self.hint is not None:  # unknown member: AWS-style "in <Op> request" plus a guess
            return f"{self.head}{path}' in {operation} request{self.hint}"
        return f"{self.head}{path}{self.tail}"


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


def _clip(s: str, n: int = 64) -> str:
    return s if len(s) <= n else s[:n] + "..."


def _show(v: object) -> str:
    """Render a bad value for a message, briefly (a body may carry 30 KiB of junk)."""
    if isinstance(v, str):
        return repr(_clip(v, 40))
    if isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > 64:
        return "a number too large to use"
    return str(v)


def _jtype(v: object) -> str:
    """The JSON name of v's type, for "must be an X (got Y)"."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int | float):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(v), type(v).__name__)


def _range(v: int | float, lo: int | float | None, hi: int | float | None, *path: str | int) -> None:
    """Raise "<path> must be between lo and hi (got v)" (or at least/at most) if out of range."""
    if (lo is None or v >= lo) and (hi is None or v <= hi):
        return
    if lo is not None and hi is not None:
        raise _Bad(f" must be between {lo} and {hi} (got {_show(v)})", *path)
    if lo is not None:
        raise _Bad(f" must be at least {lo} (got {_show(v)})", *path)
    raise _Bad(f" must be at most {hi} (got {_show(v)})", *path)


# --- compiling botocore shapes into checks -------------------------------------------------

# On bare metal there is no EC2 fleet: computeResources only sizes the CE (maxvCpus, minvCpus),
# so the EC2 members botocore marks required (type, subnets, instanceRole, ...) are not, in
# this subtree or below it. maxvCpus stays required on create: the scheduler needs the cap.
_REQUIRED_OVERRIDE: dict[str, tuple[str, ...]] = {
    "ComputeResource": ("maxvCpus",),
    "ComputeResourceUpdate": (),
}
# AWS: EvaluateOnExit.action "values aren't case sensitive".
_CASE_INSENSITIVE_ENUMS = frozenset({"RetryAction"})
# hpcbatch's own values next to AWS's: SPREAD allocation (docs/scheduling.md).
_EXTRA_ENUM_VALUES: dict[str, tuple[str, ...]] = {
    "CRAllocationStrategy": ("SPREAD",),
    "CRUpdateAllocationStrategy": ("SPREAD",),
}


_NUL = " must not contain a NUL byte (\\u0000): no program, path or environment can hold one"


class _Compiler:
    """Turns botocore shapes into check closures, memoised per (shape, relaxed)."""

    def __init__(self) -> None:
        self.cache: dict[tuple[str, bool], Check] = {}

    def compile(self, shape: Any, relaxed: bool = False) -> Check:
        key = (shape.name, relaxed)
        if key not in self.cache:
            cache = self.cache
            cache[key] = lambda v: cache[key](v)  # forward reference for recursive shapes
            build = getattr(self, "_" + shape.type_name, None) or self._any
            cache[key] = build(shape, relaxed)
        return self.cache[key]

    def _structure(self, shape: Any, relaxed: bool) -> Check:
        override = _REQUIRED_OVERRIDE.get(shape.name)
        child_relaxed = relaxed or override is not None
        members = {n: self.compile(m, child_relaxed) for n, m in shape.members.items()}
        required = override if override is not None else (
            () if relaxed else tuple(shape.required_members))
        hook = _SHAPE_HOOKS.get(shape.name)

        def check(v: Any) -> None:
            if not isinstance(v, dict):
                raise _Bad(f" must be an object (got {_jtype(v)})")
            nulls = None
            for k, x in v.items():
                c = members.get(k)
                if c is None:
                    close = difflib.get_close_matches(_clip(str(k)), members, n=1)
                    hint = f" (did you mean '{close[0]}'?)" if close else ""
                    # json.dumps escapes control characters: the message stays one line.
                    raise _Bad("", json.dumps(_clip(str(k)))[1:-1], head="Unknown field '",
                               hint=hint)
                if x is None:
                    nulls = [*(nulls or ()), k]
                    continue
                try:
                    c(x)
                except _Bad as e:
                    e.parts.append(k)
                    raise
            if nulls:
                for k in nulls:
                    del v[k]
            for r in required:
                if r not in v:
                    raise _Bad("", r, head="Missing required field ")
            if hook is not None:
                hook(v)

        return check

    def _list(self, shape: Any, relaxed: bool) -> Check:
        item = self.compile(shape.member, relaxed)
        lo, hi = shape.metadata.get("min"), shape.metadata.get("max")
        hook = _SHAPE_HOOKS.get(shape.name)

        def check(v: Any) -> None:
            if not isinstance(v, list):
                raise _Bad(f" must be an array (got {_jtype(v)})")
            if lo is not None or hi is not None:
                _count(v, lo, hi)
            for i, x in enumerate(v):
                try:
                    item(x)
                except _Bad as e:
                    e.parts.append(i)
                    raise
            if hook is not None:
                hook(v)

        return check

    def _map(self, shape: Any, relaxed: bool) -> Check:
        key, value = self.compile(shape.key, relaxed), self.compile(shape.value, relaxed)
        hook = _SHAPE_HOOKS.get(shape.name)

        def check(v: Any) -> None:
            if not isinstance(v, dict):
                raise _Bad(f" must be an object (got {_jtype(v)})")
            for k, x in v.items():
                try:
                    try:
                        key(k)
                    except _Bad as e:
                        e.tail = " key" + e.tail
                        raise
                    value(x)
                except _Bad as e:
                    e.parts.append(_Key(k) if isinstance(k, str) else repr(k))
                    raise
            if hook is not None:
                hook(v)

        return check

    def _string(self, shape: Any, relaxed: bool) -> Check:
        lo, hi = shape.metadata.get("min"), shape.metadata.get("max")
        enum = tuple(shape.enum or ()) + _EXTRA_ENUM_VALUES.get(shape.name, ())
        fold = shape.name in _CASE_INSENSITIVE_ENUMS
        allowed = frozenset(e.upper() for e in enum) if fold else frozenset(enum)

        def check(v: Any) -> None:
            if not isinstance(v, str):
                raise _Bad(f" must be a string (got {_jtype(v)})")
            if "\x00" in v:
                raise _Bad(_NUL)
            if enum and (v.upper() if fold else v) not in allowed:
                raise _Bad(f" must be one of {', '.join(enum)} (got {_show(v)})")
            if (lo is not None and len(v) < lo) or (hi is not None and len(v) > hi):
                _length(v, lo, hi)

        return check

    def _integer(self, shape: Any, relaxed: bool) -> Check:
        """integer/long/float/double; botocore integer is a 32-bit Java int on AWS's side."""
        integral = shape.type_name in ("integer", "long")
        bounds = {"integer": _INT32, "long": _INT64}.get(shape.type_name, (None, None))
        lo, hi = shape.metadata.get("min", bounds[0]), shape.metadata.get("max", bounds[1])
        want = "an integer" if integral else "a number"

        def check(v: Any) -> None:
            # type() rather than isinstance: bool is an int subclass, and JSON true is no number.
            if type(v) is not int and (integral or type(v) is not float):
                raise _Bad(f" must be {want} (got {_jtype(v)})")
            if type(v) is float and not math.isfinite(v):
                raise _Bad(f" must be a finite number (got {v})")
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                _range(v, lo, hi)

        return check

    _long = _float = _double = _integer

    def _boolean(self, shape: Any, relaxed: bool) -> Check:
        def check(v: Any) -> None:
            if type(v) is not bool:
                raise _Bad(f" must be true or false (got {_jtype(v)})")

        return check

    def _any(self, shape: Any, relaxed: bool) -> Check:
        # timestamp/blob do not occur in these inputs; accept scalars rather than guess.
        def check(v: Any) -> None:
            if isinstance(v, dict | list):
                raise _Bad(f" must be a {shape.type_name} (got {_jtype(v)})")
            if isinstance(v, str) and "\x00" in v:
                raise _Bad(_NUL)

        return check


def _length(v: str, lo: int | None, hi: int | None, *path: str) -> None:
    """Raise if the string's length is outside lo..hi characters."""
    if lo and not v:
        raise _Bad(" must not be empty", *path)
    if lo is not None and len(v) < lo:
        raise _Bad(f" must be at least {lo} characters (got {len(v)})", *path)
    if hi is not None and len(v) > hi:
        raise _Bad(f" must be at most {hi} characters (got {len(v)})", *path)


def _count(v: list[Any] | dict[Any, Any], lo: int | None, hi: int | None, *path: str) -> None:
    """Raise if the list/map has fewer than lo or more than hi entries."""
    if lo is not None and len(v) < lo:
        raise _Bad(f" must have at least {lo} entr{'y' if lo == 1 else 'ies'} (got {len(v)})", *path)
    if hi is not None and len(v) > hi:
        raise _Bad(f" must have at most {hi} entries (got {len(v)})", *path)


# --- semantic rules, keyed by shape name (run after the shape walk) ------------------------


def _retry_strategy(v: dict[str, Any]) -> None:
    if "attempts" in v:
        _range(v["attempts"], 1, 10, "attempts")
    if "evaluateOnExit" in v:
        _count(v["evaluateOnExit"], None, 5, "evaluateOnExit")


def _evaluate_on_exit(v: dict[str, Any]) -> None:
    v["action"] = v["action"].upper()  # AWS accepts any case; store the canonical spelling
    code = v.get("onExitCode")
    if code is not None:
        _length(code, 1, 512, "onExitCode")
        if not _EXIT_CODE_GLOB.match(code):
            raise _Bad(f" must be digits with an optional trailing * (got {_show(code)})",
                       "onExitCode")
    for field in ("onReason", "onStatusReason"):
        glob = v.get(field)
        if glob is not None:
            _length(glob, 1, 512, field)
            if not _REASON_GLOB.match(glob):
                raise _Bad(" may contain only letters, digits, periods, colons and white "
                           f"space, with an optional trailing * (got {_show(glob)})", field)


def _job_timeout(v: dict[str, Any]) -> None:
    if "attemptDurationSeconds" in v:  # AWS: "The minimum value for the timeout is 60 seconds"
        _range(v["attemptDurationSeconds"], 60, None, "attemptDurationSeconds")


def _array_properties(v: dict[str, Any]) -> None:
    if "size" in v:
        _range(v["size"], 2, 10_000, "size")


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


def _compute_resources(v: dict[str, Any]) -> None:
    for field in ("minvCpus", "maxvCpus", "desiredvCpus"):
        if field in v:
            _range(v[field], 0, None, field)
    if "minvCpus" in v and "maxvCpus" in v and v["minvCpus"] > v["maxvCpus"]:
        raise _Bad(f" must not exceed maxvCpus ({v['maxvCpus']}) (got {v['minvCpus']})",
                   "minvCpus")
    if str(v.get("allocationStrategy", "")).startswith("SPOT_"):
        raise _Bad(" applies to EC2 Spot capacity; on your own nodes use BEST_FIT, "
                   "BEST_FIT_PROGRESSIVE or SPREAD", "allocationStrategy")


def _compute_environment_order(v: list[dict[str, Any]]) -> None:
    _count(v, 1, 3)  # AWS: "up to three compute environments" per queue
    seen: dict[int, int] = {}
    for i, entry in enumerate(v):
        order = entry["order"]
        _range(order, 0, None, i, "order")
        if order in seen:
            raise _Bad(f" must be unique ({order} is also used by entry {seen[order]})",
                       i, "order")
        seen[order] = i


# AWS Batch's tag restrictions: "letters, numbers, spaces representable in UTF-8, and the
# following characters: + - = . _ : / @" (the model's pattern ^([\p{L}\p{Z}\p{N}_.:/=+\-@]*)$).
_TAG_PUNCTUATION = frozenset("+-=._:/@")


def _tag_text_ok(text: str) -> bool:
    return all(ch.isalnum() or ch in _TAG_PUNCTUATION or unicodedata.category(ch).startswith("Z") for ch in text)


def _tags(v: dict[str, str]) -> None:
    _count(v, None, MAX_TAGS)
    for key, value in v.items():
        if not 1 <= len(key) <= 128:
            raise _Bad(f" key must be 1 to 128 characters (got {len(key)})", _Key(key))
        if len(value) > 256:
            raise _Bad(f" value must be at most 256 characters (got {len(value)})", _Key(key))
        if key.lower().startswith("aws:"):  # AWS reserves aws: in any letter case
            raise _Bad(": tag keys starting with aws: are reserved for AWS", _Key(key))
        for text, what in ((key, "key"), (value, "value")):
            if not _tag_text_ok(text) and key != "hpcbatch:client-token":  # a control field, any printable
                raise _Bad(f" {what} may hold only letters, numbers, spaces and + - = . _ : / @ "
                           f"(got {_show(text)})", _Key(key))


_SHAPE_HOOKS: dict[str, Hook] = {
    "RetryStrategy": _retry_strategy,
    "EvaluateOnExit": _evaluate_on_exit,
    "JobTimeout": _job_timeout,
    "ArrayProperties": _array_properties,
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
    "ComputeResource": _compute_resources,
    "ComputeResourceUpdate": _compute_resources,
    "ComputeEnvironmentOrders": _compute_environment_order,
    "TagrisTagsMap": _tags,
    "TagsMap": _tags,
}


# --- semantic rules, keyed by operation (run on the whole body after the walk) -------------


def _name(v: dict[str, Any], field: str) -> None:
    name = v.get(field)
    if name is None:
        return
    _length(name, 1, 128, field)
    if not NAME_PATTERN.match(name):
        raise _Bad(f" must start with a letter or digit and contain only letters, digits, "
                   f"hyphens and underscores (got {_show(name)})", field)


def _nonempty(v: dict[str, Any], *fields: str) -> None:
    for field in fields:
        if field in v and not v[field]:
            raise _Bad(" must not be empty", field)


def _submit_job(v: dict[str, Any]) -> None:
    _name(v, "jobName")
    _submit_overrides(v)
    _nonempty(v, "jobQueue", "jobDefinition")
    if "dependsOn" in v:
        _count(v["dependsOn"], None, 20, "dependsOn")  # AWS: up to 20 job dependencies
    if "schedulingPriorityOverride" in v:
        _range(v["schedulingPriorityOverride"], 0, 9999, "schedulingPriorityOverride")
    _job_signal(v.get("tags") or {}, (v.get("timeout") or {}).get("attemptDurationSeconds"))


_OWN_NODES = "hpcbatch runs jobs on its own nodes; {} is not supported"
_NOT_SUPPORTED = ": " + _OWN_NODES


def _submit_overrides(v: dict[str, Any]) -> None:
    """SubmitJob's ECS/EKS overrides: refused, not ignored (containerOverrides does the work here)."""
    for field in ("eksPropertiesOverride", "ecsPropertiesOverride", "consumableResourcePropertiesOverride"):
        if field in v:
            hint = "; use containerOverrides" if field == "ecsPropertiesOverride" else ""
            raise _Bad(_NOT_SUPPORTED.format(field) + hint, field)
    for i, entry in enumerate((v.get("nodeOverrides") or {}).get("nodePropertyOverrides") or ()):
        for field in ("eksPropertiesOverride", "ecsPropertiesOverride", "consumableResourcePropertiesOverride"):
            if field in entry:
                raise _Bad(_NOT_SUPPORTED.format(field) + ("; use containerOverrides" if field.startswith("ecs") else ""),
                           "nodeOverrides", "nodePropertyOverrides", i, field)


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


def _job_queue(v: dict[str, Any]) -> None:
    _name(v, "jobQueueName")
    _nonempty(v, "jobQueue")
    if "priority" in v:
        _range(v["priority"], 0, 1000, "priority")
    _job_state_time_limit_actions(v)


def _queue_tags(tags: dict[str, str]) -> None:
    """A job queue's preemption settings (hpcbatch.model.interrupts): true or false."""
    bad = interrupts.queue_tag_error(tags)
    if bad is not None:
        raise _Bad(f" {bad[1]}", "tags", _Key(bad[0]))


def _create_job_queue(v: dict[str, Any]) -> None:
    _job_queue(v)
    _queue_tags(v.get("tags") or {})
    # The model made this optional for SageMaker service queues; a queue here needs CEs.
    if "computeEnvironmentOrder" not in v:
        raise _Bad("", "computeEnvironmentOrder", head="Missing required field ")


def _fairshare_policy(v: dict[str, Any]) -> None:
    """AWS's FairsharePolicy limits (API reference: FairsharePolicy, ShareAttributes)."""
    if "shareDecaySeconds" in v:
        _range(v["shareDecaySeconds"], 0, 604_800, "fairsharePolicy", "shareDecaySeconds")
    if "computeReservation" in v:
        _range(v["computeReservation"], 0, 99, "fairsharePolicy", "computeReservation")
    shares = v.get("shareDistribution", [])
    _count(shares, None, 500, "fairsharePolicy", "shareDistribution")
    seen: set[str] = set()
    for i, share in enumerate(shares):
        ident = share["shareIdentifier"]
        # AWS: up to 255 letters, numbers and underscores, optionally ending in one asterisk.
        if not re.fullmatch(r"[A-Za-z0-9_]{1,255}\*?|\*", ident):
            raise _Bad(
                " must be 1-255 letters, numbers and underscores, optionally ending with *",
                "fairsharePolicy", "shareDistribution", i, "shareIdentifier",
            )
        if ident in seen:
            raise _Bad(f" {ident} is listed twice", "fairsharePolicy", "shareDistribution", i, "shareIdentifier")
        seen.add(ident)
        if "weightFactor" in share and not 0.0001 <= share["weightFactor"] <= 999.9999:
            raise _Bad(
                " must be between 0.0001 and 999.9999", "fairsharePolicy", "shareDistribution", i, "weightFactor"
            )


def _scheduling_policy(v: dict[str, Any]) -> None:
    if "name" in v:
        _name(v, "name")
    _nonempty(v, "arn")
    if "quotaSharePolicy" in v:
        raise _Bad(" is not supported: hpcbatch implements fair share (fairsharePolicy)", "quotaSharePolicy")
    if "fairsharePolicy" in v:
        _fairshare_policy(v["fairsharePolicy"])


def _job_state_time_limit_actions(v: dict[str, Any]) -> None:
    actions = v.get("jobStateTimeLimitActions", [])
    for i, action in enumerate(actions):
        # The minimum (600 s on AWS) is the head's to decide (a test head may allow less).
        _range(action["maxTimeSeconds"], 1, 86_400, "jobStateTimeLimitActions", i, "maxTimeSeconds")
        _nonempty(action, "reason")


def _tag_resource(v: dict[str, Any]) -> None:
    _nonempty(v, "resourceArn")
    _count(v["tags"], 1, MAX_TAGS, "tags")  # the model's min 1: a TagResource tags something
    if ":job-queue/" in v["resourceArn"]:
        _queue_tags(v["tags"])
    elif ":job/" in v["resourceArn"] and interrupts.SIGNAL_TAG in v["tags"]:
        _job_signal(v["tags"], None)


def _job_signal(tags: dict[str, str], timeout_s: int | None) -> None:
    """A job's warning signal (``hpcbatch:signal=USR1@60``, hpcbatch.model.interrupts)."""
    text = tags.get(interrupts.SIGNAL_TAG)
    if text is None:
        return
    problem = interrupts.signal_error(text, timeout_s)
    if problem is not None:
        raise _Bad(f" {problem}", "tags", _Key(interrupts.SIGNAL_TAG))


def _untag_resource(v: dict[str, Any]) -> None:
    _nonempty(v, "resourceArn")
    for i, key in enumerate(v["tagKeys"]):
        if key.lower().startswith("aws:"):  # AWS: "You can't edit or delete tag keys ... with this prefix"
            raise _Bad(f": tag keys starting with aws: are reserved for AWS (got {_show(key)})", "tagKeys", i)


def _max_results(hi: int) -> Hook:
    def check(v: dict[str, Any]) -> None:
        if "maxResults" in v:
            _range(v["maxResults"], 1, hi, "maxResults")

    return check


def _describe_jobs(v: dict[str, Any]) -> None:
    _count(v["jobs"], 1, 100, "jobs")  # AWS: "A list of up to 100 job IDs"


_OPERATION_HOOKS: dict[str, Hook] = {
    "SubmitJob": _submit_job,
    "RegisterJobDefinition": _register_job_definition,
    "CreateJobQueue": _create_job_queue,
    "UpdateJobQueue": _job_queue,
    "CreateComputeEnvironment": lambda v: _name(v, "computeEnvironmentName"),
    "UpdateComputeEnvironment": lambda v: _nonempty(v, "computeEnvironment"),
    "DeleteComputeEnvironment": lambda v: _nonempty(v, "computeEnvironment"),
    "DeleteJobQueue": lambda v: _nonempty(v, "jobQueue"),
    "DeregisterJobDefinition": lambda v: _nonempty(v, "jobDefinition"),
    "CancelJob": lambda v: _nonempty(v, "jobId", "reason"),
    "TerminateJob": lambda v: _nonempty(v, "jobId", "reason"),
    "DescribeJobs": _describe_jobs,
    "ListJobs": _max_results(1000),
    "DescribeComputeEnvironments": _max_results(100),
    "DescribeJobQueues": _max_results(100),
    "DescribeJobDefinitions": _max_results(100),
    "CreateSchedulingPolicy": _scheduling_policy,
    "UpdateSchedulingPolicy": _scheduling_policy,
    "DeleteSchedulingPolicy": lambda v: _nonempty(v, "arn"),
    "ListSchedulingPolicies": _max_results(1000),
    "TagResource": _tag_resource,
    "UntagResource": _untag_resource,
    "ListTagsForResource": lambda v: _nonempty(v, "resourceArn"),
}


def refuse_nul(body: Any) -> None:
    """hpcbatch's own operations have no botocore shape; they take no NUL byte either.

    Walks every string and key of ``body`` (iteratively: bodies are already bounded in depth)
    and raises a ClientError naming the first field that holds one.
    """
    stack: list[tuple[Any, str]] = [(body, "")]
    while stack:
        value, where = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                raise ClientError(f"{where or 'request body'}{_NUL}")
        elif isinstance(value, dict):
            for key, item in value.items():
                name = json.dumps(_clip(str(key)))[1:-1]
                if "\x00" in str(key):
                    raise ClientError(f"{where + '.' if where else ''}{name} (a field name){_NUL}")
                stack.append((item, f"{where}.{name}" if where else name))
        elif isinstance(value, list):
            stack.extend((item, f"{where}[{i}]") for i, item in enumerate(value))


def check_image_name(image: object, field: str = "image") -> str:
    """An image reference for an hpcbatch operation outside AWS's model (PrepullImage)."""
    if not isinstance(image, str) or not image.strip():
        raise ClientError(f"{field} must name a container image")
    if "\x00" in image or image.startswith("-") or any(c.isspace() for c in image):
        raise ClientError(f"{field} must be an image reference: no NUL byte, no white space, "
                          f"not beginning with '-' (got {_show(image)})")
    return image


# --- public API ----------------------------------------------------------------------------


@functools.cache
def _service_model() -> Any:
    import botocore.session  # deferred: loading the model takes ~100 ms, only the head needs it

    return botocore.session.get_session().get_service_model("batch")


@functools.cache
def _compiler() -> _Compiler:
    return _Compiler()


_COMPILE_LOCK = threading.Lock()  # a half-compiled shape holds a forward reference


@functools.cache
def _operation_check(operation: str) -> Check:
    shape = _service_model().operation_model(operation).input_shape
    with _COMPILE_LOCK:
        walk = _compiler().compile(shape)
    hook = _OPERATION_HOOKS.get(operation)

    def check(v: Any) -> None:
        walk(v)
        if hook is not None:
            hook(v)

    return check


def validate_request(operation: str, body: object, *, raw_size: int | None = None) -> dict:
    """Validate `body` (parsed JSON) for AWS Batch operation `operation` (e.g. 'SubmitJob'); return it as a dict or raise ClientError."""
    if operation not in OPERATIONS:
        raise ClientError(f"Unsupported operation {_show(operation)}")
    if operation == "SubmitJob" and raw_size is not None and raw_size > SUBMIT_JOB_MAX_BYTES:
        raise ClientError(f"SubmitJob request is {raw_size} bytes; the limit is 30 KiB")
    if operation == "RegisterJobDefinition" and raw_size is not None and raw_size > JOB_DEFINITION_MAX_BYTES:
        raise ClientError(f"RegisterJobDefinition request is {raw_size} bytes; a job definition is at most "
                          "24 KiB (AWS Batch's quota)")
    if not isinstance(body, dict):
        raise ClientError(f"{operation} request body must be a JSON object (got {_jtype(body)})")
    try:
        _operation_check(operation)(body)
    except _Bad as e:
        raise ClientError(e.render(operation)) from None
    return body


def route_table() -> dict[str, str]:
    """Map each supported POST operation's HTTP path (e.g. '/v1/submitjob') to its operation name."""
    return {op.path: op.name for op in sorted(OPERATION_TABLE, key=lambda op: op.name)
            if op.validated == "aws" and not op.rest}


def rest_routes() -> list[tuple[str, str, str]]:
    """(method, path, operation) of the operations whose path carries the resource (tagging).

    The model writes ``/v1/tags/{resourceArn}``; botocore percent-encodes the ARN's ``/`` and
    ``:`` into one segment, other clients may not, so the route takes the rest of the path.
    """
    return [(op.method, op.path.replace("{resourceArn}", "{resourceArn:.+}"), op.name)
            for op in sorted(OPERATION_TABLE, key=lambda op: op.name) if op.validated == "aws" and op.rest]
