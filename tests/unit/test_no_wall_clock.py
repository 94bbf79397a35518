"""Unit tests assert on events (an order, a count, a barrier), never on elapsed wall-clock time:
a loaded CI box makes any bound flaky, and speed belongs in bench/ as name=value figures.

A deadline that bounds a wait (``assert time.monotonic() < deadline``) is a timeout, not a
measurement, and is allowed; an elapsed time (``clock() - t0``) in an assertion is not.
"""

from __future__ import annotations

import ast
from pathlib import Path

UNIT = Path(__file__).resolve().parent
CLOCKS = {"monotonic", "time", "perf_counter", "monotonic_ns", "perf_counter_ns", "time_ns"}


def _is_clock(node: ast.AST) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr in CLOCKS and isinstance(node.func.value, ast.Name)
            and node.func.value.id in ("time", "loop"))


def _elapsed(node: ast.AST, measured: set[str]) -> bool:
    """Does ``node`` hold ``clock() - x`` (or a name assigned from one)?"""
    for sub in ast.walk(node):
        if isinstance(sub, ast.BinOp) and isinstance(sub.op, ast.Sub) and (_is_clock(sub.left) or _is_clock(sub.right)):
            return True
        if isinstance(sub, ast.Name) and sub.id in measured:
            return True
    return False


def wall_clock_assertions(source: str) -> list[int]:
    tree = ast.parse(source)
    measured: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and _elapsed(node.value, set()):
            measured |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Assert) and _elapsed(node.test, measured)]


def test_the_check_sees_an_elapsed_time_and_lets_a_deadline_pass() -> None:
    assert wall_clock_assertions("t0 = time.monotonic()\nassert time.monotonic() - t0 < 3\n") == [2]
    assert wall_clock_assertions("s = time.perf_counter()\nper = (time.perf_counter() - s) / 9\nassert per < 1\n") == [3]
    assert wall_clock_assertions("d = time.monotonic() + 5\nassert time.monotonic() < d\n") == []


def test_no_unit_test_asserts_on_elapsed_wall_clock_time() -> None:
    found = [f"{path.name}:{line}" for path in sorted(UNIT.glob("test_*.py"))
             for line in wall_clock_assertions(path.read_text())]
    assert found == [], "assert on events, or measure in bench/: " + ", ".join(found)
