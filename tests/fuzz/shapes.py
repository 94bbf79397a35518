"""Request bodies for every operation the head serves, drawn from AWS Batch's service model.

``body_for(operation)`` is a hypothesis strategy of raw request bodies (bytes) for one
operation: a plausible body built from the operation's botocore input shape (members of the
right types, enum values, names the test cluster knows), then often broken on purpose —
a member of the wrong type, a required member missing, an unknown member, a huge string, a
lone surrogate, deep nesting — or replaced by bytes that are not a JSON object at all
(invalid UTF-8, truncated JSON, scalars, a body over the size limit).

The edge's own attacks (docs/security.md) are shapes too: a NUL byte in any string or key,
environment names with ``=`` or reserved (``AWS_BATCH_*``, GPU visibility), host paths and
devices a definition may not take, and paths carrying podman mount options.

hpcbatch's own operations (``/hpcbatch/v1/...``) have no botocore shape; their bodies are
objects over the member names they read (``EXTENSION_FIELDS``) with values of any type.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from hypothesis import strategies as st

# Names the fuzz cluster has, so that plausible bodies reach past "does not exist".
KNOWN_NAMES = ("default", "hpcbatch-default", "hpcbatch-default-multinode", "fuzzq", "node1", "root",
               # resourceArn of the tagging operations: ARNs of what the cluster has
               "arn:aws:batch:local:000000000000:job-queue/fuzzq",
               "arn:aws:batch:local:000000000000:job-definition/hpcbatch-default:1")
EXTENSION_FIELDS = ("jobId", "attempt", "offset", "limit", "name", "user", "role", "accessKeyId",
                    "status", "reason", "script", "data", "since", "maxResults", "nextToken",
                    "profile", "startFromOffset")
MAX_DEPTH = 5
# Strings that reach exec, an environment, podman or a path, as an attacker writes them.
HOSTILE_STRINGS = ("x\x00y", "\x00", "/", "/dev/vda", "/etc:/x", "/data,suid", "/a/../etc", "-v/:/host",
                   "--privileged", "PATH=/evil", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES")
HOSTILE_ENV_NAMES = ("A=B", "LD_PRELOAD=/x.so", "N\x00UL", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES",
                     "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL", "AWS_BATCH_JOB_ID")
HOSTILE_CONTAINER = (
    {"volumes": [{"name": "r", "host": {"sourcePath": "/"}}], "mountPoints": [{"sourceVolume": "r", "containerPath": "/h"}]},
    {"linuxParameters": {"devices": [{"hostPath": "/dev/vda", "permissions": ["READ", "WRITE"]}]}},
    {"linuxParameters": {"sharedMemorySize": 1 << 30}},
    {"linuxParameters": {"tmpfs": [{"containerPath": "/t:exec", "size": 8}]}},
    {"ulimits": [{"name": "rtprio", "softLimit": 99, "hardLimit": 99}]},
    {"image": "--privileged"},
)

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
    st.text(max_size=20),
)
any_json = st.recursive(
    _scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def _string(shape: Any) -> st.SearchStrategy[str]:
    if shape.enum:
        return st.sampled_from(list(shape.enum)) | st.sampled_from([e.lower() for e in shape.enum])
    return st.one_of(
        st.sampled_from(KNOWN_NAMES), st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_-]{0,20}\Z"),
        st.text(max_size=24), st.sampled_from(["1", "128", "0", "-1", "1.5", "*", "aws:x", "AWS_BATCH_X"]),
        st.sampled_from(HOSTILE_STRINGS),
    )


def plausible(shape: Any, depth: int = 0) -> st.SearchStrategy[Any]:
    """Values of ``shape``'s type, mostly valid, often at or past its limits."""
    kind = shape.type_name
    if kind == "structure":
        if depth > MAX_DEPTH:
            return st.just({})
        required = set(shape.required_members)
        members = {n: plausible(m, depth + 1) for n, m in shape.members.items()}
        return st.fixed_dictionaries(
            {n: s for n, s in members.items() if n in required},
            optional={n: s for n, s in members.items() if n not in required},
        )
    if kind == "list":
        return st.lists(plausible(shape.member, depth + 1), max_size=3 if depth < MAX_DEPTH else 0)
    if kind == "map":
        return st.dictionaries(_string(shape.key), plausible(shape.value, depth + 1), max_size=3)
    if kind == "string":
        return _string(shape)
    if kind in ("integer", "long"):
        return st.integers(-2, 200) | st.sampled_from([0, 1, 10, 60, 9999, 10_000, 2**31, -(2**63), 10**40])
    if kind in ("float", "double"):
        return st.floats(allow_nan=True, allow_infinity=True)
    if kind == "boolean":
        return st.booleans()
    return any_json


@functools.cache
def _input_shape(operation: str) -> Any:
    import botocore.session

    return botocore.session.get_session().get_service_model("batch").operation_model(operation).input_shape


# --- breaking a plausible body ---------------------------------------------------------------


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every position in ``doc`` (dict keys and list indexes), the root excluded."""
    out: list[tuple[Any, ...]] = []
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for k, v in items:
        out.append((*prefix, k))
        out.extend(_paths(v, (*prefix, k)))
    return out


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    target = doc
    for k in path[:-1]:
        target = target[k]
    target[path[-1]] = value
    return doc


def _deep(n: int) -> Any:
    value: Any = "bottom"
    for _ in range(n):
        value = [value]
    return value


@st.composite
def _broken(draw: st.DrawFn, doc: dict[str, Any], required: tuple[str, ...]) -> Any:
    how = draw(st.sampled_from(["valid", "wrong_type", "drop_required", "extra", "huge", "surrogate", "deep",
                                "nul", "env", "container"]))
    paths = _paths(doc)
    if how == "nul":  # a NUL byte inside a string value, or in a key
        strings = [p for p in paths if isinstance(_get(doc, p), str)]
        if strings:
            where = draw(st.sampled_from(strings))
            value = _get(doc, where)
            cut = draw(st.integers(0, len(value)))
            return _set(doc, where, value[:cut] + "\x00" + value[cut:])
        doc["a\x00b"] = "x"
        return doc
    if how == "env":  # a hostile name in every environment list there is (or a new one)
        name = draw(st.sampled_from(HOSTILE_ENV_NAMES))
        lists = [p for p in paths if p[-1] == "environment" and isinstance(_get(doc, p), list)]
        for where in lists:
            _get(doc, where).append({"name": name, "value": "1"})
        if not lists:
            doc.setdefault("containerOverrides", {})["environment"] = [{"name": name, "value": "1"}]
        return doc
    if how == "container":  # what only an admin may allow, in a container the body has
        containers = [p for p in paths if p[-1] in ("containerProperties", "container") and isinstance(_get(doc, p), dict)]
        for where in containers:
            _get(doc, where).update(json.loads(json.dumps(draw(st.sampled_from(HOSTILE_CONTAINER)))))
        return doc
    if how == "wrong_type" and paths:
        return _set(doc, draw(st.sampled_from(paths)), draw(any_json))
    if how == "drop_required" and required:
        doc.pop(draw(st.sampled_from(required)), None)
    elif how == "extra":
        where = draw(st.sampled_from([(), *[p for p in paths if isinstance(_get(doc, p), dict)]]))
        _get(doc, where)[draw(st.text(min_size=1, max_size=12))] = draw(any_json)
    elif how == "huge":
        big = "x" * draw(st.sampled_from([300, 40_000, 1_500_000]))
        return _set(doc, draw(st.sampled_from(paths)), big) if paths else {"jobName": big}
    elif how == "surrogate":
        value = "\ud800" + draw(st.text(max_size=4))
        return _set(doc, draw(st.sampled_from(paths)), value) if paths else {value: 1}
    elif how == "deep":
        nested = _deep(draw(st.sampled_from([50, 900, 5_000])))
        return _set(doc, draw(st.sampled_from(paths)), nested) if paths else nested
    return doc


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for k in path:
        doc = doc[k]
    return doc


def _encode(doc: Any) -> bytes:
    # surrogatepass: a lone surrogate as JSON's \ud800 escape (ensure_ascii) is what a
    # client can send; deep nesting past json's recursion limit is written by hand.
    try:
        return json.dumps(doc).encode()
    except RecursionError:
        return b"[" * 100_000 + b"]" * 100_000


raw_garbage = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([
        b"", b"{", b"null", b"[]", b"123", b'"x"', b"true", b"{\"a\":}", b"\xff\xfe{}", b"{\"jobName\": \"\xc3\x28\"}",
        b"{\"jobs\": [\"a\"]}" + b" " * 10, b"NaN", b"{\"a\": Infinity}", b"\x00" * 10,
    ]),
    st.integers(1, 200_000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1, 50_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.just(b'{"jobName": "' + b"x" * (3 << 20) + b'"}'),  # over the head's 2 MiB body limit
)


@functools.cache
def body_for(operation: str) -> st.SearchStrategy[bytes]:
    """Raw request bodies for ``operation`` (an AWS Batch name or an hpcbatch extension)."""
    try:
        shape = _input_shape(operation)
    except Exception:  # an hpcbatch extension: no botocore shape
        shape = None
    if shape is None:
        docs = st.dictionaries(st.sampled_from(EXTENSION_FIELDS),
                               st.sampled_from(KNOWN_NAMES) | any_json, max_size=4)
        required: tuple[str, ...] = ()
    else:
        docs = plausible(shape)
        required = tuple(shape.required_members)
    broken = docs.flatmap(lambda d: _broken(d, required)).map(_encode)
    return st.one_of(broken, broken, broken, raw_garbage)
