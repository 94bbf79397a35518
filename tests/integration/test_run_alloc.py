"""``hpcbatch run`` (srun), ``hpcbatch alloc`` (salloc) and ``run --pty`` on namespace hosts.

One 4-node network-namespace cluster for the module (root). The CLI runs as a real process
(``hpcbatch`` of this venv), outside the cluster like a user's terminal; inside jobs, the
job's own ``$HPCBATCH_RUN`` does the work through the agents' launcher bridge.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import pty
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcbatch.errors import ClientError
from tests import prereq
from tests.harness import TestCluster, wait_for

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
HPCBATCH = str(BIN / "hpcbatch")
PATH = f"{BIN}:/usr/local/bin:/usr/bin:/bin"
PROMPT = r"[#$] "  # the remote shell is ready for a line


@pytest.fixture(scope="module")
def quad() -> Iterator[TestCluster]:
    if os.geteuid() != 0:
        prereq.skip("netns", "needs root for network namespaces (CI runs as root)")
    root = Path(tempfile.mkdtemp(prefix="hpcb-run-"))
    os.chmod(root, 0o755)
    c = TestCluster(root, nodes=4, netns=True)
    try:
        yield c.up()
    finally:
        c.close()
        shutil.rmtree(root, ignore_errors=True)


def cli_env(c: TestCluster) -> dict[str, str]:
    return dict(os.environ, HPCBATCH_ENDPOINT=c.socket_endpoint, PATH=f"{BIN}:{os.environ.get('PATH', '')}")


def hpcbatch(c: TestCluster, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([HPCBATCH, *args], capture_output=True, text=True, env=cli_env(c), timeout=timeout,
                          check=False)


def test_run_on_four_nodes_labels_every_line_and_returns_the_worst_exit(quad: TestCluster) -> None:
    # Outside a job: submit, stream, exit with the job's code. Each node's shell expands '$NODE_RANK'.
    done = hpcbatch(quad, "run", "--nodes", "4", "--vcpus", "1", "--",
                    "hostname; echo rank=$NODE_RANK of $NNODES; exit $NODE_RANK")
    assert done.returncode == 3, (done.stdout, done.stderr)
    lines = done.stdout.splitlines()
    assert "node1: " in done.stdout, done.stderr
    hosts = sorted(line.split(": ", 1)[1] for line in lines if re.fullmatch(r"node\d: node\d", line))
    assert hosts == ["node1", "node2", "node3", "node4"], done.stdout
    for line in lines:
        assert re.match(r"node\d: ", line), line
    ranks = {line.split(":", 1)[0]: line.split("rank=", 1)[1] for line in lines if "rank=" in line}
    assert sorted(ranks.values()) == [f"{i} of 4" for i in range(4)], done.stdout


def test_run_inside_a_batch_job_on_a_subset_with_tasks_per_node(quad: TestCluster) -> None:
    inner = "hpcbatch run --nodes 2 --ntasks-per-node 2 -- 'echo task $HPCBATCH_LOCAL_TASK'; echo main-exit=$?"
    done = hpcbatch(quad, "submit", "--nodes", "3", "--vcpus", "1", "-e", f"PATH={PATH}", "--", "sh", "-c", inner)
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    quad.wait_status(job_id, "SUCCEEDED", timeout=60)
    out = quad.logs(f"{job_id}#0")
    tasks = re.findall(r"^(node\d)\.(\d): task (\d)$", out, re.M)
    assert len(tasks) == 4 and all(label == task for _, label, task in tasks), out
    assert len({node for node, _, _ in tasks}) == 2, out  # the first two of its three nodes
    assert "main-exit=0" in out, out


def readme_line(prefix: str) -> str:
    """The README's recipe line that starts with ``prefix``, exactly as written."""
    lines = [line for line in (REPO / "README.md").read_text().splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, lines
    return lines[0]


def test_readme_torchrun_one_liner_trains_ddp_across_two_nodes(quad: TestCluster) -> None:
    if importlib.util.find_spec("torch") is None or not (BIN / "torchrun").exists():
        prereq.skip("torch", f"PyTorch not installed in {BIN.parent} (scripts/setup installs the CPU build)")
    line = readme_line("hpcbatch run --nodes 2 --vcpus 1 --memory 3072 -- torchrun ")
    done = subprocess.run(["sh", "-c", line], cwd=REPO, capture_output=True, text=True, env=cli_env(quad),
                          timeout=180, check=False)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    summary = re.search(r"^(node\d): world_size=(\d+) ranks_seen=\[([\d, ]*)\] hosts=\[([^\]]*)\] "
                        r"loss_first=([\d.e+-]+) loss_last=([\d.e+-]+)", done.stdout, re.M)
    assert summary, done.stdout[-3000:]
    assert int(summary[2]) == 4 and [int(r) for r in summary[3].split(",")] == [0, 1, 2, 3], done.stdout
    assert len(set(re.findall(r"'([^']+)'", summary[4]))) == 2, summary[4]  # two hosts
    assert float(summary[6]) < float(summary[5]), summary[0]


def test_ctrl_c_reaches_every_task_and_the_worst_exit_is_returned(quad: TestCluster) -> None:
    task = 'trap "echo interrupted; exit 7" INT; echo ready; sleep 60 & wait'
    # The job starts in the submit directory (the checkout): its scratch file goes to a temp file.
    script = (f"out=$(mktemp); hpcbatch run -- '{task}' > $out 2>&1 & pid=$!; "
              "until [ \"$(grep -c ready $out)\" = 3 ]; do sleep 0.05; done; "
              "kill -INT $pid; wait $pid; echo rc=$?; cat $out; rm -f $out")
    done = hpcbatch(quad, "submit", "--nodes", "3", "--vcpus", "1", "--timeout", "60", "-e", f"PATH={PATH}",
                    "--", "sh", "-c", script)
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    job = quad.wait_status(job_id, "SUCCEEDED", "FAILED", timeout=60)
    out = quad.logs(f"{job_id}#0")
    assert job["status"] == "SUCCEEDED" and "rc=7" in out, out
    assert len(re.findall(r"^node\d: interrupted$", out, re.M)) == 3, out


def test_cli_input_json_with_per_node_commands_is_submitted_not_refused(quad: TestCluster, tmp_path: Path) -> None:
    command = ["sh", "-c", "echo node-index=$AWS_BATCH_JOB_NODE_INDEX; sleep 1"]
    body = {"jobName": "pernode", "jobQueue": "default", "jobDefinition": "hpcbatch-default-mnp",
            "nodeOverrides": {"numNodes": 2, "nodePropertyOverrides": [
                {"targetNodes": "0", "containerOverrides": {"command": command}},
                {"targetNodes": "1:", "containerOverrides": {"command": command}}]}}
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps(body))
    done = hpcbatch(quad, "submit", "--cli-input-json", f"file://{spec}")
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    quad.wait_status(job_id, "SUCCEEDED", timeout=30)
    assert "node-index=1" in quad.logs(f"{job_id}#1")
    one = hpcbatch(quad, "submit", "--nodes", "1", "--", "true")  # was: targetNodes '1:' names nodes beyond
    assert one.returncode == 0, one.stderr
    quad.wait_status(one.stdout.strip(), "SUCCEEDED", timeout=30)


class Terminal:
    """A program on a pseudo-terminal of its own, driven as a person at a keyboard would."""

    def __init__(self, argv: list[str], env: dict[str, str], rows: int = 24, cols: int = 80) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # the child: its terminal's size first, then the program
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
            os.execvpe(argv[0], argv, env)
        self.pid, self.fd, self.seen, self.transcript = pid, fd, "", ""
        self.status: int | None = None

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def expect(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        """Read until ``pattern`` matches what came since the last match; consume through it."""
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.seen)
            if found:
                self.seen = self.seen[found.end():]
                return found
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {pattern!r} within {timeout}s; the terminal showed:\n{self.transcript[-3000:]!r}")
            if select.select([self.fd], [], [], min(left, 0.5))[0]:
                try:
                    data = os.read(self.fd, 65536)
                except OSError:  # EIO: the program has closed its terminal
                    data = b""
                if not data:
                    raise AssertionError(f"the terminal closed before {pattern!r}:\n{self.seen[-3000:]}")
                self.seen += data.decode(errors="replace")
                self.transcript += data.decode(errors="replace")

    def resize(self, rows: int, cols: int) -> None:
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))  # SIGWINCH to it

    def wait(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
            elif time.monotonic() > deadline:
                raise AssertionError(f"the program did not end within {timeout}s:\n{self.seen[-3000:]}")
            else:
                with_output = select.select([self.fd], [], [], 0.1)[0]
                if with_output:
                    try:
                        self.seen += os.read(self.fd, 65536).decode(errors="replace")
                    except OSError:
                        pass
        return self.status

    def close(self) -> None:
        if self.status is None:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self.fd)


def _running_jobs(c: TestCluster, name: str) -> list[dict[str, object]]:
    listed = c.client.list_jobs(jobQueue="default", jobStatus="RUNNING")["jobSummaryList"]
    return [j for j in listed if j.get("jobName") == name]


def readme_block(first: str) -> list[str]:
    """The lines of the README's shell block that starts with ``first``, exactly as written."""
    lines = (REPO / "README.md").read_text().splitlines()
    start = lines.index(first)
    assert lines[start - 1] == "```sh", lines[start - 1]
    return lines[start:lines.index("```", start)]


def test_readme_alloc_recipe_runs_mpirun_and_run_on_exactly_its_two_nodes(quad: TestCluster) -> None:
    alloc, mpirun, run, leave = readme_block("hpcbatch alloc --nodes 2 --vcpus 1 --timeout 3600")
    term = Terminal(["sh", "-c", alloc], cli_env(quad))
    try:
        term.expect(PROMPT)
        term.send("echo nodes=$HPCBATCH_NODES\n")
        nodes = term.expect(r"nodes=(node\d),(node\d)\r?\n").groups()
        term.expect(PROMPT)
        term.send(mpirun + "\n")
        ranks = {term.expect(r"(?:^|[\r\n])(node\d)\r\n").group(1) for _ in range(2)}
        assert ranks == set(nodes), term.seen
        term.expect(PROMPT)
        term.send(run + "\n")
        hellos = {term.expect(r"(node\d): hello from (\d)").groups() for _ in range(2)}
        assert hellos == {(nodes[0], "0"), (nodes[1], "1")}, hellos
        (job,) = _running_jobs(quad, "alloc")
        term.expect(PROMPT)
        term.send(leave + "\n")
        assert term.wait() == 0, term.seen
    finally:
        term.close()
    assert quad.wait_status(str(job["jobId"]), "SUCCEEDED", timeout=30)["timeout"]["attemptDurationSeconds"] == 3600


def test_run_pty_inside_an_alloc_reaches_the_other_node_and_the_shell_exit_code_is_allocs(quad: TestCluster) -> None:
    term = Terminal([HPCBATCH, "alloc", "--nodes", "2", "--vcpus", "1", "--name", "alloc-exit"], cli_env(quad))
    try:
        term.expect(PROMPT)
        term.send("echo second=${HPCBATCH_NODES#*,}\n")
        second = term.expect(r"second=(node\d)\r?\n").group(1)
        term.expect(PROMPT)
        term.send(f"hpcbatch run --pty --node {second} -- 'echo on-$(hostname)-$(stty size); exit 6'; echo rc=$?\n")
        term.expect(rf"on-{second}-24 80\r?\n")
        term.expect(r"rc=6")
        term.expect(PROMPT)
        term.send("exit 3\n")
        assert term.wait() == 3, term.seen
    finally:
        term.close()
    assert _running_jobs(quad, "alloc-exit") == []


def test_alloc_ends_when_its_connection_drops(quad: TestCluster) -> None:
    term = Terminal([HPCBATCH, "alloc", "--nodes", "2", "--vcpus", "1", "--name", "alloc-drop"], cli_env(quad))
    try:
        term.expect(PROMPT)
        term.send("echo up-$((1+1))\n")
        term.expect(r"up-2")
        (job,) = _running_jobs(quad, "alloc-drop")
    finally:
        term.close()  # SIGKILL: no goodbye, the TCP connection just drops
    final = quad.wait_status(str(job["jobId"]), "SUCCEEDED", "FAILED", timeout=30)
    assert final["status"] == "FAILED", final  # the shell got SIGHUP


def test_run_pty_echoes_forwards_resize_and_ctrl_c(quad: TestCluster) -> None:
    term = Terminal([HPCBATCH, "run", "--pty", "--", "bash", "--norc", "-i"], cli_env(quad), rows=24, cols=80)
    try:
        term.expect(PROMPT)
        term.send("stty size; tty\n")
        term.expect(r"24 80\r?\n/dev/pts/\d+")
        term.resize(40, 100)
        time.sleep(0.2)  # the SIGWINCH is asynchronous; stty below reads the size the task's pty has
        term.send("stty size\n")
        term.expect(r"40 100")
        term.send("echo sleeping; sleep 30\n")
        term.expect(r"sleeping\r?\n")
        term.send("\x03")  # Ctrl-C, as a key: the remote terminal turns it into SIGINT
        term.expect(PROMPT)
        term.send("echo after=$?\n")
        term.expect(r"after=130")
        term.send("exit\n")
        assert term.wait() == 0 or term.status is not None
    finally:
        term.close()


def test_run_pty_jobid_opens_a_shell_inside_a_running_job_on_the_named_node(quad: TestCluster) -> None:
    done = hpcbatch(quad, "submit", "--nodes", "2", "--vcpus", "1", "--name", "held", "--", "sleep", "120")
    job_id = done.stdout.strip()
    quad.wait_status(job_id, "RUNNING", timeout=30)
    second = quad.job(f"{job_id}#1")["nodeName"]
    term = Terminal([HPCBATCH, "run", "--pty", "--jobid", job_id, "--node", second, "--", "bash", "--norc", "-i"],
                    cli_env(quad))
    try:
        term.expect(PROMPT)
        term.send("echo at=$(hostname)/$AWS_BATCH_JOB_NODE_INDEX/$AWS_BATCH_JOB_ID\n")
        term.expect(rf"at={second}/1/{re.escape(job_id)}#1")
        term.send("exit 5\n")
        assert term.wait() == 5, term.seen
    finally:
        term.close()
    assert quad.job(job_id)["status"] == "RUNNING"  # the job goes on without the shell
    for bad, field in (({"nodeIndex": "1"}, "nodeIndex"), ({"nodeIndex": 2}, "nodeIndex 2"), ({"command": ""}, "command")):
        with pytest.raises(ClientError, match=field):
            quad.client.call("/hpcbatch/v1/startjobtask", {"jobId": job_id, "command": "true", **bad})
    quad.client.terminate_job(jobId=job_id, reason="test over")
    single = quad.submit(["sleep", "120"])
    quad.wait_status(single, "RUNNING", timeout=30)
    term = Terminal([HPCBATCH, "run", "--pty", "--jobid", single, "--", "sh", "-c", "'echo one-node-$((6*7))'"],
                    cli_env(quad))
    try:
        term.expect(r"one-node-42")
        assert term.wait() == 0, term.seen
    finally:
        term.close()
    quad.client.terminate_job(jobId=single, reason="test over")
    quad.wait_status(job_id, "FAILED", timeout=30)
    refused = hpcbatch(quad, "run", "--pty", "--jobid", job_id, "--", "true")
    assert refused.returncode == 2 and "not RUNNING" in refused.stderr, refused.stderr


def test_run_works_as_the_jobs_owner_and_nobody_else_may_enter_the_job(quad: TestCluster) -> None:
    from tests.users import call_as, ensure_users

    ensure_users()
    body = {"jobName": "owned", "jobQueue": "default", "jobDefinition": "hpcbatch-default-mnp",
            "nodeOverrides": {"numNodes": 2, "nodePropertyOverrides": [{"targetNodes": "0", "containerOverrides": {
                "command": ["sh", "-c", '"$HPCBATCH_RUN" --run -- id -un; sleep 30']}}]}}
    job_id = call_as("hpcb_alice", quad.socket_endpoint, "/v1/submitjob", body)["jobId"]
    quad.wait_status(job_id, "RUNNING", timeout=30)

    def answers() -> list[tuple[str, str]]:
        found = re.findall(r"^(node\d): (\S+)$", quad.logs(f"{job_id}#0"), re.M)
        return found if len(found) >= 2 else []

    owners = wait_for(answers, 20, what="both nodes' answers")
    assert [user for _, user in owners] == ["hpcb_alice"] * 2 and len({n for n, _ in owners}) == 2, owners
    refused = call_as("hpcb_bob", quad.socket_endpoint, "/hpcbatch/v1/startjobtask", {"jobId": job_id, "command": "id"})
    assert "may not run a command in" in refused.get("error", ""), refused
    quad.client.terminate_job(jobId=job_id, reason="test over")


def test_alloc_that_the_nodes_cannot_reach_says_why_and_ends_the_job(quad: TestCluster) -> None:
    env = dict(cli_env(quad), HPCBATCH_CALLBACK_ADDRESS="127.0.0.1")  # each node's own loopback
    done = subprocess.run([HPCBATCH, "alloc", "--nodes", "2", "--vcpus", "1", "--name", "alloc-unreached"],
                          capture_output=True, text=True, env=env, timeout=60, stdin=subprocess.DEVNULL, check=False)
    assert done.returncode == 255, (done.stdout, done.stderr)
    assert "cannot reach the client at 127.0.0.1:" in done.stderr, done.stderr
    assert _running_jobs(quad, "alloc-unreached") == []


def test_ctrl_c_on_run_outside_a_job_terminates_the_job(quad: TestCluster) -> None:
    proc = subprocess.Popen([HPCBATCH, "run", "--nodes", "2", "--vcpus", "1", "--name", "run-interrupted", "--",
                             "echo started; sleep 60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=cli_env(quad))
    try:
        assert proc.stdout is not None
        assert "started" in proc.stdout.readline()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
    finally:
        proc.kill()
        proc.wait()
    # A JOB_NAME filter makes ListJobs ignore jobStatus (as AWS does): find the job, then wait on it.
    (job,) = quad.client.list_jobs(jobQueue="default", filters=[
        {"name": "JOB_NAME", "values": ["run-interrupted"]}])["jobSummaryList"]
    ended = quad.wait_status(job["jobId"], "FAILED", "SUCCEEDED", timeout=30)
    assert ended["status"] == "FAILED" and "interrupted" in str(ended.get("statusReason")), ended


def test_run_on_one_node_outside_and_inside_a_one_node_job(quad: TestCluster) -> None:
    done = hpcbatch(quad, "run", "--", "hostname; exit 4")
    assert done.returncode == 4, done.stderr
    assert re.fullmatch(r"(node\d): \1\n", done.stdout), done.stdout
    job_id = quad.submit(["sh", "-c", "hpcbatch run -- 'echo inside; exit 5'; echo rc=$?"],
                         containerOverrides={"environment": [{"name": "PATH", "value": PATH}]})
    job = quad.wait_status(job_id, "SUCCEEDED", timeout=30)
    out = quad.logs(job_id)
    assert f"{job['nodeName']}: inside\n" in out and "rc=5" in out, out


def test_run_that_waits_says_why(quad: TestCluster, tmp_path: Path) -> None:
    gate = tmp_path / "go"
    hold = hpcbatch(quad, "submit", "--nodes", "4", "--vcpus", "1", "--name", "hold-all", "--", "sh", "-c",
                    f"while [ ! -e {gate} ]; do sleep 0.05; done")
    quad.wait_status(hold.stdout.strip(), "RUNNING", timeout=30)
    proc = subprocess.Popen([HPCBATCH, "run", "--nodes", "2", "--vcpus", "1", "--", "echo", "ran"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(quad))
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "RUNNABLE: " in line, line  # the scheduler's reason, as soon as it has one
        gate.touch()
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0 and out.count(": ran\n") == 2, out
    finally:
        gate.touch()
        proc.kill()
        proc.wait()
