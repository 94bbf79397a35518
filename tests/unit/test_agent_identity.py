"""The runner's parts that need no process: whom a job runs as and where it may start
(node_agent.identity), the command line that becomes the owner (node_agent.spawning), and
the memory cgroups' counters (node_agent.cgroups), each on its own."""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from node_agent.cgroups import MemoryCgroups
from node_agent.identity import (
    CHDIR_VARIABLE,
    SUBMIT_DIR_VARIABLE,
    Owner,
    OwnerResolver,
    may_enter,
    start_dir,
)
from node_agent.spawning import SHIM, ExecChain, has_shim, under_shim
from tests import prereq

STRANGER = Owner("stranger", 54321, 54321, (54321, 54322), "/home/stranger", switch=True)
root_only = prereq.skipif(os.geteuid() != 0, "root", "owner switches happen in a root agent")


@pytest.fixture
def tree() -> Iterator[Path]:
    """A directory every user may search (pytest's own tmp_path is 0700)."""
    top = Path(tempfile.mkdtemp(prefix="hpcb-identity-"))
    top.chmod(0o755)
    try:
        yield top
    finally:
        shutil.rmtree(top)


def test_a_directory_is_judged_for_the_owners_ids_not_roots(tree: Path) -> None:
    closed = tree / "closed"
    closed.mkdir(mode=0o700)
    (closed / "inside").mkdir()
    assert may_enter(str(closed / "inside"), STRANGER) == f"cannot be entered by user stranger ({closed} is mode 700)"
    group = tree / "group"
    group.mkdir(mode=0o710)
    os.chown(group, 0, 54322)  # a supplementary group of the owner opens it
    assert may_enter(str(group), STRANGER) is None
    assert may_enter(str(closed / "inside"), None) is None  # the agent's own identity: the kernel says yes


def test_links_dots_and_missing_parts_are_resolved_as_the_kernel_would(tree: Path) -> None:
    (tree / "real").mkdir()
    (tree / "link").symlink_to(tree / "real")
    (tree / "loop").symlink_to(tree / "loop")
    (tree / "file").write_text("x")
    assert may_enter(str(tree / "link"), STRANGER) is None
    assert may_enter(f"{tree}/real/../real/.", STRANGER) is None
    assert may_enter(str(tree / "loop"), STRANGER) == "has too many levels of symbolic links"
    assert may_enter(str(tree / "nope"), STRANGER) == "does not exist"
    assert may_enter(str(tree / "file"), STRANGER) == "is not a directory"
    assert may_enter("relative/dir", STRANGER) == "is not an absolute path"


def test_a_job_starts_where_it_asked_or_in_its_work_dir_with_a_line_saying_why(tree: Path) -> None:
    (tree / "closed").mkdir(mode=0o700)
    assert start_dir({SUBMIT_DIR_VARIABLE: str(tree)}, "/w", STRANGER, "n1") == (str(tree), None)
    cwd, notice = start_dir({CHDIR_VARIABLE: str(tree / "closed"), SUBMIT_DIR_VARIABLE: str(tree)}, "/w", STRANGER, "n1")
    assert cwd == "/w" and notice is not None
    assert notice.startswith(f"hpcbatch: the --chdir directory {tree}/closed cannot be entered by user stranger")
    assert notice.endswith("on node n1; starting in the job's work directory /w\n")
    assert start_dir({}, "/w", STRANGER, "n1") == ("/w", None)


@root_only
def test_owners_are_resolved_on_this_node_and_root_needs_the_nodes_consent() -> None:
    owners = OwnerResolver("n1", allow_root_jobs=False)
    assert owners.resolve(None) is None
    assert owners.resolve("") == "CannotStartContainerError: the job has no owner"
    assert owners.resolve("no-such-user-hpcb") == "CannotStartContainerError: user no-such-user-hpcb does not exist on node n1"
    assert "allow_root_jobs is false" in str(owners.resolve("root"))
    root = OwnerResolver("n1", allow_root_jobs=True).resolve("root")
    assert isinstance(root, Owner) and root.uid == 0 and not root.switch  # the agent's own identity
    nobody = owners.resolve("nobody")
    assert isinstance(nobody, Owner) and nobody.switch and owners.resolve("nobody") is nobody  # cached


@root_only
def test_the_fast_chain_switches_with_setpriv_and_hands_the_job_only_its_environment(tmp_path: Path) -> None:
    chain = ExecChain(as_root=True)
    if chain.setpriv is None or chain.env_tool is None:
        prereq.skip("users", "setpriv or env missing here (util-linux, coreutils)")
    status = tmp_path / "exit_status"
    launch = chain.launch(["sleep", "1"], {"PATH": "/usr/bin:/bin", "A": "1"}, str(tmp_path), None, STRANGER, status)
    assert not isinstance(launch, str)
    argv, env, preexec = launch
    assert argv[:3] == ["/bin/sh", "-c", SHIM] and argv[3] == str(status) and has_shim(launch, status)
    assert argv[4:8] == [chain.setpriv, "--reuid=54321", "--regid=54321", "--groups=54321,54322"]
    assert argv[-4:] == ["PATH=/usr/bin:/bin", "A=1", "sleep", "1"] and env == {} and preexec is None


def test_without_setpriv_the_chain_forks_and_switches_in_python(tmp_path: Path) -> None:
    chain = ExecChain(as_root=True)
    chain.setpriv = None
    launch = chain.launch(["true"], {}, str(tmp_path), None, STRANGER, tmp_path / "exit_status")
    assert not isinstance(launch, str)
    argv, _, preexec = launch
    assert argv == ["true"] and isinstance(preexec, functools.partial)
    assert not has_shim(launch, tmp_path / "exit_status")  # the slow path has no shim


def test_the_chain_refuses_a_command_that_is_not_there(tmp_path: Path) -> None:
    chain = ExecChain(as_root=False)
    missing = chain.launch(["no-such-program-hpcb"], {"PATH": "/usr/bin"}, str(tmp_path), None, None, tmp_path / "s")
    assert missing == "CannotStartContainerError: no-such-program-hpcb: command not found"
    assert chain.launch(["true"], {}, str(tmp_path), None, None) == (["true"], {}, None)  # vfork straight in
    names = chain.launch(["true"], {"A B": "1"}, str(tmp_path), None, None, tmp_path / "s")  # sh drops "A B"
    assert not isinstance(names, str) and names[0][4:7] == [chain.env_tool, "-i", "--"] and "A B=1" in names[0]


def test_podman_run_goes_under_the_shim_too(tmp_path: Path) -> None:
    launch = under_shim((["podman", "run", "img"], {"PATH": "/bin"}, None), tmp_path / "exit_status")
    assert launch[0][:4] == ["/bin/sh", "-c", SHIM, str(tmp_path / "exit_status")] and launch[0][4:] == ["podman", "run", "img"]
    assert has_shim(launch, tmp_path / "exit_status")


def test_oom_kills_are_read_from_either_cgroup_version(tmp_path: Path) -> None:
    v2, v1, none = tmp_path / "v2", tmp_path / "v1", tmp_path / "none"
    for d in (v2, v1, none):
        d.mkdir()
    (v2 / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n")
    (v1 / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")
    assert [MemoryCgroups.oom_kills(d) for d in (v2, v1, none)] == [2, 1, 0]
    assert MemoryCgroups.remove(none) and MemoryCgroups.remove(none)  # gone already: done
    assert not MemoryCgroups.remove(v2)  # still holds something (here, files)
