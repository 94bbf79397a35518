"""A real cluster for tests: head and agent processes on loopback, each killable and restartable.

Unlike ``hpcbatch cluster up`` (the user's tool), the harness lets a test ``kill -9`` the
head or one agent, restart it on the same state, and tune heartbeats so node loss is
detected in seconds. Everything it starts it stops, in ``close``.

Keys as an operator would set them up: the head's key pair and each agent's are generated
here, agents pin the head's public key, and the ``enrolled`` nodes (all, by default) are
pre-seeded into the head's ``node_keys/accepted/``. ``self.client`` talks to the head's
Unix socket (as root, that makes it an admin); ``self.endpoint`` is the TCP one (SigV4).

``netns=True`` (root) is the multi-host test bed of ``hpcbatch.netns``: every node in its
own network namespace with hostname ``node<i>``, a management network whose host side
carries the head's fleet endpoint, and a fabric network (``fab0``, MTU 9000) named in each
agent's config; agents start on their node (``self.netns.node(name).exec_prefix``) with
their own TMPDIR. ``close`` removes the namespaces, links, bridges and holders too.

``store="postgresql"`` puts the head's state in a fresh database on the session's throwaway
PostgreSQL (tests/pg.py) instead of SQLite; the default is ``$HPCBATCH_TEST_STORE`` or
``sqlite``, so ``HPCBATCH_TEST_STORE=postgresql pytest tests/integration/...`` runs the
head tests on PostgreSQL. ``heads=N`` (PostgreSQL only) starts N heads sharing that
database and one state folder (keys, logs): ``head`` becomes active, ``head2``... wait as
standbys; agents and ``self.client`` know every head's endpoint; ``active_head()`` names
the active one, ``kill("head")`` kills one, ``start_head("head")`` brings it back.

The head's state folder is made 0700 (the head refuses a wider one, docs/security.md).
``tls=True`` serves the TCP API over HTTPS with a certificate from a CA made for the cluster:
``self.endpoint`` is ``https://…`` and ``self.ca_bundle`` the CA to verify it with.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, TypeVar

from hpcbatch.client import Client
from hpcbatch.curve import ensure_keypair
from hpcbatch.localcluster import declared_gpus
from hpcbatch.netns import FABRIC_INTERFACE, NetnsCluster, NetnsLayout
from tests import pg

T = TypeVar("T")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], T], timeout: float = 20.0, interval: float = 0.05, what: str = "condition") -> T:
    """Poll ``condition`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last value: {last!r})")


def _let_owners_through(root: Path) -> None:
    """Make ``root`` and its parents under the temp dir searchable (o+x), as a real agent's
    /var/lib/hpcbatch-agent is: jobs run as their owner and must reach their work dirs.
    pytest makes its temp dirs 0700."""
    top = Path(tempfile.gettempdir()).resolve()
    for directory in (root.resolve(), *root.resolve().parents):
        if directory == top or top not in directory.parents:
            break
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            directory.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


class TestCluster:
    """Head + N agents as real processes; see the module docstring."""

    __test__ = False  # a helper, not a pytest test class

    def __init__(self, root: Path, nodes: int = 2, *, heartbeat_s: float = 0.3, liveness: int = 5,
                 kill_grace_s: float = 1.0, node_vcpus: int | None = None, node_memory_mib: int | None = None,
                 agent_extra: str = "", head_extra: str = "", enrolled: Collection[str] | None = None,
                 netns: bool = False, placement_group: str = "rack1", gpus_per_node: int = 0,
                 store: str | None = None, heads: int = 1, lease_ttl_s: float = 2.0, tls: bool = False) -> None:
        self.root = root
        self.tls = tls  # HTTPS on the TCP API, with a CA made here (self.ca_bundle)
        self.ca_bundle: str | None = None
        self.store = store or os.environ.get("HPCBATCH_TEST_STORE") or "sqlite"
        if self.store not in ("sqlite", "postgresql"):
            raise ValueError(f"store must be sqlite or postgresql, not {self.store!r}")
        if heads > 1 and self.store != "postgresql":
            raise ValueError("several heads share one PostgreSQL store: pass store='postgresql'")
        self.head_names = ["head"] + [f"head{i}" for i in range(2, heads + 1)]
        self.store_url: str | None = None
        if self.store == "postgresql":
            why = pg.available()
            if why:
                from tests import prereq

                prereq.skip("postgres", why)
            self.store_url = pg.shared_server().create_database("cluster", migrated=True)
            head_extra = f'store = "{self.store_url}"\nlease_ttl_s = {lease_ttl_s}\n{head_extra}'
        self.lease_ttl_s = lease_ttl_s
        self._head_extra = head_extra
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._all: list[subprocess.Popen[bytes]] = []
        self._agent_dirs: set[Path] = set()  # every agent's state_dir (its memory cgroups' tag)
        self._netns: NetnsCluster | None = None
        self.netns: NetnsLayout | None = None
        if netns:
            # Random tag: clusters of concurrent tests never share a name or a subnet.
            self._netns = NetnsCluster(secrets.token_hex(3), nodes)
            self.netns = self._netns.create()  # removes what it made if it fails half-way
            agent_extra = (f'fabric_interface = "{FABRIC_INTERFACE}"\n'
                           f'placement_group = "{placement_group}"\n{agent_extra}')
        try:
            self._configure(root, nodes, heartbeat_s, liveness, kill_grace_s, node_vcpus,
                            node_memory_mib, agent_extra, head_extra, enrolled, gpus_per_node)
        except BaseException:
            if self._netns is not None:
                self._netns.destroy()
            raise
        self.client = Client(self.socket_endpoint, timeout=10)

    def head_client(self, name: str) -> Client:
        """A client of one head only (no failover to the others)."""
        return Client(self.heads[name]["socket"], timeout=5)

    def _configure(self, root: Path, nodes: int, heartbeat_s: float, liveness: int, kill_grace_s: float,
                   node_vcpus: int | None, node_memory_mib: int | None, agent_extra: str, head_extra: str,
                   enrolled: Collection[str] | None, gpus_per_node: int = 0) -> None:
        _let_owners_through(root)
        # The head's state is private (docs/security.md): the head refuses a wider directory.
        (root / "head").mkdir(mode=0o700, exist_ok=True)
        (root / "head").chmod(0o700)
        tls = ""
        if self.tls:
            from hpcbatch.tls import issue_certificate, make_local_ca

            make_local_ca(root / "tls" / "ca.pem", root / "tls" / "ca.key")
            issue_certificate(root / "tls" / "ca.pem", root / "tls" / "ca.key",
                              root / "head" / "tls.crt", root / "head" / "tls.key")
            self.ca_bundle = str(root / "tls" / "ca.pem")
            tls = f'tls_cert = "{root / "head" / "tls.crt"}"\ntls_key = "{root / "head" / "tls.key"}"\n'
        scheme = "https" if self.tls else "http"
        fleet_host = self.netns.host_mgmt_ip if self.netns else "127.0.0.1"
        # Per head: its HTTP port, API socket, fleet endpoint, config file; the first is "head".
        self.heads: dict[str, dict[str, Any]] = {}
        for name in self.head_names:
            suffix = name.removeprefix("head")
            port = free_port()
            self.heads[name] = {
                "http_port": port,
                "fleet": f"tcp://{fleet_host}:{free_port(fleet_host)}",
                "endpoint": f"{scheme}://127.0.0.1:{port}",
                "api_socket": root / f"api{suffix}.sock",
                "socket": f"unix:{root / f'api{suffix}.sock'}",
                "config": root / f"{name}.toml",
            }
        first = self.heads["head"]
        self.http_port = first["http_port"]
        self.fleet = first["fleet"]
        self.endpoint = ",".join(h["endpoint"] for h in self.heads.values())
        self.api_socket = first["api_socket"]
        self.socket_endpoint = ",".join(h["socket"] for h in self.heads.values())
        fleets = [h["fleet"] for h in self.heads.values()]
        self._agent_head = f'"{self.fleet}"' if len(fleets) == 1 else json.dumps(fleets)
        self.head_public_key = root / "head" / "curve" / "head.key"
        ensure_keypair(root / "head" / "curve" / "head.key_secret", self.head_public_key)
        self.node_keys_dir = root / "head" / "node_keys"
        self.head_config = root / "head.toml"
        for h in self.heads.values():  # the heads share one state folder: keys, node keys, logs
            h["config"].write_text(
                f'state_dir = "{root / "head"}"\nhttp_listen = "127.0.0.1:{h["http_port"]}"\n'
                f'api_socket = "{h["api_socket"]}"\n'
                f'fleet_bind = "{h["fleet"]}"\nheartbeat_interval_s = {heartbeat_s}\nliveness = {liveness}\n'
                f"kill_grace_s = {kill_grace_s}\n{tls}{self._head_extra}\n"
            )
        self._agent_settings = (
            f"heartbeat_interval_s = {heartbeat_s}\nliveness = {liveness}\nkill_grace_s = {kill_grace_s}\n"
            # The job owner for a root caller is root, which agents refuse unless told.
            + ("allow_root_jobs = true\n" if os.geteuid() == 0 and "allow_root_jobs" not in agent_extra else "")
            # close() stops agents with SIGTERM: their jobs go too, unless a test keeps them.
            + ("leave_attempts_on_stop = false\n" if "leave_attempts_on_stop" not in agent_extra else "")
        )
        self.node_names = [f"node{i}" for i in range(1, nodes + 1)]
        for name in self.node_names:
            extra = agent_extra
            if node_vcpus is not None:
                extra += f"\nvcpus = {node_vcpus}"
            if node_memory_mib is not None:
                extra += f"\nmemory_mib = {node_memory_mib}"
            if gpus_per_node:  # declared GPUs, as `hpcbatch cluster up --gpus-per-node`
                extra += f"\ngpus = {json.dumps(declared_gpus(name, gpus_per_node))}"
            self.add_agent(name, enroll=enrolled is None or name in enrolled, extra=extra)

    def add_agent(self, name: str, *, enroll: bool = True, head: str | None = None,
                  head_public_key: Path | None = None, extra: str = "") -> Path:
        """Write ``<name>.toml`` and the agent's key pair; ``enroll`` pre-seeds its key as accepted."""
        keys = ensure_keypair(self.root / name / "curve" / "agent.key_secret", self.root / name / "curve" / "agent.key")
        if enroll:
            accepted = self.node_keys_dir / "accepted"
            accepted.mkdir(parents=True, exist_ok=True)
            (accepted / name).write_bytes(keys.public + b"\n")
        path = self.root / f"{name}.toml"
        self._agent_dirs.add(self.root / name)
        path.write_text(
            f'name = "{name}"\nhead = {json.dumps(head) if head else self._agent_head}\n'
            f'state_dir = "{self.root / name}"\n'
            f'head_public_key = "{head_public_key or self.head_public_key}"\n'
            f"{self._agent_settings}{extra}\n"
        )
        return path

    def agent_public_key(self, name: str) -> str:
        return (self.root / name / "curve" / "agent.key").read_text().strip()

    def node_keys(self) -> dict[str, dict[str, Any]]:
        """The head's node key registry by name (listnodekeys)."""
        return {k["name"]: k for k in self.client.call("/hpcbatch/v1/listnodekeys", {})["nodeKeys"]}

    # ------------------------------------------------------------- processes
    def _spawn(self, name: str, args: list[str], prefix: list[str] | None = None,
               env_extra: dict[str, str] | None = None) -> None:
        log = open(self.root / f"{name}.log", "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(env_extra or {}))
        self.procs[name] = proc = subprocess.Popen(
            [*(prefix or []), sys.executable, *args], stdout=log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )
        self._all.append(proc)
        log.close()

    def start_head(self, name: str = "head", role: str | None = None, env: dict[str, str] | None = None) -> None:
        """Start head ``name``; wait until it answers, as ``role`` (active/standby) if given.

        ``env`` adds variables (the chaos suite's libfaketime clock)."""
        self._spawn(name, ["-m", "hpcbatch.head", "--config", str(self.heads[name]["config"])], env_extra=env)
        if len(self.heads) == 1:
            wait_for(self._head_up, 15, what="the head to answer")
            return
        wait_for(lambda: self.role(name) in ((role,) if role else ("active", "standby")), 15,
                 what=f"{name} to answer as {role or 'a head'}")

    def role(self, name: str) -> str | None:
        """``active``/``standby`` as head ``name`` says, or None if it does not answer."""
        try:
            with self.head_client(name) as c:
                return str(c.describe_head()["role"])
        except Exception:
            return None

    def active_head(self, timeout: float = 15) -> str:
        """The name of the active head (waiting for one, during a takeover)."""
        return wait_for(lambda: next((n for n in self.procs if n in self.heads and self.role(n) == "active"), None),
                        timeout, what="an active head")

    def _head_up(self) -> bool:
        try:
            self.client.list_nodes()
            return True
        except Exception:
            return False

    def start_agent(self, name: str) -> None:
        args = ["-m", "node_agent", "--config", str(self.root / f"{name}.toml")]
        if self.netns is None:
            self._spawn(name, args)
            return
        # On its node; "hosts" sharing one filesystem each get their own TMPDIR.
        tmp = self.root / name / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        self._spawn(name, args, prefix=self.netns.node(name).exec_prefix, env_extra={"TMPDIR": str(tmp)})

    def on_node(self, name: str, argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` on node ``name`` (its network and UTS namespaces) and wait for it."""
        assert self.netns is not None, "on_node needs TestCluster(..., netns=True)"
        return subprocess.run([*self.netns.node(name).exec_prefix, *argv], capture_output=True,
                              text=True, timeout=timeout, check=False)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass
        proc.wait(timeout=15)

    def nodes(self) -> dict[str, dict[str, Any]]:
        return {n["name"]: n for n in self.client.list_nodes()["nodes"]}

    def wait_active(self, names: list[str] | None = None, timeout: float = 15) -> None:
        want = set(names or self.node_names)
        wait_for(
            lambda: want <= {n for n, d in self.nodes().items() if d["state"] == "ACTIVE"},
            timeout, what=f"nodes {sorted(want)} ACTIVE",
        )

    def up(self, queue: bool = True) -> TestCluster:
        self.start_head("head", role="active" if len(self.heads) > 1 else None)
        if len(self.heads) > 1:
            self._hold_first_lease()
        for name in self.head_names[1:]:
            self.start_head(name, role="standby")
        for name in self.node_names:
            self.start_agent(name)
        self.wait_active()
        if queue:
            self.make_default_queue()
        return self

    def _hold_first_lease(self, tries: int = 3) -> None:
        """Tests of several heads expect ``head`` active: before the standbys start, wait until
        its lease has more than half its ``lease_ttl_s`` left (it renews every third). On a
        loaded machine a head stalled past ``lease_ttl_s`` just after taking the lease, a
        standby started at that moment took it over, and the stalled head stopped itself (as
        it must). A head that lost it so is restarted, as its supervisor would."""
        import psycopg

        assert self.store_url is not None
        for _ in range(tries):
            deadline = time.monotonic() + 3 * self.lease_ttl_s
            while time.monotonic() < deadline and self.procs["head"].poll() is None:
                with psycopg.connect(self.store_url) as db:
                    row = db.execute("SELECT EXTRACT(EPOCH FROM expires_at - clock_timestamp()) FROM head_lease").fetchone()
                if row is not None and float(row[0]) > self.lease_ttl_s / 2 and self.role("head") == "active":
                    return
                time.sleep(0.1)
            self.kill("head")
            self.start_head("head", role="active")
        raise AssertionError(f"head did not keep its lease fresh in {tries} tries")

    def make_default_queue(self) -> None:
        """Compute environment and job queue ``default``."""
        self.client.create_compute_environment(computeEnvironmentName="default", type="UNMANAGED")
        self.client.create_job_queue(
            jobQueueName="default", priority=1,
            computeEnvironmentOrder=[{"order": 1, "computeEnvironment": "default"}],
        )

    def close(self) -> None:
        """Stop every process the harness started (SIGTERM, then SIGKILL after 10 s), then
        remove the network namespaces (with anything still in them), links and bridges."""
        try:
            for proc in self._all:
                if proc.poll() is None:
                    proc.terminate()
            deadline = time.monotonic() + 10
            for proc in self._all:
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            self.procs.clear()
            self.client.close()
        finally:
            if self._netns is not None:
                self._netns.destroy()
            _unmount_attempts(self.root)
            _remove_agent_cgroups(self._agent_dirs)

    # ------------------------------------------------------------------ jobs
    def submit(self, command: list[str], **body: Any) -> str:
        body.setdefault("jobName", "test")
        body.setdefault("jobQueue", "default")
        body.setdefault("jobDefinition", "hpcbatch-default")
        overrides = body.setdefault("containerOverrides", {})
        if command:
            overrides.setdefault("command", command)
        return str(self.client.submit_job(**body)["jobId"])

    def job(self, job_id: str) -> dict[str, Any]:
        return self.client.describe_jobs(jobs=[job_id])["jobs"][0]

    def wait_status(self, job_id: str, *statuses: str, timeout: float = 30) -> dict[str, Any]:
        return wait_for(
            lambda: (j := self.job(job_id))["status"] in statuses and j,
            timeout, what=f"job {job_id} to reach {statuses}",
        )

    def logs(self, job_id: str, attempt: int | None = None) -> str:
        body: dict[str, Any] = {"jobId": job_id}
        if attempt is not None:
            body["attempt"] = attempt
        return str(self.client.call("/hpcbatch/v1/getjoblogs", body)["data"])


def _remove_agent_cgroups(state_dirs: Collection[Path]) -> None:
    """Remove the memory cgroups this cluster's agents made (node_agent.cgroups), killing what
    is left in them: an agent stopped with attempts running leaves them to the agent that
    comes back, and in a test none does, so they stayed on the machine (empty, once their
    jobs ended) for good."""
    from node_agent.cgroups import MemoryCgroups, agent_parents, remove_soon

    for state_dir in state_dirs:
        for parent in agent_parents(state_dir):
            # deepest first: an attempt's cgroup may hold a container's (podman's child cgroup)
            for where, _, _ in os.walk(parent, topdown=False):
                MemoryCgroups.kill(Path(where))
                remove_soon(Path(where))


def _unmount_attempts(root: Path) -> None:
    """Detach the nosuid ``attempts`` mounts that SIGKILLed agents left under ``root``
    (node_agent.workdir_mount; an agent undoes its own when it stops)."""
    if os.geteuid() != 0:
        return
    prefix = str(root.resolve()) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in sorted({p for p in points if p.startswith(prefix) and p.endswith("/attempts")}, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)

