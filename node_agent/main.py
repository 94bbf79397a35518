"""The node agent: registers with the head, runs attempts, ships output, reports exits.

One asyncio loop; one DEALER socket, a CurveZMQ client with this node's key pair that pins
the head's public key (a head without the matching secret key cannot complete the
handshake). The head knows the node by its key, enrolled on the head (``hpcbatch nodes keys
accept NAME``); until then the head does not answer, and the agent says so once. A head
that refuses the key outright (rejected, revoked) fails the handshake; libzmq then stops
reconnecting, so the agent reconnects itself, backing off. Sends never block:
with ``IMMEDIATE`` set, a message for a head that is not connected is dropped, and what
must not be lost is kept and resent instead (exits until the head acknowledges them, log
bytes from the offsets the head reports in ``Welcome``). Exits not yet acknowledged are
also kept on disk, so an agent restart reports them too.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import pwd
import signal
import socket
import sys
import time
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import msgspec
import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from hpcbatch import __version__
from hpcbatch import protocol as p
from hpcbatch.curve import CurveKeyError, ensure_keypair, load_public_key
from node_agent.bridge import (
    LaunchBridge,
    LaunchGrant,
    job_environment,
    job_files,
    parent_job_id,
    slots_per_node,
    socket_path,
)
from node_agent.config import AgentConfig, ConfigError, load_agent_config
from node_agent.containers import Podman
from node_agent.cpu_binding import agent_cpus, gpu_local_cpus
from node_agent.discovery import discover
from node_agent.gpus_nvml import NvmlGpus
from node_agent.head_epoch import HeadEpoch
from node_agent.runner import CANNOT_START, AttemptResult, AttemptSpec, Runner
from node_agent.runner import describe_failure as _describe
from node_agent.workdir_mount import WorkdirMount

log = logging.getLogger("hpcbatch.agent")

LOG_CHUNK = 256 * 1024
LOG_POLL_S = 0.2
REFUSED_RETRY_S = (1.0, 30.0)  # reconnect after the head refused our key: first, longest wait
HANDSHAKE_FAILURES_BEFORE_LOG = 3  # a head restarting mid-handshake fails one or two
_MONITORED = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Agent:
    """One node's agent; see the module docstring."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.state = Path(config.state_dir)
        self.state.mkdir(parents=True, exist_ok=True)
        self.instance_id = uuid.uuid4().hex
        overrides = {
            k: v
            for k, v in (
                ("vcpus", config.vcpus),
                ("memory_mib", config.memory_mib),
                ("reserved_memory_mib", config.reserved_memory_mib),
                ("gpus", config.gpus),
                ("gpu_count", config.gpu_count),
            )
            if v is not None
        }
        if config.container_runtime is not None:
            overrides["container_runtime"] = config.container_runtime
        overrides["fabric_interface"] = config.fabric_interface
        overrides["fabric_kind"] = config.fabric_kind
        self.nvml = NvmlGpus()
        found = discover(overrides, nvml_gpus=self.nvml.open())  # fabric_interface/_address/_kind/_devices among them
        self.facts = p.NodeFacts(
            name=config.name,
            compute_environment=config.compute_environment,
            labels=config.labels,
            placement_group=config.placement_group,
            agent_version=__version__,
            fence_after_s=config.fence_s,
            **found,
        )
        runtime = found["container_runtime"] or None  # "" in the config: no container jobs here
        self.facts.container_runtime = runtime
        podman = (
            Podman(runtime, storage=config.container_storage, insecure_registries=config.container_insecure_registries,
                   auth_file=config.container_auth_file, subid_base=config.container_subid_base)
            if runtime
            else None
        )
        self.podman = podman
        self.runner = Runner(
            self.state,
            on_exit=self._on_exit,
            kill_grace_s=config.kill_grace_s,
            container_runtime=runtime,
            containers=podman,
            memory_enforcement=config.memory_enforcement,
            allow_root_jobs=config.allow_root_jobs,
            keep_workdir=config.keep_workdir,
        )
        self.workdirs = WorkdirMount.protect(Path(self.state) / "attempts")  # nosuid,nodev: docs/security.md
        self.bridge = LaunchBridge(
            socket_path(self.state), config.name, send=self._send, start_local=self.runner.start_task
        )
        self.keys = ensure_keypair(config.curve_secret_key_path, config.curve_public_key_path)
        head_key = load_public_key(config.head_public_key)
        self._ctx = zmq.asyncio.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        # No routing id of our own: the head knows us by our key, and numbers connections itself.
        self._sock.setsockopt(zmq.CURVE_SECRETKEY, self.keys.secret)
        self._sock.setsockopt(zmq.CURVE_PUBLICKEY, self.keys.public)
        self._sock.setsockopt(zmq.CURVE_SERVERKEY, head_key)
        self._monitor = self._sock.get_monitor_socket(_MONITORED)
        self._sock.setsockopt(zmq.IMMEDIATE, 1)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RECONNECT_IVL, 100)
        self._sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        self._sock.setsockopt(zmq.SNDHWM, 100_000)
        self._heads = config.head_endpoints
        self._head = self._heads[0]  # the one endpoint the socket is connected to
        self._head_since = time.monotonic()
        # The newest head epoch seen, kept across restarts: older heads' orders are refused.
        self._epoch_memory = HeadEpoch(self.state, head_key)
        self._epoch = self._epoch_memory.load()
        # ZMTP heartbeats: a connection whose peer went silent (a cut link leaves TCP waiting
        # on retransmits for minutes) is dropped and redialled, so the node is back as soon
        # as the network is.
        self._sock.setsockopt(zmq.HEARTBEAT_IVL, max(100, int(config.heartbeat_interval_s * 1000)))
        self._sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, max(1000, int(config.heartbeat_interval_s * config.liveness * 1000)))
        self._sock.connect(self._head)
        self._interval = config.heartbeat_interval_s
        self._liveness = config.liveness
        self._head_id: str | None = None
        self._head_seen = 0.0
        # Fencing (hpcbatch.fencing): the send time of our newest message a head echoed back.
        # With nothing newer than fence_after_s, every attempt here is killed: the head
        # retries them elsewhere only after that long.
        self._fence_after_s = config.fence_s
        self._lease_from = time.monotonic()
        self._fenced = False
        self._fence_killed: set[str] = set()  # attempts this fence has killed already
        self._lease_path = self.state / "lease"  # mtime: when a head last heard this node (_save_lease)
        self._lease_saved = -1e9
        self._connected_at: float | None = None  # last successful handshake
        self._welcomed = False  # a head has answered a Register of this process
        self._said: set[str] = set()  # conditions already logged (each said once per episode)
        self._unacked: dict[str, p.AttemptExited] = {}
        self._shipped: dict[str, int] = {}  # attempt -> bytes of output the head has been sent
        self._job_of: dict[str, str] = {}  # attempt -> job, for log chunks
        self._base_env = {
            k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TZ", "HOME", "USER", "LOGNAME")
        }
        self._base_env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        self._hostname = socket.gethostname()
        self._cpus = agent_cpus()
        self._gpus_of: dict[str, list[str]] = {}  # attempt -> the GPU uuids it holds
        # Declared out of service in the config: stays so, whatever NVML says.
        self._declared_unhealthy = {g.uuid: g.unhealthy for g in self.facts.gpu_facts if g.unhealthy}
        self._starting: set[asyncio.Task[None]] = set()  # container starts: the image pull runs on
        self._not_started: set[str] = set()  # container attempts received, not yet running or refused
        self._images_reported = -1  # podman.pulls when the head was last told the cache

    # -------------------------------------------------------------------- wire
    def _send(self, message: p.Message) -> None:
        # With NOBLOCK, pyzmq's asyncio send completes at once; an error sits in the future.
        fut = self._sock.send(p.encode(message), flags=zmq.NOBLOCK)
        exc = fut.exception() if fut.done() else None
        if exc is not None and not isinstance(exc, zmq.Again):
            log.warning("cannot send to the head: %s", exc)
        # zmq.Again: not connected; what matters is resent on (re)registration.

    def _say_once(self, what: str, level: int, message: str, *args: object) -> None:
        if what not in self._said:
            self._said.add(what)
            log.log(level, message, *args)

    def _register(self) -> None:
        running = [
            p.RunningAttempt(attempt_id=a, job_id=j, pid=pid, started_at=t) for a, j, pid, t in self.runner.running()
        ]
        self._send(
            p.Register(instance_id=self.instance_id, node=self.facts, running=running, exited=list(self._unacked.values()),
                       sent_at=time.monotonic())
        )

    # ----------------------------------------------------------------- attempts
    def _on_exit(self, result: AttemptResult) -> None:
        try:  # the output first, so the head has it all when the exit lands; best-effort
            self.bridge.revoke(result.attempt_id)
            self._ship_output(result.attempt_id, final=True)
        except Exception:
            log.exception("attempt %s of job %s: shipping its last output failed", result.attempt_id, result.job_id)
        exited = p.AttemptExited(
            attempt_id=result.attempt_id,
            job_id=result.job_id,
            exit_code=result.exit_code,
            reason=result.reason,
            status_reason=result.status_reason,
            started_at=result.started_at,
            stopped_at=result.stopped_at,
            timed_out=result.timed_out,
            fenced=result.fenced,
            lost=result.lost,
        )
        # Kept and resent until the head acknowledges it; the runner's result file keeps it
        # on disk too, where the disk allows (an exit is reported even when it does not).
        self._unacked[exited.attempt_id] = exited
        self._send(exited)

    def _gpu_report(self, running: list[str]) -> tuple[dict[str, str], list[p.GpuUsage]]:
        """GPUs out of service now, and a usage sample of each running attempt's GPUs (NVML)."""
        unhealthy = {**self._declared_unhealthy, **self.nvml.health()}
        usage: list[p.GpuUsage] = []
        if self.nvml.available:
            for attempt_id in running:
                for uuid, (util, used) in self.nvml.usage(self._gpus_of.get(attempt_id, ())).items():
                    usage.append(
                        p.GpuUsage(attempt_id=attempt_id, uuid=uuid, utilization_pct=util, memory_used_mib=used)
                    )
        return unhealthy, usage

    def _ack(self, attempt_ids: list[str]) -> None:
        for attempt_id in attempt_ids:
            self._unacked.pop(attempt_id, None)
            self._shipped.pop(attempt_id, None)
            self._job_of.pop(attempt_id, None)
            self._gpus_of.pop(attempt_id, None)
            self.runner.forget(attempt_id)

    async def _start(self, msg: p.StartAttempt) -> None:
        if self.runner.is_pulling(msg.attempt_id):
            return  # a resent start: the first one reports
        # An image brings its own PATH, locale and home: only the job's variables go in.
        env = {} if msg.image else dict(self._base_env)
        env.update(msg.environment)
        env["HOSTNAME"] = self._hostname
        env.update(gpu_environment(msg.gpu_ids, self.facts.gpus))
        files: tuple[tuple[str, bytes, int], ...] = ()
        if msg.hosts:  # a multi-node job: its nodes, the launcher bridge, the fabric
            files = job_files(msg.hosts, slots_per_node(env))
            env.update(
                job_environment(
                    hosts=msg.hosts,
                    environment=env,
                    work_dir=self.runner.job_dir(msg.attempt_id, msg.owner),
                    launch_socket=self.bridge.path,
                    secret=msg.launch_secret,
                    fabric=self.facts,
                    owner_is_root=_uid_of(msg.owner) == 0,
                )
            )
        spec = AttemptSpec(
            attempt_id=msg.attempt_id,
            job_id=msg.job_id,
            attempt_number=msg.attempt_number,
            command=msg.command,
            environment=env,
            vcpus=msg.vcpus,
            memory_mib=msg.memory_mib,
            gpus=msg.gpus,
            timeout_s=msg.timeout_s,
            image=msg.image,
            container=msg.container,
            script=msg.script,
            user=msg.owner,  # never None here: an ownerless job must not run as the agent (root)
            hold=msg.hold,
            multinode=bool(msg.hosts),
            files=files,
            cpus=tuple(gpu_local_cpus(msg.gpu_ids, self.facts.gpu_facts, self._cpus)) if msg.gpu_ids else (),
        )
        outcome = await self.runner.start(spec)
        if isinstance(outcome, AttemptResult):
            if outcome.attempt_id not in self._unacked:  # refused: report like any exit
                self._on_exit(outcome)
            return
        self._shipped.setdefault(msg.attempt_id, 0)
        self._job_of[msg.attempt_id] = msg.job_id
        if msg.gpu_ids:
            self._gpus_of[msg.attempt_id] = list(msg.gpu_ids)
        uid = self.runner.attempt_uid(msg.attempt_id)
        if msg.hosts and msg.launch_secret and uid is not None:
            self.bridge.allow(
                LaunchGrant(
                    attempt_id=msg.attempt_id,
                    job_id=parent_job_id(msg.job_id),
                    secret=msg.launch_secret,
                    uid=uid,
                    hosts=tuple(msg.hosts),
                )
            )
        self._send(p.AttemptStarted(attempt_id=msg.attempt_id, job_id=msg.job_id, pid=outcome, started_at=_now_ms()))

    def _start_task(self, msg: p.StartTask) -> None:
        """Run a launched command (an MPI daemon) inside this node's attempt of the job."""

        def exited(launch_id: str, exit_code: int | None, reason: str | None) -> None:
            self._send(
                p.TaskExited(launch_id=launch_id, origin=msg.origin, exit_code=exit_code, reason=reason)
            )

        if msg.attempt_id in self._not_started:  # this node's image is still coming: launch after
            self._spawn(self._start_task_after_pull(msg), f"launch {msg.launch_id[:8]} for job {msg.job_id}")
            return
        error = self.runner.start_task(msg.attempt_id, msg.launch_id, msg.command, exited)
        if error is not None:
            log.warning("launch %s for job %s refused: %s", msg.launch_id[:8], msg.job_id, error)
            exited(msg.launch_id, None, error)

    def _spawn(self, coro: Coroutine[Any, Any, None], what: str,
               on_error: Callable[[Exception], None] | None = None) -> None:
        """Run ``coro`` beside the receive loop (pulls take long). Its owner is ``run``, which
        cancels and awaits what is left on the way out; its failure is logged and handed to
        ``on_error`` (which fails the attempt concerned), never lost and never fatal."""
        task = asyncio.create_task(self._guarded(coro, what, on_error))
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)

    @staticmethod
    async def _guarded(coro: Coroutine[Any, Any, None], what: str,
                       on_error: Callable[[Exception], None] | None) -> None:
        try:
            await coro
        except Exception as exc:
            log.exception("%s failed", what)
            if on_error is not None:
                on_error(exc)

    async def _start_container(self, msg: p.StartAttempt) -> None:
        try:
            await self._start(msg)
        finally:
            self._not_started.discard(msg.attempt_id)
        if self.podman is not None and self.podman.pulls != self._images_reported:
            await self._report_images()

    async def _pull(self, image: str) -> None:
        if self.podman is None:
            return
        failure = await self.podman.pull(image)
        if failure is not None:
            log.warning("pre-pull of %s failed: %s", image, failure)
        await self._report_images()

    async def _report_images(self) -> None:
        if self.podman is not None:
            pulls = self.podman.pulls
            self._send(p.ImagesCached(images=await self.podman.images()))
            self._images_reported = pulls

    async def _start_task_after_pull(self, msg: p.StartTask) -> None:
        while msg.attempt_id in self._not_started:
            await asyncio.sleep(0.05)
        self._start_task(msg)

    # ---------------------------------------------------------------------- logs
    def _ship_output(self, attempt_id: str, final: bool = False) -> None:
        offset = self._shipped.get(attempt_id, 0)
        job_id = self._job_of.get(attempt_id, "")
        try:
            with open(self.runner.log_path(attempt_id), "rb") as f:
                f.seek(offset)
                while True:
                    data = f.read(LOG_CHUNK)
                    if not data:
                        break
                    self._send(p.LogChunk(attempt_id=attempt_id, job_id=job_id, stream="output", offset=offset, data=data,
                                          read_at_ms=time.time_ns() // 1_000_000))
                    offset += len(data)
                    if not final:
                        break
        except FileNotFoundError:
            return
        self._shipped[attempt_id] = offset

    async def _log_loop(self) -> None:
        while True:
            await asyncio.sleep(LOG_POLL_S)
            for attempt_id, job_id, _pid, _t in self.runner.running():
                try:
                    self._ship_output(attempt_id)
                except Exception:  # that attempt's output waits; the others' goes on
                    self._say_once(f"ship-{attempt_id}", logging.ERROR, "shipping output of attempt %s of job %s "
                                   "failed", attempt_id, job_id, exc_info=True)

    # --------------------------------------------------------------------- loops
    async def _receive_loop(self) -> None:
        while True:
            data = await self._sock.recv()
            self._head_seen = time.monotonic()
            try:
                msg = p.decode_from_head(data)
            except msgspec.DecodeError as exc:
                log.warning("dropping an undecodable message from the head: %s", exc)
                continue
            if msg.epoch < self._epoch:
                # A former active head (paused, cut off) that has not learnt it was replaced.
                self._say_once(
                    f"epoch-{msg.epoch}", logging.WARNING,
                    "refusing orders from a head of epoch %d (%s first): epoch %d is active",
                    msg.epoch, type(msg).__name__, self._epoch,
                )
                continue
            if msg.epoch > self._epoch:
                try:  # remembered before it is obeyed: a restart must not forget it
                    self._epoch_memory.save(msg.epoch)
                except OSError as exc:  # still fenced while this process lives; say what a restart risks
                    self._say_once("epoch-save", logging.ERROR, "cannot remember head epoch %d in %s: %s",
                                   msg.epoch, self._epoch_memory.path, exc)
                self._epoch = msg.epoch
            try:
                await self._dispatch(msg)
            except Exception as exc:  # one message fails, not the node: see _contain
                self._contain(msg, exc)

    async def _dispatch(self, msg: p.HeadMessage) -> None:
        """Obey one message of the head's."""
        match msg:
            case p.StartAttempt() if self._fenced:
                self._refuse_fenced(msg)
            case p.StartAttempt() if msg.image:
                self._not_started.add(msg.attempt_id)  # launches for it wait (_start_task)
                start = msg
                self._spawn(  # the pull must not stop the loop
                    self._start_container(msg), f"starting attempt {msg.attempt_id} of job {msg.job_id}",
                    lambda exc: self._start_failed(start, exc),
                )
            case p.StartAttempt():
                await self._start(msg)
            case p.StartTask():
                self._start_task(msg)
            case p.LaunchDone():
                self.bridge.launch_done(msg)
            case p.KillAttempt():
                self.runner.kill(msg.attempt_id, msg.reason, msg.grace_s)
            case p.AckExits():
                self._ack(msg.attempt_ids)
            case p.PullImage():
                self._spawn(self._pull(msg.image), f"pre-pull of {msg.image}")
            case p.Welcome():
                self._renew_lease(msg.echo)
                if msg.head_id != self._head_id:
                    log.info("registered with head %s", msg.head_id[:8])
                self._head_id = msg.head_id
                self._welcomed = True
                self._spawn(self._report_images(), "reporting the image cache")
                self._said.discard("enrollment")
                self._interval, self._liveness = msg.heartbeat_interval_s, msg.liveness
                for attempt_id, offsets in msg.log_offsets.items():
                    self._shipped[attempt_id] = min(self._shipped.get(attempt_id, 0), offsets.get("output", 0))
            case p.Reregister():
                self._register()
            case p.HeadHeartbeat():
                self._renew_lease(msg.echo)
                if msg.head_id != self._head_id:
                    self._register()

    def _contain(self, msg: p.HeadMessage, exc: Exception) -> None:
        """A message whose handling failed: log it with its type and ids, and fail only the
        attempt (or launch) it concerns, with a reason naming the cause. The agent and every
        other job on the node live on."""
        ids = " ".join(
            f"{name}={value}" for name in ("job_id", "attempt_id", "launch_id")
            if (value := getattr(msg, name, None))
        )
        log.error("handling %s (%s) failed: %s", type(msg).__name__, ids or "no ids", _describe(exc), exc_info=exc)
        if isinstance(msg, p.StartAttempt):
            self._start_failed(msg, exc)
        elif isinstance(msg, p.StartTask):
            self._send(p.TaskExited(launch_id=msg.launch_id, origin=msg.origin, exit_code=None,
                                    reason=f"the agent on {self.config.name} failed to launch it: {_describe(exc)}"))

    def _start_failed(self, msg: p.StartAttempt, exc: Exception) -> None:
        """Report an attempt whose start raised as failed, unless it runs or was reported already."""
        self._not_started.discard(msg.attempt_id)
        if msg.attempt_id in self._unacked or msg.attempt_id in {r[0] for r in self.runner.running()}:
            return
        now = _now_ms()
        self._on_exit(AttemptResult(
            attempt_id=msg.attempt_id, job_id=msg.job_id, exit_code=None,
            reason=f"{CANNOT_START}: the agent on {self.config.name} failed while starting it: {_describe(exc)}",
            status_reason=None, started_at=now, stopped_at=now,
        ))

    # ------------------------------------------------------------------ fencing
    def _renew_lease(self, echo: float) -> None:
        """A head heard us at ``echo`` (our clock; 0 from a head that does not echo: now)."""
        self._lease_from = max(self._lease_from, echo if echo > 0 else time.monotonic())
        self._save_lease()
        if self._fenced and time.monotonic() - self._lease_from <= self._fence_after_s:
            self._fenced = False
            log.warning("a head hears this node again: fence lifted, attempts may start")

    def _save_lease(self) -> None:
        """Keep when a head last heard us as the lease file's mtime (wall clock), at most once
        a second: a restarted agent re-adopts its attempts only while that is within the
        fence (after it, the head may have retried them elsewhere). utime needs no free space."""
        now = time.monotonic()
        if now - self._lease_saved < 1.0:
            return
        self._lease_saved = now
        heard = time.time() - (now - self._lease_from)
        try:
            os.utime(self._lease_path, (heard, heard))
        except FileNotFoundError:
            try:
                self._lease_path.touch()
                os.utime(self._lease_path, (heard, heard))
            except OSError as exc:
                self._say_once("lease", logging.WARNING, "cannot keep the lease time in %s: %s", self._lease_path, exc)
        except OSError as exc:
            self._say_once("lease", logging.WARNING, "cannot keep the lease time in %s: %s", self._lease_path, exc)

    def _lease_fresh(self) -> bool:
        """Whether a head heard this node (the previous agent process) within the fence."""
        if self._fence_after_s <= 0:
            return True
        try:
            heard = self._lease_path.stat().st_mtime
        except FileNotFoundError:
            return True  # never heard, or an older agent: nothing says a head gave up on us
        return time.time() - heard <= self._fence_after_s

    def _check_fence(self, now: float) -> None:
        """Unheard by any head for fence_after_s: kill every attempt (the head retries them elsewhere)."""
        silent = now - self._lease_from
        if self._fence_after_s <= 0 or silent <= self._fence_after_s:
            return
        if not self._fenced:
            self._fence_killed.clear()
        running = [a for a, _j, _pid, _t in self.runner.running()] + sorted(self._not_started)
        running = [a for a in running if a not in self._fence_killed]  # each is killed once
        if not self._fenced or running:
            log.warning(
                "no head has heard this node for %.0f s (fence_after_s = %g): killing %d attempt(s), "
                "which the head retries elsewhere", silent, self._fence_after_s, len(running),
            )
        self._fenced = True
        reason = f"Node {self.config.name} fenced: no head heard it for {silent:.0f} s"
        for attempt_id in running:
            self._fence_killed.add(attempt_id)
            self.runner.kill(attempt_id, reason, grace_s=0, fenced=True)

    def _refuse_fenced(self, msg: p.StartAttempt) -> None:
        """An order that reached a fenced node late: not run, reported as refused."""
        if msg.attempt_id in self._unacked or self.runner.is_pulling(msg.attempt_id):
            return
        now = _now_ms()
        self._on_exit(AttemptResult(
            attempt_id=msg.attempt_id, job_id=msg.job_id, exit_code=None, reason=CANNOT_START,
            status_reason=f"Node {self.config.name} is fenced: no head has heard it lately", started_at=now,
            stopped_at=now,
        ))

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                self._heartbeat()
            except Exception:  # the next beat tries again; the agent must not stop beating
                log.exception("heartbeat failed")

    def _heartbeat(self) -> None:
        """One beat: check the fence, find a head, say what runs, resend unacknowledged exits."""
        now = time.monotonic()
        self._check_fence(now)
        silent = now - max(self._head_seen, self._head_since)
        if silent > self._interval * self._liveness:
            if len(self._heads) > 1:
                self._next_head()  # the active head moved (failover): find it
            # The head may be gone or restarted: keep offering ourselves.
            self._register()
            connected = self._connected_at
            if not self._welcomed and connected is not None and now - connected > self._interval * self._liveness:
                self._say_once(
                    "enrollment", logging.WARNING,
                    "connected to the head at %s, which does not answer: this node's key (%s) is probably "
                    "waiting for enrollment: run `hpcbatch nodes keys accept %s` on the head",
                    self._head, self.keys.public.decode(), self.config.name,
                )
            return
        running = [r[0] for r in self.runner.running()]
        unhealthy, usage = self._gpu_report(running)
        self._send(
            p.AgentHeartbeat(
                instance_id=self.instance_id, running=running, unhealthy_gpus=unhealthy, gpu_usage=usage,
                gpu_utilization=self.nvml.utilization(), sent_at=time.monotonic(),
            )
        )
        for exited in list(self._unacked.values()):
            self._send(exited)

    async def _monitor_loop(self) -> None:
        """Watch the CurveZMQ handshakes: log what an admin must fix, reconnect after a refusal."""
        retry = REFUSED_RETRY_S[0]
        failures = 0
        while True:
            frames = await self._monitor.recv_multipart()
            try:
                event = parse_monitor_message(frames)
            except Exception:  # an event we cannot read: the next one may be fine
                log.exception("unreadable socket monitor event")
                continue
            kind = event["event"]
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._connected_at = time.monotonic()
                retry, failures = REFUSED_RETRY_S[0], 0
                self._said.difference_update({"refused", "handshake"})
                # Speak at once: the head learns this connection and sends what it held for us.
                if self._head_id is None:
                    self._register()
                else:
                    self._send(p.AgentHeartbeat(instance_id=self.instance_id, running=[r[0] for r in self.runner.running()],
                                                sent_at=time.monotonic()))
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self._say_once(
                    "refused", logging.ERROR,
                    "the head at %s refused this node's key %s (status %s): it is rejected or revoked; "
                    "`hpcbatch nodes keys list` on the head shows it; retrying",
                    self._head, self.keys.public.decode(), event["value"],
                )
                # libzmq does not reconnect after an authentication failure: we do, backing off.
                await asyncio.sleep(retry)
                retry = min(retry * 2, REFUSED_RETRY_S[1])
                self._reconnect()
            else:
                failures += 1
                if failures >= HANDSHAKE_FAILURES_BEFORE_LOG:
                    self._say_once(
                        "handshake", logging.ERROR,
                        "the CurveZMQ handshake with the head at %s keeps failing: is head_public_key (%s) "
                        "the head's public key?",
                        self._head, self.config.head_public_key,
                    )

    def _reconnect(self, endpoint: str | None = None) -> None:
        try:
            self._sock.disconnect(self._head)
        except zmq.ZMQError:
            pass  # libzmq already dropped the endpoint
        self._head = endpoint or self._head
        self._sock.connect(self._head)

    def _next_head(self) -> None:
        """Move to the next head endpoint: one connection at a time, so no message of ours
        goes to a standby or to a paused former head (a DEALER would spread them over all)."""
        following = self._heads[(self._heads.index(self._head) + 1) % len(self._heads)]
        self._head_since = time.monotonic()
        self._reconnect(following)

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set; on the way out running attempts are left to the next
        agent process (``leave_attempts_on_stop``), or killed."""
        # Exits a previous agent process saw but the head never acknowledged, then attempts
        # it left running: re-adopted (watched again, their real exits reported) while a
        # head heard the node within the fence; past it the head may have retried them
        # elsewhere, so they are killed (nothing runs untracked or twice).
        for result in self.runner.unacknowledged():
            self._on_exit(result)
        readopt = self._lease_fresh()
        killed = 0
        for result in self.runner.adopt_orphans(readopt=readopt):
            killed += result.lost
            if result.attempt_id not in self._unacked:
                self._on_exit(result)
        for attempt_id, job_id, _pid, _t in self.runner.running():
            self._job_of[attempt_id] = job_id
            try:  # the head's Welcome rewinds this to the bytes it holds
                self._shipped[attempt_id] = self.runner.log_path(attempt_id).stat().st_size
            except OSError:
                self._shipped[attempt_id] = 0
        if killed:
            log.warning("%d attempt(s) a previous agent process left were killed and reported lost (%s)", killed,
                        "multi-node, or with no record of how they ended" if readopt
                        else f"no head heard this node for over {self._fence_after_s:g} s: it may have retried them")
        await self.bridge.start()
        self._register()
        log.info(
            "agent %s (%d vCPUs, %d MiB, public key %s) connecting to %s",
            self.config.name, self.facts.vcpus, self.facts.memory_mib, self.keys.public.decode(), ", ".join(self._heads),
        )
        try:
            async with asyncio.TaskGroup() as tasks:
                loops = [
                    tasks.create_task(self._receive_loop()),
                    tasks.create_task(self._heartbeat_loop()),
                    tasks.create_task(self._log_loop()),
                    tasks.create_task(self._monitor_loop()),
                ]
                await stop.wait()
                log.info("stopping: signal received")
                for task in loops:
                    task.cancel()
        finally:
            for task in list(self._starting):  # their owner: cancel what is left and wait for it
                task.cancel()
            if self._starting:
                await asyncio.gather(*self._starting, return_exceptions=True)
            await self.bridge.close()
            leave = self.config.leave_attempts_on_stop
            if leave and self.runner.running():
                log.info("leaving %d attempt(s) running: the next agent process re-adopts them",
                         len(self.runner.running()))
            await self.runner.shutdown(kill=not leave)
            if not leave:  # attempts left running keep their nosuid view; the next agent finds it mounted
                self.workdirs.release()
            self._sock.disable_monitor()
            self._monitor.close(linger=0)
            self._sock.close(linger=0)
            self._ctx.term()
            self.nvml.close()
            log.info("agent stopped")


def gpu_environment(gpu_ids: list[str], node_gpus: list[str]) -> dict[str, str]:
    """The variables that show a job only the GPUs it holds: none at all when it holds none.

    ``NVIDIA_VISIBLE_DEVICES`` (container runtimes) gets the ids/UUIDs as the head chose
    them; ``CUDA_VISIBLE_DEVICES`` gets their positions in the node's GPU list ("1,2"),
    which is NVML's order, so ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` makes CUDA count the same
    way. An id the node does not list is passed through as is (CUDA also takes UUIDs).
    """
    if not gpu_ids:
        # On a GPU node a job that asked for no GPUs must not see (and use) the others'.
        return {"CUDA_VISIBLE_DEVICES": "", "NVIDIA_VISIBLE_DEVICES": "void"} if node_gpus else {}
    cuda = [str(node_gpus.index(g)) if g in node_gpus else g for g in gpu_ids]
    return {
        "CUDA_VISIBLE_DEVICES": ",".join(cuda),
        "NVIDIA_VISIBLE_DEVICES": ",".join(gpu_ids),
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
    }


def _uid_of(user: str) -> int | None:
    try:
        return pwd.getpwnam(user).pw_uid
    except (KeyError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    """``hpcbatch-agent --config FILE``: run a node agent."""
    parser = argparse.ArgumentParser(prog="hpcbatch-agent", description="Run an hpcbatch node agent.")
    parser.add_argument("--config", required=True, help="path of the agent's TOML config file")
    args = parser.parse_args(argv)
    try:
        config = load_agent_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)

    async def _serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Agent(config).run(stop)

    try:
        asyncio.run(_serve())
    except CurveKeyError as exc:
        log.error("cannot start: %s", exc.message)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
