"""The Redfish pool driver (hpcbatch.head.powerdrivers.redfish) against the sushy-tools emulator's fake BMCs.

sushy-emulator (OpenStack's Redfish emulator, ``--fake``: systems kept in memory) serves
two systems, cn1 and cn2, powered off; the driver powers them on (accepted), and off, which
it reports only once both say ``PowerState: Off`` (the fake BMC takes 1-11 s, as hardware does).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from hpcbatch.head.powerdrivers.base import PowerError
from hpcbatch.head.powerdrivers.config import PoolConfig
from hpcbatch.head.powerdrivers.redfish import RedfishDriver
from tests import prereq
from tests.harness import wait_for
from tests.redfish_bmc import redfish_emulator

prereq.importorskip("sushy_tools", "sushy")


@pytest.fixture(scope="module")
def bmc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redfish_emulator(tmp_path_factory.mktemp("redfish"), {"cn1": "Off", "cn2": "Off"}) as url:
        yield url


def test_redfish_powers_systems_on_and_reports_off_only_once_they_are(bmc: str) -> None:
    driver = RedfishDriver(PoolConfig(nodes="cn[1-2]", vcpus_per_node=1, driver="redfish", redfish_url=bmc,
                                      timeout_s=30))
    assert asyncio.run(driver.state(["cn1", "cn2"])) == {"cn1": "Off", "cn2": "Off"}
    asyncio.run(driver.power_on(["cn1", "cn2"]))
    wait_for(lambda: asyncio.run(driver.state(["cn1", "cn2"])) == {"cn1": "On", "cn2": "On"}, 20,
             interval=0.5, what="both systems On")
    asyncio.run(driver.power_off(["cn1", "cn2"]))  # returns once both are Off
    assert asyncio.run(driver.state(["cn1", "cn2"])) == {"cn1": "Off", "cn2": "Off"}


def test_redfish_names_the_node_and_the_answer_when_a_bmc_refuses(bmc: str) -> None:
    driver = RedfishDriver(PoolConfig(nodes="cn9", vcpus_per_node=1, driver="redfish", redfish_url=bmc, timeout_s=5))
    with pytest.raises(PowerError, match=r"Redfish On of cn9: cn9: Redfish On answered 404"):
        asyncio.run(driver.power_on(["cn9"]))


def test_a_refusing_bmc_fails_only_its_node_of_a_batch(bmc: str) -> None:
    """cn9 has no system at the BMC: its power-on fails, cn1's goes ahead; the error names cn9
    alone (the head fails only that node). The same for a power-off."""
    driver = RedfishDriver(PoolConfig(nodes="cn[1-9]", vcpus_per_node=1, driver="redfish", redfish_url=bmc,
                                      timeout_s=30))
    with pytest.raises(PowerError, match=r"^Redfish On of cn9: cn9: Redfish On answered 404") as refused:
        asyncio.run(driver.power_on(["cn1", "cn9"]))
    assert refused.value.nodes == ["cn9"]
    wait_for(lambda: asyncio.run(driver.state(["cn1"])) == {"cn1": "On"}, 20, interval=0.5, what="cn1 On")
    with pytest.raises(PowerError, match=r"^Redfish ForceOff of cn9: ") as refused:
        asyncio.run(driver.power_off(["cn1", "cn9"]))
    assert refused.value.nodes == ["cn9"]
    assert asyncio.run(driver.state(["cn1"])) == {"cn1": "Off"}
