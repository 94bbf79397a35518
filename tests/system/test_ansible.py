"""The Ansible roles on real hosts: site.yml brings up a cluster that runs MPI across three
agents, a second run changes nothing, --check --diff works, the units verify, the README's
first-contact commands run as written, a config change restarts the agents under a running job
that then ends with its own exit code, upgrade.yml rolls a new build through while jobs run
without losing or repeating any and records the version in the inventory, and the next site.yml
keeps that version (and drains first only the node whose fabric MTU it changes).

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
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.system import headapi
from tests.system.conftest import UPGRADE_VERSION, Site
from tests.system.playbooks import ANSIBLE, COMPUTE, HEAD, inventory_version, recap, run_playbook
from tests.system.testbed import REPO

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


def test_site_brings_up_a_cluster_whose_agents_are_active(lint: subprocess.Popen[str], site: Site) -> None:
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
                                    "systemd-analyze verify /etc/systemd/system/hpcbatch-agent.service && "
                                    "systemctl show -p KillMode --value hpcbatch-agent")
    assert agent.returncode == 0, agent.stdout + agent.stderr
    assert agent.stdout.split()[-1] == "process"  # a restart stops the agent, not its jobs


def test_each_host_has_only_what_its_roles_wrote(site: Site) -> None:
    assert site.tb.ssh(HEAD, "test -e /etc/hpcbatch/head.toml && ! test -e /etc/hpcbatch/agent.toml").returncode == 0
    assert site.tb.ssh(COMPUTE[0], "test -e /etc/hpcbatch/agent.toml && ! test -e /etc/hpcbatch/head.toml").returncode == 0


def test_the_head_gets_the_head_extra_and_compute_nodes_none_of_its_packages(site: Site) -> None:
    probe = (f"{VENV}/bin/python -c 'import importlib.util as u; print(sorted(m for m in "
             "(\"aiohttp\", \"psycopg\", \"jinja2\", \"prometheus_client\", \"pynvml\") if u.find_spec(m)))'")
    head, compute = site.tb.ssh(HEAD, probe), site.tb.ssh(COMPUTE[0], probe)
    assert head.stdout.strip() == "['aiohttp', 'jinja2', 'prometheus_client', 'psycopg']", head.stdout + head.stderr
    assert compute.stdout.strip() == "['pynvml']", compute.stdout + compute.stderr  # hpcbatch[agent]


@pytest.fixture(scope="module")
def second_runs(site: Site) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    """site.yml again, and site.yml --check --diff, side by side: on a site the first run
    converged neither has anything to change, so neither needs to wait for the other."""
    with ThreadPoolExecutor(2) as pool:
        again = pool.submit(run_playbook, site.inventory, "site.yml")
        check = pool.submit(run_playbook, site.inventory, "site.yml", "--check", "--diff")
        return again.result(), check.result()


def test_second_run_changes_nothing(
    second_runs: tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]],
) -> None:
    again = second_runs[0]
    assert again.returncode == 0, again.stdout[-4000:]
    counts = recap(again.stdout)
    assert set(counts) == {HEAD, *COMPUTE}, again.stdout[-2000:]
    assert {h: c["changed"] for h, c in counts.items()} == {h: 0 for h in counts}, again.stdout[-8000:]


def test_check_diff_runs_and_predicts_no_change(
    second_runs: tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]],
) -> None:
    check = second_runs[1]
    assert check.returncode == 0, check.stdout[-4000:]
    counts = recap(check.stdout)
    assert set(counts) == {HEAD, *COMPUTE}, check.stdout[-2000:]
    assert all(c["changed"] == 0 and c["failed"] == 0 for c in counts.values()), check.stdout[-6000:]


@pytest.fixture(scope="package")
def lint() -> Iterator[subprocess.Popen[str]]:
    """ansible-lint, started before the test bed (the first test asks for it ahead of ``site``):
    it needs no host, so it runs while the first site.yml mostly waits on SSH and pip."""
    import ansible

    # ansible-lint runs the `ansible` command: it sits next to the interpreter that has ansible-core.
    bins = [str(Path(sys.executable).parent), str(Path(ansible.__file__).parents[4] / "bin")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ansiblelint", "--profile", "production", "--offline", "site.yml", "upgrade.yml", "roles"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ANSIBLE,
        env={**os.environ, "PATH": ":".join([*bins, os.environ.get("PATH", "/usr/bin:/bin")])},
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:  # its test was not selected
            proc.kill()
        proc.communicate()


def test_ansible_lint_production_profile_is_clean(lint: subprocess.Popen[str]) -> None:
    out, err = lint.communicate(timeout=300)
    assert lint.returncode == 0, out[-4000:] + err[-4000:]


def _readme_block(name: str) -> str:
    """The shell block after ``<!-- first-contact: NAME -->`` in the README, as written."""
    text = (REPO / "README.md").read_text()
    found = re.search(rf"<!-- first-contact: {name} -->\n```sh\n(.*?)```", text, re.S)
    assert found, f"README.md has no first-contact block {name!r}"
    return found.group(1)


def test_readme_first_contact_runs_as_written(site: Site, tmp_path: Path) -> None:
    tb = site.tb
    # "in ansible/" with the inventory the README calls inventory/mycluster: this test bed's.
    (tmp_path / "inventory").mkdir()
    (tmp_path / "inventory" / "mycluster").symlink_to(site.inventory)
    env = {"ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1", "HOME": str(tmp_path),
           "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
           "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"}
    control = subprocess.run(["bash", "-e", "-c", _readme_block("control")], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300, check=False)
    assert control.returncode == 0, control.stdout[-4000:] + control.stderr[-2000:]
    for host in (HEAD, *COMPUTE):
        assert tb.ssh(host, "id -u alice").stdout.strip() == "2001", host

    # On the head, as root, over SSH: a plain (non-login) shell finds the head through client.toml.
    head = tb.ssh(HEAD, "set -e\n" + _readme_block("head"), timeout=300)
    assert head.returncode == 0, head.stdout + head.stderr
    assert head.stdout.strip().splitlines()[-1].strip() in COMPUTE, head.stdout  # hostname, from a node

    # A compute node's CLI is pointed at the head's API over TCP.
    node = tb.ssh(COMPUTE[0], "cat /etc/hpcbatch/client.toml")
    assert f'endpoint = "http://{tb.host(HEAD).mgmt_ip}:8471"' in node.stdout, node.stdout
    # A key for a user the head does not know works, but says what will go wrong.
    key = tb.ssh(HEAD, "hpcbatch admin keys create --user nosuchuser")
    assert key.returncode == 0, key.stderr
    assert "no Unix user 'nosuchuser' on the head" in key.stderr, key.stderr


def test_site_restarts_agents_for_a_config_change_and_their_job_ends_with_its_own_exit_code(site: Site) -> None:
    tb = site.tb
    go = "/run/hpcbatch-test-go"
    for host in COMPUTE:
        tb.ssh(host, f"rm -f {go}")
    job_id = str(headapi.call(tb, HEAD, "submit_job", jobName="restart", jobQueue="default",
                              jobDefinition="hpcbatch-default",
                              containerOverrides={"command": ["sh", "-c", f"while [ ! -e {go} ]; do sleep 0.2; done; exit 3"]})
                 ["jobId"])
    headapi.wait_status(tb, HEAD, job_id, "RUNNING", timeout=60)
    before = {h: tb.ssh(h, "systemctl show -p MainPID --value hpcbatch-agent").stdout.strip() for h in COMPUTE}

    change = run_playbook(site.inventory, "site.yml", "-e", "agent_log_level=DEBUG")
    assert change.returncode == 0, change.stdout[-8000:] + change.stderr[-2000:]
    assert "is drained first (its jobs finish)" not in change.stdout  # a config change restarts in place
    after = {h: tb.ssh(h, "systemctl show -p MainPID --value hpcbatch-agent").stdout.strip() for h in COMPUTE}
    assert all(before[h] != after[h] for h in COMPUTE), (before, after)  # every agent restarted
    now = headapi.job(tb, HEAD, job_id)
    # An agent that ends its jobs when it stops fails here ("Agent shut down while the attempt
    # ran"): the agent must leave them in their cgroups and adopt them again (KillMode=process).
    assert now["status"] == "RUNNING", (now["status"], now.get("statusReason"), now.get("attempts"))

    for host in COMPUTE:
        tb.ssh(host, f"touch {go}")
    ended = headapi.wait_jobs(tb, HEAD, [job_id], timeout=120)[job_id]
    assert ended["status"] == "FAILED", ended
    assert len(ended["attempts"]) == 1, ended["attempts"]
    assert ended["attempts"][0]["container"].get("exitCode") == 3, ended["attempts"]  # its own, not the agent's
    nodes = headapi.nodes(tb, HEAD)
    assert {n: v["state"] for n, v in nodes.items()} == {n: "ACTIVE" for n in COMPUTE}


class _UpgradeWatch(threading.Thread):
    """Beside upgrade.yml: once the head answers with the new version, submits the jobs that must
    run although they come in mid-upgrade; once a compute node is DRAINING while the long jobs
    still run (the drain waits for them), lets those jobs end (``GO`` on every node). Events, not
    sleeps: the drain waits exactly until then, and the test knows it had to wait."""

    GO = "/run/hpcbatch-test-upgrade-go"

    def __init__(self, tb: Any, long_jobs: list[str]) -> None:
        super().__init__(name="upgrade-watch")
        self.tb, self.long_jobs = tb, long_jobs
        self.done = threading.Event()
        self.during: list[str] = []
        self.draining: tuple[str, dict[str, str]] | None = None  # the node, the long jobs' states then
        self.error: BaseException | None = None

    def _call(self, method: str, **kwargs: Any) -> Any:
        """The head's answer, or None while it is down (upgrade.yml restarts it)."""
        try:
            return headapi.call(self.tb, HEAD, method, **kwargs)
        except AssertionError:
            return None

    def _until(self, found: Any) -> Any:
        while not self.done.is_set():
            result = found()
            if result:
                return result
            time.sleep(0.3)
        return None

    def _head_upgraded(self) -> bool:
        whoami = self._call("/hpcbatch/v1/whoami")
        return bool(whoami) and whoami["headVersion"] == UPGRADE_VERSION

    def _a_drain_waits(self) -> tuple[str, dict[str, str]] | None:
        nodes = self._call("list_nodes")
        draining = [n["name"] for n in (nodes or {}).get("nodes", []) if n["state"] == "DRAINING"]
        jobs = self._call("describe_jobs", jobs=self.long_jobs) if draining else None
        return (draining[0], {j["jobId"]: j["status"] for j in jobs["jobs"]}) if jobs else None

    def run(self) -> None:
        try:
            if self._until(self._head_upgraded):
                for i in range(2):
                    self.during.append(str(headapi.call(
                        self.tb, HEAD, "submit_job", jobName=f"during{i}", jobQueue="default",
                        jobDefinition="hpcbatch-default", containerOverrides={"command": ["true"]})["jobId"]))
            self.draining = self._until(self._a_drain_waits)
        except Exception as e:  # the test reports it, in its own thread
            self.error = e
        finally:
            for host in COMPUTE:
                self.tb.ssh(host, f"touch {self.GO}")

    def finish(self) -> None:
        self.done.set()
        self.join(timeout=120)


def test_rolling_upgrade_while_jobs_run_loses_and_repeats_none(site: Site) -> None:
    tb = site.tb
    def submit(name: str, command: list[str], vcpus: int) -> str:
        return str(headapi.call(tb, HEAD, "submit_job", jobName=name, jobQueue="default",
                                jobDefinition="hpcbatch-default",
                                containerOverrides={"command": command,
                                                    "resourceRequirements": [{"type": "VCPU", "value": str(vcpus)}]})["jobId"])

    # A whole-node job on every agent, still running when its node's turn comes: the drain
    # must wait for it (an agent restarted under it would end it), and the head's own
    # restart must not touch it. They end once the watch has seen a drain wait for them.
    # Then short ones queued behind them, and jobs submitted while the playbook runs.
    for host in COMPUTE:
        tb.ssh(host, f"rm -f {_UpgradeWatch.GO}")
    hold = ["sh", "-c", f"while [ ! -e {_UpgradeWatch.GO} ]; do sleep 0.2; done"]
    sleepers = [submit(f"long{i}", hold, 2) for i in range(3)]
    for job_id in sleepers:
        headapi.wait_status(tb, HEAD, job_id, "RUNNING", timeout=60)
    sleepers += [submit(f"short{i}", ["sleep", "2"], 1) for i in range(3)]
    watch = _UpgradeWatch(tb, sleepers[:3])
    watch.start()
    upgrade = run_playbook(site.inventory, "upgrade.yml", "-e", f"hpcbatch_version={UPGRADE_VERSION}",
                           "-e", "upgrade_drain_timeout=300")
    watch.finish()
    assert upgrade.returncode == 0, upgrade.stdout[-8000:] + upgrade.stderr[-2000:]
    assert watch.error is None, repr(watch.error)
    assert len(watch.during) == 2, "the head never answered with the new version while the playbook ran"

    jobs = headapi.wait_jobs(tb, HEAD, sleepers + watch.during, timeout=180)
    # The long jobs were still running once the playbook had upgraded the head and begun on the
    # agents (so a drain had to wait for one), and each ran once to the end.
    assert watch.draining is not None, "no compute node was DRAINING while the playbook ran"
    assert set(watch.draining[1].values()) == {"RUNNING"}, watch.draining
    assert {j: v["status"] for j, v in jobs.items()} == {j: "SUCCEEDED" for j in jobs}
    assert all(len(v.get("attempts") or []) == 1 for v in jobs.values()), jobs  # none run twice
    nodes = headapi.nodes(tb, HEAD)
    assert {n: v["state"] for n, v in nodes.items()} == {n: "ACTIVE" for n in COMPUTE}
    assert {v["agentVersion"] for v in nodes.values()} == {UPGRADE_VERSION}
    assert headapi.call(tb, HEAD, "/hpcbatch/v1/whoami")["headVersion"] == UPGRADE_VERSION
    assert inventory_version(site.inventory) == UPGRADE_VERSION  # recorded where site.yml reads it


def test_versions_change_only_through_upgrade_and_only_to_the_inventorys(site: Site) -> None:
    old_version = site.bed.wheel.name.split("-")[1]
    # Three refusals, each before anything changes, so they run side by side.
    with ThreadPoolExecutor(3) as pool:
        # upgrade.yml with a wheel that is not the version it is told to roll out: refused at once.
        wrong_run = pool.submit(run_playbook, site.inventory, "upgrade.yml", "-e", "hpcbatch_version=9.9.9",
                                "-e", f"package_wheel={site.bed.wheel}")
        # site.yml told to run another version: refused, nothing installed.
        other_run = pool.submit(run_playbook, site.inventory, "site.yml", "-e", f"hpcbatch_version={old_version}")
        # A rebuilt wheel with the installed version: refused with the reason (pip would install nothing).
        rebuilt_run = pool.submit(run_playbook, site.inventory, "site.yml",
                                  "-e", f"package_wheel_dir={site.bed.rebuilt_wheel.parent}")
        wrong, other, rebuilt = wrong_run.result(), other_run.result(), rebuilt_run.result()
    assert wrong.returncode != 0
    assert f"package_wheel {site.bed.wheel.name} is hpcbatch {old_version}, not hpcbatch_version 9.9.9" \
        in " ".join(wrong.stdout.split()), wrong.stdout[-3000:]
    assert other.returncode != 0
    assert "site.yml never changes the installed version" in " ".join(other.stdout.split()), other.stdout[-3000:]
    assert rebuilt.returncode != 0
    assert "has the same version but other content" in " ".join(rebuilt.stdout.split()), rebuilt.stdout[-3000:]
    assert inventory_version(site.inventory) == UPGRADE_VERSION


def test_site_after_an_upgrade_keeps_the_version_and_drains_only_for_a_new_mtu(site: Site) -> None:
    tb = site.tb
    last = COMPUTE[-1]
    assert tb.ssh(last, "ip link set dev fab0 mtu 1500").returncode == 0  # the fabric task has work to do
    again = run_playbook(site.inventory, "site.yml")
    assert again.returncode == 0, again.stdout[-8000:] + again.stderr[-2000:]
    out = " ".join(again.stdout.split())
    assert f"{last} is drained first (its jobs finish), then changed: fab0 MTU: 1500 -> 9000" in out, again.stdout[-6000:]
    assert sum(f"{n} is drained first" in out for n in COMPUTE) == 1  # only the node that needs it
    assert '"mtu":9000' in tb.ssh(last, "ip -j link show dev fab0").stdout.replace(" ", "")
    for host in (HEAD, *COMPUTE):
        installed = tb.ssh(host, f"{VENV}/bin/python -c 'import hpcbatch; print(hpcbatch.__version__)'")
        assert installed.stdout.strip() == UPGRADE_VERSION, host  # the upgrade stuck
    nodes = headapi.nodes(tb, HEAD)
    assert {n: v["state"] for n, v in nodes.items()} == {n: "ACTIVE" for n in COMPUTE}
    assert {v["agentVersion"] for v in nodes.values()} == {UPGRADE_VERSION}
