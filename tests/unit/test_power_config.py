"""The MANAGED pool config ([power.pools.CE], hpcbatch.head.power): docs/managed.md's example, and bad fields named."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcbatch.errors import ClientError
from hpcbatch.head.config import load_head_config
from hpcbatch.head.power import make_pool_driver, pool_of
from hpcbatch.head.powerdrivers.config import PoolConfig
from hpcbatch.head.powerdrivers.redfish import RedfishDriver
from hpcbatch.head.powerviews import describe_capacity, managed_status

DOC = Path(__file__).resolve().parents[2] / "docs" / "managed.md"


def test_the_pool_example_in_docs_managed_md_is_a_valid_head_config(tmp_path: Path) -> None:
    block = DOC.read_text().split("```toml\n# head.toml: a MANAGED pool\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "head.toml"
    path.write_text(f'state_dir = "{tmp_path}"\n' + block)
    config = load_head_config(path)
    burst = config.power.pools["burst"]
    assert burst.resume_program == ["/usr/local/sbin/node-resume"] and burst.resume_rate == 8
    pool = pool_of("burst", burst, min_vcpus=0, max_vcpus=256)
    assert len(pool.nodes) == 16 and pool.placement_groups["cn9"] == "rack2"


def test_the_redfish_example_in_docs_managed_md_is_a_valid_head_config(tmp_path: Path) -> None:
    block = DOC.read_text().split("```toml\n# head.toml: a Redfish pool\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "head.toml"
    path.write_text(f'state_dir = "{tmp_path}"\n' + block)
    gpu = load_head_config(path).power.pools["gpu"]
    assert gpu.driver == "redfish" and gpu.redfish_url == "https://{node}-bmc.mgmt" and gpu.state_poll_s == 30
    driver = make_pool_driver(gpu)
    assert isinstance(driver, RedfishDriver) and driver._system("gpu07") == "https://gpu07-bmc.mgmt/redfish/v1/Systems/1"


@pytest.mark.parametrize(("text", "error"), [
    ('nodes = "cn[1-"\nvcpus_per_node = 1\nresume_program = ["a"]\nsuspend_program = ["b"]\n', "not a hostlist"),
    ('nodes = "cn1"\nvcpus_per_node = 0\nresume_program = ["a"]\nsuspend_program = ["b"]\n', "vcpus_per_node must be > 0"),
    ('nodes = "cn1"\nvcpus_per_node = 1\n', "needs resume_program and suspend_program"),
    ('nodes = "cn1"\nvcpus_per_node = 1\nresume_program = ["a"]\nsuspend_program = ["b"]\nstate_poll_s = -1\n',
     r"power\.pools\.burst\.state_poll_s must be >= 0 seconds"),
    ('nodes = "cn1"\nvcpus_per_node = 1\ndriver = "netns"\n', "agent_config_dir is required"),
    ('nodes = "cn1"\nvcpus_per_node = 1\ndriver = "ipmi"\n', "driver"),
    ('nodes = "cn1"\nvcpus_per_node = 1\ndriver = "redfish"\n', r"redfish_url must be an http\(s\):// URL"),
    ('nodes = "cn[1-2]"\nvcpus_per_node = 1\nresume_program = ["a"]\nsuspend_program = ["b"]\n'
     '[power.pools.other]\nnodes = "cn2"\nvcpus_per_node = 1\nresume_program = ["a"]\nsuspend_program = ["b"]\n',
     r"power\.pools\.other\.nodes: cn2 is already in power\.pools\.burst"),
])
def test_a_bad_pool_is_refused_naming_the_field(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "head.toml"
    path.write_text(f'state_dir = "{tmp_path}"\n[power.pools.burst]\n{text}')
    with pytest.raises(ClientError, match=error):
        load_head_config(path)


def test_managed_status_without_a_pool_is_invalid_and_unmanaged_is_unchanged() -> None:
    assert managed_status("x", "UNMANAGED", {}, {}) == ("VALID", "ComputeEnvironment Healthy")
    status, reason = managed_status("x", "MANAGED", {"maxvCpus": 4, "subnets": ["s"]}, {})
    assert status == "INVALID" and "[power.pools.x]" in reason
    # Described against the head's pools now: a pool added since it was created makes it VALID.
    doc = {"computeEnvironmentName": "x", "type": "MANAGED", "status": status, "statusReason": reason,
           "computeResources": {"maxvCpus": 4, "subnets": ["s"]}}
    pools = {"x": PoolConfig(nodes="cn1", vcpus_per_node=1, resume_program=["a"], suspend_program=["b"])}
    shown = describe_capacity(doc, None, pools)
    assert shown["status"] == "VALID" and "ignored (EC2 only, no meaning on this cluster): subnets" in shown["statusReason"]
