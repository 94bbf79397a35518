"""Power drivers (hpcbatch.head.power): the command driver, and where a node's driver comes from."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hpcbatch.errors import ClientError
from hpcbatch.head.config import load_head_config
from hpcbatch.head.power import Stonith
from hpcbatch.head.powerdrivers.base import PowerError
from hpcbatch.head.powerdrivers.command import CommandDriver
from hpcbatch.head.powerdrivers.config import PowerConfig, PowerDriverConfig


def test_the_command_driver_names_the_node_and_succeeds_on_exit_0(tmp_path: Path) -> None:
    out = tmp_path / "off"
    asyncio.run(CommandDriver(["sh", "-c", f"echo {{node}} > {out}"], 5).power_off("node7"))
    assert out.read_text() == "node7\n"


def test_the_command_driver_fails_with_the_exit_code_and_output_or_on_timeout() -> None:
    with pytest.raises(PowerError, match="sh exited with 3: BMC node7 unreachable"):
        asyncio.run(CommandDriver(["sh", "-c", "echo BMC {node} unreachable; exit 3"], 5).power_off("node7"))
    with pytest.raises(PowerError, match="did not finish within 0.2 s"):
        asyncio.run(CommandDriver(["sleep", "5"], 0.2).power_off("node7"))
    with pytest.raises(PowerError, match="cannot run /nonexistent/ipmitool"):
        asyncio.run(CommandDriver(["/nonexistent/ipmitool"], 5).power_off("node7"))


def test_a_nodes_own_driver_wins_over_its_compute_environments() -> None:
    config = PowerConfig(
        compute_environments={"gpu": PowerDriverConfig(power_off=["ce-off", "{node}"])},
        nodes={"n2": PowerDriverConfig(power_off=["node-off", "{node}"])},
    )
    ce_of = {"n1": "gpu", "n2": "gpu", "n3": "cpu"}
    stonith = Stonith(config, lambda node: ce_of[node], lambda node: None)
    n1, n2 = stonith.driver_for("n1"), stonith.driver_for("n2")
    assert isinstance(n1, CommandDriver) and n1.argv[0] == "ce-off"
    assert isinstance(n2, CommandDriver) and n2.argv[0] == "node-off"
    assert stonith.driver_for("n3") is None and stonith.driver_for("never-seen") is None

    async def requests() -> None:
        assert stonith.request("n1") and stonith.request("n1")  # asked twice: powered off once
        assert not stonith.request("n3")  # no driver: its retries wait for its agent's fence

    asyncio.run(requests())


def test_the_head_config_takes_power_drivers_and_names_a_bad_field(tmp_path: Path) -> None:
    path = tmp_path / "head.toml"
    base = f'state_dir = "{tmp_path}"\n'
    path.write_text(base + '[power.compute_environments.gpu]\npower_off = ["ipmitool", "-H", "{node}-bmc", '
                           '"chassis", "power", "off"]\ntimeout_s = 30\n[power.nodes.n9]\npower_off = ["pdu-off", "9"]\n')
    config = load_head_config(path)
    assert config.power.compute_environments["gpu"].timeout_s == 30
    assert config.power.nodes["n9"].driver == "command"
    path.write_text(base + "[power.nodes.n9]\npower_off = []\n")
    with pytest.raises(ClientError, match=r"power\.nodes\.n9\.power_off must be a command"):
        load_head_config(path)
    path.write_text(base + '[power.nodes.n9]\ndriver = "redfish"\npower_off = ["x"]\n')
    with pytest.raises(ClientError, match=r"driver"):
        load_head_config(path)
    path.write_text(base + '[power.nodes.n9]\npower_off = ["x"]\ntimeout_s = 0\n')
    with pytest.raises(ClientError, match=r"power\.nodes\.n9\.timeout_s must be > 0"):
        load_head_config(path)


def test_the_stonith_example_in_docs_ha_md_is_a_valid_head_config(tmp_path: Path) -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "ha.md").read_text()
    block = doc.split("```toml\n# head.toml: STONITH\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "head.toml"
    path.write_text(f'state_dir = "{tmp_path}"\n' + block)
    config = load_head_config(path)
    assert config.power.compute_environments["gpu"].power_off[4] == "{node}-bmc"
    assert config.power.nodes["node17"].timeout_s == 20


def test_the_engine_asks_to_power_off_a_lost_node_with_held_retries_and_retries_once_it_is_off(
    tmp_path: Path,
) -> None:
    from tests.unit.test_fencing import Cluster, run_on

    async def run() -> None:
        c = Cluster(tmp_path)
        asked: list[str] = []
        c.engine.fence_node = asked.append
        job = c.submit()
        node = run_on(c, job)
        c.register("n3")
        c.engine.node_lost("n3", silent_s=5)  # it ran nothing, so nothing is held: no power-off
        assert asked == []
        c.engine.node_lost(node, silent_s=5)
        c.engine.step()
        assert asked == [node] and c.starts() == []  # held for the fence, power-off asked
        c.engine.node_fenced(node)
        c.engine.step()
        ((placed, start),) = c.starts()
        assert start.attempt_number == 2 and placed != node

    asyncio.run(run())
