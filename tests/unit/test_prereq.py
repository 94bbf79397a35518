"""HPCBATCH_REQUIRE (tests/prereq.py): a named prerequisite's skips become failures, and every
skip in the suite goes through that module."""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from tests import prereq

REPO = Path(__file__).resolve().parents[2]

SAMPLE = '''
from tests import prereq

def test_skip():
    prereq.skip("torch", "reason one")

@prereq.skipif(True, "torch", "reason two")
def test_mark():
    pass

def test_import():
    prereq.importorskip("no_such_module_hpcb", "torch", "reason three")

@prereq.skipif(True, "mpi", "reason four")
def test_other_name():
    pass

@prereq.skipif(False, "torch", "never")
def test_present():
    pass
'''


def _pytest(tmp_path: Path, require: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    env = {k: v for k, v in os.environ.items() if k != prereq.ENV} | {"PYTHONPATH": str(REPO)}
    if require is not None:
        env[prereq.ENV] = require
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.prereq", "-p", "no:cacheprovider", "-rA", "-q",
         "--rootdir", str(tmp_path), str(tmp_path / "test_sample.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )


def test_without_the_switch_missing_prerequisites_skip(tmp_path: Path) -> None:
    out = _pytest(tmp_path, None)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 passed, 4 skipped" in out.stdout, out.stdout


def test_a_required_prerequisite_fails_its_tests_with_the_same_reason(tmp_path: Path) -> None:
    out = _pytest(tmp_path, "torch")
    assert out.returncode == 1, out.stdout + out.stderr
    # test_mark fails at setup (an error); the others in the test body.
    assert "2 failed, 1 passed, 1 skipped, 1 error" in out.stdout, out.stdout
    for reason in ("reason one", "reason two", "reason three"):
        assert f"{reason} [HPCBATCH_REQUIRE names 'torch': it must run here]" in out.stdout, out.stdout
    assert "SKIPPED" in out.stdout and "reason four" in out.stdout  # mpi is not required


def test_an_unknown_name_stops_the_run_naming_it(tmp_path: Path) -> None:
    out = _pytest(tmp_path, "torch,postgress")
    assert out.returncode != 0
    assert "unknown prerequisite(s) postgress" in out.stderr, out.stderr
    assert "passed" not in out.stdout


def test_every_skip_in_the_suite_goes_through_prereq() -> None:
    raw = re.compile(r"pytest\.(skip\(|importorskip\(|mark\.skipif|mark\.skip\b)")
    offenders = []
    for path in sorted((REPO / "tests").rglob("*.py")):
        if path.name in ("prereq.py", "test_prereq.py"):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if raw.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert offenders == [], "skip through tests/prereq.py (so HPCBATCH_REQUIRE sees it):\n" + "\n".join(offenders)


def test_every_name_a_test_skips_on_is_known() -> None:
    position = {"skip": 0, "skipif": 1, "importorskip": 1}  # where the prerequisite's name is
    used: dict[str, str] = {}
    for path in (REPO / "tests").rglob("*.py"):
        if path.name == "test_prereq.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "prereq"
                    and node.func.attr in position):
                name = node.args[position[node.func.attr]]
                assert isinstance(name, ast.Constant), f"{path}:{node.lineno}: name the prerequisite literally"
                used[name.value] = f"{path.relative_to(REPO)}:{node.lineno}"
    unknown = {name: where for name, where in used.items() if name not in prereq.PREREQUISITES}
    assert len(used) > 10 and unknown == {}, unknown


def test_ci_requires_only_known_names_and_the_main_suites() -> None:
    text = (REPO / ".ci" / "run").read_text()
    [value] = re.findall(r"^export HPCBATCH_REQUIRE=(\S+)$", text, re.MULTILINE)
    names = set(shlex.split(value)[0].split(","))
    assert names <= prereq.PREREQUISITES.keys(), names - prereq.PREREQUISITES.keys()
    assert {"root", "netns", "postgres", "podman", "chromium", "torch", "mpi"} <= names
