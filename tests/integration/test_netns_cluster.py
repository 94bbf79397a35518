"""The multi-host test bed: every node in its own network namespace, with its own hostname,
a management network to the head and a separate fabric (root only)."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcbatch import netns
from tests import prereq
from tests.harness import TestCluster, wait_for

if os.geteuid() != 0:
    prereq.skip("netns", "needs root for network namespaces (CI runs as root)", allow_module_level=True)

OOM_REASON = "OutOfMemoryError: Container killed due to memory usage"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCluster]:
    c = TestCluster(tmp_path_factory.mktemp("netns"), nodes=4, netns=True)
    try:
        yield c.up()
    finally:
        c.close()


def _leftovers(tag: str) -> list[str]:
    """Namespaces, links and holder processes still named with ``tag``."""
    names = [n for n in netns.list_netns() if netns.is_leftover_netns(tag, n)]
    names += [x for x in netns.list_links() if netns.is_leftover_link(tag, x)]
    names += [f"holder pid {pid}" for pid in netns.holder_pids(tag)]
    return names


def test_four_nodes_are_active_with_their_own_hostnames_on_the_management_subnet(cluster: TestCluster) -> None:
    assert cluster.netns is not None
    mgmt = ipaddress.IPv4Network(cluster.netns.mgmt_subnet)
    nodes = cluster.nodes()
    assert sorted(nodes) == ["node1", "node2", "node3", "node4"]
    for name, node in nodes.items():
        assert node["state"] == "ACTIVE"
        assert node["hostname"] == name
        assert node["addresses"], node
        assert all(ipaddress.IPv4Address(a) in mgmt for a in node["addresses"][:1]), node["addresses"]
        assert cluster.netns.node(name).mgmt_ip in node["addresses"]
        assert node["fabricInterface"] == "fab0"
        assert node["placementGroup"] == "rack1"
    assert cluster.fleet.startswith(f"tcp://{cluster.netns.host_mgmt_ip}:")


def test_a_job_on_each_node_prints_that_nodes_hostname(cluster: TestCluster) -> None:
    names = cluster.node_names
    try:
        for target in names:
            # Placement is the scheduler's: drain every other node to send the job here.
            for name in names:
                path = "/hpcbatch/v1/resumenode" if name == target else "/hpcbatch/v1/drainnode"
                cluster.client.call(path, {"name": name})
            job_id = cluster.submit(["hostname"])
            job = cluster.wait_status(job_id, "SUCCEEDED", "FAILED")
            assert job["status"] == "SUCCEEDED", job
            assert job["nodeName"] == target
            assert cluster.logs(job_id).strip() == target
    finally:
        for name in names:
            cluster.client.call("/hpcbatch/v1/resumenode", {"name": name})
        cluster.wait_active()


def test_fabric_reaches_the_other_node_with_jumbo_mtu(cluster: TestCluster) -> None:
    assert cluster.netns is not None
    node2 = cluster.netns.node("node2")
    listener = subprocess.Popen(
        [*node2.exec_prefix, sys.executable, "-c",
         "import socket, sys; s = socket.create_server((sys.argv[1], 0)); print(s.getsockname()[1], flush=True);"
         " c, _ = s.accept(); c.sendall(socket.gethostname().encode()); c.close()",
         node2.fabric_ip],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert listener.stdout is not None
        port = int(listener.stdout.readline())
        got = cluster.on_node("node1", [
            sys.executable, "-c",
            "import socket, sys; c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5);"
            " print(socket.gethostname(), c.recv(64).decode())",
            node2.fabric_ip, str(port),
        ])
        assert got.returncode == 0, got.stderr
        assert got.stdout.split() == ["node1", "node2"]
    finally:
        listener.kill()
        listener.wait()
    for name in ("node1", "node2"):
        link = cluster.on_node(name, ["ip", "-o", "link", "show", "fab0"])
        assert " mtu 9000 " in link.stdout, link
        addr = cluster.on_node(name, ["ip", "-o", "-4", "addr", "show", "fab0"]).stdout
        assert cluster.netns.node(name).fabric_ip in addr


def test_cgroups_stay_visible_on_a_node_and_the_memory_limit_still_kills(cluster: TestCluster) -> None:
    listing = cluster.on_node("node1", ["ls", "/sys/fs/cgroup"])
    assert listing.returncode == 0 and listing.stdout.split(), listing
    assert "RSS polling" not in (cluster.root / "node1.log").read_text()  # the agent found its cgroup
    hog = "x = bytearray(300 * 1024 * 1024); import time; time.sleep(30)"
    job_id = cluster.submit(
        [sys.executable, "-c", hog],
        containerOverrides={"command": [sys.executable, "-c", hog],
                            "resourceRequirements": [{"type": "MEMORY", "value": "64"}]},
    )
    job = cluster.wait_status(job_id, "FAILED", timeout=30)
    assert job["container"]["reason"] == OOM_REASON


def test_close_leaves_no_namespace_link_bridge_or_process(tmp_path: Path) -> None:
    c = TestCluster(tmp_path, nodes=2, netns=True)
    try:
        c.up()
        assert c.netns is not None
        tag = c.netns.tag
        assert len(_leftovers(tag)) >= 2 + 2 * 2 + 2  # namespaces, links, bridges, holders
        job_id = c.submit(["sleep", "300"])
        c.wait_status(job_id, "RUNNING")
    finally:
        c.close()
    assert _leftovers(tag) == []
    c.close()  # idempotent


def test_cluster_up_netns_and_down_remove_exactly_what_they_made(tmp_path: Path) -> None:
    home = str(tmp_path / "home")
    env = dict(os.environ, HPCBATCH_HOME=home)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([os.path.join(os.path.dirname(sys.executable), "hpcbatch"), *args],
                              capture_output=True, text=True, env=env, timeout=120, check=False)

    from hpcbatch.localcluster import LocalCluster

    local = LocalCluster(home)
    tag = local.netns_tag
    try:
        up = cli("cluster", "up", "--nodes", "2", "--netns")
        assert up.returncode == 0, up.stderr
        layout = local.netns_layout
        assert layout is not None and layout.tag == tag
        status = cli("cluster", "status")
        assert status.returncode == 0, status.stderr
        for n in layout.nodes:
            assert n.mgmt_ip in status.stdout and n.fabric_ip in status.stdout
        hostnames = {n["name"]: n["hostname"] for n in local.client().list_nodes()["nodes"]}
        assert hostnames == {"node1": "node1", "node2": "node2"}
        assert (Path(home) / "cluster" / "node1.toml").read_text().count('fabric_interface = "fab0"') == 1
    finally:
        down = cli("cluster", "down")
    assert down.returncode == 0, down.stderr
    assert "node[1-2]" in down.stdout
    wait_for(lambda: _leftovers(tag) == [], 5, what=f"nothing left of cluster {tag}")
