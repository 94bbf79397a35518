"""Every pool driver (hpcbatch.head.powerdrivers) offers the one interface: power_on, power_off, state."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from hpcbatch.head.power import make_pool_driver
from hpcbatch.head.powerdrivers.command import ProgramDriver
from hpcbatch.head.powerdrivers.config import PoolConfig
from hpcbatch.head.powerdrivers.netns import NetnsDriver

CONFIGS = {
    "command": {"resume_program": ["true"], "suspend_program": ["true"]},
    "netns": {"agent_config_dir": "/nonexistent"},
    "redfish": {"redfish_url": "http://127.0.0.1:9"},
    "ipmi": {"ipmi_host": "{node}-bmc", "ipmi_username": "admin"},
    "cloud": {"cloud_launch_template": "hpcbatch-agent"},
}


@pytest.mark.parametrize("driver", sorted(CONFIGS))
def test_every_driver_has_power_on_power_off_and_state(driver: str) -> None:
    made = make_pool_driver(PoolConfig(nodes="n[1-2]", vcpus_per_node=1, driver=driver, **CONFIGS[driver]))  # type: ignore[arg-type]
    for method in ("power_on", "power_off", "state"):
        assert asyncio.iscoroutinefunction(getattr(made, method)), (driver, method)


def test_the_command_driver_cannot_know_a_state_slurm_gives_no_program_for() -> None:
    driver = ProgramDriver(["true"], ["true"], 5)
    assert asyncio.run(driver.state(["n1", "n2"])) == {"n1": "Unknown", "n2": "Unknown"}


def test_the_netns_driver_says_on_while_the_nodes_agent_runs(tmp_path: Path) -> None:
    driver = NetnsDriver(str(tmp_path), "", 5)
    assert asyncio.run(driver.state(["n1"])) == {"n1": "Off"}
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        (tmp_path / "n1.power.pid").write_text(f"{proc.pid}\n")  # as a power-on (or an earlier head) left it
        assert asyncio.run(driver.state(["n1", "n2"])) == {"n1": "On", "n2": "Off"}
        asyncio.run(driver.power_off(["n1"]))
        assert asyncio.run(driver.state(["n1"])) == {"n1": "Off"}
    finally:
        proc.kill()
        proc.wait()
