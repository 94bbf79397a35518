"""``GET /metrics``: the head's state and latencies in the Prometheus exposition format.

Gauges (jobs by queue and state, nodes by state, capacity per compute environment,
heartbeat ages) are read from the engine and the store when Prometheus scrapes, so they
cannot drift from what the API reports. Histograms are observed as things happen: the
SubmitJob call (an aiohttp middleware), each scheduler pass (an engine observer), and the
committed transitions (submit->running, time RUNNABLE per queue). One ``CollectorRegistry``
of its own: nothing else in the process leaks into the page. See docs/metrics.md.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from hpcbatch.head.engine import Engine
from hpcbatch.head.gc_policy import full_collections
from hpcbatch.head.powerviews import power_metrics
from hpcbatch.head.service import BatchService
from hpcbatch.model.jobs import JobRecord
from hpcbatch.model.lifecycle import JobStatus
from hpcbatch.store.base import NODE_EVENT_PREFIX

NODE_STATES = ("ACTIVE", "DRAINING", "DRAINED", "DOWN")
MIB = 1 << 20
# Seconds: from sub-second (an idle cluster) to a day (a busy queue).
WAIT_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 86400)
API_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
PASS_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)


class _StateCollector(Collector):
    """Gauges read at scrape time from the store and the engine."""

    def __init__(self, service: BatchService) -> None:
        self._service = service

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        service = self._service
        engine = service.engine
        yield from self._jobs(service)
        yield from self._nodes(engine)
        yield from self._capacity(service, engine)
        yield from self._node_health(engine)
        yield from _gc_metrics()

    @staticmethod
    def _jobs(service: BatchService) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """Jobs by queue and state, every queue and state present (0 included)."""
        jobs = GaugeMetricFamily("hpcbatch_jobs", "Jobs by queue and state (as ListJobs counts them)", labels=["queue", "status"])
        counts = service.store.count_jobs_by_queue_status()
        queues = {q["jobQueueName"] for q in service.store.list_resources("queue")} | {q for q, _ in counts}
        for queue in sorted(queues):
            for status in JobStatus:
                jobs.add_metric([queue, status.value], counts.get((queue, status.value), 0))
        yield jobs

    @staticmethod
    def _nodes(engine: Engine) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """Nodes by state."""
        nodes = GaugeMetricFamily("hpcbatch_nodes", "Nodes by state", labels=["state"])
        by_state = dict.fromkeys(NODE_STATES, 0)
        for info in engine.nodes_snapshot().values():
            by_state[info.state] = by_state.get(info.state, 0) + 1
        for state, n in by_state.items():
            nodes.add_metric([state], n)
        yield nodes

    @staticmethod
    def _capacity(service: BatchService, engine: Engine) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """Per compute environment: what running jobs hold, and what ACTIVE nodes have free."""
        names = ["vcpus", "memory_bytes", "gpus"]
        allocated = {k: GaugeMetricFamily(f"hpcbatch_compute_environment_{k}_allocated", f"{k} held by running jobs", labels=["compute_environment"]) for k in names}
        free = {k: GaugeMetricFamily(f"hpcbatch_compute_environment_{k}_free", f"{k} on ACTIVE nodes that no job holds", labels=["compute_environment"]) for k in names}
        totals: dict[str, list[float]] = {ce["computeEnvironmentName"]: [0.0] * 6 for ce in service.store.list_resources("ce")}
        for name, info in engine.nodes_snapshot().items():
            facts = info.facts
            if facts is None:
                continue
            ce = engine.compute_environment_of(name)
            usage = engine.node_usage(name)
            row = totals.setdefault(ce, [0.0] * 6)
            row[0] += usage[0]
            row[1] += usage[1] * MIB
            row[2] += usage[2]
            if info.state == "ACTIVE":
                row[3] += facts.vcpus - usage[0]
                row[4] += (facts.memory_mib - usage[1]) * MIB
                row[5] += len(facts.gpus) - usage[2]
        for ce, row in sorted(totals.items()):
            for i, key in enumerate(names):
                allocated[key].add_metric([ce], row[i])
                free[key].add_metric([ce], max(0.0, row[i + 3]))
        yield from allocated.values()
        yield from free.values()

    @staticmethod
    def _node_health(engine: Engine) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """Heartbeat ages, GPU utilization, fault containment and power, per node."""
        age = GaugeMetricFamily("hpcbatch_node_heartbeat_age_seconds", "Seconds since the node's agent last spoke", labels=["node"])
        now_ms = time.time() * 1000
        for name, info in sorted(engine.nodes_snapshot().items()):
            if info.last_heartbeat_at:
                age.add_metric([name], max(0.0, (now_ms - info.last_heartbeat_at) / 1000))
        yield age

        busy = GaugeMetricFamily(
            "hpcbatch_gpu_utilization_ratio", "Fraction of time a kernel ran on the GPU (NVML, last heartbeat)",
            labels=["node", "gpu"],
        )
        for name, info in sorted(engine.nodes_snapshot().items()):
            if info.state == "DOWN":
                continue
            for gpu, value in sorted(info.gpu_utilization.items()):
                busy.add_metric([name, gpu], value)
        yield busy
        yield from _fault_metrics(engine)
        yield from power_metrics(engine.power)  # MANAGED pools: power states, node-hours powered/saved


def _gc_metrics() -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    """The head's full garbage collections and their pauses (hpcbatch.head.gc_policy)."""
    full = full_collections()
    if full is None:
        return
    yield CounterMetricFamily("hpcbatch_head_gc_full_collections", "Full (generation 2) collections", value=full.count)
    yield CounterMetricFamily("hpcbatch_head_gc_full_collection_seconds", "Event-loop time stopped in full collections",
                              value=full.total_s)
    yield GaugeMetricFamily("hpcbatch_head_gc_full_collection_longest_seconds", "The longest full collection",
                            value=full.longest_s)


def _fault_metrics(engine: Engine) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    """Fault containment (hpcbatch.head.engine): agent messages the head failed on, and set aside."""
    failed = CounterMetricFamily(
        "hpcbatch_agent_messages_failed", "Agent messages whose handler failed (each try counts), by type",
        labels=["type"],
    )
    for kind, n in sorted(engine.faults.failed.items()):
        failed.add_metric([kind], n)
    yield failed
    quarantined = CounterMetricFamily(
        "hpcbatch_agent_messages_quarantined", "Agent messages set aside after failing repeatedly, by type",
        labels=["type"],
    )
    for kind, n in sorted(engine.faults.quarantined.items()):
        quarantined.add_metric([kind], n)
    yield quarantined
    held = GaugeMetricFamily(
        "hpcbatch_node_quarantined_messages", "Messages from the node the head has set aside (hpcbatch nodes list)",
        labels=["node"],
    )
    for name, info in sorted(engine.nodes_snapshot().items()):
        held.add_metric([name], len(info.quarantined))
    yield held


class HeadMetrics:
    """The registry behind ``/metrics`` and the observers that feed its histograms."""

    def __init__(self, service: BatchService) -> None:
        self._service = service
        self.registry = CollectorRegistry()
        self.submit_seconds = Histogram(
            "hpcbatch_submit_seconds", "SubmitJob calls: request received to answer sent (commit included)",
            buckets=API_BUCKETS, registry=self.registry,
        )
        self.submit_to_running = Histogram(
            "hpcbatch_job_submit_to_running_seconds", "Jobs: submitted to first attempt RUNNING",
            ["queue"], buckets=WAIT_BUCKETS, registry=self.registry,
        )
        self.queue_wait = Histogram(
            "hpcbatch_job_queue_wait_seconds", "Jobs: RUNNABLE until a node was chosen (STARTING), per queue",
            ["queue"], buckets=WAIT_BUCKETS, registry=self.registry,
        )
        self.scheduler_pass = Histogram(
            "hpcbatch_scheduler_pass_seconds", "Duration of one scheduler pass", buckets=PASS_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_StateCollector(service))
        self._runnable_since: dict[str, int] = {}
        service.engine.commit_observers.append(self._committed)
        service.engine.pass_observers.append(self.scheduler_pass.observe)

    def _job(self, job_id: str) -> JobRecord | None:
        # A job that ended in the same batch has already left the engine's live jobs.
        return self._service.engine.job(job_id) or self._service.store.get_job(job_id)

    def _committed(self, events: list[tuple[str, int, str, str | None]]) -> None:
        for job_id, at, status, _reason in events:
            if job_id.startswith(NODE_EVENT_PREFIX) or "#" in job_id:
                continue  # nodes; the nodes of a multi-node job (their parent counts)
            if status == "RUNNABLE":
                self._runnable_since[job_id] = at
            elif status == "STARTING":
                job = self._job(job_id)
                since = self._runnable_since.pop(job_id, None)
                if job is not None and job.array_parent is not None:
                    since = job.created_at  # array tasks wait in their parent, from submission
                if job is not None and since is not None:
                    self.queue_wait.labels(job.job_queue).observe(max(0, at - since) / 1000)
            elif status == "RUNNING":
                job = self._job(job_id)
                if job is not None and len(job.attempts) == 1:
                    self.submit_to_running.labels(job.job_queue).observe(max(0, at - job.created_at) / 1000)
            elif status in ("SUCCEEDED", "FAILED"):
                self._runnable_since.pop(job_id, None)

    def page(self) -> bytes:
        return generate_latest(self.registry)


def add_metrics_route(app: web.Application, metrics: HeadMetrics) -> None:
    """``GET /metrics`` (unauthenticated, as Prometheus scrapes; see docs/metrics.md)."""

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=metrics.page(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @web.middleware
    async def time_submits(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Time SubmitJob calls as the caller sees them (validation, commit, answer)."""
        if request.path != "/v1/submitjob":
            return await handler(request)
        began = time.perf_counter()
        try:
            return await handler(request)
        finally:
            metrics.submit_seconds.observe(time.perf_counter() - began)

    app.router.add_get("/metrics", serve)
    app.middlewares.append(time_submits)
