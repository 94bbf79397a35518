"""A whole cluster on this machine: one head and N node agents on loopback, no root.

``hpcbatch cluster up`` and the test fixtures use this. Everything lives under
``<home>/cluster/`` (home: ``--home``, ``$HPCBATCH_HOME`` or ``~/.hpcbatch``): the daemons'
config files, their logs, their state folders, and ``cluster.json``, which records the
endpoints and the processes (pid *and* start time, so a recycled pid is never mistaken for
ours and never signalled).

The CLI and the client use the head's Unix socket (``endpoint``, ``unix:...``): there the
kernel names the caller, no keys needed. ``http_endpoint`` is the TCP one (SigV4-signed
requests, boto3): HTTPS, with a certificate from a CA that ``up`` makes once in
``cluster/tls/`` (``ca_bundle``: what the client, the CLI, boto3 and the aws CLI trust);
``up(tls=False)`` (``--no-tls``) serves plain HTTP. The head's state folder is private
(0700), as the head requires (docs/security.md). The control plane is secured as on a real cluster: ``up`` generates the
head's key pair and each agent's (kept in the agent's own state folder, as the agent
itself would on first start), pins the head's public key in every agent's config and
pre-seeds each agent's public key into the head's ``node_keys/accepted/``.

    >>> cluster = LocalCluster("/tmp/hb").up(ClusterShape(nodes=2))   # doctest: +SKIP
    >>> cluster.endpoint                                 # doctest: +SKIP
    'unix:/tmp/hb/cluster/head/api.sock'
    >>> cluster.down()                                   # doctest: +SKIP
    ['head', 'node1', 'node2']

As root, ``up(netns=True)`` gives every node its own network namespace and hostname
(``hpcbatch.netns``): the head binds its fleet endpoint on the management bridge, each
agent runs inside its node's namespaces with ``fabric_interface = "fab0"``, and
``cluster.json`` records the layout so that ``down`` removes exactly those namespaces,
links, bridges and holder processes.

Supervision, as systemd gives a real cluster: ``up`` also starts a small supervisor
(``hpcbatch.localsupervisor``, recorded as ``supervisor``) that
restarts an agent that dies (a restarted agent kills or reports what its predecessor left
running, node_agent.runner.adopt_orphans), waiting longer after each quick death. ``up``
on a recorded cluster restarts whatever of it is dead (the head after ``kill -9``, the
supervisor) and keeps what lives. ``status`` and ``down`` find the daemons by what they
are (a process whose ``--config`` is this cluster's file), not only by recorded pid, so a
daemon restarted by hand is seen and stopped too. One lock file (``cluster.lock``) keeps
``up`` and the supervisor from starting the same daemon twice.

``up(store="postgresql://…", heads=2)`` keeps the state in that PostgreSQL database
instead of SQLite, and starts heads ``head``, ``head2``, … on it: one active, the others
standbys (docs/ha.md). They share what a real deployment shares on a network filesystem
(the head's key pair, the node key registry and the job output folder), each agent knows
every head's fleet endpoint, and ``endpoint`` lists every head's socket, comma-separated,
so the CLI and the client follow the active one.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psutil

from hpcbatch.client import Client
from hpcbatch.curve import ensure_keypair
from hpcbatch.errors import HpcbatchError
from hpcbatch.localrecord import (
    SUPERVISOR_MODULE,
    ClusterShape,
    alive,
    find_supervisor,
    next_restart,
    record_of,
    running_by_config,
)
from hpcbatch.netns import (
    FABRIC_INTERFACE,
    NetnsCluster,
    NetnsError,
    NetnsLayout,
    destroy_leftovers,
    require_root,
    tag_for,
)
from hpcbatch.store.migrate import redact

DEFAULT_NAME = "default"  # the compute environment and the job queue `cluster up` creates
PLACEMENT_GROUP = "rack1"  # every namespaced node: one switch, as a gang would want
READY_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
MAX_UNIX_PATH = 107
class LocalClusterError(HpcbatchError):
    """The local cluster could not be started or stopped; the message says where to look."""


def default_home() -> str:
    return os.environ.get("HPCBATCH_HOME") or os.path.join(os.path.expanduser("~"), ".hpcbatch")


def _toml_str(value: str) -> str:
    """A TOML basic string (JSON's escapes are valid TOML)."""
    return json.dumps(value)


def declared_gpus(node: str, count: int) -> list[str]:
    """The GPU ids a local node declares: ``GPU-<node>-0`` .. ``GPU-<node>-<count-1>``."""
    return [f"GPU-{node}-{j}" for j in range(count)]


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _tail(path: str, lines: int = 8) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class ClusterStatus:
    """What ``cluster status`` reports."""

    home: str
    recorded: bool
    endpoint: str | None = None
    processes: dict[str, bool] = field(default_factory=dict)  # name -> alive
    nodes: list[dict[str, Any]] | None = None  # from listnodes; None if the head didn't answer
    error: str | None = None
    netns: NetnsLayout | None = None  # the nodes' namespaces and addresses, when up --netns
    supervised: bool = False  # the supervisor that restarts dead agents runs

    @property
    def running(self) -> bool:
        return self.recorded and bool(self.processes) and all(self.processes.values())


class LocalCluster:
    """The local cluster recorded under ``<home>/cluster``."""

    # What `python -m` runs for the head and for each agent (tests substitute stand-ins).
    HEAD_MODULE = "hpcbatch.head"
    AGENT_MODULE = "node_agent"

    def __init__(self, home: str | None = None) -> None:
        self.home = os.path.abspath(os.path.expanduser(home or default_home()))
        self.dir = os.path.join(self.home, "cluster")
        self.record_path = os.path.join(self.dir, "cluster.json")
        self._children: list[subprocess.Popen[bytes]] = []
        # What the last ``up`` of a recorded cluster restarted (None: it started a new one).
        self.restarted: list[str] | None = None

    # -- the record --------------------------------------------------------------------------

    def record(self) -> dict[str, Any] | None:
        try:
            with open(self.record_path, encoding="utf-8") as f:
                doc = json.load(f)
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    def _write_record(self, doc: dict[str, Any]) -> None:
        tmp = f"{self.record_path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.record_path)

    @property
    def endpoint(self) -> str | None:
        doc = self.record()
        return str(doc["endpoint"]) if doc and doc.get("endpoint") else None

    @property
    def http_endpoint(self) -> str | None:
        """The head's TCP endpoint (requests there are SigV4-signed)."""
        doc = self.record()
        return str(doc["http_endpoint"]) if doc and doc.get("http_endpoint") else None

    def client(self, timeout: float = 5) -> Client:
        endpoint = self.endpoint
        if endpoint is None:
            raise LocalClusterError(f"no local cluster in {self.dir}: run 'hpcbatch cluster up'")
        return Client(endpoint, timeout=timeout)

    def log_path(self, name: str) -> str:
        return os.path.join(self.dir, f"{name}.log")

    # -- up ----------------------------------------------------------------------------------

    @property
    def netns_layout(self) -> NetnsLayout | None:
        """The recorded namespaces of a cluster started with ``netns=True``."""
        doc = self.record()
        return NetnsLayout.from_dict(doc["netns"]) if doc and doc.get("netns") else None

    @property
    def netns_tag(self) -> str:
        """This home's tag: every namespace, link and bridge of its cluster carries it."""
        return tag_for(self.home)

    def up(self, shape: ClusterShape | None = None, timeout: float = READY_TIMEOUT_S) -> LocalCluster:
        """Start a head and ``shape.nodes`` agents, wait until all are ACTIVE, create CE and queue.

        A recorded cluster of which anything still runs is not started again: what of it
        is dead is restarted and what lives is kept (options left out mean "as recorded";
        ones that differ from the record are refused)."""
        shape = shape or ClusterShape()
        existing = self.record()
        if existing and self._any_alive(existing):
            self._check_shape(existing, shape)
            self._restart_dead(timeout)
            return self
        shape = shape.with_defaults()
        head_names = self._check_new(shape)
        if existing:
            self.down()  # what a crashed cluster left: its namespaces go before ours are made
        os.makedirs(self.dir, exist_ok=True)
        record: dict[str, Any] = {"processes": {}, "nodes": shape.nodes, "heads": head_names,
                                  "store": redact(shape.store) if shape.store else "sqlite",
                                  "gpus_per_node": shape.gpus_per_node}
        try:
            layout = self._create_netns(shape.nodes or 0, record) if shape.netns else None
            self._up(shape, timeout, record, head_names, layout)
        except BaseException as e:
            self._after_failed_up(e)
            raise
        return self

    def _check_new(self, shape: ClusterShape) -> list[str]:
        """Refuse a shape that cannot start here (``--netns`` needs root; the head's socket
        path must fit); the heads' names."""
        problem = shape.problem()
        if problem is not None:
            raise LocalClusterError(problem)
        if shape.netns:
            try:
                require_root()
            except NetnsError as e:
                raise LocalClusterError(f"--netns: {e}") from None
        head_names = head_names_for(shape.heads or 1)
        api_socket = os.path.join(self.dir, head_names[-1], "api.sock")  # the longest
        if len(os.fsencode(api_socket)) > MAX_UNIX_PATH:
            raise LocalClusterError(
                f"the head's socket {api_socket} would be longer than {MAX_UNIX_PATH} bytes: "
                "use a shorter --home or $HPCBATCH_HOME"
            )
        return head_names

    def _after_failed_up(self, e: BaseException) -> None:
        """Stop what a failed ``up`` started; our errors become a LocalClusterError saying where
        to look (anything else goes on as it is)."""
        try:
            self.down()
        except LocalClusterError as cleanup:  # keep the first error; say what is left
            e.add_note(str(cleanup))
        if isinstance(e, NetnsError):
            raise LocalClusterError(f"--netns: {e}") from e
        if isinstance(e, HpcbatchError | OSError):
            raise LocalClusterError(f"{e}\nlogs: {os.path.join(self.dir, '*.log')}") from e

    def _create_netns(self, nodes: int, record: dict[str, Any]) -> NetnsLayout:
        """The nodes' namespaces, recorded before anything else starts (``down`` undoes them)."""
        destroy_leftovers(self.netns_tag)  # a crash's remains; the tag is this home's alone
        cluster = NetnsCluster(self.netns_tag, nodes)
        record["netns"] = cluster.plan().to_dict()
        self._write_record(record)  # a create killed half-way is still undone by `down`
        layout = cluster.create()
        record["netns"] = layout.to_dict()
        self._write_record(record)
        return layout

    def _up(
        self, shape: ClusterShape, timeout: float, record: dict[str, Any], head_names: list[str],
        layout: NetnsLayout | None,
    ) -> None:
        """Configs, heads, agents (each on its node when ``layout``), readiness, CE and queue."""
        nodes, gpus_per_node, store, tls = shape.nodes or 0, shape.gpus_per_node or 0, shape.store or "", shape.tls
        # The fleet endpoint on the management bridge when nodes have their own namespaces;
        # the HTTP API stays on loopback (and the Unix socket).
        host = layout.host_mgmt_ip if layout else "127.0.0.1"
        taken: set[int] = set()

        def port(on: str) -> int:
            found = _free_port(on)
            while found in taken:
                found = _free_port(on)
            taken.add(found)
            return found

        head_key = self._head_keys()
        tls_settings = self._tls(record) if tls else ""
        configs: dict[str, str] = {}
        sockets, https, fleets = [], [], []
        for name in head_names:
            http_port, fleet = port("127.0.0.1"), f"tcp://{host}:{port(host)}"
            api_socket = os.path.join(self.dir, name, "api.sock")
            configs[name] = self._write_head_config(http_port, fleet, api_socket, name, store, tls_settings)
            sockets.append(f"unix:{api_socket}")
            https.append(f"{'https' if tls else 'http'}://127.0.0.1:{http_port}")
            fleets.append(fleet)
        for i in range(1, nodes + 1):
            configs[f"node{i}"] = self._write_node_config(
                f"node{i}", fleets, head_key, netns=layout is not None, gpus=declared_gpus(f"node{i}", gpus_per_node)
            )

        # Several heads: the client tries each in turn and stays with the active one.
        endpoint = ",".join(sockets)
        record.update(endpoint=endpoint, socket_endpoint=endpoint, http_endpoint=",".join(https))
        for name, config in configs.items():
            if name in head_names:
                record["processes"][name] = self._start(name, self.HEAD_MODULE, config)
                if name == "head" and len(head_names) > 1:
                    # The others only once the first is active: it alone creates the schema
                    # in a brand-new database, and it is the active head (`admin heads`).
                    self._wait_head(sockets[0], ("active",), timeout)
            else:
                prefix = layout.node(name).exec_prefix if layout else []
                record["processes"][name] = self._start(name, self.AGENT_MODULE, config, prefix)
            self._write_record(record)  # recorded at once, so `down` can stop a partial start
        self._wait_ready(endpoint, nodes, timeout)
        for standby in sockets[1:]:
            self._wait_head(standby, ("active", "standby"), timeout)
        self._ensure_defaults(endpoint)
        record["supervisor"] = self._start_supervisor()
        self._write_record(record)

    def _head_keys(self) -> str:
        """The head's key pair (made on the first ``up``, kept after); returns the public key's path."""
        _private_dir(os.path.join(self.dir, "head"))  # the head refuses a state folder others can read
        curve = os.path.join(self.dir, "head", "curve")
        ensure_keypair(os.path.join(curve, "head.key_secret"), os.path.join(curve, "head.key"))
        return os.path.join(curve, "head.key")

    @property
    def ca_bundle(self) -> str | None:
        """The local CA's certificate, which the head's HTTPS certificate chains to (None: plain HTTP)."""
        doc = self.record()
        return str(doc["ca_bundle"]) if doc and doc.get("ca_bundle") else None

    def _tls(self, record: dict[str, Any]) -> str:
        """The local CA (made on the first ``up``, kept after), a fresh certificate for the
        heads (loopback and this host's name); returns the heads' config lines for it."""
        from hpcbatch.tls import issue_certificate, make_local_ca

        ca_dir = os.path.join(self.dir, "tls")
        ca, ca_key = os.path.join(ca_dir, "ca.pem"), os.path.join(ca_dir, "ca.key")
        make_local_ca(ca, ca_key, name=f"hpcbatch local CA ({self.home})")
        cert, key = os.path.join(self.dir, "head", "tls.crt"), os.path.join(self.dir, "head", "tls.key")
        issue_certificate(ca, ca_key, cert, key)
        record["ca_bundle"] = ca
        return f"tls_cert = {_toml_str(cert)}\ntls_key = {_toml_str(key)}\n"

    def _enroll(self, name: str) -> None:
        """The agent's key pair in its own state folder, its public key pre-seeded as accepted."""
        curve = os.path.join(self.dir, name, "curve")
        pair = ensure_keypair(os.path.join(curve, "agent.key_secret"), os.path.join(curve, "agent.key"))
        accepted = os.path.join(self.dir, "head", "node_keys", "accepted")
        os.makedirs(accepted, exist_ok=True)
        path = os.path.join(accepted, name)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(pair.public + b"\n")
        os.replace(tmp, path)

    def _write_head_config(
        self, http_port: int, fleet: str, api_socket: str, name: str = "head", store: str = "", tls: str = ""
    ) -> str:
        path = os.path.join(self.dir, f"{name}.toml")
        first = os.path.join(self.dir, "head")
        shared = ""
        if name != "head":
            # What heads on several machines share on a network filesystem: the first head's
            # key pair (agents pin its public key), its node key registry, its job output.
            shared = (
                f"curve_secret_key = {_toml_str(os.path.join(first, 'curve', 'head.key_secret'))}\n"
                f"curve_public_key = {_toml_str(os.path.join(first, 'curve', 'head.key'))}\n"
                f"node_keys_dir = {_toml_str(os.path.join(first, 'node_keys'))}\n"
                # The key that seals access keys' secrets in the shared store: one for all heads.
                f"secrets_key_file = {_toml_str(os.path.join(first, 'secrets.key'))}\n"
            )
            _private_dir(os.path.join(first, "logs"))
            _private_dir(os.path.join(self.dir, name))
            logs = os.path.join(self.dir, name, "logs")
            if not os.path.islink(logs):
                os.symlink(os.path.join(first, "logs"), logs)
        # 0600: the store URL may carry a password.
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as f:
            f.write(
                f"state_dir = {_toml_str(os.path.join(self.dir, name))}\n"
                f'http_listen = "127.0.0.1:{http_port}"\n'
                f"api_socket = {_toml_str(api_socket)}\n"
                f"fleet_bind = {_toml_str(fleet)}\n"
                + (f"store = {_toml_str(store)}\n" if store else "")
                + shared
                + tls
            )
        return path

    def _write_node_config(
        self, name: str, fleets: list[str], head_key: str, netns: bool = False, gpus: list[str] | None = None
    ) -> str:
        self._enroll(name)
        # The newest head epoch the agent saw (node_agent/head_epoch.py) belongs to the last
        # cluster's store: no head of it runs any more (up refuses while one does), and the
        # new store's epochs start again (SQLite: 0), so the agent must not refuse them.
        try:
            os.unlink(os.path.join(self.dir, name, "head-epoch.json"))
        except FileNotFoundError:
            pass
        path = os.path.join(self.dir, f"{name}.toml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(
                f"name = {_toml_str(name)}\n"
                f"head = {_toml_str(fleets[0]) if len(fleets) == 1 else '[' + ', '.join(map(_toml_str, fleets)) + ']'}\n"
                f"head_public_key = {_toml_str(head_key)}\n"
                f"compute_environment = {_toml_str(DEFAULT_NAME)}\n"
                f"state_dir = {_toml_str(os.path.join(self.dir, name))}\n"
                + (f"gpus = [{', '.join(_toml_str(g) for g in gpus)}]\n" if gpus else "")
                # Jobs of a root caller are owned by root; agents run them only when told.
                + ("allow_root_jobs = true\n" if os.geteuid() == 0 else "")
                # `cluster down` stops agents with SIGTERM and means their jobs too; an agent
                # that died is restarted by the supervisor and re-adopts what it left.
                + "leave_attempts_on_stop = false\n"
                + (
                    f'fabric_interface = "{FABRIC_INTERFACE}"\n'
                    f"placement_group = {_toml_str(PLACEMENT_GROUP)}\n"
                    if netns
                    else ""
                )
            )
        return path

    def _start(self, name: str, module: str, config: str, prefix: list[str] | None = None) -> dict[str, Any]:
        """Start a daemon (``prefix``: the argv that puts it on its node); record pid and start time."""
        env = None
        if prefix:
            # "Hosts" sharing one filesystem: each its own TMPDIR (Open MPI session dirs clash).
            tmp = os.path.join(self.dir, name, "tmp")
            os.makedirs(tmp, exist_ok=True)
            env = dict(os.environ, TMPDIR=tmp)
        argv = [*(prefix or []), sys.executable, "-m", module, "--config", config]
        # 0600: what the daemons log (job names, commands, addresses) is the cluster owner's.
        with os.fdopen(os.open(self.log_path(name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                env=env,
                start_new_session=True,  # survives the terminal that ran `cluster up`
            )
        self._children.append(proc)
        try:
            create_time = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            create_time = 0.0
        # The module too: the supervisor restarts exactly what was started (tests' stand-ins).
        return {"pid": proc.pid, "create_time": create_time, "module": module}

    def _wait_ready(self, endpoint: str, nodes: int, timeout: float) -> None:
        """Until the head answers and lists ``nodes`` ACTIVE nodes; fail fast if one exits."""
        deadline = time.monotonic() + timeout
        why = "the head did not answer"
        with Client(endpoint, timeout=2) as client:
            while True:
                self._fail_if_exited()
                try:
                    listed = client.all_nodes()
                    active = [n for n in listed if n.get("state") == "ACTIVE"]
                    if len(active) >= nodes:
                        return
                    why = f"{len(active)} of {nodes} nodes ACTIVE"
                except HpcbatchError as e:
                    why = str(e)
                if time.monotonic() >= deadline:
                    raise LocalClusterError(f"the cluster was not ready after {timeout:g} s: {why}")
                time.sleep(0.1)

    def _wait_head(self, endpoint: str, roles: tuple[str, ...], timeout: float) -> None:
        """Until the head at ``endpoint`` answers in one of ``roles``; fail fast if it exits."""
        deadline = time.monotonic() + timeout
        with Client(endpoint, timeout=2) as client:
            while True:
                self._fail_if_exited()
                try:
                    if client.describe_head().get("role") in roles:
                        return
                except HpcbatchError:
                    pass
                if time.monotonic() >= deadline:
                    raise LocalClusterError(f"the head at {endpoint} was not {' or '.join(roles)} after {timeout:g} s")
                time.sleep(0.1)

    def _fail_if_exited(self) -> None:
        for proc in self._children:
            if proc.poll() is not None:
                name = self._name_of(proc.pid)
                raise LocalClusterError(
                    f"{name} exited with code {proc.returncode} while starting; "
                    f"last lines of {self.log_path(name)}:\n{_tail(self.log_path(name))}"
                )

    def _name_of(self, pid: int) -> str:
        for name, p in ((self.record() or {}).get("processes") or {}).items():
            if p.get("pid") == pid:
                return str(name)
        return "head"

    def _ensure_defaults(self, endpoint: str) -> None:
        """Compute environment and job queue `default`, unless they exist already."""
        with Client(endpoint, timeout=10) as client:
            ces = client.describe_compute_environments(computeEnvironments=[DEFAULT_NAME])
            if not ces.get("computeEnvironments"):
                client.create_compute_environment(
                    computeEnvironmentName=DEFAULT_NAME, type="UNMANAGED", state="ENABLED"
                )
            queues = client.describe_job_queues(jobQueues=[DEFAULT_NAME])
            if not queues.get("jobQueues"):
                client.create_job_queue(
                    jobQueueName=DEFAULT_NAME,
                    priority=1,
                    state="ENABLED",
                    computeEnvironmentOrder=[{"order": 1, "computeEnvironment": DEFAULT_NAME}],
                )

    # -- supervision -------------------------------------------------------------------------

    @contextmanager
    def _lock(self) -> Iterator[None]:
        """Held by ``up`` and the supervisor while they look for dead daemons and start them."""
        os.makedirs(self.dir, exist_ok=True)
        with open(os.path.join(self.dir, "cluster.lock"), "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def config_path(self, name: str) -> str:
        """The config file daemon ``name`` runs with: what identifies it among processes."""
        return os.path.join(self.dir, f"{name}.toml")

    def _live(self, doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """The recorded daemons that run, by recorded pid or found by their config file."""
        records: dict[str, dict[str, Any]] = doc.get("processes") or {}
        live = {name: p for name, p in records.items() if alive(p)}
        if len(live) < len(records):
            found = running_by_config()
            for name in records.keys() - live.keys():
                proc = found.get(self.config_path(name))
                if proc is not None:
                    live[name] = {**records[name], **record_of(proc)}
        return live

    def _any_alive(self, doc: dict[str, Any]) -> bool:
        return bool(self._live(doc)) or self._supervisor(doc) is not None

    def _check_shape(self, doc: dict[str, Any], shape: ClusterShape) -> None:
        """Refuse options that differ from the running cluster's: changing it takes a ``down``."""
        differs = shape.differences(doc)
        if differs:
            raise LocalClusterError(
                f"a local cluster is already running in {self.dir} ({doc.get('endpoint')}), not as asked: "
                f"{'; '.join(differs)}. 'hpcbatch cluster up' without these options restarts what of it "
                "is dead; to change it run 'hpcbatch cluster down' first"
            )

    def _argv_prefix(self, name: str, doc: dict[str, Any]) -> list[str]:
        """What puts agent ``name`` on its node (its namespaces), when the cluster has them."""
        if _is_head(name) or not doc.get("netns"):
            return []
        return NetnsLayout.from_dict(doc["netns"]).node(name).exec_prefix

    def _restart(self, name: str, record: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
        module = record.get("module") or (self.HEAD_MODULE if _is_head(name) else self.AGENT_MODULE)
        return self._start(name, str(module), self.config_path(name), self._argv_prefix(name, doc))

    def restart_dead(self) -> list[str]:
        """Start the recorded daemons that are dead (adopting any found running); return their names."""
        with self._lock():
            doc = self.record()
            if doc is None:
                return []
            live = self._live(doc)
            records: dict[str, dict[str, Any]] = doc.get("processes") or {}
            started = []
            for name in sorted(records, key=lambda n: not _is_head(n)):  # heads first
                if name in live:
                    records[name] = live[name]  # perhaps found under a new pid
                else:
                    records[name] = self._restart(name, records[name], doc)
                    started.append(name)
            self._write_record(doc)
        return started

    def _restart_dead(self, timeout: float) -> None:
        """``up`` on a recorded cluster: the dead restarted, the living kept, then ready."""
        try:
            started = self.restarted = self.restart_dead()
            doc = self.record() or {}
            endpoint = str(doc.get("endpoint") or "")
            if started:
                self._wait_ready(endpoint, int(doc.get("nodes") or 0), timeout)
                self._ensure_defaults(endpoint)
            with self._lock():
                doc = self.record() or {}
                if self._supervisor(doc) is None:
                    doc["supervisor"] = self._start_supervisor()
                    self._write_record(doc)
        except (HpcbatchError, OSError) as e:
            if isinstance(e, LocalClusterError):
                raise
            raise LocalClusterError(f"{e}\nlogs: {os.path.join(self.dir, '*.log')}") from e

    def _start_supervisor(self) -> dict[str, Any]:
        with open(self.log_path("supervisor"), "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", SUPERVISOR_MODULE, "supervise", self.home],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=self.dir,
                start_new_session=True,
            )
        self._children.append(proc)
        try:
            return record_of(psutil.Process(proc.pid))
        except psutil.Error:
            return {"pid": proc.pid, "create_time": 0.0}

    def _supervisor(self, doc: dict[str, Any]) -> dict[str, Any] | None:
        """This cluster's live supervisor: the recorded one, or one found by its command line."""
        recorded = doc.get("supervisor")
        if isinstance(recorded, dict) and alive(recorded):
            return recorded
        found = find_supervisor(self.home)
        return record_of(found) if found is not None else None

    def tend(self, restarts: dict[str, list[float]], now: float) -> list[str]:
        """One look of the supervisor: restart the agents that died; return their names.

        ``restarts``: per agent, when it was last (re)started and its quick deaths in a row;
        an agent that keeps dying waits longer each time (``next_restart``)."""
        with self._lock():
            doc = self.record()
            if doc is None:
                return []
            records: dict[str, dict[str, Any]] = doc.get("processes") or {}
            agents = {n: p for n, p in records.items() if not _is_head(n)}
            dead = [n for n, p in agents.items() if not alive(p)]
            if not dead:
                return []
            found = running_by_config()
            started = []
            for name in dead:
                proc = found.get(self.config_path(name))
                if proc is not None:  # restarted by someone else: adopt it
                    records[name] = {**records[name], **record_of(proc)}
                    continue
                last_start, quick, due = restarts.get(name, [float("-inf"), 0.0, 0.0])
                if due == 0.0:  # just found dead: when to restart it
                    quick, due = next_restart(last_start, int(quick), now)
                    restarts[name] = [last_start, quick, due]
                if now < due:
                    continue
                records[name] = self._restart(name, records[name], doc)
                restarts[name] = [now, quick, 0.0]
                started.append(name)
            self._write_record(doc)
        self._reap()
        return started

    # -- status and down ---------------------------------------------------------------------

    def status(self) -> ClusterStatus:
        doc = self.record()
        if doc is None:
            return ClusterStatus(home=self.home, recorded=False)
        live = self._live(doc)
        st = ClusterStatus(
            home=self.home,
            recorded=True,
            endpoint=doc.get("endpoint"),
            processes={name: name in live for name in doc.get("processes") or {}},
            netns=NetnsLayout.from_dict(doc["netns"]) if doc.get("netns") else None,
            supervised=self._supervisor(doc) is not None,
        )
        if st.endpoint and any(alive for name, alive in st.processes.items() if _is_head(name)):
            try:
                with Client(st.endpoint, timeout=5) as client:
                    st.nodes = client.all_nodes()
            except HpcbatchError as e:
                st.error = str(e)
        return st

    def down(self, timeout: float = STOP_TIMEOUT_S) -> list[str]:
        """Stop exactly the recorded processes, then remove the recorded namespaces (with
        whatever still runs in them); return the names of the processes that were running."""
        doc = self.record() or {}
        supervisor = self._supervisor(doc)
        if supervisor is not None:  # first, or it would restart the agents stopped below
            _signal(supervisor, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while alive(supervisor) and time.monotonic() < deadline:
                self._reap()
                time.sleep(0.05)
            if alive(supervisor):
                _signal(supervisor, signal.SIGKILL)
        live = self._live(doc)
        # Agents signalled before the heads, so they can still say goodbye to them.
        order = sorted(live, key=_is_head)
        for name in order:
            _signal(live[name], signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(alive(live[n]) for n in order):
            self._reap()
            time.sleep(0.05)
        for name in order:
            if alive(live[name]):
                # Its whole session: the agent's job processes go with it.
                _signal(live[name], signal.SIGKILL, group=True)
        self._reap(wait=True)
        if doc.get("netns"):
            try:
                NetnsCluster.from_layout(NetnsLayout.from_dict(doc["netns"])).destroy()
            except NetnsError as e:  # the record stays, so `down` can be run again
                raise LocalClusterError(f"cluster down: {e}") from e
        try:
            os.unlink(self.record_path)
        except FileNotFoundError:
            pass
        return order

    def _reap(self, wait: bool = False) -> None:
        """Collect our own exited children (else they linger as zombies in a test run)."""
        for proc in self._children:
            try:
                proc.wait(timeout=1) if wait else proc.poll()
            except subprocess.TimeoutExpired:
                pass
        self._children = [p for p in self._children if p.returncode is None]


def _private_dir(path: str) -> None:
    """``path`` as a head wants its state (0700), made or tightened: the local cluster is ours."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)


def head_names_for(heads: int) -> list[str]:
    """The local heads' names: ``head``, ``head2``, ``head3``, …"""
    return ["head"] + [f"head{i}" for i in range(2, heads + 1)]


def _is_head(name: str) -> bool:
    return name == "head" or (name.startswith("head") and name[4:].isdigit())


def _signal(record: dict[str, Any], sig: signal.Signals, group: bool = False) -> None:
    pid = int(record["pid"])
    try:
        if group and os.getpgid(pid) == pid:  # a session leader we started
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
