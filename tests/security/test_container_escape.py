"""No way up from a job: setuid files in an image or a work directory give no root (issue 15).

Every attack runs as the real unprivileged user ``hpcb_alice`` (tests/users.py) against a
real head, a real agent and real podman, from an image built here: the test image
(tests/images.py, built once and cached) plus setuid-root copies of bash and python
(``/usr/local/bin/subash``, ``supython``). Each test asserts the attack fails and leaves
nothing behind; the last checks that the agent stayed up, that a bystander job running
through all of it succeeded, and that no job's output shows uid 0.

Root only (podman and user switching, as the agent runs them; CI runs as root).
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import images, prereq
from tests.harness import TestCluster, wait_for
from tests.users import call_as, ensure_users

_skip = images.skip_reason()
pytestmark = prereq.skipif(_skip is not None, "podman", _skip or "")

ALICE, BOB = "hpcb_alice", "hpcb_bob"
SETUID_REPOSITORY = "hpcbatch/bookworm-setuid"
TOKEN = secrets.token_hex(4)
ETC_TARGET = f"/etc/hpcb-pwned-{TOKEN}"  # what every attack tries to create
OUTPUTS: list[str] = []  # every job's output, checked for uid 0 at the end


def publish_setuid_image(registry: images.Registry) -> str:
    """The test image plus setuid-root bash and python, pushed once; its name on 127.0.0.1.

    ``COPY --chmod=4755`` of the image's own binaries (taken from its root file system): no
    compiler, no network, no container run.
    """
    name = registry.image("127.0.0.1", repository=SETUID_REPOSITORY)
    if registry.has(SETUID_REPOSITORY, images.TAG):
        return name
    base, local = images._staged_base(), f"localhost/{SETUID_REPOSITORY}:{images.TAG}"
    with tempfile.TemporaryDirectory() as context, tarfile.open(images.rootfs_tarball()) as rootfs:
        for member, target in (("./usr/bin/bash", "subash"), ("./usr/bin/python3.11", "supython")):
            source = rootfs.extractfile(member)
            assert source is not None, member
            Path(context, target).write_bytes(source.read())
        Path(context, "Containerfile").write_text(f"FROM {base}\nCOPY --chmod=4755 subash supython /usr/local/bin/\n")
        subprocess.run([*images.podman(images.STAGING), "build", "--pull=never", "--quiet", "--tag", local, context],
                       check=True, stdout=subprocess.DEVNULL)
    subprocess.run([*images.podman(images.STAGING), "push", "--quiet", "--tls-verify=false", local, name],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return name


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[TestCluster, str]]:
    """One node with podman (its own cache) and room for the bystander beside every attack."""
    ensure_users()
    registry = images.Registry()
    root = Path(tempfile.mkdtemp(prefix="hpcb-esc-"))
    os.chmod(root, 0o755)
    c = TestCluster(root, nodes=1, node_vcpus=6, agent_extra=(
        f'container_storage = "{root / "node1" / "containers"}"\n'
        f'container_insecure_registries = ["127.0.0.1:{registry.port}"]\n'))
    try:
        image = publish_setuid_image(registry)
        c.up()
        yield c, image
    finally:
        c.close()
        images.wipe_storage(root / "node1" / "containers")
        shutil.rmtree(root, ignore_errors=True)
        registry.close()
        Path(ETC_TARGET).unlink(missing_ok=True)  # only there if an attack worked (and failed its test)


@pytest.fixture(scope="module")
def bystander(cluster: tuple[TestCluster, str]) -> Iterator[tuple[str, Path]]:
    """Bob's container job, running while every attack runs: (job id, its work dir)."""
    c, image = cluster
    marker = f"bystander-{TOKEN}"
    arn = register(c, "bystander", image=image, command=["/bin/sh", "-c",
        f'touch "$TMPDIR/{marker}"; until [ -e "$TMPDIR/done" ]; do sleep 0.2; done; echo bystander-ok'])
    job_id = submit_as(c, BOB, jobDefinition=arn)
    work = work_dir_with(c, marker)
    try:
        yield job_id, work
    finally:
        if work.is_dir():  # the last test ended it already, unless it failed first
            (work / "done").touch()


def register(c: TestCluster, name: str, **container: Any) -> str:
    container.setdefault("resourceRequirements", [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "256"}])
    reg = c.client.register_job_definition(jobDefinitionName=name, type="container", containerProperties=container)
    return str(reg["jobDefinitionArn"])


def submit_as(c: TestCluster, user: str, **body: Any) -> str:
    body.setdefault("jobName", "escape")
    body.setdefault("jobQueue", "default")
    out = call_as(user, c.socket_endpoint, "/v1/submitjob", body)
    assert "jobId" in out, out
    return str(out["jobId"])


def finish(c: TestCluster, job_id: str) -> tuple[dict[str, Any], str]:
    job = c.wait_status(job_id, "SUCCEEDED", "FAILED", timeout=180)
    out = wait_for(lambda: c.logs(job_id), 15, what="the job's log")
    OUTPUTS.append(out)
    return job, out


def as_user(user: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` on the host as ``user`` (uid, gid, groups), as a local login would."""
    pw = pwd.getpwnam(user)
    return subprocess.run(argv, user=pw.pw_uid, group=pw.pw_gid, extra_groups=os.getgrouplist(user, pw.pw_gid),
                          capture_output=True, text=True, timeout=30, check=False, cwd="/")


def work_dir_with(c: TestCluster, marker: str) -> Path:
    """The running attempt's work dir on the node that holds ``marker`` (the job made it)."""
    found = wait_for(lambda: list((c.root / "node1" / "attempts").glob(f"*/work/{marker}")), 60,
                     what=f"a work dir holding {marker}")
    return found[0].parent


def nosuid(path: Path) -> bool:
    return bool(os.statvfs(path).f_flag & os.ST_NOSUID)


# ------------------------------------------------------------------ the attacks
def test_a_setuid_root_binary_in_the_image_gives_no_root(
        cluster: tuple[TestCluster, str], bystander: tuple[str, Path]) -> None:
    c, image = cluster
    script = (
        "echo ids=$(id -u):$(id -g); "
        "/usr/local/bin/subash -p -c 'echo subash_euid=$(id -u)'; "
        "/usr/local/bin/supython -c 'import os; print(\"supython_resuid\", os.getresuid()); os.setuid(0)'; "
        f"/usr/local/bin/subash -p -c 'echo x > {ETC_TARGET}' || echo etc-refused; "
        "grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs)' /proc/self/status; "
        "echo uid_map $(cat /proc/self/uid_map | head -1); "
        "ls /dev/nvidia* 2>/dev/null | sed 's/^/device /'; echo pid1=$(cat /proc/1/comm); "
        # every directory mount the job can write to, but the image's own root: nosuid and nodev
        "python3 -c 'import os\nfor line in open(\"/proc/self/mountinfo\"):\n"
        "    f = line.split(); fs = f[f.index(\"-\") + 1]; opts = f[5].split(\",\")\n"
        "    if f[4] != \"/\" and \"rw\" in opts and fs in (\"tmpfs\", \"ext4\", \"xfs\", \"btrfs\", \"nfs\", \"nfs4\") "
        "and os.path.isdir(f[4]) and os.access(f[4], os.W_OK):\n"
        "        print(\"rw-dir-mount\", f[4], \"nosuid\" in opts and \"nodev\" in opts)'"
    )
    arn = register(c, "setuid-image", image=image, command=["/bin/sh", "-c", script])
    job, out = finish(c, submit_as(c, ALICE, jobDefinition=arn))
    alice = pwd.getpwnam(ALICE)
    assert job["status"] == "SUCCEEDED", out
    assert f"ids={alice.pw_uid}:{alice.pw_gid}" in out, out
    assert f"subash_euid={alice.pw_uid}" in out, out  # no-new-privileges: the setuid bit changes nothing
    resuid = re.search(r"supython_resuid \((\d+), (\d+), (\d+)\)", out)
    assert resuid and set(resuid.groups()) == {str(alice.pw_uid)}, out
    assert "PermissionError" in out and "etc-refused" in out, out
    caps = dict(re.findall(r"^(Cap\w+|NoNewPrivs):\s+(\S+)$", out, re.M))
    assert {caps[k] for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")} == {"0000000000000000"}, out
    assert caps["NoNewPrivs"] == "1", out
    # The user namespace: container root is an unprivileged host id.
    first = re.search(r"uid_map (\d+) (\d+) (\d+)", out)
    assert first and first.group(1) == "0" and int(first.group(2)) >= 65536, out
    assert "device " not in out, out  # no GPU asked for: no /dev/nvidia* node
    assert re.search(r"pid1=(podman-init|catatonit)", out), out  # its own PID namespace, an init as pid 1
    mounts = dict(re.findall(r"^rw-dir-mount (\S+) (True|False)$", out, re.M))
    assert "/hpcbatch/work" in mounts and "/dev/shm" in mounts and set(mounts.values()) == {"True"}, out
    assert not os.path.exists(ETC_TARGET)


def test_setuid_root_with_a_root_owned_host_volume_writes_nothing(cluster: tuple[TestCluster, str]) -> None:
    """The worst case the issue names: a host volume that is root's on the host."""
    c, image = cluster
    target = Path(tempfile.mkdtemp(prefix="hpcb-esc-vol-"))  # root's, 0755
    os.chmod(target, 0o755)
    try:
        script = ("/usr/local/bin/subash -p -c 'touch /vol/planted && echo wrote' || echo vol-refused; "
                  "/usr/local/bin/supython -c 'open(\"/vol/planted2\", \"w\")' 2>&1 | tail -1")
        try:
            arn = register(c, "setuid-volume", image=image, command=["/bin/sh", "-c", script],
                           volumes=[{"name": "vol", "host": {"sourcePath": str(target)}}],
                           mountPoints=[{"sourceVolume": "vol", "containerPath": "/vol"}])
        except Exception as exc:  # a head that allows no such host path stops it earlier: fine too
            assert "sourcePath" in str(exc) or "volumes" in str(exc), exc
            return
        job, out = finish(c, submit_as(c, ALICE, jobDefinition=arn))
        assert "vol-refused" in out and "wrote" not in out and "PermissionError" in out, out
        assert list(target.iterdir()) == []
    finally:
        shutil.rmtree(target, ignore_errors=True)


def test_root_in_the_container_cannot_leave_a_setuid_root_file_for_the_host(cluster: tuple[TestCluster, str]) -> None:
    """Root in the container (here: ``podman exec --user 0``, as if a setuid binary had worked)
    plants a setuid copy of bash in the job's work directory; the owner runs it on the host."""
    c, image = cluster
    marker = f"plant-{TOKEN}"
    script = f'chmod 0777 "$TMPDIR"; touch "$TMPDIR/{marker}"; until [ -e "$TMPDIR/done" ]; do sleep 0.2; done; echo plant-ok'
    arn = register(c, "plant", image=image, command=["/bin/sh", "-c", script])
    job_id = submit_as(c, ALICE, jobDefinition=arn)
    work = work_dir_with(c, marker)
    name = "hpcb-" + work.parent.name
    podman = images.podman(c.root / "node1" / "containers")
    planted = subprocess.run(
        [*podman, "exec", "--user", "0", name, "/bin/sh", "-c",
         f"cp /usr/local/bin/subash {work}/rootsh && chmod 4755 {work}/rootsh && ls -ln {work}/rootsh; id"],
        capture_output=True, text=True, timeout=60, check=False)
    try:
        rootsh = work / "rootsh"
        if rootsh.exists():  # root in the container could write there: it must give no root on the host
            st = rootsh.stat()
            assert st.st_uid != 0, planted.stdout  # container root is not host root
            ran = as_user(ALICE, [str(rootsh), "-p", "-c", "echo euid=$(id -u)"])
            assert f"euid={pwd.getpwnam(ALICE).pw_uid}" in ran.stdout, (ran.stdout, ran.stderr)
        else:
            assert planted.returncode != 0, planted.stdout
        assert nosuid(work), "the work dir is not on a nosuid mount"
    finally:
        (work / "done").touch()
    job, out = finish(c, job_id)
    assert job["status"] == "SUCCEEDED" and "plant-ok" in out, out
    print("planted:", planted.returncode, planted.stdout, planted.stderr)


def test_a_bare_jobs_setuid_file_in_its_work_dir_does_not_take_effect(cluster: tuple[TestCluster, str]) -> None:
    """Alice's bare job leaves a setuid-alice shell for Bob, and root's setuid shell sits beside it."""
    c, _image = cluster
    marker = f"bare-{TOKEN}"
    script = (f'cp /bin/bash "$TMPDIR/alicesh"; chmod 4755 "$TMPDIR/alicesh"; chmod 0755 "$TMPDIR"; '
              f'touch "$TMPDIR/{marker}"; until [ -e "$TMPDIR/done" ]; do sleep 0.2; done; echo bare-ok')
    job_id = submit_as(c, ALICE, jobDefinition="hpcbatch-default", containerOverrides={"command": ["/bin/sh", "-c", script]})
    work = work_dir_with(c, marker)
    try:
        assert nosuid(work), "the work dir is not on a nosuid mount"
        rootsh = work / "rootsh"
        shutil.copy("/bin/bash", rootsh)
        os.chmod(rootsh, 0o4755)  # root's own setuid file, the worst a work dir could hold
        bob = pwd.getpwnam(BOB).pw_uid
        for shell in ("alicesh", "rootsh"):
            ran = as_user(BOB, [str(work / shell), "-p", "-c", "echo euid=$(id -u)"])
            assert f"euid={bob}" in ran.stdout, (shell, ran.stdout, ran.stderr)
        ran = as_user(ALICE, [str(rootsh), "-p", "-c", f"echo euid=$(id -u); echo x > {ETC_TARGET}"])
        assert f"euid={pwd.getpwnam(ALICE).pw_uid}" in ran.stdout, (ran.stdout, ran.stderr)
        assert not os.path.exists(ETC_TARGET)
    finally:
        (work / "done").touch()
    job, out = finish(c, job_id)
    assert job["status"] == "SUCCEEDED" and "bare-ok" in out, out


def test_agent_alive_bystander_unharmed_no_uid_0_anywhere(
        cluster: tuple[TestCluster, str], bystander: tuple[str, Path]) -> None:
    c, _image = cluster
    job_id, work = bystander
    assert c.procs["node1"].poll() is None, "the agent died"
    assert c.nodes()["node1"]["state"] == "ACTIVE"
    assert c.job(job_id)["status"] == "RUNNING"
    (work / "done").touch()
    job, out = finish(c, job_id)
    assert job["status"] == "SUCCEEDED" and "bystander-ok" in out, out
    outputs = "\n".join(OUTPUTS)
    assert not re.search(r"(\buid=0\b|euid=0\b|ids=0:|resuid \(0|\b0:0\b)", outputs), outputs
    assert not os.path.exists(ETC_TARGET)


def test_only_the_capabilities_the_heads_config_allows_come_back(tmp_path: Path) -> None:
    """``container_capabilities`` in the head's config: exactly those, and still no new privileges."""
    ensure_users()
    registry = images.Registry()
    os.chmod(tmp_path, 0o755)
    c = TestCluster(tmp_path, nodes=1, head_extra='container_capabilities = ["NET_BIND_SERVICE"]\n', agent_extra=(
        f'container_storage = "{tmp_path / "node1" / "containers"}"\n'
        f'container_insecure_registries = ["127.0.0.1:{registry.port}"]\n'))
    try:
        image = publish_setuid_image(registry)
        c.up()
        arn = register(c, "one-cap", image=image, command=["/bin/sh", "-c",
                       "grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status; "
                       "/usr/local/bin/subash -p -c 'echo subash_euid=$(id -u)'"])
        job, out = finish(c, submit_as(c, ALICE, jobDefinition=arn))
        assert job["status"] == "SUCCEEDED", out
        caps = dict(re.findall(r"^(Cap\w+|NoNewPrivs):\s+(\S+)$", out, re.M))
        assert caps["CapEff"] == caps["CapBnd"] == f"{1 << 10:016x}", out  # CAP_NET_BIND_SERVICE alone
        assert caps["NoNewPrivs"] == "1" and f"subash_euid={pwd.getpwnam(ALICE).pw_uid}" in out, out
    finally:
        c.close()
        images.wipe_storage(tmp_path / "node1" / "containers")
        registry.close()
