"""The API edge under attack: what a developer-role key or an unprivileged user can send.

Every attack runs against a real head and a real agent, as a real Unix user over the head's
socket (tests/users.py) or with a developer-role SigV4 key through boto3, and asserts that
it is refused with a message naming the field (and the head config key that would allow
it), that nothing was stored, and that the agent never saw it (alive, and running the next
job). Root only (real users); CI runs as root. The container case uses real podman and the
test image (tests/images.py).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import images, prereq
from tests.fuzz.wire import Wire
from tests.harness import TestCluster, wait_for
from tests.users import call_as, ensure_users, need_root

ALICE, BOB, DEV = "hpcb_alice", "hpcb_bob", "hpcb_dev"
UNAUTH_RATE, UNAUTH_BURST = 1, 5


@dataclass
class Edge:
    cluster: TestCluster
    allowed: Path  # a host path the head's config allows, read-only
    dev: Any  # boto3 batch client signed with a developer-role key
    image: str | None  # the test image, where podman is here


@pytest.fixture(scope="module")
def edge() -> Iterator[Edge]:
    need_root()
    ensure_users()
    root = Path(tempfile.mkdtemp(prefix="hpcb-edge-"))
    os.chmod(root, 0o755)
    allowed = root / "allowed"
    allowed.mkdir()
    os.chmod(allowed, 0o755)
    (allowed / "in.txt").write_text("from-the-allowed-path\n")
    registry = images.Registry() if images.skip_reason() is None else None
    c = TestCluster(
        root, nodes=1, gpus_per_node=2,
        head_extra=(f'private_data = true\ncontainer_host_paths_read_only = ["{allowed}"]\n'
                    f'[roles]\n{DEV} = "developer"\n'
                    f"[rate_limits]\nunauthenticated = {{per_second = {UNAUTH_RATE}, burst = {UNAUTH_BURST}}}\n"),
        agent_extra=(f'container_storage = "{root / "node1" / "containers"}"\n'
                     f'container_insecure_registries = ["127.0.0.1:{registry.port}"]\n' if registry else ""),
    )
    try:
        image = images.publish_test_image(registry) if registry else None
        c.up()
        key = c.client.call("/hpcbatch/v1/createaccesskey", {"user": DEV, "role": "developer"})
        import boto3

        dev = boto3.client("batch", endpoint_url=c.endpoint, region_name="local",
                           aws_access_key_id=key["accessKeyId"], aws_secret_access_key=key["secretAccessKey"])
        yield Edge(c, allowed, dev, image)
    finally:
        c.close()
        if registry is not None:
            images.wipe_storage(root / "node1" / "containers")
            registry.close()
        shutil.rmtree(root, ignore_errors=True)


def refused(call: Any, **kw: Any) -> str:
    """The message of the ClientException boto3 raised for ``call(**kw)``."""
    import botocore.exceptions

    with pytest.raises(botocore.exceptions.ClientError) as err:
        call(**kw)
    return str(err.value.response["Error"]["Message"])


def submit_as(c: TestCluster, user: str, **body: Any) -> dict[str, Any]:
    body = {"jobName": "edge", "jobQueue": "default", "jobDefinition": "hpcbatch-default", **body}
    return call_as(user, c.socket_endpoint, "/v1/submitjob", body)


def jobs_of(c: TestCluster, user: str) -> list[str]:
    listed = c.client.list_jobs(jobQueue="default", filters=[{"name": "OWNER", "values": [user]}], maxResults=1000)
    return sorted(j["jobId"] for j in listed["jobSummaryList"])


def definitions(c: TestCluster, name: str) -> list[dict[str, Any]]:
    return list(c.client.describe_job_definitions(jobDefinitionName=name)["jobDefinitions"])


def agents_unharmed(c: TestCluster) -> None:
    """The agent still runs and runs jobs; nothing it logged mentions a NUL byte."""
    assert c.procs["node1"].poll() is None, "the agent died"
    job = submit_as(c, ALICE, containerOverrides={"command": ["echo", "still-here"]})["jobId"]
    c.wait_status(job, "SUCCEEDED")
    assert "embedded null byte" not in (c.root / "node1.log").read_text()


# --- host paths, devices and limits ----------------------------------------------------------


@pytest.mark.parametrize(("container", "field", "key"), [
    ({"volumes": [{"name": "root", "host": {"sourcePath": "/"}}],
      "mountPoints": [{"sourceVolume": "root", "containerPath": "/host"}]},
     "containerProperties.volumes[0].host.sourcePath /", "container_host_paths"),
    ({"linuxParameters": {"devices": [{"hostPath": "/dev/vda", "permissions": ["READ", "WRITE"]}]}},
     "containerProperties.linuxParameters.devices[0].hostPath /dev/vda", "container_devices"),
    ({"linuxParameters": {"devices": [{"hostPath": "/dev/nvidia0"}]}},
     "containerProperties.linuxParameters.devices[0].hostPath /dev/nvidia0", "container_devices"),
    ({"linuxParameters": {"sharedMemorySize": 1 << 20}},
     "containerProperties.linuxParameters.sharedMemorySize", "container_max_shared_memory_mib"),
    ({"linuxParameters": {"tmpfs": [{"containerPath": "/big", "size": 1 << 20}]}},
     "containerProperties.linuxParameters.tmpfs", "container_max_tmpfs_mib"),
    ({"ulimits": [{"name": "rtprio", "softLimit": 99, "hardLimit": 99}]},
     "containerProperties.ulimits[0].name rtprio", "container_ulimits"),
])
def test_a_developer_key_cannot_mount_host_root_or_pass_host_devices(
    edge: Edge, container: dict[str, Any], field: str, key: str,
) -> None:
    """Before: a developer key registered ``/`` read-write or ``/dev/vda`` and every user ran it."""
    name = f"evil-{uuid.uuid4().hex[:8]}"
    message = refused(edge.dev.register_job_definition, jobDefinitionName=name, type="container",
                      containerProperties={"image": "busybox", "command": ["true"], **container})
    assert message.startswith(field), message
    assert key in message and "head's config" in message, message
    assert definitions(edge.cluster, name) == []


def test_the_same_limits_hold_for_every_node_of_a_multinode_definition(edge: Edge) -> None:
    name = f"evil-mnp-{uuid.uuid4().hex[:8]}"
    root_mount = {"image": "busybox", "command": ["true"], "volumes": [{"name": "r", "host": {"sourcePath": "/etc"}}],
                  "mountPoints": [{"sourceVolume": "r", "containerPath": "/etc2"}]}
    message = refused(edge.dev.register_job_definition, jobDefinitionName=name, type="multinode", nodeProperties={
        "numNodes": 2, "mainNode": 0, "nodeRangeProperties": [
            {"targetNodes": "0", "container": {"command": ["true"]}}, {"targetNodes": "1", "container": root_mount}]})
    assert message.startswith("nodeProperties.nodeRangeProperties[1].container.volumes[0].host.sourcePath /etc"), message
    assert definitions(edge.cluster, name) == []


@pytest.mark.parametrize(("container", "field"), [
    ({"volumes": [{"name": "v", "host": {"sourcePath": "ALLOWED"}}],
      "mountPoints": [{"sourceVolume": "v", "containerPath": "/data:rw,suid", "readOnly": True}]},
     "containerProperties.mountPoints[0].containerPath"),
    ({"volumes": [{"name": "v", "host": {"sourcePath": "ALLOWED/../../etc"}}],
      "mountPoints": [{"sourceVolume": "v", "containerPath": "/data", "readOnly": True}]},
     "containerProperties.volumes[0].host.sourcePath"),
    ({"volumes": [{"name": "v", "host": {"sourcePath": "ALLOWED:/etc"}}]},
     "containerProperties.volumes[0].host.sourcePath"),
    ({"image": "--privileged"}, "containerProperties.image"),
])
def test_mount_options_and_podman_options_cannot_be_smuggled(edge: Edge, container: dict[str, Any], field: str) -> None:
    body = json.loads(json.dumps({"image": "busybox", "command": ["true"], **container}).replace("ALLOWED", str(edge.allowed)))
    name = f"smuggle-{uuid.uuid4().hex[:8]}"
    message = refused(edge.dev.register_job_definition, jobDefinitionName=name, type="container", containerProperties=body)
    assert message.startswith(field), message
    assert definitions(edge.cluster, name) == []


def test_an_allowed_host_path_is_mounted_read_only_in_the_container(edge: Edge) -> None:
    if edge.image is None:
        prereq.skip("podman", images.skip_reason() or "no podman")
    c = edge.cluster
    volume = {"volumes": [{"name": "data", "host": {"sourcePath": str(edge.allowed)}}]}
    script = "cat /data/in.txt; touch /data/new 2>/dev/null && echo wrote || echo read-only"
    name = f"allowed-{uuid.uuid4().hex[:8]}"
    # Read-write is more than container_host_paths_read_only allows.
    message = refused(edge.dev.register_job_definition, jobDefinitionName=name, type="container", containerProperties={
        "image": edge.image, "command": ["true"], **volume,
        "mountPoints": [{"sourceVolume": "data", "containerPath": "/data"}]})
    assert message.startswith("containerProperties.mountPoints[0].readOnly must be true"), message
    assert "container_host_paths_read_only" in message
    edge.dev.register_job_definition(jobDefinitionName=name, type="container", containerProperties={
        "image": edge.image, "command": ["/bin/sh", "-c", script], **volume,
        "mountPoints": [{"sourceVolume": "data", "containerPath": "/data", "readOnly": True}],
        "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "256"}]})
    job = submit_as(c, ALICE, jobDefinition=name)["jobId"]
    detail = c.wait_status(job, "SUCCEEDED", "FAILED", timeout=180)
    out = wait_for(lambda: c.logs(job), 10, what="the job's output")
    assert detail["status"] == "SUCCEEDED", out
    assert "from-the-allowed-path" in out and "read-only" in out, out
    assert not (edge.allowed / "new").exists()


# --- strings that reach exec, the environment or a path ------------------------------------------

NUL = "x\x00y"
SUBMIT_FIELDS: list[tuple[dict[str, Any], str]] = [
    ({"jobName": NUL}, "jobName"),
    ({"jobQueue": NUL}, "jobQueue"),
    ({"jobDefinition": NUL}, "jobDefinition"),
    ({"containerOverrides": {"command": ["echo", NUL]}}, "containerOverrides.command[1]"),
    ({"containerOverrides": {"command": ["true"], "environment": [{"name": NUL, "value": "1"}]}},
     "containerOverrides.environment[0].name"),
    ({"containerOverrides": {"command": ["true"], "environment": [{"name": "A", "value": NUL}]}},
     "containerOverrides.environment[0].value"),
    ({"containerOverrides": {"command": ["echo", "Ref::p"]}, "parameters": {"p": NUL}}, 'parameters["p"]'),
    ({"containerOverrides": {"command": ["true"]}, "tags": {"t": NUL}}, 'tags["t"]'),
    ({"containerOverrides": {"command": ["true"]}, "dependsOn": [{"jobId": NUL}]}, "dependsOn[0].jobId"),
    ({"containerOverrides": {"command": ["true"]}, "shareIdentifier": NUL}, "shareIdentifier"),
    ({"nodeOverrides": {"nodePropertyOverrides": [{"targetNodes": "0:", "containerOverrides": {
        "command": [NUL], "environment": [{"name": "B", "value": NUL}]}}]}},
     "nodeOverrides.nodePropertyOverrides[0].containerOverrides.command[0]"),
]
REGISTER_FIELDS: list[tuple[dict[str, Any], str]] = [
    ({"command": [NUL]}, "containerProperties.command[0]"),
    ({"image": NUL}, "containerProperties.image"),
    ({"environment": [{"name": NUL, "value": "1"}]}, "containerProperties.environment[0].name"),
    ({"environment": [{"name": "A", "value": NUL}]}, "containerProperties.environment[0].value"),
    ({"user": NUL}, "containerProperties.user"),
    ({"volumes": [{"name": "v", "host": {"sourcePath": "/srv/" + NUL}}]}, "containerProperties.volumes[0].host.sourcePath"),
    ({"mountPoints": [{"sourceVolume": "v", "containerPath": "/" + NUL}]}, "containerProperties.mountPoints[0].containerPath"),
    ({"linuxParameters": {"devices": [{"hostPath": "/dev/" + NUL}]}}, "containerProperties.linuxParameters.devices[0].hostPath"),
    ({"linuxParameters": {"tmpfs": [{"containerPath": "/" + NUL, "size": 8}]}},
     "containerProperties.linuxParameters.tmpfs[0].containerPath"),
]


def test_nul_bytes_in_every_string_field_are_refused_and_nothing_reaches_the_agent(edge: Edge) -> None:
    c = edge.cluster
    before = jobs_of(c, ALICE)
    for extra, field in SUBMIT_FIELDS:
        out = submit_as(c, ALICE, **extra)
        assert "error" in out, (field, out)
        assert out["error"].startswith(field + " must not contain a NUL byte"), (field, out)
    for extra, field in REGISTER_FIELDS:
        name = f"nul-{uuid.uuid4().hex[:8]}"
        message = refused(edge.dev.register_job_definition, jobDefinitionName=name, type="container",
                          containerProperties={"image": "busybox", "command": ["true"], **extra})
        assert message.startswith(field + " must not contain a NUL byte"), (field, message)
        assert definitions(c, name) == []
    message = refused(edge.dev.register_job_definition, jobDefinitionName="nul-params", type="container",
                      containerProperties={"command": ["true"]}, parameters={"p": NUL})
    assert message.startswith('parameters["p"] must not contain a NUL byte'), message
    assert jobs_of(c, ALICE) == before  # nothing stored, so nothing dispatched
    agents_unharmed(c)


@pytest.mark.parametrize("name", ["CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES",
                                  "HIP_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL", "CUDA_DEVICE_ORDER"])
def test_gpu_visibility_variables_cannot_be_set_by_a_job(edge: Edge, name: str) -> None:
    c = edge.cluster
    before = jobs_of(c, ALICE)
    out = submit_as(c, ALICE, containerOverrides={"command": ["true"], "environment": [{"name": name, "value": "0,1"}]})
    assert out.get("error", "").startswith(f"containerOverrides.environment[0].name: {name} is reserved"), out
    definition = f"gpuvar-{uuid.uuid4().hex[:8]}"
    message = refused(edge.dev.register_job_definition, jobDefinitionName=definition, type="container",
                      containerProperties={"command": ["true"], "environment": [{"name": name, "value": "all"}]})
    assert message.startswith(f"containerProperties.environment[0].name: {name} is reserved"), message
    assert jobs_of(c, ALICE) == before and definitions(c, definition) == []


def test_an_equals_sign_in_an_environment_name_is_refused(edge: Edge) -> None:
    out = submit_as(edge.cluster, ALICE, containerOverrides={
        "command": ["true"], "environment": [{"name": "LD_PRELOAD=/tmp/evil.so X", "value": "1"}]})
    assert out.get("error", "").startswith("containerOverrides.environment[0].name must not contain '='"), out


def test_a_job_that_asked_for_no_gpu_sees_none(edge: Edge) -> None:
    c = edge.cluster
    job = submit_as(c, ALICE, containerOverrides={"command": ["sh", "-c", 'echo "cuda=[$CUDA_VISIBLE_DEVICES]"']})["jobId"]
    c.wait_status(job, "SUCCEEDED")
    assert "cuda=[]" in wait_for(lambda: c.logs(job), 10, what="output")


# --- private data ----------------------------------------------------------------------------------


def test_nodes_list_shows_other_users_job_ids_only_to_admins(edge: Edge) -> None:
    c = edge.cluster
    job = submit_as(c, ALICE, containerOverrides={
        "command": ["sleep", "60"], "resourceRequirements": [{"type": "GPU", "value": "1"}]})["jobId"]
    try:
        c.wait_status(job, "RUNNING")
        seen_by_bob = call_as(BOB, c.socket_endpoint, "/hpcbatch/v1/listnodes", {})
        assert job not in json.dumps(seen_by_bob), seen_by_bob
        node = seen_by_bob["nodes"][0]
        assert node["runningJobs"] == [] and list(node["gpuHolders"].values()) == ["(private)"]
        assert [g["heldBy"] for g in node["gpuDetails"] if g["heldBy"]] == ["(private)"]
        assert node["freeGpus"] == 1  # that a GPU is taken is no secret; by whom is
        seen_by_alice = call_as(ALICE, c.socket_endpoint, "/hpcbatch/v1/listnodes", {})["nodes"][0]
        assert seen_by_alice["runningJobs"] == [job] and list(seen_by_alice["gpuHolders"].values()) == [job]
        assert c.nodes()["node1"]["runningJobs"] == [job]  # root: an admin
        # A job waiting behind it (both GPUs) is in the queue snapshot of its owner and admins only.
        waiting = submit_as(c, ALICE, containerOverrides={
            "command": ["true"], "resourceRequirements": [{"type": "GPU", "value": "2"}]})["jobId"]
        c.wait_status(waiting, "RUNNABLE")

        def front(user: str | None) -> str:
            body = {"jobQueue": "default"}
            out = call_as(user, c.socket_endpoint, "/v1/getjobqueuesnapshot", body) if user else \
                c.client.call("/v1/getjobqueuesnapshot", body)
            return json.dumps(out)

        wait_for(lambda: waiting in front(None), 10, what="the waiting job in the queue snapshot")
        assert waiting in front(ALICE)
        assert waiting not in front(BOB) and job not in front(BOB)
    finally:
        c.client.terminate_job(jobId=job, reason="test over")
    c.wait_status(job, "FAILED")


def test_depends_on_another_users_private_job_is_refused_as_a_missing_one(edge: Edge) -> None:
    c = edge.cluster
    alices = submit_as(c, ALICE, containerOverrides={"command": ["true"]})["jobId"]
    c.wait_status(alices, "SUCCEEDED")
    missing = str(uuid.uuid4())
    before = jobs_of(c, BOB)
    on_alices = submit_as(c, BOB, containerOverrides={"command": ["true"]}, dependsOn=[{"jobId": alices}])
    on_missing = submit_as(c, BOB, containerOverrides={"command": ["true"]}, dependsOn=[{"jobId": missing}])
    assert on_alices == json.loads(json.dumps(on_missing).replace(missing, alices)), (on_alices, on_missing)
    assert on_alices["error"] == f"dependsOn[0].jobId {alices} does not exist"
    assert jobs_of(c, BOB) == before
    own = submit_as(c, ALICE, containerOverrides={"command": ["true"]}, dependsOn=[{"jobId": alices}])
    c.wait_status(own["jobId"], "SUCCEEDED")


# --- unauthenticated floods --------------------------------------------------------------------------


def test_an_unsigned_flood_is_limited_and_does_not_flood_the_log(edge: Edge) -> None:
    c = edge.cluster
    log = c.root / "head.log"
    size = log.stat().st_size
    wire = Wire(tcp=("127.0.0.1", c.http_port))
    body = json.dumps({"jobName": "x", "jobQueue": "default", "jobDefinition": "hpcbatch-default",
                       "containerOverrides": {"command": ["true"]}}).encode()
    statuses: dict[int, int] = {}
    started = time.monotonic()
    for i in range(400):
        headers = {} if i % 2 else {"Authorization": "AWS4-HMAC-SHA256 Credential=AKIAFAKE/x/y/batch/aws4_request, "
                                                     "SignedHeaders=host, Signature=00"}
        answer = wire.post("/v1/submitjob", body, headers)
        statuses[answer.status] = statuses.get(answer.status, 0) + 1
        if answer.status == 429:
            assert answer.error_type == "TooManyRequestsException" == answer.json()["__type"]
    elapsed = time.monotonic() - started
    wire.close()
    assert set(statuses) <= {403, 429} and statuses.get(429, 0) > 0, statuses
    assert statuses.get(403, 0) <= UNAUTH_BURST + UNAUTH_RATE * (elapsed + 1), statuses  # a count, not a time
    # A signed caller from the same address is served meanwhile.
    assert edge.dev.describe_job_queues()["jobQueues"]
    with open(log, "rb") as f:
        f.seek(size)
        added = f.read().decode(errors="replace").splitlines()
    refusals = [line for line in added if "refused" in line]
    assert 1 <= len(refusals) <= 3, refusals  # the first from this address (a summary at most once a minute)
    assert len(added) <= 10, added  # 400 refused requests, a handful of lines in all
    assert "x" not in {j["jobName"] for j in c.client.list_jobs(jobQueue="default", maxResults=1000)["jobSummaryList"]}


# --- docs/security.md, exactly as written ------------------------------------------------------------

DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"


def _section(title: str) -> str:
    text = DOC.read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def _blocks(section: str, language: str) -> list[str]:
    parts = section.split("```")
    return [parts[i].removeprefix(language + "\n") for i in range(1, len(parts), 2) if parts[i].startswith(language + "\n")]


def test_the_documented_head_config_loads_as_written(tmp_path: Path) -> None:
    from hpcbatch.head.config import load_head_config

    host = _blocks(_section("Host paths, devices and limits"), "toml")
    rates = _blocks(_section("Private data"), "toml")
    assert len(host) == 1 and len(rates) == 1
    config_file = tmp_path / "head.toml"
    config_file.write_text(f'state_dir = "{tmp_path / "state"}"\n' + host[0] + rates[0])
    config = load_head_config(config_file)
    limits = config.container_limits
    assert limits.host_paths == ("/scratch",) and limits.host_paths_read_only == ("/shared/datasets",)
    assert limits.devices == ("/dev/infiniband/*",) and limits.max_shared_memory_mib == 65536
    assert dict(limits.ulimits) == {"nofile": 1048576, "memlock": -1, "stack": -1}
    assert config.rates["unauthenticated"].per_second == UNAUTH_RATE
    assert config.rates["unauthenticated"].burst == UNAUTH_BURST


def test_the_documented_refusals_are_what_a_developer_key_gets(edge: Edge) -> None:
    lines = [line.removeprefix("ClientException: ") for block in _blocks(_section("Host paths, devices and limits"), "")
             for line in block.splitlines() if line.startswith("ClientException: ")]
    assert len(lines) == 2
    root = {"volumes": [{"name": "root", "host": {"sourcePath": "/"}}],
            "mountPoints": [{"sourceVolume": "root", "containerPath": "/host"}]}
    disk = {"linuxParameters": {"devices": [{"hostPath": "/dev/vda"}]}}
    for container, line in zip((root, disk), lines, strict=True):
        assert refused(edge.dev.register_job_definition, jobDefinitionName="doc-example", type="container",
                       containerProperties={"image": "busybox", "command": ["true"], **container}) == line


# --- a NUL byte and the store ---------------------------------------------------------------------------


def test_a_nul_byte_cannot_wedge_a_postgresql_head(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Before: one request with a NUL byte (even a refused one, through its audit entry) made
    every later commit fail on PostgreSQL, which refuses NUL in text: the head was wedged."""
    need_root()
    ensure_users()
    root = Path(tempfile.mkdtemp(prefix="hpcb-edge-pg-"))
    os.chmod(root, 0o755)
    c = TestCluster(root, nodes=0, store="postgresql")
    try:
        c.up()
        wire = Wire(unix_path=str(c.api_socket))
        for path, body in (
            ("/v1/submitjob", {"jobName": NUL, "jobQueue": "default", "jobDefinition": "hpcbatch-default"}),
            ("/v1/createcomputeenvironment", {"computeEnvironmentName": NUL, "type": "UNMANAGED"}),
            ("/hpcbatch/v1/drainnode", {"name": NUL}),
            ("/hpcbatch/v1/whyjob", {"jobId": NUL}),
            ("/hpcbatch/v1/putscript", {"script": "#!/bin/sh\n" + NUL}),
        ):
            answer = wire.call(path, body)
            assert answer.status == 400 and "must not contain a NUL byte" in answer.json()["message"], (path, answer)
        out = submit_as(c, ALICE, jobName=NUL, containerOverrides={"command": ["true"]})
        assert out.get("error", "").startswith("jobName must not contain a NUL byte"), out
        # The head still commits: a change, and the refusals in the audit log, escaped.
        c.client.create_compute_environment(computeEnvironmentName="after", type="UNMANAGED")
        events = c.client.call("/hpcbatch/v1/listaudit", {"maxResults": 50})["events"]
        assert ("root", "CreateComputeEnvironment", "ok") in {(e["user"], e["operation"], e["outcome"]) for e in events}
        refused_targets = {e["target"] for e in events if e["outcome"].startswith("ClientException")}
        assert "x\\u0000y" in refused_targets
    finally:
        c.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize(("line", "words"), [
    ('container_host_paths = ["scratch"]', "container_host_paths: 'scratch' must be an absolute, normal path"),
    ('container_devices = ["/dev/../etc"]', "container_devices: '/dev/../etc' must be an absolute, normal path"),
    ("container_max_tmpfs_mib = -1", "container_max_tmpfs_mib must be >= 0"),
    ("container_ulimits = {nofiles = 10}", "container_ulimits: 'nofiles' is not one of"),
    ("container_ulimits = {nofile = -2}", "container_ulimits.nofile must be -1 (any) or a limit >= 0"),
])
def test_a_bad_container_key_keeps_the_head_from_starting(tmp_path: Path, line: str, words: str) -> None:
    from hpcbatch.errors import ClientError
    from hpcbatch.head.config import load_head_config

    config_file = tmp_path / "head.toml"
    config_file.write_text(f'state_dir = "{tmp_path}"\n{line}\n')
    with pytest.raises(ClientError) as err:
        load_head_config(config_file)
    assert words in err.value.message, err.value.message


def test_why_names_no_other_users_job_under_private_data(tmp_path: Path) -> None:
    """A backfill decision names the job whose reservation it ran before: under private_data
    ``hpcbatch why`` shows another user's job there as ``(private)``. In process: the real
    service, engine and store; the decision is one the scheduler writes (core.py)."""
    from hpcbatch.auth.policy import Caller
    from hpcbatch.head.engine import Engine
    from hpcbatch.head.logs import LogStore
    from hpcbatch.head.service import BatchService
    from hpcbatch.store import SqliteStore
    from tests.unit.test_store import job

    store = SqliteStore(tmp_path / "why.db")
    try:
        service = BatchService(store, Engine(store, LogStore(tmp_path / "logs"), send=lambda n, m: None,
                                             clock_ms=lambda: 1), region="local", account="0")
        service.private_data = True
        mine, theirs = str(uuid.uuid4()), str(uuid.uuid4())
        with store.transaction():
            store.put_jobs([job(mine, owner="alice"), job(theirs, owner="bob")])
        service.engine.scheduler.decisions.append(
            ("e7", f"start {mine} on node1 (default), backfilled before {theirs}#0's reservation at t=5"))
        alice = Caller(user="alice", role="user", via="socket")
        decision = service.WhyJob({"jobId": mine}, alice)["decisions"][0]["decision"]
        assert theirs not in decision and "before (private)'s reservation" in decision and mine in decision
        admin = Caller(user="root", role="admin", via="socket")
        assert theirs in service.WhyJob({"jobId": mine}, admin)["decisions"][0]["decision"]
        # The events that caused a decision name their jobs the same way: bob's attempt that
        # ended is (private) to alice, her own job's arrival is hers.
        from hpcbatch.scheduler.decisions import Cause, Decision
        service.engine.scheduler.decisions.record(Decision("e9", f"start {mine} on node1 (default)", (mine,), (
            Cause("JobRunnable", "e3", mine), Cause("AttemptEnded", "e9", theirs), Cause("Tick", "e8"))))
        causes = service.WhyJob({"jobId": mine}, alice)["decisions"][-1]["causes"]
        assert causes == [{"type": "JobRunnable", "eventId": "e3", "jobId": mine},
                          {"type": "AttemptEnded", "eventId": "e9", "jobId": "(private)"},
                          {"type": "Tick", "eventId": "e8"}]
        assert service.WhyJob({"jobId": mine}, admin)["decisions"][-1]["causes"][1]["jobId"] == theirs
    finally:
        store.close()
