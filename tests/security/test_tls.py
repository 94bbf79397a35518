"""Secrets never cross the network in clear (docs/security.md, "Secrets on the wire").

A real head serving HTTPS with a certificate from a CA made for the test (as ``hpcbatch
cluster up`` makes one); CreateAccessKey refused over plain HTTP; the profile ``hpcbatch
admin keys create`` prints used as it is by boto3 (and the aws CLI, where installed).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from hpcbatch.cli.main import cli
from hpcbatch.client import Client
from hpcbatch.errors import ClientError, HpcbatchError
from hpcbatch.localcluster import LocalCluster
from hpcbatch.localrecord import ClusterShape
from tests.harness import TestCluster
from tests.security.barehead import BareHead
from tests.users import ensure_users, need_root

ALICE = "hpcb_alice"


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCluster]:
    c = TestCluster(tmp_path_factory.mktemp("tls"), nodes=1, tls=True)
    try:
        yield c.up()
    finally:
        c.close()


@pytest.fixture(scope="module")
def admin_key(tls_cluster: TestCluster) -> tuple[str, str]:
    key = tls_cluster.client.call("/hpcbatch/v1/createaccesskey", {"user": "root", "role": "admin"})
    return key["accessKeyId"], key["secretAccessKey"]


def test_the_head_serves_https_that_the_client_verifies(tls_cluster: TestCluster, admin_key: tuple[str, str]) -> None:
    assert tls_cluster.endpoint.startswith("https://")
    with Client(tls_cluster.endpoint, credentials=admin_key, ca_bundle=tls_cluster.ca_bundle) as signed:
        assert signed.call("/hpcbatch/v1/whoami", {})["via"] == "sigv4"
    # Without the CA the certificate is not trusted, and nothing is sent.
    with Client(tls_cluster.endpoint, credentials=admin_key) as untrusting, \
            pytest.raises(HpcbatchError, match="(?i)certificate verify failed"):
        untrusting.call("/hpcbatch/v1/whoami", {})
    # Plain HTTP on the HTTPS port gets no API answer.
    plain = tls_cluster.endpoint.replace("https://", "http://")
    with Client(plain, credentials=admin_key, timeout=5) as client, pytest.raises(HpcbatchError):
        client.call("/hpcbatch/v1/whoami", {})


def test_create_access_key_answers_over_tls(tls_cluster: TestCluster, admin_key: tuple[str, str]) -> None:
    with Client(tls_cluster.endpoint, credentials=admin_key, ca_bundle=tls_cluster.ca_bundle) as signed:
        created = signed.call("/hpcbatch/v1/createaccesskey", {"user": "hpcb_bob", "role": "user"})
    assert created["secretAccessKey"] and created["region"] == "local"


def test_create_access_key_is_refused_over_plain_http(tmp_path: Path) -> None:
    head = BareHead(tmp_path)
    assert head.start() is None, head.output()
    try:
        admin = head.call("/hpcbatch/v1/createaccesskey", {"user": "root", "role": "admin"})
        with Client(head.endpoint, credentials=(admin["accessKeyId"], admin["secretAccessKey"])) as signed:
            assert signed.call("/hpcbatch/v1/whoami", {})["user"] == "root"  # signed HTTP works for the rest
            with pytest.raises(ClientError, match="never crosses the network in clear: call it over HTTPS"):
                signed.call("/hpcbatch/v1/createaccesskey", {"user": "root", "role": "admin"})
        keys = head.call("/hpcbatch/v1/listaccesskeys", {})["accessKeys"]
        assert [k["access_key_id"] for k in keys] == [admin["accessKeyId"]]  # nothing was made
    finally:
        head.stop()


def test_admin_keys_create_prints_a_profile_boto3_uses_at_once(
    tls_cluster: TestCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3

    need_root()
    ensure_users()
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    result = CliRunner().invoke(cli, ["--endpoint", tls_cluster.socket_endpoint, "admin", "keys", "create",
                                      "--user", ALICE, "--profile", "alice", "--ca-bundle", str(tls_cluster.ca_bundle)])
    assert result.exit_code == 0, result.output
    config = tmp_path / "config"
    config.write_text(result.stdout)
    assert f"endpoint_url = {tls_cluster.endpoint}" in result.stdout and "region = local" in result.stdout
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_PROFILE", "alice")
    batch = boto3.Session().client("batch")
    job = batch.submit_job(jobName="profiled", jobQueue="default", jobDefinition="hpcbatch-default",
                           containerOverrides={"command": ["true"]})
    assert tls_cluster.wait_status(job["jobId"], "SUCCEEDED")["owner"] == ALICE
    aws = shutil.which("aws")
    if aws:  # the aws CLI reads the same file (its own botocore, so not required where it is missing)
        out = subprocess.run([aws, "batch", "describe-jobs", "--jobs", job["jobId"]], capture_output=True, text=True,
                             timeout=60, env=dict(os.environ), check=False)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["jobs"][0]["jobId"] == job["jobId"]


def test_cluster_up_serves_https_that_the_cli_and_boto3_trust(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/security.md's recipe: ``hpcbatch admin keys create --user root --profile hpc >> config``
    on a local cluster, then boto3 (and the aws CLI) with ``AWS_PROFILE=hpc`` and nothing else."""
    import boto3

    home = tempfile.mkdtemp(prefix="hpcb-tls-")
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HPCBATCH_HOME", home)
    local = LocalCluster(home)
    try:
        local.up(ClusterShape(nodes=1))
        record = local.record() or {}
        assert record["http_endpoint"].startswith("https://127.0.0.1:")
        assert local.ca_bundle == os.path.join(local.dir, "tls", "ca.pem")
        assert os.stat(os.path.join(local.dir, "head")).st_mode & 0o777 == 0o700
        result = CliRunner().invoke(cli, ["admin", "keys", "create", "--user", "root", "--role", "admin",
                                          "--profile", "hpc"])
        assert result.exit_code == 0, result.output
        assert f"endpoint_url = {record['http_endpoint']}" in result.stdout
        assert f"ca_bundle = {local.ca_bundle}" in result.stdout
        config = tmp_path / "config"
        config.write_text(result.stdout)
        monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
        monkeypatch.setenv("AWS_PROFILE", "hpc")
        batch = boto3.Session().client("batch")
        assert [q["jobQueueName"] for q in batch.describe_job_queues()["jobQueues"]] == ["default"]
        # The client finds the local cluster's CA by itself ($HPCBATCH_HOME's cluster.json) and
        # the key in the profile, as the CLI does over TCP.
        with Client(record["http_endpoint"]) as signed:
            assert signed.call("/hpcbatch/v1/whoami", {})["via"] == "sigv4"
        aws = shutil.which("aws")
        if aws:
            out = subprocess.run([aws, "batch", "describe-job-queues"], capture_output=True, text=True,
                                 timeout=60, env=dict(os.environ), check=False)
            assert out.returncode == 0, out.stderr
            assert [q["jobQueueName"] for q in json.loads(out.stdout)["jobQueues"]] == ["default"]
    finally:
        local.down()
        shutil.rmtree(home, ignore_errors=True)


def test_tls_settings_are_checked_before_the_head_serves(tmp_path: Path) -> None:
    from hpcbatch.head.config import load_head_config

    config = tmp_path / "half.toml"
    config.write_text(f'state_dir = "{tmp_path / "s"}"\ntls_cert = "{tmp_path / "c.pem"}"\n')
    with pytest.raises(ClientError, match="tls_cert and tls_key: give both"):
        load_head_config(config)
    head = BareHead(tmp_path, extra=f'tls_cert = "{tmp_path / "missing.crt"}"\ntls_key = "{tmp_path / "missing.key"}"\n')
    assert head.start() == 3
    assert f"tls_cert: {tmp_path / 'missing.crt'} does not exist" in head.output(), head.output()
