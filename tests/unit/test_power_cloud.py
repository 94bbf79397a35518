"""The cloud pool driver (hpcbatch.head.powerdrivers.cloud) against moto's EC2 server, and docs/managed.md's recipe.

moto_server (moto's server mode, a real HTTP endpoint) runs as a process on a loopback port for
the module. The recipe in docs/managed.md runs exactly as written: its user-data script is the
file, its ``aws ec2 create-launch-template`` command runs in bash (the endpoint and region come
from the environment, as the AWS chain reads them), and its head config is loaded, with only
``cloud_endpoint_url`` pointed at the emulator.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from hpcbatch.head.config import load_head_config
from hpcbatch.head.power import make_pool_driver
from hpcbatch.head.powerconfig import check_power_config
from hpcbatch.head.powerdrivers.base import PowerError
from hpcbatch.head.powerdrivers.cloud import CloudDriver
from hpcbatch.head.powerdrivers.config import PoolConfig, PowerConfig
from tests import prereq
from tests.harness import free_port, wait_for

prereq.importorskip("moto", "moto")

DOC = Path(__file__).resolve().parents[2] / "docs" / "managed.md"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "eu-west-1"}


def _block(fence: str, first_line: str) -> str:
    return DOC.read_text().split(f"```{fence}\n{first_line}", 1)[1].split("```", 1)[0]


@pytest.fixture(scope="module")
def ec2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("moto")
    port = free_port()
    server = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    with open(root / "moto.log", "wb") as log:
        proc = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)  # the AWS chain: what the driver's boto3 session reads
    try:
        import urllib.request

        def up() -> bool:
            try:
                with urllib.request.urlopen(f"{url}/moto-api/", timeout=2):
                    return True
            except OSError:
                return False

        wait_for(up, 30, interval=0.2, what="moto_server to answer")
        yield url
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def template(ec2: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The recipe's launch template, made by the recipe's own command."""
    work = tmp_path_factory.mktemp("recipe")
    script = "#!/bin/sh\n" + _block("sh", "#!/bin/sh\n")
    (work / "user-data.sh").write_text(script)
    command = _block("console", "").split("$ ", 1)[1].strip()
    env = dict(os.environ, AWS_ENDPOINT_URL=ec2, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    done = subprocess.run(["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return script


def _pool(ec2: str) -> PoolConfig:
    path_text = _block("toml", "# head.toml: a cloud pool\n")
    pool = msgspec.toml.decode(path_text.encode(), type=dict)["power"]["pools"]["burst-ec2"]
    return msgspec.convert({**pool, "cloud_endpoint_url": ec2}, PoolConfig)


def _instances(ec2: str) -> list[tuple[str, str]]:
    import boto3

    client = boto3.client("ec2", endpoint_url=ec2)
    return sorted((next(t["Value"] for t in i["Tags"] if t["Key"] == "hpcbatch-node"), i["State"]["Name"])
                  for r in client.describe_instances()["Reservations"] for i in r["Instances"])


def test_the_cloud_recipe_in_docs_managed_md_makes_a_template_whose_user_data_is_the_script(
        ec2: str, template: str, tmp_path: Path) -> None:
    import boto3

    versions = boto3.client("ec2", endpoint_url=ec2).describe_launch_template_versions(
        LaunchTemplateName="hpcbatch-agent")["LaunchTemplateVersions"]
    assert base64.b64decode(versions[0]["LaunchTemplateData"]["UserData"]).decode() == template
    path = tmp_path / "head.toml"
    path.write_text(f'state_dir = "{tmp_path}"\n' + _block("toml", "# head.toml: a cloud pool\n"))
    pool = load_head_config(path).power.pools["burst-ec2"]
    assert pool.driver == "cloud" and pool.cloud_launch_template == "hpcbatch-agent"
    assert isinstance(make_pool_driver(pool), CloudDriver)


def test_cloud_launches_one_instance_per_node_never_twice_and_terminates_them(ec2: str, template: str) -> None:
    driver = CloudDriver(_pool(ec2))
    nodes = ["ec2-1", "ec2-2"]
    assert asyncio.run(driver.state(nodes)) == {"ec2-1": "Off", "ec2-2": "Off"}
    asyncio.run(driver.power_on(nodes))
    asyncio.run(driver.power_on(nodes))  # already running: found by tag, not launched again
    assert _instances(ec2) == [("ec2-1", "running"), ("ec2-2", "running")]
    assert asyncio.run(driver.state(nodes)) == {"ec2-1": "On", "ec2-2": "On"}
    asyncio.run(driver.power_off(["ec2-2"]))  # returns once EC2 says terminated
    assert asyncio.run(driver.state(nodes)) == {"ec2-1": "On", "ec2-2": "Off"}
    asyncio.run(driver.power_on(nodes))  # ec2-2 again: a new instance; ec2-1 left alone
    assert _instances(ec2) == [("ec2-1", "running"), ("ec2-2", "running"), ("ec2-2", "terminated")]
    asyncio.run(driver.power_off(nodes))
    asyncio.run(driver.power_off(nodes))  # nothing left to terminate: harmless
    assert asyncio.run(driver.state(nodes)) == {"ec2-1": "Off", "ec2-2": "Off"}


def test_cloud_sees_an_instance_terminated_by_hand_as_off(ec2: str, template: str) -> None:
    import boto3

    driver = CloudDriver(_pool(ec2))
    asyncio.run(driver.power_on(["ec2-5"]))
    client = boto3.client("ec2", endpoint_url=ec2)
    ids = [i["InstanceId"] for r in client.describe_instances(
        Filters=[{"Name": "tag:hpcbatch-node", "Values": ["ec2-5"]}])["Reservations"] for i in r["Instances"]]
    client.terminate_instances(InstanceIds=ids)
    assert asyncio.run(driver.state(["ec2-5"])) == {"ec2-5": "Off"}


def test_cloud_names_the_nodes_and_the_answer_when_ec2_refuses(ec2: str) -> None:
    driver = CloudDriver(msgspec.structs.replace(_pool(ec2), cloud_launch_template="no-such-template"))
    with pytest.raises(PowerError, match=r"EC2 RunInstances of ec2-7: ec2-7: .*") as refused:
        asyncio.run(driver.power_on(["ec2-7"]))
    assert refused.value.nodes == ["ec2-7"]


def test_an_ec2_refusal_of_one_launch_fails_only_that_node(ec2: str, template: str) -> None:
    """EC2 answers InsufficientInstanceCapacity to ec2-12's launch only (injected at the EC2
    API, on botocore's before-call hook): ec2-11 and ec2-13 are launched, and the error names
    ec2-12 alone, so the head fails only it (before, the batch stopped at ec2-12 and all three
    were failed while ec2-11's instance booted)."""
    from botocore.exceptions import ClientError

    driver = CloudDriver(_pool(ec2))

    def no_capacity_for_ec2_12(params: dict, **_: object) -> None:
        tags = params.get("TagSpecifications", [{}])[0].get("Tags", [])
        if {"Key": "hpcbatch-node", "Value": "ec2-12"} in tags:
            raise ClientError({"Error": {"Code": "InsufficientInstanceCapacity",
                                         "Message": "We currently do not have sufficient capacity"}}, "RunInstances")

    driver._ec2().meta.events.register("before-parameter-build.ec2.RunInstances", no_capacity_for_ec2_12)
    nodes = ["ec2-11", "ec2-12", "ec2-13"]
    with pytest.raises(PowerError, match=r"^EC2 RunInstances of ec2-12: ec2-12: .*InsufficientInstanceCapacity") as refused:
        asyncio.run(driver.power_on(nodes))
    assert refused.value.nodes == ["ec2-12"]
    assert asyncio.run(driver.state(nodes)) == {"ec2-11": "On", "ec2-12": "Off", "ec2-13": "On"}
    asyncio.run(driver.power_off(["ec2-11", "ec2-13"]))


def test_cloud_pool_config_names_the_missing_field() -> None:
    bad = PowerConfig(pools={"b": PoolConfig(nodes="ec2-[1-2]", vcpus_per_node=1, driver="cloud")})
    assert check_power_config(bad) == ("power.pools.b.cloud_launch_template is required by the cloud driver "
                                       "(a launch template's name or lt- id)")
    bad = PowerConfig(pools={"b": PoolConfig(nodes="ec2-[1-2]", vcpus_per_node=1, driver="cloud",
                                             cloud_launch_template="t", cloud_tag="aws:node")})
    assert check_power_config(bad) == "power.pools.b.cloud_tag must be a tag key (not aws:...) that names the node"
