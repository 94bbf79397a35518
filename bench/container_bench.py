"""Container jobs' speed figures (podman), printed as ``name=value`` lines; root only.

A 2-node cluster on loopback (tests/harness.py), each node with its own image cache that
already holds the test image (pre-pulled, so no figure includes a pull), the image served by
a local ``docker-registry`` (tests/images.py builds it once and caches it).

* ``container_submit_to_running_median_s``: idle cluster, one container ``sleep`` job, from
  the submit call to the agent's recorded start (``startedAt``: ``podman run`` spawned),
  median of 10 (the bare-process figure is ``submit_to_running_median_s``).
* ``container_submit_to_done_median_s``: one container ``true`` job, submit to SUCCEEDED,
  median of 10: includes podman's whole start and removal of the container.
* ``container_e2e_100_jobs_per_s``: 100 container ``true`` jobs, from the first submit
  until all SUCCEEDED; ``bare_e2e_100_jobs_per_s`` is the same 100 jobs without an image on
  the same cluster, for comparison in one run.

``BENCH_CONTAINER_USER=hpcb_alice`` submits the container jobs as that Unix user (tests/users.py)
instead of root: a user's container gets a user namespace (docs/containers.md), root's does not.

Aim (issue 9): no more than the runtime's own start cost (about 0.35 s a container here)
above bare jobs.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests import images
from tests.harness import TestCluster

JOBS = int(os.environ.get("BENCH_CONTAINER_JOBS", "100"))
USER = os.environ.get("BENCH_CONTAINER_USER", "")  # "": root's jobs


def _wait_done(c: TestCluster, ids: list[str], timeout: float = 900) -> None:
    pending = list(ids)
    deadline = time.monotonic() + timeout
    while pending:
        if time.monotonic() > deadline:
            raise SystemExit(f"container_bench: {len(pending)} jobs not done after {timeout:.0f}s")
        done = set()
        for job in c.client.describe_jobs(jobs=pending[:100])["jobs"]:
            if job["status"] == "FAILED":
                raise SystemExit(f"container_bench: job {job['jobId']} FAILED: {job.get('statusReason')}")
            if job["status"] == "SUCCEEDED":
                done.add(job["jobId"])
        pending = [j for j in pending if j not in done]
        if pending:
            time.sleep(0.05)


def _submit(c: TestCluster, definition: str, command: list[str] | None = None) -> str:
    body: dict[str, Any] = {"jobName": "cbench", "jobQueue": "default", "jobDefinition": definition}
    body["containerOverrides"] = {"command": command} if command else {}
    if USER and definition == "cbench":
        from tests.users import call_as

        return str(call_as(USER, c.socket_endpoint, "/v1/submitjob", body)["jobId"])
    return str(c.client.submit_job(**body)["jobId"])


def _e2e(c: TestCluster, definition: str, command: list[str]) -> float:
    t0 = time.perf_counter()
    ids = [_submit(c, definition, command) for _ in range(JOBS)]
    _wait_done(c, ids)
    return JOBS / (time.perf_counter() - t0)


def main() -> int:
    why = images.skip_reason()
    if why:
        print(f"container_bench: skipped: {why}", file=sys.stderr)
        return 0
    registry = images.Registry()
    root = Path(tempfile.mkdtemp(prefix="hpcb-cbench-"))
    os.chmod(root, 0o755)
    c = TestCluster(root, nodes=2)
    try:
        image = images.publish_test_image(registry)
        for name in c.node_names:
            with open(root / f"{name}.toml", "a") as f:
                f.write(f'container_storage = "{root / name / "containers"}"\n'
                        f'container_insecure_registries = ["127.0.0.1:{registry.port}"]\n')
        if USER:
            from tests.users import ensure_users

            ensure_users()
        c.up()
        c.client.call("/hpcbatch/v1/prepullimage", {"image": image})
        deadline = time.monotonic() + 300
        while not all(image in n["images"] for n in c.nodes().values()):
            if time.monotonic() > deadline:
                raise SystemExit("container_bench: the nodes did not pre-pull the image")
            time.sleep(0.2)
        resources = [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "128"}]
        c.client.register_job_definition(
            jobDefinitionName="cbench", type="container",
            containerProperties={"image": image, "command": ["true"], "resourceRequirements": resources},
        )
        c.client.register_job_definition(
            jobDefinitionName="bbench", type="container",
            containerProperties={"command": ["true"], "resourceRequirements": resources},
        )
        starts, dones = [], []
        for _ in range(10):
            t_submit = time.time()
            job_id = _submit(c, "cbench", ["sleep", "2"])
            while (job := c.job(job_id)).get("startedAt") is None:
                time.sleep(0.005)
            starts.append(job["startedAt"] / 1000 - t_submit)
            _wait_done(c, [job_id])
        for _ in range(10):
            t0 = time.perf_counter()
            _wait_done(c, [_submit(c, "cbench")])
            dones.append(time.perf_counter() - t0)
        print(f"container_submit_to_running_median_s={statistics.median(starts):.3f}")
        print(f"container_submit_to_done_median_s={statistics.median(dones):.3f}")
        print(f"container_e2e_{JOBS}_jobs_per_s={_e2e(c, 'cbench', ['true']):.2f}")
        print(f"bare_e2e_{JOBS}_jobs_per_s={_e2e(c, 'bbench', ['true']):.2f}")
    finally:
        c.close()
        for name in c.node_names:
            images.wipe_storage(root / name / "containers")
        shutil.rmtree(root, ignore_errors=True)
        registry.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
