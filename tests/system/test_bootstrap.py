"""``hpcbatch nodes bootstrap`` on the test bed: run on the head (node1) as root, it brings up
an agent on node5 over SSH (and its fabric, as the Ansible role does) while an unreachable
host and a host presenting the wrong host key are reported, each on its own line, and the
summary counts them."""

from __future__ import annotations

import re
import shlex

import pytest

from tests.system import headapi
from tests.system.conftest import Site
from tests.system.playbooks import HEAD

pytestmark = [pytest.mark.system, pytest.mark.timeout(900)]
NEW = "node5"


def _put(site: Site, host: str, path: str, data: bytes, mode: str = "0644") -> None:
    import subprocess

    proc = subprocess.run([*site.tb.ssh_argv(host), f"cat > {path} && chmod {mode} {path}"],
                          input=data, capture_output=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr


def test_bootstrap_brings_up_an_agent_and_reports_the_hosts_it_cannot(site: Site) -> None:
    tb = site.tb
    head, impostor = tb.host(HEAD), tb.host("node4")
    wheel = site.bed.upgrade_wheel
    # The head's admin: an SSH key the hosts trust, a known_hosts that names node5's real key
    # and, for "impostor" (node4's address), node5's key: a host that is not who it claims.
    known = next(line for line in tb.known_hosts.read_text().splitlines() if line.startswith(f"{NEW},"))
    node5_key = " ".join(known.split()[1:3])
    _put(site, HEAD, "/root/bootstrap_key", tb.client_key.read_bytes(), "0600")
    _put(site, HEAD, "/root/known_hosts", f"{NEW} {node5_key}\nimpostor {node5_key}\n".encode())
    _put(site, HEAD, f"/root/{wheel.name}", wheel.read_bytes())
    # The fabric left at 1500 on the new host: bootstrap sets it as the Ansible fabric role would.
    assert tb.ssh(NEW, "ip link set dev fab0 mtu 1500").returncode == 0
    setup = tb.ssh(HEAD, f"echo '{impostor.mgmt_ip} impostor' >> /etc/hosts && "
                         f"{headapi.VENV}/bin/pip install -q --no-index --find-links /opt/wheelhouse asyncssh")
    assert setup.returncode == 0, setup.stderr

    command = [
        f"{headapi.VENV}/bin/hpcbatch", "nodes", "bootstrap", f"{NEW},unreachable1,impostor",
        "--wheel", f"/root/{wheel.name}", "--head", f"tcp://{head.mgmt_ip}:8472",
        "-i", "/root/bootstrap_key", "--known-hosts", "/root/known_hosts",
        "--pip-args", "--no-index --find-links /opt/wheelhouse",
        "--fabric-interface", "fab0", "--allow-root-jobs", "--connect-timeout", "5", "--timeout", "90",
    ]
    run = tb.ssh(HEAD, f"HPCBATCH_ENDPOINT={headapi.SOCKET} " + shlex.join(command), timeout=400)
    out = run.stdout
    assert run.returncode == 1, out + run.stderr  # some hosts failed
    assert re.search(rf"^{NEW}\s+ok\s+hpcbatch \S+, enrolled, ACTIVE", out, re.M), out
    assert re.search(r"^unreachable1\s+FAILED\s+connect: unreachable", out, re.M), out
    assert re.search(r"^impostor\s+FAILED\s+host key: ", out, re.M), out
    assert "1 of 3 hosts bootstrapped; failed: impostor,unreachable1" in out, out

    nodes = headapi.nodes(tb, HEAD)
    assert nodes[NEW]["state"] == "ACTIVE", nodes[NEW]
    assert nodes[NEW]["fabricInterface"] == "fab0"
    assert "impostor" not in nodes and "unreachable1" not in nodes
    # The agent runs under systemd on node5, and nothing was written on the impostor's host.
    assert tb.ssh(NEW, "systemctl is-active hpcbatch-agent").stdout.strip() == "active"
    assert '"mtu":9000' in tb.ssh(NEW, "ip -j link show dev fab0").stdout.replace(" ", "")
    fabric = tb.ssh(NEW, "cat /etc/security/limits.d/90-hpcbatch-memlock.conf /etc/sysctl.d/90-hpcbatch-fabric.conf "
                         "/etc/hpcbatch/client.toml")
    assert "memlock    unlimited" in fabric.stdout and "vm.max_map_count = 1048576" in fabric.stdout, fabric.stderr
    # hpcbatch[agent]: NVML's bindings, none of the head's packages.
    extras = tb.ssh(NEW, f"{headapi.VENV}/bin/python -c 'import pynvml' && ! {headapi.VENV}/bin/python -c 'import aiohttp'")
    assert extras.returncode == 0, extras.stdout + extras.stderr
    assert f'endpoint = "http://{head.mgmt_ip}:8471"' in fabric.stdout
    assert tb.ssh("node4", "grep -q 'name = \"node4\"' /etc/hpcbatch/agent.toml").returncode == 0

    # A second run over a bootstrapped host changes nothing it should not: same key, still ACTIVE.
    again = tb.ssh(HEAD, f"HPCBATCH_ENDPOINT={headapi.SOCKET} " + shlex.join([*command[:3], NEW, *command[4:]]),
                   timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "1 of 1 hosts bootstrapped" in again.stdout
