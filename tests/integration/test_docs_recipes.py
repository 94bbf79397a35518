"""The README's and docs' runnable recipes, run exactly as written on a local cluster.

A ``sh`` block preceded by the line ``<!-- runnable -->`` (README.md, docs/*.md) runs with
``bash -euo pipefail`` in a directory that looks like the checkout (its top-level entries
linked in), against a 4-node local cluster (``hpcbatch cluster up``, state in that
directory's ``.hpcbatch``, as the Quick start leaves it), with the Quick start's environment:
the venv's ``bin`` first on PATH and HPCBATCH_HOME set. ``<!-- runnable: netns -->`` blocks
need the namespace cluster (four hosts, a fabric): as root the cluster is built that way;
elsewhere those blocks are skipped. The README's developer section says the same.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import prereq

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MARKER = re.compile(r"^<!-- runnable(?::\s*(?P<needs>[a-z]+))? -->$")
BLOCK_TIMEOUT_S = 240


@dataclass(frozen=True)
class Recipe:
    """One runnable block: where it is, what it needs, its text."""

    where: str  # README.md:42
    needs: str  # "" or "netns"
    code: str


def runnable_blocks(path: Path) -> list[Recipe]:
    """The ``sh`` blocks of ``path`` that follow a runnable marker line."""
    lines = path.read_text().splitlines()
    recipes = []
    for i, line in enumerate(lines):
        match = MARKER.match(line.strip())
        if not match:
            continue
        fence = lines[i + 1].strip() if i + 1 < len(lines) else ""
        if fence != "```sh":
            raise AssertionError(f"{path.name}:{i + 1}: a runnable marker must sit right above a ```sh block")
        end = next((k for k in range(i + 2, len(lines)) if lines[k].strip() == "```"), None)
        if end is None:
            raise AssertionError(f"{path.name}:{i + 2}: the ```sh block is never closed")
        recipes.append(Recipe(f"{path.relative_to(REPO)}:{i + 3}", match["needs"] or "", "\n".join(lines[i + 2:end]) + "\n"))
    return recipes


RECIPES = [r for p in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))] for r in runnable_blocks(p)]


def test_the_readme_marks_its_quick_start_and_multinode_recipes_runnable() -> None:
    readme = [r for r in RECIPES if r.where.startswith("README.md")]
    assert any("hpcbatch submit -- echo hi" in r.code for r in readme), readme
    assert any("mpirun python mpi_examples/hello.py" in r.code and r.needs == "netns" for r in readme), readme


@pytest.fixture(scope="module")
def checkout() -> Iterator[Path]:
    """A directory that looks like the checkout, with a local cluster up in its .hpcbatch."""
    root = Path(tempfile.mkdtemp(prefix="hpcb-docs-"))
    os.chmod(root, 0o755)
    for entry in REPO.iterdir():
        if entry.name not in (".hpcbatch", ".git") and not (root / entry.name).exists():
            (root / entry.name).symlink_to(entry)
    if not (root / ".venv").exists():  # a venv elsewhere (CI): the one running the tests
        (root / ".venv").symlink_to(BIN.parent)
    try:
        yield root
    finally:
        subprocess.run([str(BIN / "hpcbatch"), "cluster", "down"], env=_environment(root), capture_output=True,
                       timeout=120, check=False)
        shutil.rmtree(root, ignore_errors=True)


def _environment(root: Path) -> dict[str, str]:
    """The Quick start's shell: venv first on PATH (so the cluster's agents hand it to jobs too)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPCBATCH_")}
    return env | {"PATH": f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}", "HPCBATCH_HOME": str(root / ".hpcbatch")}


def _cluster_up(root: Path) -> None:
    """``cluster up`` as the demo leaves it (again after a recipe that stopped it)."""
    args = ["cluster", "up", "--nodes", "4"] + (["--netns"] if os.geteuid() == 0 else [])
    out = subprocess.run([str(BIN / "hpcbatch"), *args], env=_environment(root), capture_output=True, text=True,
                         timeout=180, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.where for r in RECIPES])
def test_recipe_runs_as_written(recipe: Recipe, checkout: Path) -> None:
    if recipe.needs == "netns" and os.geteuid() != 0:
        prereq.skip("netns", "the recipe needs the namespace cluster (four hosts): root only")
    if recipe.needs not in ("", "netns"):
        raise AssertionError(f"{recipe.where}: unknown runnable kind {recipe.needs!r} (runnable or runnable: netns)")
    _cluster_up(checkout)
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", recipe.code], cwd=checkout, env=_environment(checkout),
                         capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S, check=False)
    assert out.returncode == 0, f"{recipe.where} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    assert "Traceback" not in out.stderr, out.stderr
    if "mpirun python mpi_examples/hello.py" in recipe.code:  # the MPI recipe: its script ran once
        hosts = re.findall(r"hello from rank \d+ of 8 on (\S+)", out.stdout)
        assert len(hosts) == 8 and len(set(hosts)) == 4, out.stdout
    if "hpcbatch submit -- echo hi" in recipe.code:
        assert "\nhi\n" in out.stdout, out.stdout


def test_the_demo_runs_a_4_node_mpi_job_beside_the_single_jobs_and_tells_ids_apart(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        prereq.skip("netns", "the demo's MPI job needs the namespace cluster (root)")
    env = _environment(tmp_path) | {"COLUMNS": "100"}
    try:
        out = subprocess.run([sys.executable, "-m", "hpcbatch.demo", "--down"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S, check=False)
    finally:  # --down stops it; after a failure half-way this does
        subprocess.run([str(BIN / "hpcbatch"), "cluster", "down"], env=env, capture_output=True, timeout=120,
                       check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"mpi-hello: 8 ranks on 4 hosts \(node\[1-4\]\)", out.stdout), out.stdout
    assert re.search(r"fabric: OMPI_MCA_btl_tcp_if_include=fab0", out.stdout), out.stdout
    ids = re.findall(r"│ (…[0-9a-f]{8,}) ", out.stdout)
    assert len(ids) == 6 and len(set(ids)) == 6, out.stdout  # every row's id differs from the others
