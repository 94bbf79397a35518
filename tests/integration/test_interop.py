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

from tests import images
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
pytestmark = pytest.mark.skipif(_skip is not None, reason=_skip or "")


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
        out = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, cwd=home,
                             env=self.env(home, **extra), timeout=timeout, check=False)
        assert out.returncode == 0, f"rc={out.returncode}\nstdout:\n{out.stdout[-3000:]}\nstderr:\n{out.stderr[-5000:]}"
        return out


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


def app_handle(stdout: str) -> str:
    found = re.findall(r"aws_batch://\S+", stdout)
    assert found, stdout
    return found[-1]


def test_torchx_echo_runs_and_its_log_comes_through_cloudwatch_logs(io: Interop, tmp_path: Path) -> None:
    out = io.sh(recipes("TorchX")[0], tmp_path)
    handle = app_handle(out.stdout)
    assert "State: SUCCEEDED" in out.stdout, out.stdout
    assert "hello from torchx" in out.stdout.split(handle, 1)[1], out.stdout
    job = io.c.client.list_jobs(jobQueue="default", filters=[{"name": "JOB_NAME", "values": [handle.rsplit(":", 1)[1]]}])
    assert job["jobSummaryList"][0]["status"] == "SUCCEEDED"
