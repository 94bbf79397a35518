"""The CurveZMQ control plane with real head and agent processes: enrollment, revocation,
key pinning, and no plaintext on the wire."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from click.testing import CliRunner

from hpcbatch.cli.main import cli
from tests.harness import TestCluster, free_port, wait_for

LIVENESS_WINDOW_S = 0.3 * 5  # the harness's heartbeat_s * liveness


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[list[TestCluster]]:
    made: list[TestCluster] = []
    yield made
    for c in made:
        c.close()


def _log(c: TestCluster, name: str) -> str:
    return (c.root / f"{name}.log").read_text(errors="replace")


def _keys_cli(c: TestCluster, *args: str) -> str:
    result = CliRunner().invoke(cli, ["--endpoint", c.socket_endpoint, "nodes", "keys", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _run_two_at_once(c: TestCluster) -> set[str]:
    """Two 1-vCPU jobs submitted together; the nodes that ran them."""
    jobs = [c.submit(["sh", "-c", "sleep 0.5"], containerOverrides={"vcpus": 1}) for _ in range(2)]
    return {c.wait_status(j, "SUCCEEDED")["nodeName"] for j in jobs}


def test_an_unenrolled_agent_gets_nothing_until_accepted(tmp_path: Path, make_cluster: list[TestCluster]) -> None:
    c = TestCluster(tmp_path, nodes=2, node_vcpus=1, enrolled=["node1"])
    make_cluster.append(c)
    c.start_head()
    c.start_agent("node1")
    c.start_agent("node2")
    c.wait_active(["node1"])
    c.make_default_queue()

    key = c.agent_public_key("node2")
    wait_for(lambda: c.node_keys().get("node2", {}).get("state") == "pending", 10, what="node2's key pending")
    assert c.node_keys()["node2"]["publicKey"] == key
    assert c.node_keys()["node1"]["state"] == "accepted"
    listed = _keys_cli(c, "list")
    assert "node2" in listed and "pending" in listed and key in listed
    wait_for(lambda: "hpcbatch nodes keys accept node2" in _log(c, "node2"), 10, what="the agent's enrollment hint")
    assert "node2 (key " in _log(c, "head") and "is not enrolled" in _log(c, "head")

    # Unenrolled: never a node, never work, even when node1 is full.
    assert _run_two_at_once(c) == {"node1"}
    assert "node2" not in c.nodes()

    assert _keys_cli(c, "accept", "node2") == "accepted node key node2\n"
    c.wait_active(["node2"])
    assert c.node_keys()["node2"]["state"] == "accepted"
    wait_for(lambda: _run_two_at_once(c) == {"node1", "node2"}, 30, interval=0.1, what="jobs on both nodes")


def test_revoke_cuts_a_running_agent_off_at_once(tmp_path: Path, make_cluster: list[TestCluster]) -> None:
    c = TestCluster(tmp_path, nodes=3, node_vcpus=1)
    make_cluster.append(c)
    c.up()
    # Fill every node, so one job surely runs on node3.
    long = [c.submit(["sleep", "60"], containerOverrides={"vcpus": 1}) for _ in range(3)]
    for job in long:
        c.wait_status(job, "RUNNING")
    on_node3 = next(j for j in long if c.job(j)["nodeName"] == "node3")

    c.client.call("/hpcbatch/v1/revokenodekey", {"name": "node3"})
    # At once: the head forgot node3 before it answered.
    assert c.nodes()["node3"]["state"] == "DOWN"
    assert c.node_keys()["node3"]["state"] == "rejected"
    lost = c.wait_status(on_node3, "FAILED", timeout=LIVENESS_WINDOW_S * 4)
    assert "node3" in lost["statusReason"]
    # Its connection was dropped; reconnecting, the handshake itself is refused.
    wait_for(lambda: "refused this node's key" in _log(c, "node3"), 10, what="node3 refused at the handshake")
    assert "refused node node3" in _log(c, "head")

    # The others keep working, node3 gets nothing.
    for job in long:
        if job != on_node3:
            c.client.terminate_job(jobId=job, reason="make room")
            c.wait_status(job, "FAILED")
    assert _run_two_at_once(c) == {"node1", "node2"}
    assert c.nodes()["node3"]["state"] == "DOWN"

    # Trusted again, the agent comes back by itself (libzmq would not reconnect after a refusal).
    c.client.call("/hpcbatch/v1/acceptnodekey", {"name": "node3"})
    c.wait_active(["node3"], timeout=40)


def test_an_agent_pinning_the_wrong_head_key_cannot_connect(tmp_path: Path, make_cluster: list[TestCluster]) -> None:
    c = TestCluster(tmp_path, nodes=1)
    make_cluster.append(c)
    wrong = tmp_path / "not-the-head.key"
    wrong.write_bytes(zmq.curve_keypair()[0] + b"\n")
    c.add_agent("rogue", enroll=True, head_public_key=wrong)  # its own key is even accepted
    c.up()
    c.start_agent("rogue")
    wait_for(lambda: "is head_public_key" in _log(c, "rogue"), 15, what="the rogue agent's handshake error")
    assert "rogue" not in c.nodes()
    assert "registered with head" not in _log(c, "rogue")


class _RecordingProxy:
    """A TCP relay from ``port`` to ``target`` that keeps every byte it carries."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.captured = bytearray()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = [self.listener]
        self._start(self._accept)

    def _start(self, target: object, *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        t.start()
        self._threads.append(t)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self._sockets += [client, upstream]
            self._start(self._pump, client, upstream)
            self._start(self._pump, upstream, client)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                return
            with self._lock:
                self.captured += data
            try:
                dst.sendall(data)
            except OSError:
                return

    def bytes(self) -> bytes:
        with self._lock:
            return bytes(self.captured)

    def close(self) -> None:
        for s in self._sockets:
            s.close()


def test_jobs_never_cross_the_wire_in_plaintext(tmp_path: Path, make_cluster: list[TestCluster]) -> None:
    c = TestCluster(tmp_path, nodes=1)
    make_cluster.append(c)
    host, port = c.fleet.removeprefix("tcp://").rsplit(":", 1)
    proxy = _RecordingProxy((host, int(port)))
    try:
        c.add_agent("node1", head=f"tcp://127.0.0.1:{proxy.port}")
        c.up()
        marker = "s3cr3t-" + free_port().__str__() + "-marker"
        job = c.submit(
            ["sh", "-c", f"echo cmd-{marker}; echo env-$SECRET_MARKER"],
            containerOverrides={"environment": [{"name": "SECRET_MARKER", "value": f"env-{marker}"}]},
        )
        c.wait_status(job, "SUCCEEDED")
        out = wait_for(lambda: (log := c.logs(job)) and f"env-env-{marker}" in log and log, 10, what="job output")
        assert f"cmd-{marker}" in out
        captured = proxy.bytes()
    finally:
        proxy.close()
    assert b"CURVE" in captured  # the ZMTP greeting names the mechanism: this is the fleet's traffic
    assert len(captured) > 1000
    assert marker.encode() not in captured
    assert b"SECRET_MARKER" not in captured and b"AWS_BATCH_JOB_ID" not in captured
