"""CloudWatch Logs requests as hpcbatch.head.cwlogs takes them: AWS's errors, each body
checked against botocore's ``logs`` service model (types, bounds, patterns; the first
mistake is an InvalidParameterException naming the field), and the filter pattern language
FilterLogEvents matches lines with.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from hpcbatch.errors import HpcbatchError


class LogsError(HpcbatchError):
    """A CloudWatch Logs error: AWS's code and HTTP 400."""

    http_status = 400

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.aws_code = code


def invalid(message: str) -> LogsError:
    return LogsError("InvalidParameterException", message)


def not_found(message: str) -> LogsError:
    return LogsError("ResourceNotFoundException", message)


# ------------------------------------------------------------------ request shapes
@cache
def _model() -> Any:
    import botocore.session

    return botocore.session.get_session().get_service_model("logs")


def validate(operation: str, body: Any) -> dict[str, Any]:
    """Check ``body`` against the operation's input shape in botocore's model; the first
    mistake is an InvalidParameterException naming the field."""
    if not isinstance(body, dict):
        raise LogsError("SerializationException", "the request body must be a JSON object")
    shape = _model().operation_model(operation).input_shape
    for name in shape.required_members:
        if name not in body:
            raise invalid(f"{name} is required")
    for name, value in body.items():
        member = shape.members.get(name)
        if member is None:
            raise invalid(f"{name} is not a parameter of {operation}")
        _check(name, member, value)
    return body


def _check(where: str, shape: Any, value: Any) -> None:
    """``value`` fits ``shape`` (one botocore member), or an InvalidParameterException."""
    check = _CHECKS.get(shape.type_name)
    if check is None:
        raise invalid(f"{where}: hpcbatch does not take this parameter")
    check(where, shape, value)


def _check_string(where: str, shape: Any, value: Any) -> None:
    meta = shape.metadata
    if not isinstance(value, str):
        raise invalid(f"{where} must be a string")
    if len(value) < meta.get("min", 0) or len(value) > meta.get("max", 1 << 30):
        raise invalid(f"{where} must be {meta.get('min', 0)} to {meta.get('max')} characters long")
    if "pattern" in meta and not re.fullmatch(meta["pattern"], value):
        raise invalid(f"{where} {value[:100]!r} must match the pattern {meta['pattern']}")
    if shape.enum and value not in shape.enum:
        raise invalid(f"{where} must be one of {', '.join(shape.enum)}")


def _check_integer(where: str, shape: Any, value: Any) -> None:
    meta = shape.metadata
    if not isinstance(value, int) or isinstance(value, bool):
        raise invalid(f"{where} must be an integer")
    if value < meta.get("min", -(1 << 63)) or value > meta.get("max", 1 << 63):
        raise invalid(f"{where} must be between {meta.get('min')} and {meta.get('max', 'any')}")


def _check_boolean(where: str, shape: Any, value: Any) -> None:
    if not isinstance(value, bool):
        raise invalid(f"{where} must be true or false")


def _check_list(where: str, shape: Any, value: Any) -> None:
    meta = shape.metadata
    if not isinstance(value, list):
        raise invalid(f"{where} must be a list")
    if len(value) < meta.get("min", 0) or len(value) > meta.get("max", 1 << 30):
        raise invalid(f"{where} must hold {meta.get('min', 0)} to {meta.get('max')} items")
    for i, item in enumerate(value):
        _check(f"{where}[{i}]", shape.member, item)


_CHECKS: dict[str, Callable[[str, Any, Any], None]] = {
    "string": _check_string, "integer": _check_integer, "long": _check_integer,
    "boolean": _check_boolean, "list": _check_list,
}


# ------------------------------------------------------------------ filter patterns
_PATTERN_TERM = re.compile(r'\s*(?:([?-]?)"((?:[^"\\]|\\.)*)"|([?-]?)([^\s"]+))')


@dataclass(frozen=True)
class FilterPattern:
    """CloudWatch's pattern for unstructured events: terms (all must appear), quoted phrases,
    ``?term`` (any of them), ``-term`` (none). Case-sensitive, as AWS matches."""

    all_of: tuple[str, ...] = ()
    any_of: tuple[str, ...] = ()
    none_of: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> FilterPattern:
        text = text.strip()
        if text.startswith(("{", "[")) or text.startswith("%"):
            raise invalid(
                "filterPattern: hpcbatch matches terms, \"quoted phrases\", ?any-of and -excluded terms; "
                "JSON ({ $.field = ... }), space-delimited ([a, b]) and regular-expression (%...%) patterns "
                "are not supported"
            )
        all_of: list[str] = []
        any_of: list[str] = []
        none_of: list[str] = []
        pos = 0
        while pos < len(text):
            m = _PATTERN_TERM.match(text, pos)
            if m is None or m.end() == pos:
                raise invalid(f"filterPattern {text!r} is malformed at {text[pos:pos + 40]!r} (an unclosed quote?)")
            pos = m.end()
            sign = m.group(1) if m.group(2) is not None else m.group(3)
            term = re.sub(r"\\(.)", r"\1", m.group(2)) if m.group(2) is not None else m.group(4)
            if not term:
                continue
            {"": all_of, "?": any_of, "-": none_of}[sign].append(term)
            while pos < len(text) and text[pos].isspace():
                pos += 1
        return cls(tuple(all_of), tuple(any_of), tuple(none_of))

    def matches(self, message: str) -> bool:
        return (all(t in message for t in self.all_of)
                and (not self.any_of or any(t in message for t in self.any_of))
                and not any(t in message for t in self.none_of))

    def bytes_test(self) -> Callable[[bytes], bool] | None:
        """The same test on a line's raw bytes (UTF-8 terms), so lines that cannot match are
        never decoded; None for the empty pattern (everything matches)."""
        if not (self.all_of or self.any_of or self.none_of):
            return None
        all_of = [t.encode() for t in self.all_of]
        any_of = [t.encode() for t in self.any_of]
        none_of = [t.encode() for t in self.none_of]

        def test(line: bytes) -> bool:
            return (all(t in line for t in all_of) and (not any_of or any(t in line for t in any_of))
                    and not any(t in line for t in none_of))

        return test
