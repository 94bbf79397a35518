"""Chaos rounds, each bounded in count and time; shared by tests/chaos and bench/chaos.

Every round takes a seeded ``random.Random`` so the moments of the kills are the same on
every run; the load records only what the head acknowledged.
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from hpcbatch.client import Client, HeadUnreachableError
from hpcbatch.errors import ClientError
from tests.chaos.invariants import chaos_env, done_log, job_script
from tests.harness import TestCluster, wait_for


class Load:
    """Submit ``count`` jobs from a thread, retrying through head restarts; keeps the acknowledged."""

    def __init__(self, cluster: TestCluster, count: int, starts: Path, tag: str, *, sleep_s: float = 0,
                 deadline_s: float = 240) -> None:
        self.acknowledged: dict[str, int] = {}  # job id -> the exit code it will exit with
        self.unanswered = 0  # calls whose answer was lost to a kill: not acknowledged
        self._cluster, self._count, self._starts, self._tag = cluster, count, starts, tag
        self._sleep_s, self._deadline = sleep_s, time.monotonic() + deadline_s
        self._thread = threading.Thread(target=self._run, name="chaos-load", daemon=True)

    def start(self) -> Load:
        self._thread.start()
        return self

    def _run(self) -> None:
        client = Client(self._cluster.socket_endpoint, timeout=10)
        try:
            i = 0
            while i < self._count and time.monotonic() < self._deadline:
                code = i % 3  # 0, 1, 2: both SUCCEEDED and FAILED jobs, each with its exit code
                try:
                    job = client.submit_job(
                        jobName=f"chaos{i}", jobQueue="default", jobDefinition="hpcbatch-default",
                        containerOverrides={"command": job_script(self._starts, code, self._sleep_s),
                                            "environment": chaos_env(self._tag)},
                    )
                except HeadUnreachableError:  # down for a restart: not acknowledged
                    self.unanswered += 1
                    time.sleep(0.05)
                    continue
                except ClientError:
                    raise
                except Exception:  # the head is down or died mid-call: not acknowledged
                    self.unanswered += 1
                    time.sleep(0.05)
                    continue
                self.acknowledged[job["jobId"]] = code
                i += 1
        finally:
            client.close()

    def join(self, timeout: float = 300) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the load did not finish in time"

    @property
    def running(self) -> bool:
        return self._thread.is_alive()


def kill_head_rounds(cluster: TestCluster, rounds: int, rng: random.Random, *, min_s: float = 0.2,
                     max_s: float = 1.5) -> int:
    """``rounds`` times: wait a random moment, ``kill -9`` the head, start it again.

    With several heads (PostgreSQL) the *active* one is killed, a standby takes over, and the
    killed one comes back: it starts during the next round's random wait, and answers before
    that round's kill (and before this returns). It comes back as a standby, or as the active
    head when the one that took over stalled past ``lease_ttl_s`` on this loaded machine and
    lost the lease (that head then stops itself, as docs/ha.md says, and is started again
    here, as its supervisor would). Returns how many rounds moved the active role.
    """
    if len(cluster.heads) == 1:
        for _ in range(rounds):
            time.sleep(rng.uniform(min_s, max_s))
            cluster.kill("head")
            cluster.start_head()
        return 0
    failovers = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="chaos-restart") as pool:
        restarting: Future[None] | None = None
        for _ in range(rounds):
            time.sleep(rng.uniform(min_s, max_s))
            if restarting is not None:
                restarting.result()  # the last victim answers: there is a head to take over
            _restart_stopped_heads(cluster)
            victim = cluster.active_head(timeout=30)
            cluster.kill(victim)
            # Another head takes the lease once it lapses (lease_ttl_s); only then does the
            # victim come back, as a standby (sooner, it could win its own lease back).
            if cluster.active_head(timeout=30) != victim:
                failovers += 1
            restarting = pool.submit(cluster.start_head, victim)
        if restarting is not None:
            restarting.result()
    _restart_stopped_heads(cluster)
    return failovers


def _restart_stopped_heads(cluster: TestCluster) -> None:
    """Start again, as a supervisor would, every head that stopped itself (a lost lease)."""
    for name in cluster.heads:
        proc = cluster.procs.get(name)
        if proc is not None and proc.poll() is not None:
            cluster.procs.pop(name)
            cluster.start_head(name)


def kill_agent_mid_job(cluster: TestCluster, node: str, rng: random.Random) -> None:
    """``kill -9`` one agent while its jobs run, and start it again a moment later."""
    time.sleep(rng.uniform(0.5, 1.5))
    cluster.kill(node)
    time.sleep(rng.uniform(0.2, 1.0))
    cluster.start_agent(node)


def cut_mgmt_link(cluster: TestCluster, node: str, seconds: float, until: threading.Event | None = None) -> None:
    """Take ``node``'s management interface down for ``seconds`` (or until ``until`` is set,
    if sooner), then bring it back."""
    from hpcbatch.netns import MGMT_INTERFACE

    down = cluster.on_node(node, ["ip", "link", "set", MGMT_INTERFACE, "down"])
    assert down.returncode == 0, down.stderr
    try:
        (until or threading.Event()).wait(seconds)
    finally:
        up = cluster.on_node(node, ["ip", "link", "set", MGMT_INTERFACE, "up"])
        assert up.returncode == 0, up.stderr


def kill_agent_while_jobs_finish(cluster: TestCluster, node: str, count: int, starts: Path, tag: str,
                                 sleep_s: float = 3) -> list[str]:
    """``count`` jobs (with a retry to spare) run on ``node``; its agent is ``kill -9``-ed, the jobs
    finish while it is down, and it comes back within the fence. Returns the job ids.

    Every other node is drained while the jobs start, so all of them run on ``node``; the
    drain is lifted before the agent returns, so a retry could start elsewhere if the head
    (wrongly) wanted one.
    """
    others = [n for n in cluster.node_names if n != node]
    for other in others:
        cluster.client.call("/hpcbatch/v1/drainnode", {"name": other})
    try:
        ids = [cluster.submit(job_script(starts, 0, sleep_s), jobName=f"finishwhiledown{i}",
                              retryStrategy={"attempts": 2}, containerOverrides={"environment": chaos_env(tag)})
               for i in range(count)]
        for job_id in ids:
            cluster.wait_status(job_id, "RUNNING")
        cluster.kill(node)
        wait_for(lambda: cluster.nodes()[node]["state"] == "DOWN", 15, what=f"{node} DOWN")
        done = done_log(starts)
        wait_for(lambda: sum(line.split()[0] in ids for line in done.read_text().splitlines()) >= count,
                 sleep_s + 30, what="the orphans to finish while their agent is down")
    finally:
        for other in others:
            cluster.client.call("/hpcbatch/v1/resumenode", {"name": other})
    cluster.start_agent(node)
    cluster.wait_active(timeout=30)
    return ids
