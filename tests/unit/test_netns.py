"""hpcbatch.netns without root: names, subnets, the layout and the commands that build it."""

from __future__ import annotations

import ipaddress

import pytest

from hpcbatch import netns
from hpcbatch.netns import NetnsError, NetnsLayout


def test_every_interface_name_fits_ifnamsiz_up_to_the_largest_cluster() -> None:
    layout = netns.plan("zz9999", netns.MAX_NODES)
    root, inside = netns.create_commands(layout)
    names = [layout.mgmt_bridge, layout.fabric_bridge]
    names += [x for n in layout.nodes for x in (n.host_mgmt_link, n.host_fabric_link)]
    assert max(len(x) for x in names) <= netns.IFNAMSIZ
    assert len(set(names)) == len(names)
    assert root and len(inside) == netns.MAX_NODES


def test_names_carry_the_tag_and_the_node_number() -> None:
    assert netns.netns_name("abc123", 3) == "hpcb-abc123-node3"
    assert netns.bridge_names("abc123") == ("hbabc123m", "hbabc123f")
    assert netns.host_link_names("abc123", 12) == ("hbabc12312m", "hbabc12312f")


@pytest.mark.parametrize("tag", ["", "abc", "abc1234", "ABC123", "ab-123", "ab 123"])
def test_a_tag_is_six_lowercase_letters_or_digits(tag: str) -> None:
    with pytest.raises(NetnsError, match="tag: must be 6 characters"):
        netns.check_tag(tag)


def test_tag_for_a_home_is_stable_and_valid() -> None:
    assert netns.tag_for("/root/.hpcbatch") == netns.tag_for("/root/.hpcbatch")
    assert netns.tag_for("/a") != netns.tag_for("/b")
    netns.check_tag(netns.tag_for("/root/.hpcbatch"))


def test_leftover_matching_is_exact_to_the_tag() -> None:
    assert netns.is_leftover_netns("abc123", "hpcb-abc123-node7")
    assert not netns.is_leftover_netns("abc123", "hpcb-abc1234-node7")
    assert not netns.is_leftover_netns("abc123", "hpcb-xbc123-node7")
    for link in ("hbabc123m", "hbabc123f", "hbabc1237m", "hbabc123240f"):
        assert netns.is_leftover_link("abc123", link)
    for link in ("hbabc123", "hbabc124m", "eth0", "hbabc123m0", "xhbabc123m"):
        assert not netns.is_leftover_link("abc123", link)


def test_subnets_derive_from_the_tag_and_pair_management_with_fabric() -> None:
    mgmt, fabric = netns.choose_subnets("abc123")
    k = netns.subnet_index("abc123")
    assert mgmt == ipaddress.IPv4Network(f"10.77.{k}.0/24")
    assert fabric == ipaddress.IPv4Network(f"10.78.{k}.0/24")
    assert netns.choose_subnets("abc123") == (mgmt, fabric)


def test_a_subnet_the_host_already_uses_is_skipped() -> None:
    mgmt, fabric = netns.choose_subnets("abc123")
    busy = [mgmt, ipaddress.IPv4Network(f"{fabric.network_address + 256}/24")]
    other_mgmt, other_fabric = netns.choose_subnets("abc123", busy)
    assert other_mgmt != mgmt
    assert not any(other_mgmt.overlaps(b) or other_fabric.overlaps(b) for b in busy)
    # A wide route over the whole 10/8 leaves nothing.
    with pytest.raises(NetnsError, match="no free subnet"):
        netns.choose_subnets("abc123", [ipaddress.IPv4Network("10.0.0.0/8")])


def test_plan_gives_each_node_its_addresses_interfaces_and_hostname() -> None:
    layout = netns.plan("abc123", 4)
    k = netns.subnet_index("abc123")
    assert layout.host_mgmt_ip == f"10.77.{k}.1"
    assert [n.name for n in layout.nodes] == ["node1", "node2", "node3", "node4"]
    assert [n.hostname for n in layout.nodes] == ["node1", "node2", "node3", "node4"]
    assert [n.mgmt_ip for n in layout.nodes] == [f"10.77.{k}.{10 + i}" for i in range(1, 5)]
    assert [n.fabric_ip for n in layout.nodes] == [f"10.78.{k}.{10 + i}" for i in range(1, 5)]
    assert {(n.mgmt_interface, n.fabric_interface) for n in layout.nodes} == {("mgmt0", "fab0")}
    assert layout.fabric_mtu == 9000


@pytest.mark.parametrize("nodes", [0, netns.MAX_NODES + 1])
def test_plan_refuses_a_node_count_the_subnet_cannot_hold(nodes: int) -> None:
    with pytest.raises(NetnsError, match="nodes: must be between 1 and"):
        netns.plan("abc123", nodes)


def test_fabric_links_are_created_with_jumbo_mtu_and_loopback_comes_up() -> None:
    layout = netns.plan("abc123", 2)
    root, inside = netns.create_commands(layout)
    assert "link add hbabc123f mtu 9000 type bridge" in root
    assert any("peer name fab0 mtu 9000 netns hpcb-abc123-node2" in c for c in root)
    assert inside["hpcb-abc123-node1"][0] == "link set lo up"
    assert f"addr add {layout.nodes[0].fabric_ip}/24 dev fab0" in inside["hpcb-abc123-node1"]


def test_exec_prefix_enters_net_and_uts_namespaces_not_ip_netns_exec() -> None:
    layout = netns.plan("abc123", 2)
    with pytest.raises(NetnsError, match="not created yet"):
        _ = layout.nodes[0].exec_prefix
    layout.nodes[1].holder = {"pid": 4242, "create_time": 1.0}
    prefix = layout.node("node2").exec_prefix
    assert prefix[0].endswith("nsenter")
    assert prefix[1:] == ["--net=/run/netns/hpcb-abc123-node2", "--uts=/proc/4242/ns/uts", "--"]
    assert layout.node(2) is layout.node("node2")


def test_layout_round_trips_through_json_for_cluster_down() -> None:
    layout = netns.plan("abc123", 3)
    layout.nodes[0].holder = {"pid": 1, "create_time": 2.5}
    assert NetnsLayout.from_dict(layout.to_dict()) == layout
