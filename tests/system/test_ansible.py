"""The Ansible roles on real hosts: site.yml brings up a cluster that runs MPI across three
agents, a second run changes nothing, --check --diff works, the units verify, and upgrade.yml
rolls a new build through while jobs run without losing or repeating any.

One test bed (tests/system/conftest.py) and one site.yml run serve the whole module; the
tests run in file order and build on each other (the upgrade comes last).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.system import headapi
from tests.system.conftest import UPGRADE_VERSION, Site
from tests.system.playbooks import ANSIBLE, COMPUTE, HEAD, recap, run_playbook

pytestmark = [pytest.mark.system, pytest.mark.timeout(900)]
VENV = headapi.VENV


def _mpi_job(site: Site, script: str, nodes: int = 3) -> str:
    env = [
        {"name": "PATH", "value": f"{VENV}/bin:/usr/bin:/bin"},
        {"name": "PRTE_MCA_hwloc_default_binding_policy", "value": "none"},  # 2 cores, more ranks
    ]
    per_node = {"environment": env, "resourceRequirements": [{"type": "VCPU", "value": "1"}]}
    command = [f"{VENV}/bin/mpirun", f"{VENV}/bin/python", script]
    body: dict[str, Any] = {
        "jobName": "mpi", "jobQueue": "default", "jobDefinition": "hpcbatch-default-mnp",
        "nodeOverrides": {"numNodes": nodes, "nodePropertyOverrides": [
            {"targetNodes": "0", "containerOverrides": {"command": command, **per_node}},
            {"targetNodes": "1:", "containerOverrides": per_node},
        ]},
    }
    return str(headapi.call(site.tb, HEAD, "submit_job", **body)["jobId"])


def test_site_brings_up_a_cluster_whose_agents_are_active(site: Site) -> None:
    nodes = headapi.nodes(site.tb, HEAD)
    assert {n for n, v in nodes.items() if v["state"] == "ACTIVE"} == set(COMPUTE), nodes
    assert {v["fabricInterface"] for v in nodes.values()} == {"fab0"}
    assert {v["placementGroup"] for v in nodes.values()} == {"rack1"}


def test_mpi_job_runs_across_the_three_agents(site: Site) -> None:
    job_id = _mpi_job(site, "/opt/mpi_examples/hello.py")
    job = headapi.wait_jobs(site.tb, HEAD, [job_id], timeout=120)[job_id]
    out = headapi.logs(site.tb, HEAD, f"{job_id}#0")
    assert job["status"] == "SUCCEEDED", out
    assert set(re.findall(r"on (node\d)", out)) == set(COMPUTE), out


def test_daemons_run_under_systemd_units_that_verify(site: Site) -> None:
    head = site.tb.ssh(HEAD, "systemctl is-active hpcbatch-head && "
                             "systemd-analyze verify /etc/systemd/system/hpcbatch-head.service && "
                             "ps -o user= -C python3 -C python | sort -u")
    assert head.returncode == 0, head.stdout + head.stderr
    assert "hpcbatch" in head.stdout  # the head runs as its own user, not root
    agent = site.tb.ssh(COMPUTE[0], "systemctl is-active hpcbatch-agent && "
                                    "systemd-analyze verify /etc/systemd/system/hpcbatch-agent.service")
    assert agent.returncode == 0, agent.stdout + agent.stderr


def test_each_host_has_only_what_its_roles_wrote(site: Site) -> None:
    assert site.tb.ssh(HEAD, "test -e /etc/hpcbatch/head.toml && ! test -e /etc/hpcbatch/agent.toml").returncode == 0
    assert site.tb.ssh(COMPUTE[0], "test -e /etc/hpcbatch/agent.toml && ! test -e /etc/hpcbatch/head.toml").returncode == 0


def test_second_run_changes_nothing(site: Site) -> None:
    again = run_playbook(site.inventory, "site.yml")
    assert again.returncode == 0, again.stdout[-4000:]
    counts = recap(again.stdout)
    assert set(counts) == {HEAD, *COMPUTE}, again.stdout[-2000:]
    assert {h: c["changed"] for h, c in counts.items()} == {h: 0 for h in counts}, again.stdout[-8000:]


def test_check_diff_runs_and_predicts_no_change(site: Site) -> None:
    check = run_playbook(site.inventory, "site.yml", "--check", "--diff")
    assert check.returncode == 0, check.stdout[-4000:]
    assert all(c["changed"] == 0 and c["failed"] == 0 for c in recap(check.stdout).values()), check.stdout[-6000:]


def test_ansible_lint_production_profile_is_clean() -> None:
    import ansible

    # ansible-lint runs the `ansible` command: it sits next to the interpreter that has ansible-core.
    bins = [str(Path(sys.executable).parent), str(Path(ansible.__file__).parents[4] / "bin")]
    lint = subprocess.run(
        [sys.executable, "-m", "ansiblelint", "--profile", "production", "--offline", "site.yml", "upgrade.yml", "roles"],
        capture_output=True, text=True, cwd=ANSIBLE, timeout=300, check=False,
        env={**os.environ, "PATH": ":".join([*bins, os.environ.get("PATH", "/usr/bin:/bin")])},
    )
    assert lint.returncode == 0, lint.stdout[-4000:] + lint.stderr[-4000:]


def test_rolling_upgrade_while_jobs_run_loses_and_repeats_none(site: Site) -> None:
    tb = site.tb
    def sleeper(name: str, seconds: int, vcpus: int) -> str:
        return str(headapi.call(tb, HEAD, "submit_job", jobName=name, jobQueue="default",
                                jobDefinition="hpcbatch-default",
                                containerOverrides={"command": ["sleep", str(seconds)],
                                                    "resourceRequirements": [{"type": "VCPU", "value": str(vcpus)}]})["jobId"])

    # A whole-node job on every agent, still running when its node's turn comes: the drain
    # must wait for it (an agent restarted under it would end it), and the head's own
    # restart must not touch it. Then short ones queued behind them.
    sleepers = [sleeper(f"long{i}", 30, 2) for i in range(3)]
    for job_id in sleepers:
        headapi.wait_status(tb, HEAD, job_id, "RUNNING", timeout=60)
    sleepers += [sleeper(f"short{i}", 2, 1) for i in range(3)]
    during: list[str] = []

    def submit_during() -> None:  # jobs submitted while the playbook runs must run too
        time.sleep(15)
        for i in range(2):
            during.append(str(headapi.call(
                tb, HEAD, "submit_job", jobName=f"during{i}", jobQueue="default", jobDefinition="hpcbatch-default",
                containerOverrides={"command": ["true"]})["jobId"]))

    submitter = threading.Thread(target=submit_during)
    submitter.start()
    started = time.time()
    upgrade = run_playbook(site.inventory, "upgrade.yml", "-e", f"package_wheel={site.bed.upgrade_wheel}",
                           "-e", "upgrade_drain_timeout=300")
    submitter.join()
    assert upgrade.returncode == 0, upgrade.stdout[-8000:] + upgrade.stderr[-2000:]

    jobs = headapi.wait_jobs(tb, HEAD, sleepers + during, timeout=180)
    # The long jobs were still running once the playbook had upgraded the head and begun on the
    # agents (so a drain had to wait for one), and each ran once to the end.
    assert max(jobs[j]["stoppedAt"] for j in sleepers[:3]) / 1000 > started + 10
    assert {j: v["status"] for j, v in jobs.items()} == {j: "SUCCEEDED" for j in jobs}
    assert all(len(v.get("attempts") or []) == 1 for v in jobs.values()), jobs  # none run twice
    nodes = headapi.nodes(tb, HEAD)
    assert {n: v["state"] for n, v in nodes.items()} == {n: "ACTIVE" for n in COMPUTE}
    assert {v["agentVersion"] for v in nodes.values()} == {UPGRADE_VERSION}
    assert headapi.call(tb, HEAD, "/hpcbatch/v1/whoami")["headVersion"] == UPGRADE_VERSION
