"""A Redfish BMC for tests: OpenStack's sushy-tools emulator with its fake systems driver.

``redfish_emulator(root, {"cn1": "Off", "cn2": "On"})`` serves one fake system per name, in
the power state given, kept in ``root/state`` (its own state folder: by default the fake
driver shares one, found by system name, so another run's cn1, left On, would answer here),
and yields the emulator's base URL. A power action takes the fake BMC 1-11 s, as hardware does.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.harness import free_port, wait_for


@contextmanager
def redfish_emulator(root: Path, systems: dict[str, str]) -> Iterator[str]:
    """Run sushy-emulator --fake serving ``systems`` (name -> "On"/"Off") until the block ends."""
    from hpcbatch.head.powerdrivers.config import PoolConfig
    from hpcbatch.head.powerdrivers.redfish import RedfishDriver

    fake = [{"uuid": str(uuid.uuid4()), "name": name, "power_state": state, "external_notifier": False, "nics": []}
            for name, state in systems.items()]
    (root / "emulator.conf").write_text(f"SUSHY_EMULATOR_FAKE_SYSTEMS = {fake!r}\n"
                                        f"SUSHY_EMULATOR_STATE_DIR = {str(root / 'state')!r}\n")
    port = free_port()
    emulator = shutil.which("sushy-emulator", path=str(Path(sys.executable).parent)) or "sushy-emulator"
    with open(root / "emulator.log", "wb") as log:
        proc = subprocess.Popen([emulator, "--fake", "--config", str(root / "emulator.conf"), "-i", "127.0.0.1",
                                 "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        first = next(iter(systems))
        driver = RedfishDriver(PoolConfig(nodes=first, vcpus_per_node=1, driver="redfish", redfish_url=url))
        wait_for(lambda: _answers(driver, first), 20, what="the Redfish emulator to answer")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _answers(driver: object, node: str) -> bool:
    from hpcbatch.head.powerdrivers.base import PowerError

    try:
        return asyncio.run(driver.state([node]))[node] != "Unknown"  # type: ignore[attr-defined]
    except PowerError:
        return False
