"""Fabric discovery against a fake sysfs tree, and the job environment each fabric gives."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcbatch.protocol import NodeFacts
from node_agent.bridge import fabric_environment
from node_agent.config import ConfigError, load_agent_config
from node_agent.discovery import discover, fabric_facts


def _rdma(sysfs: Path, name: str, driver: str, netdevs: tuple[str, ...] = ()) -> None:
    """A sysfs RDMA device: class/infiniband/NAME/device -> a PCI device bound to DRIVER."""
    pci = sysfs / "devices" / "pci0000:00" / f"pci-{name}"
    pci.mkdir(parents=True)
    drivers = sysfs / "bus" / "pci" / "drivers" / driver
    drivers.mkdir(parents=True, exist_ok=True)
    (pci / "driver").symlink_to(drivers)
    for netdev in netdevs:
        (pci / "net" / netdev).mkdir(parents=True)
    cls = sysfs / "class" / "infiniband" / name
    cls.mkdir(parents=True)
    (cls / "device").symlink_to(pci)


def test_efa_device_is_found_by_its_driver(tmp_path: Path) -> None:
    _rdma(tmp_path, "rdmap0s6", "efa")
    facts = fabric_facts("lo", sysfs=tmp_path)
    assert facts == {
        "fabric_interface": "lo",  # EFA has no netdev of its own: the configured one
        "fabric_address": "127.0.0.1",
        "fabric_kind": "efa",
        "fabric_devices": ["rdmap0s6"],
    }


def test_efa_device_is_found_through_the_module_when_no_driver_link(tmp_path: Path) -> None:
    _rdma(tmp_path, "rdmap0s6", "other")
    device = (tmp_path / "class" / "infiniband" / "rdmap0s6" / "device").resolve()
    (device / "driver").unlink()
    bound = tmp_path / "module" / "efa" / "drivers" / "pci:efa"
    bound.mkdir(parents=True)
    (bound / device.name).symlink_to(device)
    assert fabric_facts(None, sysfs=tmp_path)["fabric_kind"] == "efa"


def test_infiniband_uses_the_devices_netdev(tmp_path: Path) -> None:
    _rdma(tmp_path, "mlx5_1", "mlx5_core")
    _rdma(tmp_path, "mlx5_0", "mlx5_core", netdevs=("ib0",))
    facts = fabric_facts("eth9", sysfs=tmp_path)
    assert facts["fabric_kind"] == "infiniband"
    assert facts["fabric_devices"] == ["mlx5_0", "mlx5_1"]
    assert facts["fabric_interface"] == "ib0"
    assert facts["fabric_address"] is None  # no such interface on this machine


def test_no_rdma_device_means_the_configured_tcp_interface(tmp_path: Path) -> None:
    facts = fabric_facts("lo", sysfs=tmp_path)
    assert facts == {
        "fabric_interface": "lo",
        "fabric_address": "127.0.0.1",
        "fabric_kind": "tcp",
        "fabric_devices": [],
    }


def test_no_fabric_at_all_reports_none(tmp_path: Path) -> None:
    assert fabric_facts(None, sysfs=tmp_path) == {
        "fabric_interface": None,
        "fabric_address": None,
        "fabric_kind": None,
        "fabric_devices": [],
    }


def test_configured_kind_overrides_what_is_found(tmp_path: Path) -> None:
    _rdma(tmp_path, "mlx5_0", "mlx5_core", netdevs=("ib0",))
    facts = fabric_facts("lo", "tcp", sysfs=tmp_path)
    assert (facts["fabric_kind"], facts["fabric_interface"], facts["fabric_devices"]) == (
        "tcp",
        "lo",
        [],
    )
    with pytest.raises(ValueError, match="fabric_kind"):
        fabric_facts("lo", "myrinet", sysfs=tmp_path)


def test_discover_reports_the_fabric_into_node_facts(tmp_path: Path) -> None:
    _rdma(tmp_path, "mlx5_0", "mlx5_core")
    found = discover({"fabric_interface": "lo"}, sysfs=tmp_path)
    node = NodeFacts(name="n1", **found)
    assert node.fabric_kind == "infiniband"
    assert node.fabric_devices == ["mlx5_0"]
    assert node.fabric_interface == "lo"
    assert node.fabric_address == "127.0.0.1"


def test_config_rejects_an_unknown_fabric_kind(tmp_path: Path) -> None:
    (tmp_path / "head.key").write_text("x")
    config = tmp_path / "agent.toml"
    config.write_text(
        f'name = "n1"\nhead = "tcp://h:1"\nstate_dir = "{tmp_path}"\n'
        f'head_public_key = "{tmp_path / "head.key"}"\nfabric_kind = "myrinet"\n'
    )
    with pytest.raises(ConfigError, match="fabric_kind must be efa, infiniband or tcp"):
        load_agent_config(config)
    config.write_text(config.read_text().replace("myrinet", "efa"))
    assert load_agent_config(config).fabric_kind == "efa"


def _facts(kind: str | None, iface: str | None, devices: list[str]) -> NodeFacts:
    return NodeFacts(
        name="n", hostname="n", addresses=[], vcpus=1, memory_mib=1,
        fabric_interface=iface, fabric_kind=kind, fabric_devices=devices,
    )


def test_tcp_fabric_environment_names_the_interface_everywhere() -> None:
    env = fabric_environment(_facts("tcp", "fab0", []))
    assert env == {
        "OMPI_MCA_btl_tcp_if_include": "fab0",
        "OMPI_MCA_oob_tcp_if_include": "fab0",
        "PRTE_MCA_oob_tcp_if_include": "fab0",
        "NCCL_SOCKET_IFNAME": "fab0",
        "GLOO_SOCKET_IFNAME": "fab0",
        # Open MPI's own TCP transport on a TCP fabric (UCX would only add start-up time).
        "OMPI_MCA_pml": "ob1",
        "OMPI_MCA_btl": "self,sm,tcp",
        "OMPI_MCA_osc": "^ucx",
        "OMPI_MCA_coll": "^hcoll,ucc,han",
    }


def test_efa_and_infiniband_environments() -> None:
    efa = fabric_environment(_facts("efa", "eth1", ["rdmap0s6"]))
    assert efa["FI_PROVIDER"] == "efa" and efa["FI_EFA_USE_DEVICE_RDMA"] == "1"
    assert (efa["OMPI_MCA_pml"], efa["OMPI_MCA_mtl"]) == ("cm", "ofi")
    assert efa["NCCL_SOCKET_IFNAME"] == "eth1"
    assert "NCCL_IB_HCA" not in efa
    ib = fabric_environment(_facts("infiniband", "ib0", ["mlx5_0", "mlx5_1"]))
    assert ib["NCCL_IB_HCA"] == "mlx5_0,mlx5_1"
    assert ib["UCX_NET_DEVICES"] == "mlx5_0:1,mlx5_1:1"
    assert ib["OMPI_MCA_pml"] == "ucx"
    assert "FI_PROVIDER" not in ib
    assert fabric_environment(_facts(None, None, [])) == {}
