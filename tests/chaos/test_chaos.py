"""Chaos, bounded and local: kill -9 the head and agents, cut a node off, fill the head's disk,
step its clock; after every round the invariants of tests/chaos/invariants.py must hold.

Runs as root on the network-namespace cluster (CI runs as root); elsewhere it skips. The
cluster runs on each store of tests/variants.py (PostgreSQL with an active and a standby
head); rounds that test nothing of the store run on SQLite only. Every loop is bounded in
count and time, and the seeds are fixed. Sizes can be lowered for a
quick local run: HPCBATCH_CHAOS_JOBS (1000), HPCBATCH_CHAOS_ROUNDS (10), HPCBATCH_CHAOS_CUT_S (20).

Every cut is sized against the agents' fence (FENCE_S), which is short here so that the
rounds stay short: the long cut lasts twice the fence (the node fences while cut off), the
short one well under it and well over the node-lost time (heartbeats 0.3 s x 5), and the
cut past the fence ends as soon as the retry has started elsewhere.
"""

from __future__ import annotations

import os
import random
import secrets
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcbatch.client import Client
from hpcbatch.errors import HpcbatchError
from hpcbatch.fencing import retry_hold_s
from tests import prereq
from tests.chaos.invariants import (
    chaos_env,
    describe_all,
    done_log,
    duplicate_completions,
    duplicate_starts,
    job_script,
    live_attempts,
    live_processes,
    two_live_attempts,
    violations,
    wait_final,
)
from tests.chaos.scenarios import (
    Load,
    cut_mgmt_link,
    kill_agent_mid_job,
    kill_agent_while_jobs_finish,
    kill_head_rounds,
)
from tests.harness import TestCluster, wait_for
from tests.variants import STORES, make_cluster

# The agents' fence, short and explicit (the default is the 10-minute outage bound, docs/ha.md).
# It must outlast an agent's restart in test_agent_kill9_while_its_jobs_finish (its jobs run
# 3 s while it is down) and the short cut below by a wide margin on two busy cores.
FENCE_S = 10.0
FENCE_CONFIG = f"fence_after_s = {FENCE_S}\n"
HEARTBEAT_S = 0.3  # the harness's default, which the chaos clusters keep
JOBS = int(os.environ.get("HPCBATCH_CHAOS_JOBS", "1000"))
ROUNDS = int(os.environ.get("HPCBATCH_CHAOS_ROUNDS", "10"))
CUT_S = float(os.environ.get("HPCBATCH_CHAOS_CUT_S", str(2 * FENCE_S)))  # past the fence and the head's hold
SHORT_CUT_S = 4.0  # node lost after 1.5 s of silence; its fence (10 s) is far off
FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")

pytestmark = prereq.skipif(os.geteuid() != 0, "netns", "needs root: network namespaces, tmpfs (CI runs as root)")

NO_VIOLATIONS = {"jobs_lost": [], "duplicate_starts": [], "duplicate_completions": [], "orphans": [],
                 "wrong_exit_codes": []}


@pytest.fixture(scope="module", params=STORES)
def chaos(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCluster]:
    c = make_cluster(tmp_path_factory.mktemp("chaos"), request.param, nodes=2, netns=True,
                     head_extra=FENCE_CONFIG, agent_extra=FENCE_CONFIG)
    try:
        yield c.up()
    finally:
        c.close()


def fresh(cluster: TestCluster, name: str) -> tuple[Path, str]:
    """A start log and a tag for one round's jobs (world-writable: jobs may run as anyone)."""
    starts = cluster.root / f"{name}-{secrets.token_hex(3)}.starts"
    for log in (starts, done_log(starts)):
        log.touch()
        log.chmod(0o666)
    return starts, starts.stem


def test_head_kill9_during_a_1000_job_load_loses_and_repeats_nothing(chaos: TestCluster) -> None:
    rng = random.Random(11)
    starts, tag = fresh(chaos, "headkill")
    load = Load(chaos, JOBS, starts, tag).start()
    # If the load is quicker than the kills, the rest of the kills fall during the runs.
    failovers = kill_head_rounds(chaos, ROUNDS, rng)
    load.join()
    assert len(load.acknowledged) == JOBS
    if len(chaos.heads) > 1:  # on PostgreSQL every kill hit the active head: a standby took over
        assert failovers == ROUNDS
    wait_final(chaos, load.acknowledged, timeout=240)
    assert violations(chaos, load.acknowledged, starts, tag) == NO_VIOLATIONS


def test_agent_kill9_mid_job(chaos: TestCluster) -> None:
    rng = random.Random(12)
    starts, tag = fresh(chaos, "agentkill")
    load = Load(chaos, 12, starts, tag, sleep_s=2).start()
    load.join()
    kill_agent_mid_job(chaos, "node1", rng)
    chaos.wait_active()
    wait_final(chaos, load.acknowledged, timeout=120)
    wait_for(lambda: not live_processes(tag), 30, what="no process of a finished job")
    assert violations(chaos, load.acknowledged, starts, tag, lost_ok=True) == NO_VIOLATIONS


# SQLite only: what is tested is the head's engine and the agent's restart, not the store.
@pytest.mark.parametrize("chaos", ["sqlite"], indirect=True)
def test_agent_kill9_while_its_jobs_finish_runs_none_of_them_twice(chaos: TestCluster) -> None:
    starts, tag = fresh(chaos, "finishwhiledown")
    # Two jobs: both fit on node1 at once (1 vCPU each), and both run on through the kill.
    ids = kill_agent_while_jobs_finish(chaos, "node1", 2, starts, tag)
    jobs = wait_final(chaos, ids, timeout=60)
    for job in jobs.values():  # the orphan's real exit, taken instead of a second run
        assert job["status"] == "SUCCEEDED" and len(job["attempts"]) == 1, job
        assert job["attempts"][0]["container"].get("exitCode") == 0, job
    assert duplicate_starts(starts) == [] and duplicate_completions(starts) == []
    wait_for(lambda: not live_processes(tag), 30, what="no process of a finished job")


# SQLite only: the fault is injected in the head's engine; the store is not what is tested.
@pytest.mark.parametrize("chaos", ["sqlite"], indirect=True)
def test_a_message_the_head_fails_on_fails_its_attempt_and_the_head_lives_on(chaos: TestCluster) -> None:
    from click.testing import CliRunner
    from prometheus_client.parser import text_string_to_metric_families

    from hpcbatch.cli.main import cli
    from hpcbatch.head.faults import RAISE_ON_ENV

    chaos.kill("head")
    chaos.start_head(env={RAISE_ON_ENV: "exited:poison*"})  # test-only: its engine raises on these exits
    try:
        chaos.wait_active(timeout=30)
        starts, tag = fresh(chaos, "poison")
        env = {"environment": chaos_env(tag)}
        poison = chaos.submit(job_script(starts, 0), jobName="poison1", retryStrategy={"attempts": 3},
                              containerOverrides=dict(env))
        fine = chaos.submit(job_script(starts, 0), jobName="fine1", containerOverrides=dict(env))
        job = chaos.wait_status(poison, "FAILED", "SUCCEEDED", timeout=60)
        assert chaos.procs["head"].poll() is None, "the head died on a message"
        assert job["status"] == "FAILED", job
        assert "could not process the attempt's exit report" in job["statusReason"], job
        assert "InjectedFault" in job["statusReason"], job
        assert len(job["attempts"]) == 1  # not retried: its command ran to its end once
        assert chaos.wait_status(fine, "SUCCEEDED", "FAILED")["status"] == "SUCCEEDED"
        # Set aside, and shown where an operator looks.
        listed = CliRunner().invoke(cli, ["--endpoint", chaos.socket_endpoint, "nodes", "list"],
                                    catch_exceptions=False).output
        assert "QUARANTINED" in listed and poison in listed, listed
        text = urllib.request.urlopen(chaos.endpoint + "/metrics", timeout=10).read().decode()
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(text) for s in family.samples}
        assert samples[("hpcbatch_agent_messages_quarantined_total", (("type", "exited"),))] == 1
        failed = samples[("hpcbatch_agent_messages_failed_total", (("type", "exited"),))]
        assert failed >= 3
        # Acknowledged: the agent stopped resending it (with every heartbeat), so it fails no more.
        node = job["nodeName"]
        seen = chaos.nodes()[node]["lastHeartbeatAt"]
        wait_for(lambda: chaos.nodes()[node]["lastHeartbeatAt"] > seen + 1000, 10, what=f"{node}'s next heartbeats")
        text = urllib.request.urlopen(chaos.endpoint + "/metrics", timeout=10).read().decode()
        assert f'hpcbatch_agent_messages_failed_total{{type="exited"}} {failed}' in text
        assert duplicate_starts(starts) == [] and duplicate_completions(starts) == []
    finally:
        chaos.kill("head")
        chaos.start_head()
        chaos.wait_active(timeout=30)


# SQLite only: a cut link is the agents' and the fleet's business, not the store's.
@pytest.mark.parametrize("chaos", ["sqlite"], indirect=True)
def test_management_link_cut_and_restored(chaos: TestCluster) -> None:
    starts, tag = fresh(chaos, "linkcut")
    load = Load(chaos, 8, starts, tag, sleep_s=3).start()
    load.join()
    wait_for(lambda: any(n.get("state") == "ACTIVE" for n in chaos.nodes().values()), 10, what="nodes")
    # Sample during the cut: never two live attempts of one job at once, on any node.
    seen_twice: list[str] = []
    cut = threading.Thread(target=cut_mgmt_link, args=(chaos, "node2", CUT_S))
    cut.start()
    while cut.is_alive():
        seen_twice.extend(two_live_attempts(tag))
        time.sleep(0.5)
    cut.join()
    chaos.wait_active(timeout=30)
    wait_final(chaos, load.acknowledged, timeout=120)
    wait_for(lambda: not live_processes(tag), 30, what="no process of a finished job")
    assert seen_twice == []
    assert violations(chaos, load.acknowledged, starts, tag, lost_ok=True) == NO_VIOLATIONS


def test_a_retried_job_never_runs_on_a_cut_off_node_and_elsewhere_at_once(chaos: TestCluster) -> None:
    # A cut shorter than the agent's fence: the head holds the retry until the node is back
    # and has reported its attempt (still running: the head adopts it, and no retry runs).
    # The jobs outlast the cut, so the node comes back with them still running.
    starts, tag = fresh(chaos, "fence")
    chaos.client.call("/hpcbatch/v1/drainnode", {"name": "node1"})  # both start on node2
    try:
        ids = [chaos.submit(job_script(starts, 0, SHORT_CUT_S + 4), retryStrategy={"attempts": 2},
                            containerOverrides={"environment": chaos_env(tag)}) for _ in range(2)]
        for job_id in ids:
            chaos.wait_status(job_id, "RUNNING")
    finally:
        chaos.client.call("/hpcbatch/v1/resumenode", {"name": "node1"})
    seen_twice: set[str] = set()
    held: set[str] = set()  # the retries the head held during the cut (node2 was lost)
    cut = threading.Thread(target=cut_mgmt_link, args=(chaos, "node2", SHORT_CUT_S))
    cut.start()
    while cut.is_alive():
        seen_twice.update(two_live_attempts(tag))
        held.update(j["jobId"] for j in describe_all(chaos, ids).values()
                    if "to fence its attempts" in (j.get("statusReason") or ""))
        time.sleep(0.3)
    cut.join()
    chaos.wait_active(timeout=30)
    wait_final(chaos, ids, timeout=60)
    wait_for(lambda: not live_processes(tag), 30, what="no process of a finished job")
    assert seen_twice == set()
    assert held == set(ids), "the cut was too short for the head to lose the node and hold the retries"


# SQLite only: the fence is the agent's; the PostgreSQL variant runs the short cut above.
@pytest.mark.parametrize("chaos", ["sqlite"], indirect=True)
def test_a_cut_off_node_kills_its_attempts_before_the_head_retries_them(chaos: TestCluster) -> None:
    # A cut longer than the agent's fence: the retry starts while the link is still down,
    # after the cut-off node killed the first attempt by itself.
    starts, tag = fresh(chaos, "fenced")
    chaos.client.call("/hpcbatch/v1/drainnode", {"name": "node1"})  # the first attempt on node2
    try:
        command = ["sh", "-c", f'echo "$AWS_BATCH_JOB_ID $AWS_BATCH_JOB_ATTEMPT" >> {starts}; '
                               '[ "$AWS_BATCH_JOB_ATTEMPT" = 1 ] && sleep 120; exit 0']
        job_id = chaos.submit(command, retryStrategy={"attempts": 2},
                              containerOverrides={"environment": chaos_env(tag)})
        chaos.wait_status(job_id, "RUNNING")
    finally:
        chaos.client.call("/hpcbatch/v1/resumenode", {"name": "node1"})
    seen_twice: set[str] = set()
    first_alive_at_end = True
    held = False
    # The link comes back once the retry has started elsewhere and the first attempt is dead,
    # or at the latest well after the head's hold (then the asserts below fail).
    retried = threading.Event()
    cut = threading.Thread(target=cut_mgmt_link, args=(chaos, "node2", retry_hold_s(FENCE_S, HEARTBEAT_S) + 15),
                           kwargs={"until": retried})
    cut.start()
    while cut.is_alive():
        seen_twice.update(two_live_attempts(tag))
        first_alive_at_end = any(attempt == "1" for _job, attempt in live_attempts(tag))
        held = held or "to fence its attempts" in (chaos.job(job_id).get("statusReason") or "")
        if not first_alive_at_end and f"{job_id} 2" in starts.read_text():
            retried.set()
        time.sleep(0.3)
    retried_during_cut = f"{job_id} 2" in starts.read_text()
    cut.join()
    chaos.wait_active(timeout=30)
    job = chaos.wait_status(job_id, "SUCCEEDED", "FAILED", timeout=60)
    assert seen_twice == set()
    assert held, "the retry was never held for the fence"
    assert not first_alive_at_end, "the cut-off node did not kill its attempt"
    assert retried_during_cut, "the retry waited for the link instead of the fence"
    assert job["status"] == "SUCCEEDED" and len(job["attempts"]) == 2, job
    assert "Node node2 lost" in job["attempts"][0]["statusReason"]
    wait_for(lambda: not live_processes(tag), 30, what="no process of a finished job")


# SQLite only: with PostgreSQL the lease runs on the database server's clock, not the head's.
@pytest.mark.parametrize("chaos", ["sqlite"], indirect=True)
def test_head_clock_stepped_forward(chaos: TestCluster) -> None:
    if not FAKETIME_LIB.exists():
        prereq.skip("faketime", "libfaketime is not installed (apt-get install faketime; scripts/setup does as root)")
    offset = chaos.root / "faketime"
    offset.write_text("+0\n")
    chaos.kill("head")
    chaos.start_head(env={"LD_PRELOAD": str(FAKETIME_LIB), "FAKETIME_TIMESTAMP_FILE": str(offset),
                          "FAKETIME_CACHE_DURATION": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1"})
    faked_pid = chaos.procs["head"].pid
    try:
        chaos.wait_active(timeout=30)
        starts, tag = fresh(chaos, "clock")
        before = Load(chaos, 6, starts, tag, sleep_s=3).start()
        before.join()
        offset.write_text("+2h\n")  # the head's wall clock jumps two hours ahead
        # libfaketime re-reads the file at most once a second: wait until the head stamps the
        # nodes' heartbeats (its wall clock, in ms) with the new time.
        wait_for(lambda: min(n["lastHeartbeatAt"] for n in chaos.nodes().values()) > (time.time() + 3600) * 1000,
                 10, what="the head's clock to jump")
        after = Load(chaos, 6, starts, tag).start()
        after.join()
        jobs = {**before.acknowledged, **after.acknowledged}
        wait_final(chaos, jobs, timeout=120)
        assert all(n["state"] == "ACTIVE" for n in chaos.nodes().values()), chaos.nodes()
        assert violations(chaos, jobs, starts, tag) == NO_VIOLATIONS
    finally:
        chaos.kill("head")
        # libfaketime made a shared-memory clock and a semaphore for the head (and its
        # children) and unlinks them only at a normal exit: a SIGKILL leaves them in /dev/shm.
        for leftover in (f"faketime_shm_{faked_pid}", f"sem.faketime_sem_{faked_pid}"):
            (Path("/dev/shm") / leftover).unlink(missing_ok=True)
        chaos.start_head()
        chaos.wait_active(timeout=30)


def small_disk_cluster(tmp_path: Path, head_extra: str = "") -> Iterator[TestCluster]:
    """A one-node cluster whose head keeps its state on a 24 MiB tmpfs."""
    state = tmp_path / "head"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "chaos-state", str(state)], check=True)
    c: TestCluster | None = None
    try:
        c = TestCluster(tmp_path, nodes=1, head_extra=head_extra)
        yield c.up()
    finally:
        if c is not None:
            c.close()
        subprocess.run(["umount", "-l", str(state)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[TestCluster]:
    yield from small_disk_cluster(tmp_path)


@pytest.fixture
def small_disk_unguarded(tmp_path: Path) -> Iterator[TestCluster]:
    """The same, with the free-space check off: the disk fills under the store itself."""
    yield from small_disk_cluster(tmp_path, "state_min_free_mib = 0\n")


def fill(directory: Path) -> Path:
    filler = directory / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k", "count=1000"], capture_output=True, check=False)
    return filler


def test_a_commit_refused_by_a_full_disk_is_answered_kept_and_committed_later(small_disk_unguarded: TestCluster) -> None:
    c = small_disk_unguarded
    starts, tag = fresh(c, "commit")
    filler = fill(c.root / "head")
    client = Client(c.socket_endpoint, timeout=10)
    refused = 0
    for i in range(200):  # until SQLite's own pages and WAL have no room left
        try:
            client.submit_job(jobName=f"full{i}", jobQueue="default", jobDefinition="hpcbatch-default",
                              containerOverrides={"command": job_script(starts, 0), "environment": chaos_env(tag)})
        except HpcbatchError as exc:
            assert exc.aws_code == "ServerException", exc.message
            assert "disk is full" in exc.message or "disk full" in exc.message, exc.message
            refused += 1
            break
    assert refused, "the disk never filled"
    assert c.procs["head"].poll() is None, "the head died on a full disk"
    filler.unlink()
    # The refused batch was kept and is committed now: every job, the refused one too, is
    # whole and runs once.
    names = {f"full{j}" for j in range(i + 1)}

    def succeeded() -> set[str]:
        listed = c.client.list_jobs(jobQueue="default", filters=[{"name": "JOB_NAME", "values": ["full*"]}])
        return {j["jobName"] for j in listed["jobSummaryList"] if j["status"] == "SUCCEEDED"}

    wait_for(lambda: succeeded() == names, 60, what=f"jobs {sorted(names)} to succeed")
    assert duplicate_starts(starts) == []
    # And the head serves new work.
    assert c.wait_status(c.submit(["true"]), "SUCCEEDED")["status"] == "SUCCEEDED"


def test_state_directory_full_refuses_cleanly_and_resumes(small_disk: TestCluster) -> None:
    c = small_disk
    starts, tag = fresh(c, "disk")
    running = c.submit(job_script(starts, 0, sleep_s=2), containerOverrides={"environment": chaos_env(tag)})
    c.wait_status(running, "RUNNING", "SUCCEEDED")
    filler = fill(c.root / "head")
    before = c.client.list_jobs(jobQueue="default", jobStatus="RUNNABLE")["jobSummaryList"]
    client = Client(c.socket_endpoint, timeout=10)
    with pytest.raises(HpcbatchError) as info:
        client.submit_job(jobName="full", jobQueue="default", jobDefinition="hpcbatch-default",
                          containerOverrides={"command": ["true"]})
    assert info.value.aws_code == "ServerException"
    assert "disk full" in info.value.message
    # Reads keep working; nothing half-written: no new job appeared.
    assert c.client.list_jobs(jobQueue="default", jobStatus="RUNNABLE")["jobSummaryList"] == before
    filler.unlink()
    # The running job's end (held while the disk was full) is committed, and service resumes.
    assert c.wait_status(running, "SUCCEEDED", "FAILED", timeout=60)["status"] == "SUCCEEDED"
    after = c.submit(job_script(starts, 2), containerOverrides={"environment": chaos_env(tag)})
    assert c.wait_status(after, "SUCCEEDED", "FAILED")["container"]["exitCode"] == 2
    assert violations(c, {running: 0, after: 2}, starts, tag) == NO_VIOLATIONS
