"""``hpcbatch run`` speed on a 4-node network-namespace cluster, printed as ``name=value`` lines.

* ``run_4node_hostname_s``: one whole ``hpcbatch run --nodes 4 -- hostname`` process outside
  a job (submit, gang start, the command on every node through the agents, labelled output,
  the job's end), median of 5. Slurm's ``srun -N4 hostname`` is the comparison.
* ``run_in_job_4node_true_s``: inside a running 4-node job, one ``$HPCBATCH_RUN --run -- true``
  (launch on all four nodes, connect back, exit codes), median of 10, as the job measures it.

Root only (namespaces). Speed targets live here, never as timed assertions in tests.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from hpcbatch.client import Client
from hpcbatch.localcluster import LocalCluster
from hpcbatch.localrecord import ClusterShape

BIN = os.path.dirname(sys.executable)


def main() -> int:
    if os.geteuid() != 0:
        print("run_4node_hostname_s=skipped(needs root for namespaces)")
        return 0
    home = tempfile.mkdtemp(prefix="hpcbatch-bench-run-")
    os.chmod(home, 0o755)
    cluster = LocalCluster(home)
    results: dict[str, float] = {}
    try:
        cluster.up(ClusterShape(nodes=4, netns=True))
        assert cluster.endpoint is not None
        env = dict(os.environ, HPCBATCH_ENDPOINT=cluster.endpoint, PATH=f"{BIN}:{os.environ.get('PATH', '')}")
        samples = []
        for _ in range(5):
            t0 = time.perf_counter()
            done = subprocess.run([os.path.join(BIN, "hpcbatch"), "run", "--nodes", "4", "--vcpus", "1", "--",
                                   "hostname"], env=env, capture_output=True, text=True, timeout=120, check=False)
            samples.append(time.perf_counter() - t0)
            if done.returncode != 0 or done.stdout.count("\n") != 4:
                raise SystemExit(f"bench: hpcbatch run failed: {done.stdout}{done.stderr}")
        results["run_4node_hostname_s"] = round(statistics.median(samples), 3)
        # Inside a job: the job times ten runs itself and prints each.
        loop = ('for i in 1 2 3 4 5 6 7 8 9 10; do s=$(date +%s.%N); "$HPCBATCH_RUN" --run -- true || exit 1; '
                'e=$(date +%s.%N); echo took=$(echo "$e - $s" | bc 2>/dev/null || python3 -c "print($e-$s)"); done')
        client = Client(cluster.endpoint, timeout=30)
        body = {"jobName": "bench-run", "jobQueue": "default", "jobDefinition": "hpcbatch-default-mnp",
                "nodeOverrides": {"numNodes": 4, "nodePropertyOverrides": [
                    {"targetNodes": "0", "containerOverrides": {"command": ["sh", "-c", loop]}}]}}
        job_id = client.submit_job(**body)["jobId"]
        deadline = time.monotonic() + 120
        while (job := client.describe_jobs(jobs=[job_id])["jobs"][0])["status"] not in ("SUCCEEDED", "FAILED"):
            if time.monotonic() > deadline:
                raise SystemExit("bench: the in-job run loop did not end")
            time.sleep(0.2)
        out = client.get_job_logs(f"{job_id}#0").get("data") or ""
        took = [float(x) for x in re.findall(r"took=([\d.]+)", out)]
        if job["status"] != "SUCCEEDED" or len(took) != 10:
            raise SystemExit(f"bench: in-job runs failed: {job.get('statusReason')}: {out}")
        results["run_in_job_4node_true_s"] = round(statistics.median(took), 3)
        client.close()
    finally:
        cluster.down()
        shutil.rmtree(home, ignore_errors=True)
    for name, value in results.items():
        print(f"{name}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
