"""Properties of the pure core under random workloads (hypothesis).

* No node is over-committed in vCPUs, memory or GPUs, whatever the allocation strategy.
* Gangs are all-or-nothing (``num_nodes`` distinct nodes at once) and single-tenant.
* Priority order: a job never starts while an earlier job of the same shape, in a queue of
  at least its priority, is left waiting.
* Fair share: every start goes to a share with the least running work among those waiting.
* Backfill: work started on reserved nodes (a gang's, or a queue head's) ends before the
  reservation starts, unless it was ahead of the reserved job in the order.
"""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpcbatch.model.jobs import ResourceRequest
from hpcbatch.scheduler import (
    AttemptEnded,
    ComputeEnvironmentChanged,
    FairSharePolicy,
    JobQueueChanged,
    JobRunnable,
    NodeUp,
    Scheduler,
    StartAttempt,
    StartGang,
    Tick,
)

_ids = itertools.count(1)


def _eid() -> str:
    return f"p{next(_ids)}"


NODE = st.tuples(st.sampled_from([2, 4, 8]), st.sampled_from([4096, 16384]), st.sampled_from([0, 0, 2]))
REQUEST = st.builds(
    ResourceRequest, vcpus=st.sampled_from([1, 2, 4]), memory_mib=st.sampled_from([512, 4096]),
    gpus=st.sampled_from([0, 0, 0, 1]),
)
JOB = st.tuples(
    st.sampled_from(["hi", "lo"]), REQUEST, st.sampled_from([1, 1, 1, 1, 2, 3]),
    st.sampled_from([None, 60, 600]),
)
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.lists(JOB, min_size=1, max_size=6)),
        st.tuples(st.just("end"), st.integers(0, 50)),
        st.tuples(st.just("tick"), st.sampled_from([10, 100, 1000])),
    ),
    min_size=1, max_size=25,
)


class Cluster:
    """The head's view: what runs where, checked against capacity after every pass."""

    def __init__(self, nodes: list[tuple[int, int, int]], strategy: str) -> None:
        self.s = Scheduler()
        self.now = 0.0
        self.size = {f"n{i}": n for i, n in enumerate(nodes)}
        self.jobs: dict[str, JobRunnable] = {}
        self.live: dict[str, tuple[list[str], float]] = {}  # job -> (nodes, end time)
        self.gpus: dict[str, dict[str, str]] = {n: {} for n in self.size}
        self.seq = itertools.count(1)
        self.ids = itertools.count(0)
        self.handle(
            ComputeEnvironmentChanged(_eid(), "ce", True, None, allocation_strategy=strategy),
            JobQueueChanged(_eid(), "hi", True, 10, ("ce",)),
            JobQueueChanged(_eid(), "lo", True, 1, ("ce",)),
            *[NodeUp(_eid(), name, "ce", v, m, g, placement_group="rack") for name, (v, m, g) in self.size.items()],
        )

    def handle(self, *events: object) -> list[object]:
        actions = self.s.handle(*events)  # type: ignore[arg-type]
        waiting = {j for j in self.jobs if j not in self.live}
        for a in actions:
            if isinstance(a, StartAttempt | StartGang):
                job = self.jobs[a.job_id]
                nodes = [a.node] if isinstance(a, StartAttempt) else list(a.nodes)
                gpus = [a.gpus] if isinstance(a, StartAttempt) else list(a.gpus or [()] * len(nodes))
                assert len(set(nodes)) == max(1, job.num_nodes), "a gang is all or nothing"
                for node in nodes:
                    if job.num_nodes > 1:
                        assert not [j for j, (ns, _) in self.live.items() if node in ns], "gang shares a node"
                    else:
                        assert not [j for j, (ns, _) in self.live.items()
                                    if node in ns and self.jobs[j].num_nodes > 1], "job on a gang's node"
                for node, ids in zip(nodes, gpus, strict=True):
                    for g in ids:
                        assert g not in self.gpus[node], f"GPU {g} of {node} handed out twice"
                        self.gpus[node][g] = a.job_id
                end = self.now + job.time_limit_s if job.time_limit_s else float("inf")
                self.live[a.job_id] = (nodes, end)
                waiting.discard(a.job_id)
                self.check_order(job, waiting)
        self.check_capacity()
        self.check_reservations(actions)
        return actions

    def check_capacity(self) -> None:
        for node, (v, m, g) in self.size.items():
            on = [self.jobs[j].request for j, (ns, _) in self.live.items() if node in ns]
            assert sum(r.vcpus for r in on) <= v and sum(r.memory_mib for r in on) <= m, f"{node} over-committed"
            assert sum(r.gpus for r in on) <= g and len(self.gpus[node]) <= g

    def check_order(self, started: JobRunnable, waiting: set[str]) -> None:
        prio = {"hi": 10, "lo": 1}
        for j in waiting:
            other = self.jobs[j]
            ahead = prio[other.queue] > prio[started.queue] or (
                other.queue == started.queue and other.seq < started.seq
            )
            same_shape = (other.request, other.num_nodes, other.time_limit_s) == (
                started.request, started.num_nodes, started.time_limit_s)
            assert not (ahead and same_shape), f"{started.job_id} started before {j}"

    def check_reservations(self, actions: list[object]) -> None:
        started = {a.job_id for a in actions if isinstance(a, StartAttempt | StartGang)}
        prio = {"hi": 10, "lo": 1}
        for gang in self.jobs:  # the head of each queue, a gang or a single-node job
            res = self.s.reservation(gang)
            if res is None or res.start_s == float("inf"):
                continue
            head = self.jobs[gang]
            for j in started:
                nodes, end = self.live[j]
                other = self.jobs[j]
                ahead = prio[other.queue] > prio[head.queue] or (other.queue == head.queue and other.seq < head.seq)
                if j != gang and not ahead and set(nodes) & set(res.nodes):
                    assert end <= res.start_s, f"{j} backfilled past {gang}'s reservation"

    def submit(self, specs: list[tuple[str, ResourceRequest, int, int | None]]) -> None:
        events = []
        for q, r, n, limit in specs:
            job_id = f"j{next(self.ids)}"
            self.jobs[job_id] = JobRunnable(_eid(), job_id, q, r, next(self.seq), n, limit)
            events.append(self.jobs[job_id])
        self.handle(*events)

    def end(self, k: int) -> None:
        if self.live:
            job_id = sorted(self.live)[k % len(self.live)]
            self.finish(job_id)

    def finish(self, job_id: str) -> None:
        del self.live[job_id]
        del self.jobs[job_id]
        for held in self.gpus.values():
            for g in [g for g, j in held.items() if j == job_id]:
                del held[g]
        self.handle(AttemptEnded(_eid(), job_id))

    def tick(self, dt: float) -> None:
        self.now += dt
        self.handle(Tick(_eid(), self.now))  # the head sends the time first, as the engine does
        for job_id in [j for j, (_, end) in self.live.items() if end <= self.now]:
            self.finish(job_id)  # jobs end by their time limit at the latest


@settings(max_examples=int(__import__("os").environ.get("PROPS", "60")), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    nodes=st.lists(NODE, min_size=1, max_size=5),
    strategy=st.sampled_from(["BEST_FIT", "BEST_FIT_PROGRESSIVE", "SPREAD"]),
    ops=OPS,
)
def test_no_overcommit_gangs_whole_order_kept_and_backfill_never_delays_a_reservation(
    nodes: list[tuple[int, int, int]], strategy: str, ops: list[tuple[str, object]]
) -> None:
    c = Cluster(nodes, strategy)
    for kind, arg in ops:
        if kind == "submit":
            c.submit(arg)  # type: ignore[arg-type]
        elif kind == "end":
            c.end(arg)  # type: ignore[arg-type]
        else:
            c.tick(arg)  # type: ignore[arg-type]


@settings(max_examples=int(__import__("os").environ.get("PROPS", "60")), deadline=None)
@given(
    vcpus=st.lists(st.sampled_from([1, 2, 4]), min_size=1, max_size=4),
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("submit"), st.lists(st.sampled_from("ABC"), min_size=1, max_size=8)),
            st.tuples(st.just("end"), st.integers(0, 50)),
        ),
        min_size=1, max_size=30,
    ),
)
def test_fair_share_start_always_goes_to_a_least_served_waiting_share(
    vcpus: list[int], ops: list[tuple[str, object]]
) -> None:
    s = Scheduler()
    s.handle(
        JobQueueChanged(_eid(), "q", True, 1, ("ce",), fair_share=FairSharePolicy()),
        *[NodeUp(_eid(), f"n{i}", "ce", v, 65536, 0) for i, v in enumerate(vcpus)],
    )
    share_of: dict[str, str] = {}
    running: dict[str, str] = {}
    waiting: set[str] = set()

    def check(actions: list[object]) -> None:
        for a in actions:
            if isinstance(a, StartAttempt):
                share = share_of[a.job_id]
                counts = {x: sum(1 for j in running.values() if j == x) for x in "ABC"}
                least = min(counts[share_of[j]] for j in waiting)
                assert counts[share] == least, f"{a.job_id} of {share} started with {counts} waiting"
                waiting.discard(a.job_id)
                running[a.job_id] = share

    seq = itertools.count(1)
    for kind, arg in ops:
        if kind == "submit":
            events = []
            for share in arg:  # type: ignore[union-attr]
                job_id = f"j{len(share_of)}"
                share_of[job_id] = share
                waiting.add(job_id)
                events.append(JobRunnable(_eid(), job_id, "q", ResourceRequest(1, 512), next(seq), share=share))
            check(s.handle(*events))
        elif running:
            job_id = sorted(running)[arg % len(running)]  # type: ignore[operator]
            del running[job_id]
            check(s.handle(AttemptEnded(_eid(), job_id)))
