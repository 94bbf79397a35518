"""Packaging: a compute node installs ``hpcbatch[agent]`` and gets no head-only package.

The core dependencies are what every host needs (the wire, process tools, the CLI and its
client); ``[head]`` adds the web server, the database drivers, templates, metrics and the
scheduler's containers; ``[agent]`` adds NVML. These tests hold the agent to that: it imports
and starts with the head's packages made unimportable, and every package any of its modules
imports (at the top or inside a function) is declared in the core or in ``[agent]``.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
# What only the head imports: a compute node must run without any of it.
HEAD_PACKAGES = ("aiohttp", "psycopg", "yoyo", "jinja2", "prometheus_client", "sortedcontainers")
HEAD_MODULES = ("hpcbatch.head", "hpcbatch.store", "hpcbatch.console", "hpcbatch.scheduler")

BLOCKER = f'''
import importlib, pkgutil, sys

BLOCKED = {HEAD_PACKAGES + HEAD_MODULES!r}

class Blocker:
    """A compute node's venv: the head's packages are not installed."""
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: head only)", name=name)
        return None

sys.meta_path.insert(0, Blocker())
'''
BLOCKED_AGENT = BLOCKER + '''
import node_agent
for module in pkgutil.walk_packages(node_agent.__path__, "node_agent."):
    if module.name != "node_agent.__main__":
        importlib.import_module(module.name)
from node_agent.main import main
code = main(["--config", "/nonexistent/agent.toml"])  # loads, refuses the config, exits 3
assert code == 3, code
leaked = sorted(m for m in sys.modules if any(m == b or m.startswith(b + ".") for b in BLOCKED))
assert not leaked, leaked
print("agent ok")
'''
# The CLI is on every host (client.toml points it at the head): its commands load without the head.
BLOCKED_CLI = BLOCKER + '''
from hpcbatch.cli.main import main
sys.argv = ["hpcbatch", *sys.argv[1:]]
sys.exit(main())
'''


def _name(requirement: str) -> str:
    """The distribution a requirement names, normalized ("psycopg[binary]>=3.1" -> "psycopg")."""
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _declared(*extras: str) -> set[str]:
    found = {_name(r) for r in PROJECT["dependencies"]}
    for extra in extras:
        found |= {_name(r) for r in PROJECT["optional-dependencies"][extra]}
    return found


def _imports(path: Path) -> set[str]:
    """Absolute module names ``path`` imports, anywhere in it (lazy imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def _source(module: str) -> Path | None:
    base = REPO / Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def _third_party_closure(roots: list[str]) -> dict[str, str]:
    """Top-level third-party packages the modules ``roots`` reach through our own imports
    (hpcbatch.*, node_agent.*): package -> one of our modules that imports it."""
    seen: set[str] = set()
    todo = list(roots)
    third: dict[str, str] = {}
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = _source(module)
        if path is None:
            continue
        for name in _imports(path):
            top = name.split(".")[0]
            if top in ("hpcbatch", "node_agent"):
                parts = name.split(".")
                todo += [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
            elif top not in sys.stdlib_module_names and top != "__future__":
                third.setdefault(top, module)
    return third


def _distributions(package: str) -> set[str]:
    return {d.lower().replace("_", "-") for d in metadata.packages_distributions().get(package, [package])}


def test_the_agent_imports_and_starts_with_the_heads_packages_blocked() -> None:
    out = subprocess.run([sys.executable, "-c", BLOCKED_AGENT], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "agent ok" in out.stdout, out.stdout + out.stderr


def test_the_cli_loads_its_commands_on_a_compute_node() -> None:
    for args in (["--help"], ["submit", "--help"], ["nodes", "--help"], ["why", "--help"]):
        out = subprocess.run([sys.executable, "-c", BLOCKED_CLI, *args], cwd=REPO, capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0 and "Usage:" in out.stdout, (args, out.stdout + out.stderr)


def test_a_head_command_on_a_compute_node_says_which_extra_to_install(tmp_path: Path) -> None:
    # Only the third-party packages are missing on a compute node; hpcbatch's own modules are there.
    only_packages = BLOCKED_CLI.replace(repr(HEAD_PACKAGES + HEAD_MODULES), repr(HEAD_PACKAGES))
    config = tmp_path / "head.toml"
    config.write_text("")
    out = subprocess.run([sys.executable, "-c", only_packages, "head", "--config", str(config)], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "pip install 'hpcbatch[head]'" in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_the_wheelhouse_recipe_downloads_both_extras() -> None:
    from tests.system.testbed import wheelhouse_recipe

    commands = wheelhouse_recipe()
    assert commands and all('"$(ls dist/hpcbatch-*.whl)[head,agent]"' in c for c in commands), commands


def test_every_package_the_agent_imports_is_in_the_core_or_the_agent_extra() -> None:
    roots = [f"node_agent.{p.stem}" for p in (REPO / "node_agent").glob("*.py")]
    declared = _declared("agent")
    used = _third_party_closure(roots)
    undeclared = {pkg: where for pkg, where in used.items() if not _distributions(pkg) & declared}
    assert undeclared == {}, f"the agent imports packages outside dependencies + [agent]: {undeclared}"
    reached = {pkg: where for pkg, where in used.items() if pkg in HEAD_PACKAGES}
    assert reached == {}, reached


def test_every_package_the_head_imports_is_in_the_core_or_the_head_extra() -> None:
    roots = [".".join(p.relative_to(REPO).with_suffix("").parts) for p in (REPO / "hpcbatch").rglob("*.py")
             if p.parts[-2] in ("head", "store", "console", "scheduler")]
    declared = _declared("head")
    used = _third_party_closure(roots)
    # nvidia-ml-py is the agent's alone; asyncssh ([bootstrap]) only for `nodes bootstrap`.
    undeclared = {pkg: where for pkg, where in used.items()
                  if not _distributions(pkg) & (declared | _declared("bootstrap"))}
    assert undeclared == {}, f"the head imports packages outside dependencies + [head]: {undeclared}"


def test_core_holds_no_head_only_package_and_test_pulls_both_extras() -> None:
    core = _declared()
    head_only = _declared("head") - core
    assert {"aiohttp", "psycopg", "jinja2", "prometheus-client"} <= head_only
    assert not (core & {"aiohttp", "psycopg", "yoyo-migrations", "jinja2", "prometheus-client", "nvidia-ml-py"})
    [self_reference] = [r for r in PROJECT["optional-dependencies"]["test"] if _name(r) == "hpcbatch"]
    assert {"head", "agent"} <= set(re.search(r"\[(.*)\]", self_reference).group(1).split(","))  # type: ignore[union-attr]
