"""The IPMI pool driver (hpcbatch.head.powerdrivers.ipmi) against pyghmi's own emulated BMC.

Two BMCs (tests/ipmi_bmc.py, one process each, on 127.0.0.2 and 127.0.0.3, one UDP port), chassis
off. The nodes are named by their BMC's address here (``ipmi_host = "{node}"``). Every test has a
hard timeout: an emulated BMC that stops answering fails the test, never hangs the suite.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcbatch.head.powerconfig import check_power_config
from hpcbatch.head.powerdrivers.base import PowerError
from hpcbatch.head.powerdrivers.config import PoolConfig, PowerConfig
from hpcbatch.head.powerdrivers.ipmi import IpmiDriver
from tests import prereq

prereq.importorskip("pyghmi", "pyghmi")

NODES = ["127.0.0.2", "127.0.0.3"]
ROOT = Path(__file__).resolve().parents[2]


def _udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def bmcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    root = tmp_path_factory.mktemp("ipmi")
    (root / "bmc.pass").write_text("password\n")
    port = _udp_port()
    procs = [subprocess.Popen([sys.executable, "-m", "tests.ipmi_bmc", str(port), node, node], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for node in NODES]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield port, root
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def driver(bmcs: tuple[int, Path]) -> IpmiDriver:
    """One driver for the module's tests, as the head has one per pool: it keeps a session per
    BMC, and pyghmi's second session to a BMC whose first is alive waits forever."""
    port, root = bmcs
    return IpmiDriver(PoolConfig(nodes="cn[1-2]", vcpus_per_node=1, driver="ipmi", ipmi_host="{node}", ipmi_port=port,
                                 ipmi_username="admin", ipmi_password_file=str(root / "bmc.pass"), timeout_s=20))


@pytest.mark.timeout(60)
def test_ipmi_powers_chassis_on_and_off_and_reports_their_state(driver: IpmiDriver) -> None:
    assert asyncio.run(driver.state(NODES)) == {NODES[0]: "Off", NODES[1]: "Off"}
    asyncio.run(driver.power_on(NODES[:1]))
    assert asyncio.run(driver.state(NODES)) == {NODES[0]: "On", NODES[1]: "Off"}
    asyncio.run(driver.power_on(NODES))  # the first is on already: left alone
    assert asyncio.run(driver.state(NODES)) == {NODES[0]: "On", NODES[1]: "On"}
    asyncio.run(driver.power_off(NODES))  # returns once both chassis are off
    assert asyncio.run(driver.state(NODES)) == {NODES[0]: "Off", NODES[1]: "Off"}


@pytest.mark.timeout(60)
def test_ipmi_names_the_nodes_when_a_bmc_does_not_answer(bmcs: tuple[int, Path]) -> None:
    driver = IpmiDriver(PoolConfig(nodes="cn9", vcpus_per_node=1, driver="ipmi", ipmi_host="127.0.0.9",
                                   ipmi_port=bmcs[0], ipmi_username="admin", timeout_s=3))
    with pytest.raises(PowerError, match=r"IPMI power on of cn9"):
        asyncio.run(driver.power_on(["cn9"]))


DEAD = "127.0.0.9"  # no BMC there: pyghmi gives up on it after about 5 s


@pytest.fixture
def short(driver: IpmiDriver) -> Iterator[IpmiDriver]:
    """The module's driver with a 3 s budget per call (a dead BMC takes pyghmi about 5 s)."""
    driver.timeout_s = 3
    yield driver
    driver.timeout_s = 20


@pytest.mark.timeout(90)
def test_one_dead_bmc_does_not_blind_its_pool(short: IpmiDriver) -> None:
    """A dead BMC first in the pool may spend the first poll's budget: its nodes are then
    Unknown, not an error for the pool. From then on it is asked last, so the live BMCs answer
    first (before, one dead BMC failed every poll of its pool)."""
    nodes = [DEAD, *NODES]
    first = asyncio.run(short.state(nodes))
    assert first[DEAD] == "Unknown" and {first[n] for n in NODES} <= {"Unknown", "Off"}
    assert asyncio.run(short.state(nodes)) == {DEAD: "Unknown", NODES[0]: "Off", NODES[1]: "Off"}


@pytest.mark.timeout(90)
def test_a_dead_bmc_fails_only_its_node_of_a_power_on(short: IpmiDriver) -> None:
    """The batch's live BMCs power their chassis on; PowerError names only the dead one's node
    (the head then fails only that node: test_power_manager)."""
    with pytest.raises(PowerError, match=rf"IPMI power on of {DEAD}: {DEAD}: ") as refused:
        asyncio.run(short.power_on([NODES[0], DEAD]))
    assert refused.value.nodes == [DEAD]
    assert asyncio.run(short.state(NODES)) == {NODES[0]: "On", NODES[1]: "Off"}
    with pytest.raises(PowerError, match=rf"IPMI power off of {DEAD}: ") as refused:
        asyncio.run(short.power_off([NODES[0], DEAD]))
    assert refused.value.nodes == [DEAD]
    assert asyncio.run(short.state(NODES)) == {NODES[0]: "Off", NODES[1]: "Off"}


def test_ipmi_pool_config_names_the_missing_field() -> None:
    bad = PowerConfig(pools={"bmc": PoolConfig(nodes="cn[1-2]", vcpus_per_node=1, driver="ipmi")})
    assert check_power_config(bad) == 'power.pools.bmc.ipmi_host is required by the ipmi driver (e.g. "{node}-bmc": the node\'s BMC)'
    bad = PowerConfig(pools={"bmc": PoolConfig(nodes="cn[1-2]", vcpus_per_node=1, driver="ipmi", ipmi_host="{node}-bmc")})
    assert check_power_config(bad) == "power.pools.bmc.ipmi_username is required by the ipmi driver"


def test_the_ipmi_example_in_docs_managed_md_is_a_valid_head_config(tmp_path: Path) -> None:
    from hpcbatch.head.config import load_head_config
    from hpcbatch.head.power import make_pool_driver

    doc = (ROOT / "docs" / "managed.md").read_text()
    block = doc.split("```toml\n# head.toml: an IPMI pool\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "head.toml"
    path.write_text(f'state_dir = "{tmp_path}"\n' + block)
    cpu = load_head_config(path).power.pools["cpu"]
    assert cpu.driver == "ipmi" and cpu.ipmi_host == "{node}-bmc.mgmt" and cpu.ipmi_port == 623
    assert isinstance(make_pool_driver(cpu), IpmiDriver)
