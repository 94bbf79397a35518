"""CPU cost of one container job on a node, printed as ``name=value`` lines; root, cgroup v1 only.

Throughput of container jobs on a small node is bounded by the CPU that podman, conmon, runc
and the agent spend per container, not by latency; on a shared machine wall-clock figures
swing with the neighbours' load, CPU seconds much less. This runs ``BENCH_CONTAINER_CPU_JOBS``
``true`` jobs one after another through the agent's real Runner and podman (the test image,
already in a private cache) and sums the CPU of everything involved from cgroup v1's
``cpuacct``: this process with podman, conmon and podman's cleanup process (they stay in
their caller's cgroup, ``--cgroups=no-conmon``), plus the containers, which run under the
runner's own cgroup parent.

* ``container_cpu_per_job_s``: CPU seconds per container job, all of the above.
* ``container_serial_wall_per_job_s``: wall seconds per job, one at a time (load-dependent).

``BENCH_CONTAINER_USER=hpcb_alice`` runs the jobs as that Unix user (tests/users.py) instead
of root: a user's container gets a user namespace (docs/containers.md), root's does not.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from hpcbatch.protocol import ContainerOptions
from node_agent.containers import Podman
from node_agent.runner import AttemptResult, AttemptSpec, Runner
from tests import images

JOBS = int(os.environ.get("BENCH_CONTAINER_CPU_JOBS", "30"))
USER = os.environ.get("BENCH_CONTAINER_USER") or None  # None: root's jobs
CPUACCT = Path("/sys/fs/cgroup/cpuacct")


def _usage(cgroup: Path) -> int:
    try:
        return int((cgroup / "cpuacct.usage").read_text())
    except OSError:
        return 0


async def _measure(podman: Podman, image: str, state: Path, driver: Path) -> tuple[float, float]:
    ended: asyncio.Queue[AttemptResult] = asyncio.Queue()
    runner = Runner(state, on_exit=ended.put_nowait, container_runtime="podman", containers=podman,
                    memory_enforcement="cgroup")
    assert runner._cgroups is not None and runner._cgroups.version == 1
    jobs_cgroup = CPUACCT / runner._cgroups.parent.relative_to(runner._cgroups.root)
    env = {f"AWS_BATCH_VAR{i}": "x" * 20 for i in range(20)}  # about what a job gets
    cpu0 = wall0 = 0.0
    try:
        for i in range(JOBS + 1):  # job 0 warms up: the image check, the cgroup paths
            if i == 1:
                cpu0, wall0 = _usage(driver) + _usage(jobs_cgroup), time.perf_counter()
            spec = AttemptSpec(f"c{i}", "bench", 1, ["true"], env, 1, 128, image=image, container=ContainerOptions(),
                               user=USER)
            started = await runner.start(spec)
            if not isinstance(started, int):
                raise SystemExit(f"container_cpu_bench: job did not start: {started}")
            result = await ended.get()
            if result.exit_code != 0:
                raise SystemExit(f"container_cpu_bench: job failed: {result}")
        wall = (time.perf_counter() - wall0) / JOBS
        await asyncio.sleep(1.0)  # podman's cleanup process of the last container
        cpu = (_usage(driver) + _usage(jobs_cgroup) - cpu0) / 1e9 / JOBS
    finally:
        await runner.shutdown(kill=True)
    return cpu, wall


def main() -> int:
    why = images.skip_reason()
    if why is None and not (CPUACCT / "cpuacct.usage").exists():
        why = "needs cgroup v1's cpuacct hierarchy to sum the CPU of podman's processes"
    if why:
        print(f"container_cpu_bench: skipped: {why}", file=sys.stderr)
        return 0
    root = Path(tempfile.mkdtemp(prefix="hpcb-cpubench-"))
    if USER:
        from tests.users import ensure_users

        ensure_users()
        os.chmod(root, 0o755)  # the owner passes through to its work dir
    home = next(line.split(":", 2)[2].strip() for line in open("/proc/self/cgroup")
                if "cpuacct" in line.split(":", 2)[1].split(","))
    driver = CPUACCT / f"hpcbatch-bench-{os.getpid()}"
    driver.mkdir()
    registry = images.Registry()
    storage = root / "containers"
    try:
        image = images.publish_test_image(registry)
        podman = Podman("podman", storage=str(storage), insecure_registries=[f"127.0.0.1:{registry.port}"])
        (driver / "cgroup.procs").write_text(str(os.getpid()))
        cpu, wall = asyncio.run(_measure(podman, image, root / "state", driver))
        print(f"container_cpu_per_job_s={cpu:.3f}")
        print(f"container_serial_wall_per_job_s={wall:.3f}")
    finally:
        (CPUACCT / home.lstrip("/") / "cgroup.procs").write_text(str(os.getpid()))
        for _ in range(100):  # the last conmon may still be leaving
            try:
                driver.rmdir()
                break
            except OSError:
                time.sleep(0.1)
        registry.close()
        images.wipe_storage(storage)
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
