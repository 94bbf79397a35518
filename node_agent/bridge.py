"""The agent's side of the MPI launcher bridge: mpirun's remote daemons without SSH.

Theory of operation (DESIGN.md, "Multi-node parallel jobs"):

* A multi-node attempt gets, in its private work dir, a hostfile and the launcher script
  (``node_agent/launcher.py``), and an environment that points Open MPI/PRRTE
  (``plm_ssh_agent``) and MPICH Hydra (``HYDRA_LAUNCHER_EXEC``) at that launcher and at the
  fabric (``job_environment``).
* mpirun runs ``launcher HOST COMMAND``; the launcher connects to this server (a Unix
  socket, mode 0666, in the agent's state dir) and sends ``{secret, host, command}``.
* The server checks, before anything leaves the node: the secret names a live attempt here
  (constant-time compare), the peer's uid (SO_PEERCRED) is that attempt's owner (or root),
  HOST is one of the job's nodes. Then it sends ``LaunchRequest`` to the head, which starts
  the command on HOST inside the job's attempt there (``StartTask``) and answers
  ``LaunchDone`` when it ends; a launch to this very node starts here, without the head.
* The exit code goes back on the launcher's connection; the launcher exits with it.

What is refused gets one line back (the launcher prints it and exits 255, as ssh would).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import socket
import struct
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hpcbatch import protocol as p
from node_agent import launcher, taskstream

log = logging.getLogger(__name__)

SOCKET_NAME = "launch.sock"
HOSTFILE_NAME = ".hpcbatch-hostfile"  # Open MPI/PRRTE form: "host slots=N"
HYDRA_HOSTFILE_NAME = ".hpcbatch-hostfile.hydra"  # MPICH Hydra form: "host:N"
LAUNCHER_NAME = ".hpcbatch-launcher"
RUN_NAME = ".hpcbatch-run"  # `hpcbatch run` inside the job, and its tasks (node_agent/taskstream.py)
_REQUEST_LIMIT = 1024 * 1024  # a daemon's command line is a few KiB
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid

# (attempt_id, launch_id, command, on_exit(launch_id, exit_code, reason)) -> error or None;
# Runner.start_task has this shape.
LocalStart = Callable[[str, str, str, Callable[[str, int | None, str | None], None]], str | None]


@dataclass(frozen=True, slots=True)
class LaunchGrant:
    """What one live multi-node attempt on this node may launch, and who may ask."""

    attempt_id: str
    job_id: str  # the parent job (no "#index")
    secret: str
    uid: int  # the attempt's owner
    hosts: tuple[str, ...]


def parent_job_id(job_id: str) -> str:
    """``JOBID#3`` (a multi-node child) -> ``JOBID``."""
    return job_id.split("#", 1)[0]


def socket_path(state_dir: Path) -> Path:
    """Where the bridge listens: in the state dir, unless that path is too long for AF_UNIX."""
    path = state_dir / SOCKET_NAME
    if len(os.fsencode(path)) < 100:  # sun_path holds 108 bytes with the NUL
        return path
    tag = hashlib.sha1(os.fsencode(state_dir.resolve())).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"hpcbatch-{tag}-{SOCKET_NAME}"


# ------------------------------------------------------------------ job files, environment
def slots_per_node(environment: dict[str, str]) -> int:
    """``HPCBATCH_SLOTS_PER_NODE`` (set by the head), 1 when absent or not a positive int."""
    try:
        return max(1, int(environment.get("HPCBATCH_SLOTS_PER_NODE", "1")))
    except ValueError:
        return 1


def job_files(hosts: list[str], slots: int) -> tuple[tuple[str, bytes, int], ...]:
    """The files a multi-node attempt finds in its work dir: (name, data, mode)."""
    return (
        (HOSTFILE_NAME, "".join(f"{h} slots={slots}\n" for h in hosts).encode(), 0o600),
        (HYDRA_HOSTFILE_NAME, "".join(f"{h}:{slots}\n" for h in hosts).encode(), 0o600),
        (LAUNCHER_NAME, launcher.script_text().encode(), 0o700),
        (RUN_NAME, launcher.script_text(taskstream.__file__).encode(), 0o700),
    )


@dataclass(frozen=True, slots=True)
class MultinodeLaunch:
    """Where a multi-node attempt's launcher finds this node: its hosts, files, socket, secret."""

    hosts: list[str]
    work_dir: Path  # the owner's private work dir, where job_files go
    launch_socket: Path
    secret: str
    owner_is_root: bool = False


def job_environment(launch: MultinodeLaunch, *, environment: dict[str, str], fabric: p.NodeFacts) -> dict[str, str]:
    """Variables a multi-node attempt gets on top of ``environment`` (which they never replace).

    The bridge's own (HPCBATCH_*, the launcher settings) are always set: ssh between nodes
    does not work here. Hostfile defaults and fabric tuning are set only where the job's
    environment has no value of its own, so a job definition can still choose.
    """
    hosts, work_dir = launch.hosts, launch.work_dir
    hostfile = str(work_dir / HOSTFILE_NAME)
    agent = str(work_dir / LAUNCHER_NAME)
    forced = {
        "HPCBATCH_HOSTFILE": hostfile,
        "HPCBATCH_NODES": ",".join(hosts),
        "HPCBATCH_LAUNCHER": agent,
        "HPCBATCH_LAUNCH_SOCKET": str(launch.launch_socket),
        "HPCBATCH_LAUNCH_SECRET": launch.secret,
        # `hpcbatch run` inside the job; its tasks connect back to this node's address.
        "HPCBATCH_RUN": str(work_dir / RUN_NAME),
        "HPCBATCH_NODE_ADDRESS": fabric.fabric_address or (fabric.addresses[0] if fabric.addresses else "127.0.0.1"),
        # Open MPI 5 / PRRTE: mpirun calls our launcher where it would call ssh.
        "PRTE_MCA_plm_ssh_agent": agent,
        "OMPI_MCA_plm_ssh_agent": agent,
        # Every daemon is started from the main node: the launcher's path and secret are
        # that node's, so a daemon on another node must not launch further daemons.
        "PRTE_MCA_plm_ssh_no_tree_spawn": "1",
        # MPICH Hydra: -launcher ssh -launcher-exec LAUNCHER.
        "HYDRA_LAUNCHER": "ssh",
        "HYDRA_LAUNCHER_EXEC": agent,
    }
    defaults = {
        # A plain `mpirun app` / `mpiexec app` runs on exactly the job's nodes.
        "PRTE_MCA_prte_default_hostfile": hostfile,
        "HYDRA_HOST_FILE": str(work_dir / HYDRA_HOSTFILE_NAME),
        **fabric_environment(fabric),
    }
    if launch.owner_is_root:
        defaults |= {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    added = {k: v for k, v in defaults.items() if k not in environment}
    return added | forced


def fabric_environment(fabric: p.NodeFacts) -> dict[str, str]:
    """MPI/NCCL/Gloo/UCX/libfabric settings that put a job's traffic on the node's fabric.

    The interface carries both the bulk traffic and Open MPI's out-of-band channel: oob
    must reach the main node, and the fabric network joins every node, so that is safe.
    """
    env: dict[str, str] = {}
    iface = fabric.fabric_interface
    if iface:
        for name in (
            "OMPI_MCA_btl_tcp_if_include",
            "OMPI_MCA_oob_tcp_if_include",
            "PRTE_MCA_oob_tcp_if_include",
            "NCCL_SOCKET_IFNAME",
            "GLOO_SOCKET_IFNAME",
        ):
            env[name] = iface
    devices = fabric.fabric_devices
    if fabric.fabric_kind == "efa":
        # Open MPI reaches EFA through libfabric (pml cm / mtl ofi).
        env |= {"FI_PROVIDER": "efa", "FI_EFA_USE_DEVICE_RDMA": "1", "OMPI_MCA_pml": "cm", "OMPI_MCA_mtl": "ofi"}
    elif fabric.fabric_kind == "infiniband" and devices:
        # InfiniBand/RoCE: UCX is Open MPI's transport there.
        env["NCCL_IB_HCA"] = ",".join(devices)
        env["UCX_NET_DEVICES"] = ",".join(f"{d}:1" for d in devices)
        env["OMPI_MCA_pml"] = "ucx"
    elif fabric.fabric_kind == "tcp" and iface:
        # A TCP fabric: Open MPI's own TCP transport (ob1 + btl tcp). UCX over TCP brings
        # nothing here and its start-up costs about a second per rank on small nodes; the
        # UCC/HCOLL/HAN collectives cost another ~0.6 s of MPI_Init (measured: 8 ranks on 4
        # nodes, 2.7 s -> 1.07 s end to end). A job's own OMPI_MCA_* values still win.
        env |= {"OMPI_MCA_pml": "ob1", "OMPI_MCA_btl": "self,sm,tcp", "OMPI_MCA_osc": "^ucx", "OMPI_MCA_coll": "^hcoll,ucc,han"}
    return env


# ------------------------------------------------------------------ the socket server
@dataclass(slots=True, eq=False)
class _Pending:
    attempt_id: str
    done: asyncio.Future[tuple[int | None, str | None]]


class LaunchBridge:
    """Serves launcher connections; forwards allowed launches to the head (or runs them here)."""

    def __init__(
        self,
        path: Path,
        node_name: str,
        *,
        send: Callable[[p.LaunchRequest], None],
        start_local: LocalStart | None = None,
    ) -> None:
        self.path = path
        self.node_name = node_name
        self._send = send
        self._start_local = start_local
        self._grants: dict[str, LaunchGrant] = {}  # attempt_id -> grant
        self._pending: dict[str, _Pending] = {}  # launch_id -> waiting launcher
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listen on ``path`` (mode 0666: the secret and the peer's uid are the checks)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a previous agent's
        self._server = await asyncio.start_unix_server(
            self._serve, path=str(self.path), limit=_REQUEST_LIMIT
        )
        os.chmod(self.path, 0o666)
        # Job owners must traverse to the socket (as to their work dirs under attempts/).
        parent = self.path.parent
        mode = parent.stat().st_mode
        if mode & 0o011 != 0o011 and parent.stat().st_uid == os.geteuid():
            os.chmod(parent, (mode & 0o7777) | 0o011)

    async def close(self) -> None:
        """Stop listening; answer every waiting launcher with an error."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for pending in list(self._pending.values()):
            if not pending.done.done():
                pending.done.set_result((None, "the node agent is shutting down"))
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=2.0)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    # ---------------------------------------------------------------- agent side
    def allow(self, grant: LaunchGrant) -> None:
        """A multi-node attempt started here: its launcher may now ask for launches."""
        self._grants[grant.attempt_id] = grant

    def revoke(self, attempt_id: str, reason: str = "the job's attempt on this node ended") -> None:
        """The attempt ended: refuse its secret, fail the launches still waiting."""
        self._grants.pop(attempt_id, None)
        for pending in self._pending.values():
            if pending.attempt_id == attempt_id and not pending.done.done():
                pending.done.set_result((None, reason))

    def launch_done(self, msg: p.LaunchDone) -> None:
        """The head's answer to one of our LaunchRequests."""
        pending = self._pending.get(msg.launch_id)
        if pending is None:
            log.debug("LaunchDone for unknown launch %s (its launcher left)", msg.launch_id)
            return
        if not pending.done.done():
            pending.done.set_result((msg.exit_code, msg.error))

    # ---------------------------------------------------------------- connections
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()  # start_unix_server runs each connection as a task
        if task is not None:
            self._handlers.add(task)
        try:
            await self._handle(reader, writer)
        finally:
            if task is not None:
                self._handlers.discard(task)

    def check(self, secret: str, uid: int, host: str) -> LaunchGrant | str:
        """The grant a request may use, or why it is refused."""
        grant = None
        for candidate in self._grants.values():  # compare with all: no early exit to time
            if hmac.compare_digest(candidate.secret.encode(), secret.encode()):
                grant = candidate
        if grant is None or not grant.secret:
            return "unknown launch secret: no multi-node job with it runs on this node"
        if uid not in (grant.uid, 0):
            return f"uid {uid} does not own job {grant.job_id} on this node"
        if host not in grant.hosts:
            return f"host {host} is not one of job {grant.job_id}'s nodes ({','.join(grant.hosts)})"
        return grant

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                answer = await self._launch(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                raise
            except Exception as exc:  # a launch that fails fails that launch, not the bridge
                log.exception("launch request from uid %d failed", _peer_uid(writer))
                answer = (None, f"the agent on {self.node_name} failed to launch it: {type(exc).__name__}: {exc}")
            writer.write(json.dumps({"exit_code": answer[0], "error": answer[1]}).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _launch(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[int | None, str | None]:
        uid = _peer_uid(writer)
        try:
            line = await reader.readline()
            request = json.loads(line)
            secret, host, command = request["secret"], request["host"], request["command"]
            if not all(isinstance(v, str) for v in (secret, host, command)):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return None, "bad request: want one JSON line {secret, host, command}"
        grant = self.check(secret, uid, host)
        if isinstance(grant, str):
            log.warning("launch refused (uid %d, host %s): %s", uid, host, grant)
            return None, grant
        launch_id = uuid.uuid4().hex
        loop = asyncio.get_running_loop()
        pending = _Pending(grant.attempt_id, loop.create_future())
        self._pending[launch_id] = pending
        try:
            if host == self.node_name and self._start_local is not None:
                error = self._start_local(grant.attempt_id, launch_id, command, self._local_exit)
                if error is not None:
                    return None, error
            else:
                self._send(
                    p.LaunchRequest(
                        launch_id=launch_id,
                        job_id=grant.job_id,
                        attempt_id=grant.attempt_id,
                        target=host,
                        command=command,
                    )
                )
            log.info("launch %s: job %s on %s", launch_id[:8], grant.job_id, host)
            gone = asyncio.ensure_future(reader.read(1))  # EOF: the launcher was killed
            try:
                await asyncio.wait({pending.done, gone}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                gone.cancel()
            if not pending.done.done():
                # No message cancels a launch: the task ends with its attempt.
                log.info("launch %s: its launcher went away; the task runs on", launch_id[:8])
                return None, "launcher gone"
            return pending.done.result()
        finally:
            del self._pending[launch_id]

    def _local_exit(self, launch_id: str, exit_code: int | None, reason: str | None) -> None:
        pending = self._pending.get(launch_id)
        if pending is not None and not pending.done.done():
            pending.done.set_result((exit_code, reason if exit_code is None else None))


def _peer_uid(writer: asyncio.StreamWriter) -> int:
    sock: socket.socket | None = writer.get_extra_info("socket")
    if sock is None:
        return -1
    _pid, uid, _gid = _PEERCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    )
    return uid
