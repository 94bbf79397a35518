"""Real AWS Batch clients from PyPI against a real cluster: TorchX's ``aws_batch`` scheduler and
Metaflow's ``@batch``, run as their users run them (their own CLIs, in subprocesses, with only
AWS's environment variables pointing them at the head).

Root only (the jobs run in podman images, as tests/integration/test_containers.py): one TLS
cluster of two nodes for the module, one image (tests/images.py's interop image: the test image
plus PyTorch's CPU build, boto3 and requests) served by a local ``docker-registry`` and pre-pulled
into the nodes' shared image cache. docs/interop.md's TorchX and Metaflow recipes are run here
exactly as written (extracted from the file).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import images, prereq
from tests.harness import TestCluster, free_port, wait_for

BIN = Path(sys.executable).parent
DOCS = Path(__file__).resolve().parents[2] / "docs" / "interop.md"


def _skip_reason() -> str | None:
    why = images.skip_reason()
    if why:
        return why
    for tool in ("torchx", "aws"):
        if not (BIN / tool).exists():
            return f"{tool} is not installed in {BIN.parent}: install the test extras (pip install -e '.[test]')"
    try:
        import metaflow  # noqa: F401
        import moto  # noqa: F401
        import torch  # noqa: F401
    except ImportError as e:
        return f"{e.name} is not installed in {BIN.parent}: install the test extras (pip install -e '.[test]')"
    return None


_skip = _skip_reason()
# The first test also builds the image when the cache is cold (debootstrap, PyTorch): minutes, once.
pytestmark = [prereq.skipif(_skip is not None, "interop", _skip or ""), pytest.mark.timeout(600)]


def recipes(section: str) -> list[str]:
    """The ```sh blocks of one ``## section`` of docs/interop.md."""
    text = DOCS.read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", body, re.S)


class Interop:
    """The module's cluster, image, admin key, and the environment its recipes start from."""

    def __init__(self, cluster: TestCluster, image: str, key: dict[str, Any]) -> None:
        self.c, self.image, self.key = cluster, image, key

    def env(self, home: Path, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "HPCBATCH_", "METAFLOW_", "TORCHX"))}
        env.update(HOME=str(home), PATH=f"{BIN}:{env.get('PATH', '')}", AWS_PAGER="",
                   KEY_ID=self.key["accessKeyId"], SECRET=self.key["secretAccessKey"],
                   HEAD_URL=self.c.endpoint, CA=str(self.c.ca_bundle), IMAGE=self.image, **extra)
        return env

    def sh(self, script: str, home: Path, timeout: float = 180, **extra: str) -> subprocess.CompletedProcess[str]:
        try:
            out = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, cwd=home,
                                 env=self.env(home, **extra), timeout=timeout, check=False)
        except subprocess.TimeoutExpired as e:
            raise AssertionError(f"timed out after {timeout}s\n{self.newest_jobs()}") from e
        assert out.returncode == 0, (f"rc={out.returncode}\nstdout:\n{out.stdout[-3000:]}\n"
                                     f"stderr:\n{out.stderr[-3000:]}\n{self.newest_jobs()}")
        return out

    def newest_jobs(self) -> str:
        """The newest job, its nodes' reasons and output: what a failed recipe left."""
        listed = self.c.client.list_jobs(jobQueue="default", filters=[{"name": "AFTER_CREATED_AT", "values": ["0"]}])
        if not listed["jobSummaryList"]:
            return "no jobs"
        newest = max(listed["jobSummaryList"], key=lambda j: j["createdAt"])
        job = self.c.job(newest["jobId"])
        lines = [f"{job['jobId']} {job['status']} {job.get('statusReason')}"]
        for i in range(int((job.get("nodeProperties") or {}).get("numNodes", 0))):
            node = self.c.job(f"{job['jobId']}#{i}")
            container = node.get("container", {})
            lines.append(f"#{i} {node['status']} {node.get('statusReason')} {container.get('reason')} "
                         f"exitCode={container.get('exitCode')}")
            lines.append(self.c.logs(f"{job['jobId']}#{i}")[-6000:])
        return "\n".join(lines)


@pytest.fixture(scope="module")
def io() -> Iterator[Interop]:
    root = Path(tempfile.mkdtemp(prefix="hpcb-interop-"))
    os.chmod(root, 0o755)
    registry = images.Registry()
    storage = root / "containers"  # one cache for both "nodes" (one machine): the image is pulled once
    c = TestCluster(root, nodes=2, tls=True, node_vcpus=4, node_memory_mib=8192)
    for name in c.node_names:
        with open(c.root / f"{name}.toml", "a") as f:
            f.write(f'container_storage = "{storage}"\n'
                    f'container_insecure_registries = ["127.0.0.1:{registry.port}"]\n')
    try:
        image = images.publish_interop_image(registry)
        c.up()
        key = c.client.call("/hpcbatch/v1/createaccesskey", {"user": "root", "role": "admin"})
        yield Interop(c, image, key)
    finally:
        c.close()
        registry.close()
        images.wipe_storage(storage)
        shutil.rmtree(root, ignore_errors=True)


def torchx_recipe(i: int) -> str:
    """The TorchX section's settings (its first block), then its block ``i``."""
    blocks = recipes("TorchX")
    return blocks[0] + blocks[i]


def app_handle(stdout: str) -> str:
    found = re.findall(r"aws_batch://\S+", stdout)
    assert found, stdout
    return found[0]  # the recipe echoes it first


def test_torchx_echo_runs_and_its_log_comes_through_cloudwatch_logs(io: Interop, tmp_path: Path) -> None:
    out = io.sh(torchx_recipe(1), tmp_path)
    handle = app_handle(out.stdout)
    assert "State: SUCCEEDED" in out.stdout, out.stdout
    assert "hello from torchx" in out.stdout.split(handle, 1)[1], out.stdout
    job = io.c.client.list_jobs(jobQueue="default", filters=[{"name": "JOB_NAME", "values": [handle.rsplit(":", 1)[1]]}])
    assert job["jobSummaryList"][0]["status"] == "SUCCEEDED"


def test_torchx_dist_ddp_trains_on_two_nodes(io: Interop, tmp_path: Path) -> None:
    """Both "nodes" are one machine (loopback) here. examples/ddp_train.py leaves with
    ``os._exit`` after ``destroy_process_group``: gloo's threads aborted the interpreter's
    teardown about once in three runs under load, and the other node's torchrun then waited
    out its 5-minute exit barrier (tests/integration/test_interop.py ran into it in CI)."""
    out = io.sh(torchx_recipe(2), tmp_path, timeout=150, PORT=str(free_port()))
    handle = app_handle(out.stdout)
    assert "State: SUCCEEDED" in out.stdout, out.stdout
    assert re.search(r"world_size=2 ranks_seen=\[0, 1\]", out.stdout), out.stdout  # rank 0's summary (on either node), via torchx log
    job_id = io.c.client.list_jobs(jobQueue="default", filters=[
        {"name": "JOB_NAME", "values": [handle.rsplit(":", 1)[1]]}])["jobSummaryList"][0]["jobId"]
    nodes = {io.c.job(f"{job_id}#{i}")["nodeDetails"]["nodeIndex"]: io.c.job(f"{job_id}#{i}") for i in (0, 1)}
    assert {n["status"] for n in nodes.values()} == {"SUCCEEDED"}
    assert {n["container"]["logStreamName"] for n in nodes.values()}.__len__() == 2


def test_torchx_cancel_terminates_a_running_app(io: Interop, tmp_path: Path) -> None:
    io.c.wait_status(io.c.submit(["true"]), "SUCCEEDED")  # not TorchX's, no tags: `torchx list` skips it
    out = io.sh(torchx_recipe(3), tmp_path)
    handle = app_handle(out.stdout)
    assert "State: FAILED" in out.stdout.split(handle, 1)[1], out.stdout
    assert re.search(rf"{re.escape(handle)}\s+FAILED", out.stdout), out.stdout  # torchx list
    job = io.c.client.list_jobs(jobQueue="default", filters=[
        {"name": "JOB_NAME", "values": [handle.rsplit(":", 1)[1]]}])["jobSummaryList"][0]
    assert job["status"] == "FAILED" and "killed via torchx CLI" in io.c.job(job["jobId"])["statusReason"]


@pytest.fixture(scope="module")
def s3(io: Interop) -> Iterator[str]:
    """moto's S3 server (``moto_server``, from PyPI) on a free port, with the bucket ``metaflow``."""
    import boto3

    port = free_port()
    log = open(io.c.root / "moto.log", "ab")
    proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "0.0.0.0", "-p", str(port)], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    url = f"http://127.0.0.1:{port}"
    try:
        client = boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="moto",
                              aws_secret_access_key="moto")

        def made() -> bool:
            assert proc.poll() is None, (io.c.root / "moto.log").read_text()[-2000:]
            try:
                client.create_bucket(Bucket="metaflow")
                return True
            except Exception:  # not listening yet
                return False

        wait_for(made, 30, interval=0.2, what="moto_server to answer")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_metaflow_flow_runs_its_steps_on_hpcbatch_and_logs_show_them(io: Interop, s3: str, tmp_path: Path) -> None:
    section = recipes("Metaflow")
    text = DOCS.read_text().split("\n## Metaflow\n", 1)[1]
    (tmp_path / "hello_batch.py").write_text(re.findall(r"```python\n(.*?)```", text, re.S)[0])
    settings = recipes("TorchX")[0]
    io.sh(settings + section[0], tmp_path)  # the compute environment says EC2
    out = io.sh(section[1], tmp_path, timeout=240, S3_URL=s3, USERNAME="interop")
    run_id = (tmp_path / "run-id").read_text().strip()
    ran, logged = out.stdout.split(" Done!\n", 1)  # `run`'s own lines, then what `logs` read from S3
    started = re.search(r"start ran as batch job (\S+)", ran)
    assert started, out.stdout + out.stderr[-3000:]
    job_id = started.group(1)
    assert f"start ran as batch job {job_id}\n" in logged and f"end read: hello from {job_id}\n" in logged, logged
    job = io.c.job(job_id)
    assert job["status"] == "SUCCEEDED" and job["container"]["image"] == io.image
    assert job["nodeName"] in io.c.node_names
    assert job["jobName"].startswith(f"interop-HelloBatchFlow-{run_id}-start-"), job["jobName"]
