"""Jobs that name an image run in it (podman): as their owner, from a real local registry.

Root only (podman as the agent runs it; CI runs as root). The image is built here once and
cached (tests/images.py); a ``docker-registry`` process serves it over plain HTTP; every
node has its own image cache (``container_storage``), so each really pulls.
"""

from __future__ import annotations

import asyncio
import hashlib
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

from tests import images, prereq, procs
from tests.harness import TestCluster, wait_for
from tests.users import call_as, ensure_users

_skip = images.skip_reason()
pytestmark = prereq.skipif(_skip is not None, "podman", _skip or "")

MARKER = f"hpcbatch-ctr-sleep.{os.getpid()}."  # this run's sleepers, not a neighbour's
ALICE = "hpcb_alice"


@pytest.fixture(scope="module")
def registry() -> Iterator[images.Registry]:
    reg = images.Registry()
    try:
        images.publish_test_image(reg)
        yield reg
    finally:
        reg.close()


def storage_of(c: TestCluster, name: str) -> Path:
    return c.root / name / "containers"


def give_nodes_images(c: TestCluster, registry_host: str, registry: images.Registry, bare: tuple[str, ...] = ()) -> None:
    """Per-node image caches and the registry over plain HTTP; ``bare`` nodes get no runtime."""
    for name in c.node_names:
        with open(c.root / f"{name}.toml", "a") as f:
            if name in bare:
                f.write('container_runtime = ""\ncompute_environment = "bare"\n')
            else:
                f.write(f'container_storage = "{storage_of(c, name)}"\n'
                        f'container_insecure_registries = ["{registry_host}:{registry.port}"]\n')


def containers_on(c: TestCluster, name: str) -> list[str]:
    out = subprocess.run([*images.podman(storage_of(c, name)), "ps", "--all", "--format", "{{.Names}}"],
                         capture_output=True, text=True, check=False).stdout
    return out.split()


def wipe(c: TestCluster) -> None:
    """Remove what podman keeps in the nodes' caches (no container may be left by then)."""
    for name in c.node_names:
        images.wipe_storage(storage_of(c, name))


# The tests' data folders are made under the temp dir: the head's config must allow them
# (no host path is mountable otherwise, docs/security.md).
HOST_PATHS = f'container_host_paths = ["{tempfile.gettempdir()}"]\n'


def make_root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="hpcb-ctr-"))
    os.chmod(root, 0o755)
    return root


@pytest.fixture(scope="module")
def cc(registry: images.Registry) -> Iterator[tuple[TestCluster, str]]:
    """Two nodes: node1 runs containers, node2 (compute environment "bare") has no runtime."""
    ensure_users()
    root = make_root()
    c = TestCluster(root, nodes=2, head_extra=HOST_PATHS)
    give_nodes_images(c, "127.0.0.1", registry, bare=("node2",))
    try:
        c.up()
        c.client.create_compute_environment(computeEnvironmentName="bare", type="UNMANAGED")
        c.client.create_job_queue(jobQueueName="bare", priority=1,
                                  computeEnvironmentOrder=[{"order": 1, "computeEnvironment": "bare"}])
        yield c, registry.image("127.0.0.1")
    finally:
        c.close()
        wipe(c)
        shutil.rmtree(root, ignore_errors=True)


def submit_as_alice(c: TestCluster, **body: Any) -> str:
    body.setdefault("jobName", "ctr")
    body.setdefault("jobQueue", "default")
    out = call_as(ALICE, c.socket_endpoint, "/v1/submitjob", body)
    assert "jobId" in out, out
    return str(out["jobId"])


def register(c: TestCluster, name: str, **container: Any) -> str:
    container.setdefault("resourceRequirements", [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "256"}])
    reg = c.client.register_job_definition(jobDefinitionName=name, type="container", containerProperties=container)
    return str(reg["jobDefinitionArn"])


def test_aws_shaped_definition_runs_in_its_image_as_its_owner(cc: tuple[TestCluster, str], tmp_path: Path) -> None:
    c, image = cc
    data = Path(tempfile.mkdtemp(prefix="hpcb-ctr-data-"))
    try:
        os.chmod(data, 0o755)
        (data / "in.txt").write_text("from-the-host\n")
        script = ('. /etc/os-release; echo "image=$VARIANT_ID"; echo "ids=$(id -u):$(id -g)"; '
                  'echo "nofile=$(ulimit -n)"; cat /data/in.txt; echo "greeting=$GREETING"; '
                  'echo "host=$(hostname)"; python3 -c "import mpi4py; print(\\"mpi4py\\", mpi4py.__version__)"')
        arn = register(
            c, "aws-shaped", image=image, command=["/bin/sh", "-c", script],
            environment=[{"name": "GREETING", "value": "hello"}],
            volumes=[{"name": "data", "host": {"sourcePath": str(data)}}],
            mountPoints=[{"sourceVolume": "data", "containerPath": "/data", "readOnly": True}],
            ulimits=[{"name": "nofile", "softLimit": 512, "hardLimit": 1000}],
            # Accepted and not used: the node's container_auth_file holds registry credentials.
            repositoryCredentials={"credentialsParameter": "arn:aws:secretsmanager:us-east-1:123456789012:secret:reg"},
        )
        job_id = submit_as_alice(c, jobDefinition=arn)
        job = c.wait_status(job_id, "SUCCEEDED", "FAILED", timeout=120)
        out = wait_for(lambda: c.logs(job_id), 10, what="log")
        assert job["status"] == "SUCCEEDED", out
        import pwd

        alice = pwd.getpwnam(ALICE)
        assert "image=hpcbatch-test" in out, out
        assert f"ids={alice.pw_uid}:{alice.pw_gid}" in out, out
        assert "nofile=512" in out and "from-the-host" in out and "greeting=hello" in out, out
        assert "mpi4py 4" in out, out
        assert job["container"]["image"] == image
        wait_for(lambda: image in c.nodes()["node1"]["images"], 20, what="node1 to report its cached image")
        assert containers_on(c, "node1") == []
    finally:
        shutil.rmtree(data, ignore_errors=True)


def test_prepull_warms_the_named_nodes_and_nodes_list_shows_it(cc: tuple[TestCluster, str], registry: images.Registry) -> None:
    c, image = cc
    other = images.publish_test_image(registry, tag="prepull")
    out = c.client.call("/hpcbatch/v1/prepullimage", {"image": other, "nodes": ["node1"]})
    assert out["nodes"] == ["node1"]
    wait_for(lambda: other in c.nodes()["node1"]["images"], 60, what="node1 to report the pre-pulled image")
    assert c.nodes()["node2"]["images"] == [] and c.nodes()["node2"]["containerRuntime"] is None
    with pytest.raises(Exception, match="node2 has no container runtime"):
        c.client.call("/hpcbatch/v1/prepullimage", {"image": other, "nodes": ["node2"]})
    listed = subprocess.run([sys.executable, "-m", "hpcbatch.cli.main", "--endpoint", c.socket_endpoint, "nodes", "list"],
                            capture_output=True, text=True, check=False)
    assert "IMAGES" in listed.stdout, listed.stdout + listed.stderr


def test_fetch_and_run_script_runs_inside_the_image(cc: tuple[TestCluster, str]) -> None:
    c, image = cc
    stored = call_as(ALICE, c.socket_endpoint, "/hpcbatch/v1/putscript",
                     {"script": "#!/bin/sh\n. /etc/os-release\necho \"fetched $1 in $VARIANT_ID\"\n"})
    arn = register(c, "fetch-and-run", image=image, command=["arg1"])
    job_id = submit_as_alice(c, jobDefinition=arn, containerOverrides={
        "environment": [{"name": "HPCBATCH_SCRIPT_ID", "value": stored["scriptId"]}]})
    job = c.wait_status(job_id, "SUCCEEDED", "FAILED", timeout=120)
    out = wait_for(lambda: c.logs(job_id), 10, what="log")
    assert job["status"] == "SUCCEEDED", out
    assert "fetched arg1 in hpcbatch-test" in out


def test_missing_image_fails_with_cannot_pull_and_is_retried(cc: tuple[TestCluster, str]) -> None:
    c, image = cc
    missing = image.rsplit("/", 2)[0] + "/hpcbatch/no-such-image:1"
    arn = register(c, "missing-image", image=missing, command=["true"])
    job_id = submit_as_alice(c, jobDefinition=arn, retryStrategy={"attempts": 2})
    job = c.wait_status(job_id, "FAILED", timeout=120)
    assert job["statusReason"].startswith("CannotPullContainerError: "), job["statusReason"]
    assert len(job["attempts"]) == 2
    assert all(a["container"]["reason"].startswith("CannotPullContainerError") for a in job["attempts"])


def test_read_only_root_is_read_only(cc: tuple[TestCluster, str]) -> None:
    c, image = cc
    arn = register(c, "read-only", image=image, readonlyRootFilesystem=True,
                   command=["/bin/sh", "-c", "touch /usr/x && echo wrote || echo refused; touch $TMPDIR/ok && echo tmp-ok"])
    job_id = submit_as_alice(c, jobDefinition=arn)
    c.wait_status(job_id, "SUCCEEDED", timeout=120)
    out = wait_for(lambda: c.logs(job_id), 10, what="log")
    assert "Read-only file system" in out and "refused" in out and "tmp-ok" in out, out


def test_privileged_is_refused_naming_the_field(cc: tuple[TestCluster, str]) -> None:
    c, image = cc
    with pytest.raises(Exception, match=r"containerProperties\.privileged"):
        register(c, "priv", image=image, command=["true"], privileged=True)


def test_node_without_runtime_never_gets_a_container_job(cc: tuple[TestCluster, str]) -> None:
    c, image = cc
    arn = register(c, "bare-image", image=image, command=["true"])
    job_id = submit_as_alice(c, jobDefinition=arn, jobQueue="bare")
    reason = wait_for(lambda: (j := c.job(job_id)).get("statusReason") and j["status"] == "RUNNABLE" and j["statusReason"],
                      20, what="a wait reason")
    assert "container runtime" in reason, reason
    c.client.cancel_job(jobId=job_id, reason="done")
    plain = submit_as_alice(c, jobDefinition="hpcbatch-default", jobQueue="bare", containerOverrides={"command": ["true"]})
    c.wait_status(plain, "SUCCEEDED", timeout=60)


def _sleepers() -> list[str]:
    ps = subprocess.run(["ps", "-ewwo", "args"], capture_output=True, text=True, check=True).stdout
    return [line for line in ps.splitlines() if MARKER in line and "ps -eww" not in line]


def test_terminate_leaves_no_container_and_no_process(cc: tuple[TestCluster, str]) -> None:
    c, image = cc
    arn = register(c, "sleeper", image=image, command=["/bin/bash", "-c", f"exec -a {MARKER} sleep 300"])
    job_id = submit_as_alice(c, jobDefinition=arn)
    c.wait_status(job_id, "RUNNING", timeout=120)
    wait_for(_sleepers, 30, what="the job's process")
    c.client.terminate_job(jobId=job_id, reason="enough")
    job = c.wait_status(job_id, "FAILED", timeout=60)
    assert job["statusReason"] == "enough"
    wait_for(lambda: not _sleepers() and not containers_on(c, "node1"), 30, what="no container or process left")


def test_timeout_leaves_no_container_and_no_process(registry: images.Registry, tmp_path: Path) -> None:
    """attemptDurationSeconds has AWS's 60 s minimum: the agent's own timeout, on the runner."""
    from hpcbatch.protocol import ContainerOptions
    from node_agent.containers import Podman
    from node_agent.runner import TIMEOUT_REASON, AttemptResult, AttemptSpec, Runner

    storage = tmp_path / "containers"
    podman = Podman("podman", storage=str(storage), insecure_registries=[f"127.0.0.1:{registry.port}"])
    ended: list[AttemptResult] = []

    async def body() -> None:
        runner = Runner(tmp_path / "state", on_exit=ended.append, kill_grace_s=1.0, container_runtime="podman",
                        containers=podman)
        spec = AttemptSpec("t1", "job-t", 1, ["/bin/bash", "-c", f"exec -a {MARKER} sleep 300"], {}, 1, 128,
                           timeout_s=2, image=registry.image("127.0.0.1"), container=ContainerOptions())
        pid = await runner.start(spec)
        assert isinstance(pid, int), pid
        async with asyncio.timeout(60):
            while not ended:
                await asyncio.sleep(0.1)
        await runner.shutdown(kill=True)

    try:
        asyncio.run(body())
        assert ended[0].status_reason == TIMEOUT_REASON
        wait_for(lambda: not _sleepers(), 30, what="no process left")
        names = subprocess.run([*images.podman(storage), "ps", "--all", "--format", "{{.Names}}"],
                               capture_output=True, text=True, check=False).stdout.split()
        assert names == []
    finally:
        images.wipe_storage(storage)


def test_an_oom_kill_in_a_container_gets_aws_reason_and_a_self_kill_does_not(
        registry: images.Registry, tmp_path: Path) -> None:
    """The container runs under the attempt's memory cgroup, which outlives ``podman run --rm``;
    a GPU job's CPU binding (``cpus``) holds there too (--cpuset-cpus)."""
    from hpcbatch.protocol import ContainerOptions
    from node_agent.containers import Podman
    from node_agent.runner import OOM_EXIT_CODE, OOM_REASON, AttemptResult, AttemptSpec, Runner

    storage = tmp_path / "containers"
    podman = Podman("podman", storage=str(storage), insecure_registries=[f"127.0.0.1:{registry.port}"])
    ended: dict[str, AttemptResult] = {}
    cgroups: list[Path] = []
    logs: dict[str, str] = {}

    async def body() -> None:
        runner = Runner(tmp_path / "state", on_exit=lambda r: ended.__setitem__(r.attempt_id, r),
                        container_runtime="podman", containers=podman)
        if runner.memory_enforcement != "cgroup":
            prereq.skip("cgroup", "no writable memory cgroup: a container's OOM kill is seen through it")
        image = registry.image("127.0.0.1")
        hog = AttemptSpec("m1", "job-m", 1, ["python3", "-c", "x = bytearray(400 << 20); print('survived')"],
                          {}, 1, 64, image=image, container=ContainerOptions())
        # SIGKILL from inside (not the OOM killer) is a plain 137: the host's pid namespace, so
        # the shell is not pid 1 and can kill itself.
        self_kill = AttemptSpec("k1", "job-k", 1, ["/bin/sh", "-c", "kill -9 $$"], {}, 1, 64, image=image,
                                container=ContainerOptions())
        bound = AttemptSpec("b1", "job-b", 1, ["/bin/sh", "-c", "grep Cpus_allowed_list /proc/self/status"], {}, 1,
                            64, image=image, container=ContainerOptions(), cpus=(0,))
        for spec in (hog, self_kill, bound):
            assert isinstance(await runner.start(spec), int)
            cgroups.append(runner._running[spec.attempt_id].cgroup)  # type: ignore[arg-type]
        async with asyncio.timeout(120):
            while len(ended) < 3:
                await asyncio.sleep(0.1)
        logs["b1"] = runner.log_path("b1").read_text()
        await runner.shutdown(kill=True)

    try:
        asyncio.run(body())
        assert (ended["m1"].exit_code, ended["m1"].reason) == (OOM_EXIT_CODE, OOM_REASON)
        assert (ended["k1"].exit_code, ended["k1"].reason) == (137, None)
        assert ended["b1"].exit_code == 0 and logs["b1"].split() == ["Cpus_allowed_list:", "0"], logs["b1"]
        names = subprocess.run([*images.podman(storage), "ps", "--all", "--format", "{{.Names}}"],
                               capture_output=True, text=True, check=False).stdout.split()
        assert names == []
        # Nothing of the runner's cgroups is left, in the memory hierarchy or (v1) any other.
        parent = cgroups[0].parent.name  # hpcbatch-<tag>: this runner's
        assert [str(d) for d in Path("/sys/fs/cgroup").glob(f"**/{parent}")] == []
    finally:
        images.wipe_storage(storage)


# ------------------------------------------------------------------ multi-node, 4 hosts
@pytest.fixture(scope="module")
def ns4(registry: images.Registry) -> Iterator[tuple[TestCluster, str]]:
    ensure_users()
    root = make_root()
    c = TestCluster(root, nodes=4, netns=True, head_extra=HOST_PATHS)
    assert c.netns is not None
    host = c.netns.host_mgmt_ip
    give_nodes_images(c, host, registry)
    try:
        c.up()
        yield c, registry.image(host)
    finally:
        c.close()
        wipe(c)
        shutil.rmtree(root, ignore_errors=True)


def _bytes(c: TestCluster, node: str, iface: str) -> int:
    for line in c.on_node(node, ["cat", "/proc/net/dev"]).stdout.splitlines():
        if line.strip().startswith(f"{iface}:"):
            fields = line.split(":", 1)[1].split()
            return int(fields[0]) + int(fields[8])
    raise AssertionError(f"no {iface} on {node}")


def mpi_job(c: TestCluster, image: str, argv: list[str]) -> str:
    env = [{"name": "PRTE_MCA_hwloc_default_binding_policy", "value": "none"}]  # 2-core machines
    c.client.register_job_definition(
        jobDefinitionName="mpi-image", type="multinode",
        nodeProperties={"numNodes": 4, "mainNode": 0, "nodeRangeProperties": [
            {"targetNodes": "0", "container": {"image": image, "command": argv, "environment": env,
                                               "resourceRequirements": [{"type": "VCPU", "value": "1"}]}},
            {"targetNodes": "1:", "container": {"image": image, "environment": env,
                                                "resourceRequirements": [{"type": "VCPU", "value": "1"}]}},
        ]},
    )
    return submit_as_alice(c, jobName="mpi", jobDefinition="mpi-image")


def test_mpirun_in_the_image_spans_four_hosts_over_the_fabric(ns4: tuple[TestCluster, str]) -> None:
    c, image = ns4
    before = {(n, i): _bytes(c, n, i) for n in c.node_names for i in ("fab0", "mgmt0")}
    job_id = mpi_job(c, image, ["mpirun", "python3", "-m", "mpi4py.bench", "helloworld"])
    job = c.wait_status(job_id, "SUCCEEDED", "FAILED", timeout=240)
    out = wait_for(lambda: c.logs(f"{job_id}#0"), 10, what="mpirun output")
    others = "\n".join(f"--- node {i}:\n{c.logs(f'{job_id}#{i}')}" for i in (1, 2, 3))
    others += "\n--- agent node2:\n" + (c.root / "node2.log").read_text()[-3000:]
    assert job["status"] == "SUCCEEDED", out + others
    assert set(re.findall(r"on (node\d)", out)) == {"node1", "node2", "node3", "node4"}, out
    fabric = sum(_bytes(c, n, "fab0") - before[(n, "fab0")] for n in c.node_names)
    assert fabric > 4096, (fabric, out)  # the daemons' wire-up and the ranks' traffic: fab0
    assert all(containers_on(c, n) == [] for n in c.node_names)


def test_terminate_multinode_leaves_nothing_on_any_node(ns4: tuple[TestCluster, str]) -> None:
    c, image = ns4
    job_id = mpi_job(c, image, ["mpirun", "python3", "-c",
                                f"import sys, time; sys.argv[0] = '{MARKER}'; from mpi4py import MPI; time.sleep(300)"])
    c.wait_status(job_id, "RUNNING", timeout=120)
    wait_for(lambda: all(containers_on(c, n) for n in c.node_names), 120, what="a container on every node")
    wait_for(lambda: procs.job_processes(job_id), 30, what="the job's processes, seen by their environment")
    c.client.terminate_job(jobId=job_id, reason="enough")
    c.wait_status(job_id, "FAILED", timeout=60)
    wait_for(lambda: not any(containers_on(c, n) for n in c.node_names), 60, what="no container on any node")
    assert procs.job_processes(job_id) == []  # its ranks and prted, not other clusters' MPI runs


def test_each_node_range_runs_in_its_own_image(ns4: tuple[TestCluster, str], registry: images.Registry) -> None:
    """Node 0 in the test image, node 1 in a second one (the same plus a marker file)."""
    c, image = ns4
    assert c.netns is not None
    images.publish_variant_image(registry)
    variant = registry.image(c.netns.host_mgmt_ip, repository=images.VARIANT_REPOSITORY)
    shared = Path(tempfile.mkdtemp(prefix="hpcb-ctr-ranges-"))
    os.chmod(shared, 0o777)  # both nodes' containers write here as alice (the nodes share the disk)
    show = f"cat {images.VARIANT_FILE} 2>/dev/null || echo no-marker; . /etc/os-release; echo $VARIANT_ID"
    # Node 0 is the main node: the job ends with it, so it waits for node 1's answer first.
    main = (f"until [ -s /shared/node1 ]; do sleep 0.1; done; echo node1=$(cat /shared/node1); "
            f"echo node0=$({show} | tr '\\n' ' ')")
    other = f"({show}) | tr '\\n' ' ' >/shared/.n1 && mv /shared/.n1 /shared/node1"
    volume = {"volumes": [{"name": "shared", "host": {"sourcePath": str(shared)}}],
              "mountPoints": [{"sourceVolume": "shared", "containerPath": "/shared"}],
              "resourceRequirements": [{"type": "VCPU", "value": "1"}]}
    try:
        c.client.register_job_definition(
            jobDefinitionName="two-images", type="multinode",
            nodeProperties={"numNodes": 2, "mainNode": 0, "nodeRangeProperties": [
                {"targetNodes": "0", "container": {"image": image, "command": ["/bin/sh", "-c", main], **volume}},
                {"targetNodes": "1", "container": {"image": variant, "command": ["/bin/sh", "-c", other], **volume}},
            ]},
        )
        job_id = submit_as_alice(c, jobName="two-images", jobDefinition="two-images")
        job = c.wait_status(job_id, "SUCCEEDED", "FAILED", timeout=240)
        out = wait_for(lambda: c.logs(f"{job_id}#0"), 10, what="node 0's output")
        assert job["status"] == "SUCCEEDED", out + c.logs(f"{job_id}#1")
        assert f"node1={images.VARIANT_TEXT} hpcbatch-test" in out, out
        assert "node0=no-marker hpcbatch-test" in out, out
        assert c.job(f"{job_id}#1")["container"]["image"] == variant
        assert c.job(f"{job_id}#0")["container"]["image"] == image
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_a_restarted_agent_removes_the_containers_its_predecessor_left(registry: images.Registry, tmp_path: Path) -> None:
    """The agent died (no shutdown): the next one, on the same state, ends the attempt and its container."""
    from hpcbatch.protocol import ContainerOptions
    from node_agent.containers import Podman
    from node_agent.runner import LOST_REASON, AttemptSpec, Runner

    storage = tmp_path / "containers"
    podman = Podman("podman", storage=str(storage), insecure_registries=[f"127.0.0.1:{registry.port}"])
    spec = AttemptSpec("o1", "job-o", 1, ["/bin/bash", "-c", f"exec -a {MARKER} sleep 300"], {}, 1, 128,
                       image=registry.image("127.0.0.1"), container=ContainerOptions())

    def names() -> list[str]:
        return subprocess.run([*images.podman(storage), "ps", "--all", "--format", "{{.Names}}"],
                              capture_output=True, text=True, check=False).stdout.split()

    async def first_agent() -> None:
        runner = Runner(tmp_path / "state", on_exit=lambda r: None, container_runtime="podman", containers=podman)
        assert isinstance(await runner.start(spec), int)
        # dies here: no shutdown, the container keeps running

    async def next_agent() -> list:
        runner = Runner(tmp_path / "state", on_exit=lambda r: None, container_runtime="podman", containers=podman)
        results = runner.adopt_orphans()
        await runner.shutdown(kill=True)  # and its cgroups go, in every hierarchy
        return results

    try:
        asyncio.run(first_agent())
        wait_for(lambda: names() == ["hpcb-o1"] and _sleepers(), 30, what="the orphan container running")
        results = asyncio.run(next_agent())
        assert [r.status_reason for r in results] == [LOST_REASON]
        wait_for(lambda: names() == [] and not _sleepers(), 30, what="the orphan container removed")
        tag = "hpcbatch-" + hashlib.sha1(str((tmp_path / "state").resolve()).encode()).hexdigest()[:10]
        assert [str(d) for d in Path("/sys/fs/cgroup").glob(f"**/{tag}")] == []
    finally:
        images.wipe_storage(storage)
