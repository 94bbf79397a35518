"""``nodes bootstrap`` pieces that need no remote host: the agent config it writes, the
summary, and a host that cannot be reached (a real connection attempt to a closed port)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from hpcbatch.bootstrap import Bootstrapper, BootstrapSettings, HostReport, agent_config, summary
from node_agent.config import load_agent_config


def _settings(tmp_path: Path, **kw: object) -> BootstrapSettings:
    wheel = tmp_path / "hpcbatch-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"")
    return BootstrapSettings(wheel=wheel, head="tcp://10.0.0.1:8472", head_public_key=b"x" * 40, **kw)  # type: ignore[arg-type]


def test_agent_config_is_one_the_agent_accepts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = _settings(tmp_path, placement_group="r1", fabric_interface="ib0", allow_root_jobs=True)
    text = agent_config("node7", s)
    # The agent checks that head_public_key exists; point it at a file here.
    key = tmp_path / "head.key"
    key.write_text("k" * 40 + "\n")
    path = tmp_path / "agent.toml"
    path.write_text(text.replace("/etc/hpcbatch/head.key", str(key)))
    config = load_agent_config(path)
    assert (config.name, config.head, config.placement_group, config.fabric_interface) == (
        "node7", "tcp://10.0.0.1:8472", "r1", "ib0")
    assert config.allow_root_jobs is True
    assert config.state_dir == "/var/lib/hpcbatch-agent"


def test_summary_folds_failed_hosts_into_a_hostlist() -> None:
    reports = [HostReport("node1", ok=True), HostReport("node2"), HostReport("node3"), HostReport("gpu1")]
    assert summary(reports) == "1 of 4 hosts bootstrapped; failed: gpu1,node[2-3]"
    assert summary(reports[:1]) == "1 of 1 hosts bootstrapped"


def test_an_unreachable_host_is_reported_and_the_others_still_run(tmp_path: Path) -> None:
    pytest.importorskip("asyncssh")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = _settings(tmp_path, port=port, connect_timeout=5, verify_host_keys=False)
    reports = asyncio.run(Bootstrapper(settings, client=None).run(["127.0.0.1", "localhost"]))  # type: ignore[arg-type]
    assert [(r.host, r.ok, r.step) for r in reports] == [("127.0.0.1", False, "connect"), ("localhost", False, "connect")]
    assert all("unreachable" in r.detail for r in reports)
