"""The vocabulary every rule shares: the failure type, its field path, and the small checks.

Rules / theory of operation:

- A rule raises ``_Bad`` with the failing field's innermost path segments; each enclosing level
  of the shape walk (``hpcbatch.validation.shapes``) appends its own segment as the failure
  propagates, so the path is formatted only on failure and a valid request never builds one.
- ``_range``, ``_length`` and ``_count`` phrase AWS's limits the same way everywhere ("must be
  between 1 and 10 (got 11)"); ``_show`` keeps a bad value short (a body may carry 30 KiB).
- Names (``NAME_PATTERN``) and tags (AWS's tag character set, 50 per resource, no ``aws:``
  keys) are the same for every resource, so their rules live here.
- No string of any operation may hold a NUL byte: the walk refuses it in AWS's operations;
  ``refuse_nul`` walks the bodies of hpcbatch's own operations, which have no botocore shape.
- This module imports nothing else of the package: every other module may import it.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable
from typing import Any

from hpcbatch.errors import ClientError

# AWS Batch names: 1-128 ASCII letters, digits, hyphens and underscores, starting with a
# letter or digit. \A..\Z rather than ^..$ so .match() accepts neither a prefix nor "name\n".
NAME_PATTERN: re.Pattern[str] = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_-]{0,127}\Z")

SUBMIT_JOB_MAX_BYTES = 30 * 1024  # AWS Batch service quota: a SubmitJob payload is <= 30 KiB
JOB_DEFINITION_MAX_BYTES = 24 * 1024  # AWS Batch service quota: a job definition is <= 24 KiB
MAX_TAGS = 50  # AWS: "maximum number of tags per resource: 50"


Check = Callable[[Any], None]
Hook = Callable[[Any], None]


_NUL = " must not contain a NUL byte (\\u0000): no program, path or environment can hold one"


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


SHAPE_HOOKS: dict[str, Hook] = {
    "TagrisTagsMap": _tags,
    "TagsMap": _tags,
}


_OWN_NODES = "hpcbatch runs jobs on its own nodes; {} is not supported"
_NOT_SUPPORTED = ": " + _OWN_NODES


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
