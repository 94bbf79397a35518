"""Compile botocore's input shapes for ``batch`` into check closures: the shape walk.

Rules / theory of operation:

- The walk follows botocore's service model for ``batch`` (the model boto3 and the AWS CLI
  serialise from), so a field the real API takes is accepted and a typo is not.
- Each input shape is compiled once, on first use, into a closure; a request then costs one
  closure call per value and no model look-ups (SubmitJob is on the hot path).
- Limits AWS documents but the model does not carry are hooks keyed by shape name, given to
  the compiler (``_Compiler(hooks)``); a hook runs after its value's members were walked, so
  it may trust types and required members.
- A member whose value is JSON null is dropped from the body, as AWS treats null as absent.
- Map min/max from the model are not enforced: an empty ``tags: {}`` means "no tags" and
  the 50-tag limit is a semantic rule (``hpcbatch.validation.common``).
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Mapping
from typing import Any

from hpcbatch.validation.common import (
    _NUL,
    Check,
    Hook,
    _Bad,
    _clip,
    _count,
    _jtype,
    _Key,
    _length,
    _range,
    _show,
)

_INT32 = (-(2**31), 2**31 - 1)  # botocore "integer" is a 32-bit Java int on AWS's side
_INT64 = (-(2**63), 2**63 - 1)


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


class _Compiler:
    """Turns botocore shapes into check closures, memoised per (shape, relaxed)."""

    def __init__(self, hooks: Mapping[str, Hook] | None = None) -> None:
        self.cache: dict[tuple[str, bool], Check] = {}
        self.hooks: Mapping[str, Hook] = hooks or {}

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
        hook = self.hooks.get(shape.name)

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
        hook = self.hooks.get(shape.name)

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
        hook = self.hooks.get(shape.name)

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
