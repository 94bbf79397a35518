"""The console and /metrics at scale: 100,000 jobs in the store, figures as ``name=value`` lines.

* ``console_jobs_page_100k_ms``: ``GET /console/jobs`` (the first page, 50 jobs, newest
  first) through the head's real aiohttp app over TCP, median of 20. Target: <= 200 ms.
* ``console_jobs_page_state_filter_100k_ms``: the same with ``?status=FAILED`` (1 job in 10).
* ``console_jobs_page_deep_100k_ms``: the 20th page (keyset pagination: as fast as the first).
* ``metrics_scrape_100k_ms``: ``GET /metrics`` (jobs counted by queue and state), median of 10.

The store, engine, service, event feed and console are the head's own; no agents (the jobs
are finished, as in a busy cluster's retention window).

    python -m bench.console_bench [--jobs N]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from hpcbatch.auth.policy import Caller
from hpcbatch.console import add_console_routes
from hpcbatch.console.sessions import COOKIE
from hpcbatch.head.engine import Engine
from hpcbatch.head.events import EventFeed
from hpcbatch.head.logs import LogStore
from hpcbatch.head.metrics import HeadMetrics, add_metrics_route
from hpcbatch.head.service import BatchService, JobIdGenerator
from hpcbatch.model.jobs import JobRecord, ResourceRequest
from hpcbatch.model.lifecycle import JobStatus
from hpcbatch.store import SqliteStore

QUEUES = ("default", "gpu", "short", "long")
OWNERS = ("alice", "bob", "carol", "dave", "erin")


def fill(store: SqliteStore, count: int) -> None:
    """``count`` finished jobs over the last day, 1 in 10 FAILED, spread over queues and owners."""
    ids = JobIdGenerator()
    start = int(time.time() * 1000) - 86_400_000
    batch: list[JobRecord] = []
    for i in range(count):
        created = start + i * 86_400_000 // count
        failed = i % 10 == 0
        batch.append(JobRecord(
            job_id=ids(created), job_name=f"job-{i}", job_queue=QUEUES[i % 4],
            job_queue_arn=f"arn:aws:batch:local:000000000000:job-queue/{QUEUES[i % 4]}",
            job_definition="arn:aws:batch:local:000000000000:job-definition/hpcbatch-default:1",
            owner=OWNERS[i % 5], status=JobStatus.FAILED if failed else JobStatus.SUCCEEDED,
            status_reason="Essential container in task exited", created_at=created, started_at=created + 50,
            stopped_at=created + 1050, command=["true"], environment={}, resources=ResourceRequest(1, 512),
            container={"command": ["true"]},
        ))
        if len(batch) == 5000:
            with store.transaction():
                store.put_jobs(batch)
            batch = []
    with store.transaction():
        store.put_jobs(batch)


async def median_ms(session: aiohttp.ClientSession, url: str, rounds: int) -> float:
    times = []
    for _ in range(rounds + 2):
        began = time.perf_counter()
        async with session.get(url) as response:
            await response.read()
            if response.status != 200:
                raise SystemExit(f"{url}: HTTP {response.status}")
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times[2:])  # the first two warm caches


async def run(jobs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="hpcb-console-bench-") as tmp:
        store = SqliteStore(Path(tmp) / "hpcbatch.db")
        fill(store, jobs)
        engine = Engine(store, LogStore(Path(tmp) / "logs"), send=lambda node, msg: None,
                        clock_ms=lambda: time.time_ns() // 1_000_000)
        service = BatchService(store, engine, region="local", account="000000000000")
        for queue in QUEUES:
            store.put_resource("queue", queue, 1, "VALID", {"jobQueueName": queue, "state": "ENABLED", "priority": 1,
                                                          "computeEnvironmentOrder": []})
        app = web.Application()
        feed = EventFeed(service)
        add_metrics_route(app, HeadMetrics(service))
        console = add_console_routes(app, service, feed, lambda request, raw: Caller(user="root", role="admin", via="bench"))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        base = f"http://127.0.0.1:{port}"
        session_id = console.sessions.start(Caller(user="root", role="admin", via="bench")).session_id
        try:
            async with aiohttp.ClientSession(cookies={COOKIE: session_id}) as http:
                # The 20th page's position, found by walking (as a person clicking "Older" would).
                after = ""
                for _ in range(19):
                    async with http.get(f"{base}/console/jobs{after}") as response:
                        text = await response.text()
                    marker = "&after="
                    after = "?after=" + text[text.index(marker) + len(marker):].split('"', 1)[0]
                print(f"console_jobs_page_{jobs // 1000}k_ms={await median_ms(http, base + '/console/jobs', 20):.1f}")
                print(f"console_jobs_page_state_filter_{jobs // 1000}k_ms={await median_ms(http, base + '/console/jobs?status=FAILED', 20):.1f}")
                print(f"console_jobs_page_deep_{jobs // 1000}k_ms={await median_ms(http, base + '/console/jobs' + after, 20):.1f}")
                print(f"metrics_scrape_{jobs // 1000}k_ms={await median_ms(http, base + '/metrics', 10):.1f}")
        finally:
            await runner.cleanup()
            store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    asyncio.run(run(parser.parse_args().jobs))


if __name__ == "__main__":
    main()
