"""The system tests: playbooks and the SSH bootstrap against a test bed of booted hosts (root)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcbatch.netns import tag_for
from tests import prereq
from tests.system.playbooks import run_playbook, write_inventory
from tests.system.testbed import REPO, Testbed, build_wheel, ensure_wheelhouse

HOSTS = 5  # node1: head; node2-4: compute (Ansible); node5: for `nodes bootstrap`
UPGRADE_VERSION = "0.1.0.post1"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "system: real hosts booted by systemd, reached over SSH (root, slow)")


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root: hosts are systemd-nspawn containers in network namespaces (CI runs as root)"
    for tool in ("systemd-nspawn", "debootstrap", "ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/setup installs it as root)"
    return None


class Bed:
    """The booted test bed plus the wheels: this checkout, an 'upgrade' build of it, and a rebuild
    of the upgrade with the same version and other content."""

    def __init__(self, testbed: Testbed, workdir: Path, wheel: Path, upgrade_wheel: Path, rebuilt_wheel: Path) -> None:
        self.testbed = testbed
        self.workdir = workdir
        self.wheel = wheel
        self.upgrade_wheel = upgrade_wheel
        self.rebuilt_wheel = rebuilt_wheel  # the upgrade's version, other content


@pytest.fixture(scope="package")
def bed() -> Iterator[Bed]:
    why = _missing()
    if why:
        prereq.skip("nspawn", why)
    workdir = Path(tempfile.mkdtemp(prefix="hpcb-tb-"))
    wheels = workdir / "wheels"
    wheel = build_wheel(wheels)
    upgrade_wheel = build_wheel(wheels, version=UPGRADE_VERSION)
    rebuilt_wheel = build_wheel(workdir / "rebuilt", version=UPGRADE_VERSION, marker="rebuilt")
    ensure_wheelhouse(wheel)
    # One tag per checkout: test beds of several worktrees on one machine never meet.
    testbed = Testbed(workdir / "hosts", HOSTS, tag=tag_for(str(REPO)))
    try:
        testbed.start(extra_hosts=[("unreachable1", "10.254.254.254")])
        yield Bed(testbed, workdir, wheel, upgrade_wheel, rebuilt_wheel)
    finally:
        testbed.close()
        shutil.rmtree(workdir, ignore_errors=True)


class Site:
    """The test bed after site.yml: node1 the head, node2-4 its agents."""

    def __init__(self, bed: Bed, inventory: Path) -> None:
        self.bed = bed
        self.tb = bed.testbed
        self.inventory = inventory


@pytest.fixture(scope="package")
def site(bed: Bed) -> Site:
    inventory = write_inventory(bed.testbed, bed.workdir / "inventory", bed.wheel)
    first = run_playbook(inventory, "site.yml")
    assert first.returncode == 0, first.stdout[-6000:] + first.stderr[-2000:]
    return Site(bed, inventory)
