"""A standby head answers reads from the shared PostgreSQL store and redirects the rest.

Real heads, an agent and PostgreSQL (tests/pg.py). What a standby answers must equal what
the active head answers; its writes (and the reads it cannot answer truthfully) get the
503 naming the active head; serving reads takes no lease and writes nothing; and once it
takes over, the same head writes again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from hpcbatch.client import Client
from hpcbatch.errors import ServerError
from tests.harness import TestCluster
from tests.pg import PostgresServer

REDIRECT = "standby.*active head is http"


@pytest.fixture
def ha(tmp_path: Path, postgres: PostgresServer) -> Iterator[TestCluster]:
    c = TestCluster(tmp_path, nodes=1, store="postgresql", heads=2)
    try:
        yield c.up()
    finally:
        c.close()


def _written(url: str) -> tuple[Any, ...]:
    """What a write would change: the lease, the audit log, the event sequence, the jobs."""
    with psycopg.connect(url) as db:
        return tuple(db.execute(q).fetchone() for q in (
            "SELECT epoch, holder FROM head_lease", "SELECT count(*) FROM audit",
            "SELECT max(id) FROM job_events", "SELECT count(*), max(doc::text) FROM jobs"))


def test_a_standby_serves_reads_from_the_store_and_redirects_writes(ha: TestCluster) -> None:
    assert ha.active_head() == "head"
    done = ha.submit(["sh", "-c", "echo hello"])
    array = ha.client.submit_job(jobName="arr", jobQueue="default", jobDefinition="hpcbatch-default",
                                 arrayProperties={"size": 2}, containerOverrides={"command": ["true"]})["jobId"]
    for job_id in (done, array):
        ha.wait_status(job_id, "SUCCEEDED")
    queue_arn = ha.client.describe_job_queues(jobQueues=["default"])["jobQueues"][0]["jobQueueArn"]
    ha.client.tag_resource(resourceArn=queue_arn, tags={"team": "hpc"})
    job_arn = ha.job(done)["jobArn"]
    reads: list[Callable[[Client], Any]] = [
        lambda c: c.list_tags_for_resource(resourceArn=queue_arn),
        lambda c: c.list_tags_for_resource(resourceArn=job_arn),
        lambda c: c.describe_jobs(jobs=[done, array]),
        lambda c: c.list_jobs(jobQueue="default", jobStatus="SUCCEEDED"),
        lambda c: c.list_jobs(arrayJobId=array),
        lambda c: c.describe_job_queues(),
        lambda c: c.describe_compute_environments(),
        lambda c: c.describe_job_definitions(),
        lambda c: c.list_events(jobId=done),
        lambda c: c.call("/hpcbatch/v1/whoami", {}),
    ]
    assert ha.store_url is not None
    before = _written(ha.store_url)
    with ha.head_client("head") as active, Client(ha.heads["head2"]["socket"], timeout=15) as standby:
        for read in reads:
            assert read(standby) == read(active)
        assert standby.describe_jobs(jobs=[done])["jobs"][0]["status"] == "SUCCEEDED"
        assert standby.list_tags_for_resource(resourceArn=queue_arn)["tags"] == {"team": "hpc"}
        # Writes, and the reads only the active head can answer, name the active head.
        with pytest.raises(ServerError, match=REDIRECT):
            standby.submit_job(jobName="no", jobQueue="default", jobDefinition="hpcbatch-default")
        for other in (lambda: standby.get_job_logs(done), standby.list_nodes):
            with pytest.raises(ServerError, match=REDIRECT):
                other()
        # Reading took no lease and wrote nothing.
        assert _written(ha.store_url) == before
        role = standby.describe_head()
        assert (role["role"], role["epoch"]) == ("standby", 0)
        # ListEvents follows from a standby too: a job the active head takes shows up there.
        cursor = standby.list_events(maxResults=1000)["lastEventId"]
        follow = standby.list_events_async(afterEventId=cursor, waitSeconds=10)
        later = ha.submit(["true"])
        assert later in [e["jobId"] for e in follow.result(timeout=20)["events"]]

    # A client naming the standby first reads there, and moves to the active head to write.
    with Client(f'{ha.heads["head2"]["socket"]},{ha.heads["head"]["socket"]}', timeout=10) as either:
        assert either.describe_jobs(jobs=[done])["jobs"]
        assert either.endpoint == ha.heads["head2"]["socket"]
        either.submit_job(jobName="yes", jobQueue="default", jobDefinition="hpcbatch-default",
                          containerOverrides={"command": ["true"]})
        assert either.endpoint == ha.heads["head"]["socket"]

    # The head that served reads takes over and writes: its session is writable again.
    ha.kill("head")
    assert ha.active_head(timeout=20) == "head2"
    after = ha.submit(["true"])
    assert ha.wait_status(after, "SUCCEEDED", timeout=60)["status"] == "SUCCEEDED"
