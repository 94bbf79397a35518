"""The rest of the head talks to the engine through its methods, never its dictionaries.

``Engine.jobs`` (and the scheduler and node registry it holds; ``Engine.nodes`` is gone) are
the engine's own state: the service, console, metrics, power and fleet read live jobs and
nodes through ``engine.job()``, ``jobs_where()``, ``node()``, ``nodes_snapshot()``... Only
hpcbatch/head/engine.py and its parts (the hpcbatch.head modules engine.py imports: arrays,
gangs, reports...) may touch them; tests and benches read jobs and nodes through the same
methods. This scans the source, as test_no_wall_clock.py does.
"""

from __future__ import annotations

import ast
from pathlib import Path

import hpcbatch

PACKAGE = Path(hpcbatch.__file__).resolve().parent
ENGINE = PACKAGE / "head" / "engine.py"
PRIVATE = {"jobs", "nodes", "scheduler", "registry"}  # the engine's state
RECEIVERS = {"engine", "_engine"}  # ``engine.jobs``, ``self.engine.nodes``, ``service._engine.scheduler``


def _name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def reaches_in(source: str) -> list[tuple[int, str]]:
    """(line, ``engine.ATTR``) wherever ``source`` reads the engine's state directly."""
    return sorted((node.lineno, f"engine.{node.attr}") for node in ast.walk(ast.parse(source))
                  if isinstance(node, ast.Attribute) and node.attr in PRIVATE and _name(node.value) in RECEIVERS)


def engine_parts() -> set[Path]:
    """engine.py and the hpcbatch.head modules it imports (its parts)."""
    parts = {ENGINE}
    for node in ast.walk(ast.parse(ENGINE.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "hpcbatch.head":
                parts |= {PACKAGE / "head" / f"{a.name}.py" for a in node.names}
            elif node.module.startswith("hpcbatch.head."):
                parts.add(PACKAGE.joinpath(*node.module.split(".")[1:]).with_suffix(".py"))
    return parts


def test_the_check_sees_a_reach_into_the_engine_and_lets_methods_pass() -> None:
    assert reaches_in("x = self.engine.jobs.get(i)\ny = engine.nodes[n]\n") == [(1, "engine.jobs"), (2, "engine.nodes")]
    assert reaches_in("z = service.engine.scheduler.front_of_queue(q)\n") == [(1, "engine.scheduler")]
    assert reaches_in("x = self.engine.job(i)\ny = engine.node(n)\nz = self.store.jobs\nw = info.jobs\n") == []


def test_the_engines_parts_are_found_from_its_imports() -> None:
    parts = {p.name for p in engine_parts()}
    assert {"engine.py", "arrays.py", "gangs.py"} <= parts
    assert "service" not in {p.parent.name for p in engine_parts()} and "power.py" not in parts


def test_no_code_outside_the_engine_reads_its_dictionaries() -> None:
    allowed = engine_parts()
    found = [f"{path.relative_to(PACKAGE.parent)}:{line} {what}"
             for path in sorted(PACKAGE.rglob("*.py")) if path not in allowed
             for line, what in reaches_in(path.read_text())]
    assert found == [], "read the engine through its methods (job, jobs_where, node, nodes_snapshot...): " + \
        ", ".join(found)


def test_no_test_or_bench_reads_the_engines_job_and_node_dictionaries() -> None:
    """Tests and benches hold the engine to the same methods (they may still look at its
    scheduler and registry, which the engine's own unit tests drive)."""
    root = PACKAGE.parent
    here = Path(__file__).resolve()
    paths = sorted([*(root / "tests").rglob("*.py"), *(root / "bench").rglob("*.py")])
    found = [f"{path.relative_to(root)}:{line} {what}" for path in paths if path.resolve() != here
             for line, what in reaches_in(path.read_text()) if what in ("engine.jobs", "engine.nodes")]
    assert found == [], "read the engine through its methods (job, jobs_where, node, nodes_snapshot...): " + \
        ", ".join(found)
