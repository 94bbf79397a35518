"""The node agent's I/O shell: the socket, the runner, the disk, around a pure core.

What the agent decides (which order to obey, what to answer a duplicate, when to resend an
exit, when to fence) is node_agent/state.py's ``AgentState``: messages and local facts in,
typed effects out. This module feeds it and performs the effects.

One asyncio loop; one DEALER socket (node_agent/head_link.py), a CurveZMQ client with this
node's key pair that pins the head's public key (a head without the matching secret key
cannot complete the handshake). The head knows the node by its key, enrolled on the head
(``hpcbatch nodes keys accept NAME``); until then the head does not answer, and the agent
says so once. A head that refuses the key outright (rejected, revoked) fails the handshake;
libzmq then stops reconnecting, so the agent reconnects itself, backing off. Sends never block:
with ``IMMEDIATE`` set, a message for a head that is not connected is dropped, and what
must not be lost is kept and resent instead (exits until the head acknowledges them, log
bytes from the offsets the head reports in ``Welcome``). Exits not yet acknowledged are
also kept on disk, so an agent restart reports them too.

Batching (issue 22): the starts and exits the agent makes within ``REPORT_WINDOW_S`` of the
first (and all those of the head messages read in one wake-up, however long their starts
take) leave together, as one ``Reports`` where the head takes it (``state.coalesce``): a short
job's start and exit are one message, and the head acknowledges a burst's exits in one. A
head's ``Orders`` is its starts one after another.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
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

from hpcbatch import __version__
from hpcbatch import protocol as p
from hpcbatch.curve import CurveKeyError, ensure_keypair, load_public_key
from node_agent import state as s
from node_agent.attempt_env import NodeSetting, attempt_spec, gpu_environment, launch_grant
from node_agent.bridge import LaunchBridge, socket_path
from node_agent.config import AgentConfig, ConfigError, load_agent_config
from node_agent.containers import Podman
from node_agent.cpu_binding import agent_cpus
from node_agent.discovery import discover
from node_agent.gpus_nvml import NvmlGpus
from node_agent.head_epoch import HeadEpoch
from node_agent.head_link import HeadLink
from node_agent.lease import LeaseFile
from node_agent.runner import AttemptResult, Runner
from node_agent.runner import describe_failure as _describe
from node_agent.workdir_mount import WorkdirMount

__all__ = ["Agent", "gpu_environment", "main"]

log = logging.getLogger("hpcbatch.agent")

LOG_CHUNK = 256 * 1024
LOG_POLL_S = 0.2
REPORT_WINDOW_S = 0.002  # starts and exits within this long leave as one Reports


def _now() -> s.Now:
    return s.Now(monotonic=time.monotonic(), wall_ms=time.time_ns() // 1_000_000)


def exited_message(result: AttemptResult) -> p.AttemptExited:
    """The runner's result as the head hears it."""
    return p.AttemptExited(
        attempt_id=result.attempt_id, job_id=result.job_id, exit_code=result.exit_code, reason=result.reason,
        status_reason=result.status_reason, started_at=result.started_at, stopped_at=result.stopped_at,
        timed_out=result.timed_out, fenced=result.fenced, lost=result.lost,
    )


def node_facts(config: AgentConfig, nvml: NvmlGpus) -> p.NodeFacts:
    """What this node is and has: the config's declarations over what discovery finds."""
    declared = (("vcpus", config.vcpus), ("memory_mib", config.memory_mib),
                ("reserved_memory_mib", config.reserved_memory_mib), ("gpus", config.gpus),
                ("gpu_count", config.gpu_count))
    overrides: dict[str, Any] = {k: v for k, v in declared if v is not None}
    if config.container_runtime is not None:
        overrides["container_runtime"] = config.container_runtime
    overrides["fabric_interface"] = config.fabric_interface
    overrides["fabric_kind"] = config.fabric_kind
    found = discover(overrides, nvml_gpus=nvml.open())  # fabric_interface/_address/_kind/_devices among them
    facts = p.NodeFacts(
        name=config.name, compute_environment=config.compute_environment, labels=config.labels,
        placement_group=config.placement_group, agent_version=__version__, fence_after_s=config.fence_s, **found,
    )
    facts.container_runtime = found["container_runtime"] or None  # "" in the config: no container jobs here
    return facts


class Agent:
    """One node's agent; see the module docstring."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.state = Path(config.state_dir)
        self.state.mkdir(parents=True, exist_ok=True)
        self.instance_id = uuid.uuid4().hex
        self.nvml = NvmlGpus()
        self.facts = node_facts(config, self.nvml)
        runtime = self.facts.container_runtime
        self.podman = (
            Podman(runtime, storage=config.container_storage, insecure_registries=config.container_insecure_registries,
                   auth_file=config.container_auth_file, subid_base=config.container_subid_base)
            if runtime
            else None
        )
        self.runner = Runner(
            self.state, on_exit=self._on_exit, kill_grace_s=config.kill_grace_s, container_runtime=runtime,
            containers=self.podman, memory_enforcement=config.memory_enforcement,
            allow_root_jobs=config.allow_root_jobs, keep_workdir=config.keep_workdir,
        )
        self.workdirs = WorkdirMount.protect(Path(self.state) / "attempts")  # nosuid,nodev: docs/security.md
        self.bridge = LaunchBridge(
            socket_path(self.state), config.name, send=self._send, start_local=self.runner.start_task
        )
        self.keys = ensure_keypair(config.curve_secret_key_path, config.curve_public_key_path)
        head_key = load_public_key(config.head_public_key)
        self._ctx = zmq.asyncio.Context()
        self._link = HeadLink(self._ctx, self.keys, head_key, config)  # the DEALER to the active head
        # The newest head epoch seen, kept across restarts: older heads' orders are refused.
        self._epoch_memory = HeadEpoch(self.state, head_key)
        self._lease = LeaseFile(self.state / "lease")  # when a head last heard this node
        self.core = s.AgentState(
            s.AgentIdentity(self.instance_id, self.facts, head_count=len(self._link.heads)),
            epoch=self._epoch_memory.load(), heartbeat_interval_s=config.heartbeat_interval_s,
            liveness=config.liveness, now=_now(),
        )
        base_env = {
            k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TZ", "HOME", "USER", "LOGNAME")
        }
        base_env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        self._node = NodeSetting(base_env=base_env, hostname=socket.gethostname(), facts=self.facts,
                                 cpus=agent_cpus(), launch_socket=self.bridge.path)
        self._gpus_of: dict[str, list[str]] = {}  # attempt -> the GPU uuids it holds
        # Declared out of service in the config: stays so, whatever NVML says.
        self._declared_unhealthy = {g.uuid: g.unhealthy for g in self.facts.gpu_facts if g.unhealthy}
        self._starting: set[asyncio.Task[None]] = set()  # container starts, pulls: they run on beside the loop
        self._images_reported = -1  # podman.pulls when the head was last told the cache
        self._performers = self._performers_table()
        self._reports: list[p.Message] = []  # starts and exits of this wake-up, sent together at its end
        self._reports_due: asyncio.Handle | None = None
        self._obeying = 0  # head messages being obeyed (their starts are awaited): reports wait for them
        self._beat_timer: asyncio.TimerHandle | None = None
        self._output_due = asyncio.Event()  # an attempt runs: its output is shipped as it comes

    # -------------------------------------------------------------------- wire
    def _send(self, message: p.Message) -> None:
        """Send ``message`` to the head; a start or exit waits for the end of this wake-up,
        to leave with the others in one ``Reports`` (a head that takes them)."""
        if not (isinstance(message, s.REPORTED) and self.core.head_batches):
            self._send_now(message)
            return
        self._reports.append(message)
        self._report_soon()

    def _report_soon(self) -> None:
        """Send the reports ``REPORT_WINDOW_S`` after the first (not before the head messages
        being obeyed are done)."""
        if self._reports and self._reports_due is None and not self._obeying:
            self._reports_due = asyncio.get_running_loop().call_later(REPORT_WINDOW_S, self._send_reports)

    def _send_reports(self) -> None:
        """The end of a wake-up: its starts and exits, as one message where the head takes it."""
        self._reports_due = None
        if self._obeying:  # an Orders' starts are still being made: they go together after
            return
        reports, self._reports = self._reports, []
        for message in s.coalesce(reports, self.core.head_batches):
            self._send_now(message)

    def _send_now(self, message: p.Message) -> None:
        self._link.send(p.encode(message))

    def _say_once(self, what: str, level: int, message: str, *args: object, **kwargs: Any) -> None:
        if self.core.say_once(what):
            log.log(level, message, *args, **kwargs)

    # ----------------------------------------------------------------- the core
    def _feed(self, stimulus: s.LocalFact) -> None:
        """A local fact into the core; its effects performed now (none of them is a start)."""
        for effect in self.core.handle(stimulus, _now()):
            self._perform_guarded(effect)

    async def _obey(self, msg: p.HeadMessage) -> None:
        """A head message into the core; its effects performed in order. A plain start is
        awaited here, so an order that follows it (a kill) finds the attempt started. The
        starts (and exits) it makes are reported together once all of it is done."""
        self._obeying += 1
        try:
            for effect in self.core.handle(msg, _now()):
                if isinstance(effect, s.StartJob) and not effect.order.image:
                    try:
                        await self._start(effect.order)
                    except Exception as exc:  # one attempt fails, not the node: see _contain
                        self._contain(effect, exc)
                else:
                    self._perform_guarded(effect)
        finally:
            self._obeying -= 1
            self._report_soon()

    def _perform_guarded(self, effect: s.Effect) -> None:
        try:
            if type(effect) is s.SendToHead:  # most effects: straight to the wire
                self._send(effect.message)
            else:
                self._perform(effect)
        except Exception as exc:  # one effect fails, not the node: see _contain
            self._contain(effect, exc)

    def _perform(self, effect: s.Effect) -> None:
        """Do what the core asked: one small step per effect type."""
        self._performers[type(effect)](effect)

    def _performers_table(self) -> dict[type, Callable[[Any], None]]:
        return {
            s.SendToHead: lambda e: self._send(e.message),
            s.SaveEpoch: lambda e: self._save_epoch(e.epoch),
            s.StartJob: self._spawn_start,
            s.SignalJob: lambda e: self.runner.kill(e.attempt_id, e.reason, e.grace_s, fenced=e.fenced,
                                                    warning_signal=e.warning_signal),
            s.LaunchTask: lambda e: self._start_task(e.order),
            s.FinishLaunch: lambda e: self.bridge.launch_done(e.message),
            s.PullImage: lambda e: self._spawn(self._pull(e.image), f"pre-pull of {e.image}"),
            s.ReportImages: lambda e: self._spawn(self._report_images(), "reporting the image cache"),
            s.ShipFinalOutput: lambda e: self._ship_final(e.attempt_id),
            s.ForgetAttempt: self._forget,
            s.SaveLease: lambda e: self._save_lease(e.heard_at),
            s.SwitchHead: lambda e: self._link.next_head(),
            s.WarnNotEnrolled: lambda e: log.warning(
                "connected to the head at %s, which does not answer: this node's key (%s) is probably waiting for "
                "enrollment: run `hpcbatch nodes keys accept %s` on the head",
                self._link.head, self.keys.public.decode(), self.config.name),
            s.Log: lambda e: log.log(e.level, "%s", e.text),
        }

    def _spawn_start(self, effect: s.StartJob) -> None:
        """A container's start runs beside the loop: the image pull must not stop it."""
        order = effect.order
        self._spawn(self._start_container(order), f"starting attempt {order.attempt_id} of job {order.job_id}",
                    lambda exc: self._feed(s.StartFailed(order.attempt_id, order.job_id, _describe(exc))))

    def _forget(self, effect: s.ForgetAttempt) -> None:
        self._gpus_of.pop(effect.attempt_id, None)
        self.runner.forget(effect.attempt_id)

    def _contain(self, effect: s.Effect, exc: Exception) -> None:
        """An effect that failed: log it, and fail only the attempt (or launch) it concerns,
        with a reason naming the cause. The agent and every other job on the node live on."""
        log.error("performing %s failed: %s", type(effect).__name__, _describe(exc), exc_info=exc)
        if isinstance(effect, s.StartJob):
            self._feed(s.StartFailed(effect.order.attempt_id, effect.order.job_id, _describe(exc)))
        elif isinstance(effect, s.LaunchTask):
            msg = effect.order
            self._send(p.TaskExited(launch_id=msg.launch_id, origin=msg.origin, exit_code=None,
                                    reason=f"the agent on {self.config.name} failed to launch it: {_describe(exc)}"))

    def _save_epoch(self, epoch: int) -> None:
        try:  # remembered before it is obeyed: a restart must not forget it
            self._epoch_memory.save(epoch)
        except OSError as exc:  # still fenced while this process lives; say what a restart risks
            self._say_once("epoch-save", logging.ERROR, "cannot remember head epoch %d in %s: %s",
                           epoch, self._epoch_memory.path, exc)

    def _save_lease(self, heard_at: float) -> None:
        error = self._lease.save(heard_at)
        if error is not None:
            self._say_once("lease", logging.WARNING, "cannot keep the lease time in %s: %s", self._lease.path, error)

    # ----------------------------------------------------------------- attempts
    def _on_exit(self, result: AttemptResult) -> None:
        """The runner's word that an attempt ended (or never started)."""
        self._feed(s.AttemptEnded(exited_message(result)))

    def _ship_final(self, attempt_id: str) -> None:
        try:  # the output first, so the head has it all when the exit lands; best-effort
            self.bridge.revoke(attempt_id)
            self._ship_output(attempt_id, final=True)
        except Exception:
            log.exception("attempt %s: shipping its last output failed", attempt_id)

    def _gpu_report(self, running: list[str]) -> tuple[dict[str, str], list[p.GpuUsage]]:
        """GPUs out of service now, and a usage sample of each running attempt's GPUs (NVML)."""
        unhealthy = {**self._declared_unhealthy, **self.nvml.health()}
        usage: list[p.GpuUsage] = []
        if self.nvml.available:
            for attempt_id in running:
                for uuid_, (util, used) in self.nvml.usage(self._gpus_of.get(attempt_id, ())).items():
                    usage.append(
                        p.GpuUsage(attempt_id=attempt_id, uuid=uuid_, utilization_pct=util, memory_used_mib=used)
                    )
        return unhealthy, usage

    async def _start(self, msg: p.StartAttempt) -> None:
        spec = attempt_spec(msg, self._node, self.runner.job_dir(msg.attempt_id, msg.owner))
        outcome = await self.runner.start(spec)
        if isinstance(outcome, AttemptResult):  # refused, or ended already: reported like any exit
            self._feed(s.AttemptEnded(exited_message(outcome)))
            return
        # Told first: whatever fails after this, the attempt runs and is not reported failed.
        self._feed(s.AttemptRunning(msg.attempt_id, msg.job_id, outcome, _now().wall_ms))
        self._output_due.set()  # its output is shipped as it comes
        if msg.gpu_ids:
            self._gpus_of[msg.attempt_id] = list(msg.gpu_ids)
        grant = launch_grant(msg, self.runner.attempt_uid(msg.attempt_id))
        if grant is not None:
            self.bridge.allow(grant)

    def _start_task(self, msg: p.StartTask) -> None:
        """Run a launched command (an MPI daemon) inside this node's attempt of the job."""

        def exited(launch_id: str, exit_code: int | None, reason: str | None) -> None:
            self._send(p.TaskExited(launch_id=launch_id, origin=msg.origin, exit_code=exit_code, reason=reason))

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
        await self._start(msg)
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

    # ---------------------------------------------------------------------- logs
    def _ship_output(self, attempt_id: str, final: bool = False) -> None:
        job_id, offset = self.core.output_position(attempt_id)
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
        self.core.output_shipped(attempt_id, offset)

    async def _log_loop(self) -> None:
        """Ship running attempts' new output every LOG_POLL_S; with none running, sleep until
        one starts (an idle agent does not wake five times a second for nothing)."""
        while True:
            await asyncio.sleep(LOG_POLL_S)
            running = self.runner.running()
            if not running:
                self._output_due.clear()
                await self._output_due.wait()  # set by _start
                continue
            for attempt_id, job_id, _pid, _t in running:
                try:
                    self._ship_output(attempt_id)
                except Exception:  # that attempt's output waits; the others' goes on
                    self._say_once(f"ship-{attempt_id}", logging.ERROR, "shipping output of attempt %s of job %s "
                                   "failed", attempt_id, job_id, exc_info=True)

    # --------------------------------------------------------------------- loops
    async def _heartbeat_loop(self) -> None:
        """A beat every ``interval`` after the last, from a timer (cheaper than a task that
        sleeps and wakes); the timer stops when this task is cancelled."""
        loop = asyncio.get_running_loop()
        self._beat_timer = loop.call_later(self.core.interval, self._beat)
        try:
            await loop.create_future()  # never done: the beats run from the timer
        finally:
            self._beat_timer.cancel()

    def _beat(self) -> None:
        try:
            self._heartbeat()
        except Exception:  # the next beat tries again; the agent must not stop beating
            log.exception("heartbeat failed")
        self._beat_timer = asyncio.get_running_loop().call_later(self.core.interval, self._beat)

    def _heartbeat(self) -> None:
        """One beat: the GPUs' readings into the core, which checks the fence and says what runs."""
        if self.nvml.available or self._declared_unhealthy:
            unhealthy, usage = self._gpu_report([a for a, _r in self.core.running()])
            self._feed(s.Tick(unhealthy, tuple(usage), self.nvml.utilization()))
        else:  # no GPUs here: nothing to read
            self._feed(s.Tick())

    async def _receive_loop(self) -> None:
        """Read what the head sent, all that is queued per wake-up; the reports it makes leave
        together at its end."""
        wire = self._link.wire
        with wire.watching():
            while True:
                await self._obey_batch(await wire.receive())

    async def _obey_batch(self, batch: list[bytes]) -> None:
        """One wake-up's messages, in order; their reports leave together at its end."""
        self._obeying += 1
        try:
            for data in batch:
                await self._obey_data(data)
        finally:
            self._obeying -= 1
            self._report_soon()

    async def _obey_data(self, data: bytes) -> None:
        try:
            msg = p.decode_from_head(data)
        except msgspec.DecodeError as exc:
            self.core.heard(_now())  # unreadable, yet the head is alive
            log.warning("dropping an undecodable message from the head: %s", exc)
            return
        await self._obey(msg)

    async def _monitor_loop(self) -> None:
        """Watch the link's CurveZMQ handshakes (node_agent/head_link.py)."""
        await self._link.watch(self._connected, self._say_once)

    def _connected(self) -> None:
        """A handshake with the head succeeded: what was said of failed ones may be said again."""
        self.core.unsay("refused", "handshake")
        self._feed(s.Connected())

    # ---------------------------------------------------------------- start, stop
    def _recover(self) -> None:
        """Exits a previous agent process saw but the head never acknowledged, then attempts
        it left running: re-adopted (watched again, their real exits reported) while a head
        heard the node within the fence; past it the head may have retried them elsewhere,
        so they are killed (nothing runs untracked or twice)."""
        for result in self.runner.unacknowledged():
            self._on_exit(result)
        readopt = self._lease.fresh(self.config.fence_s)
        killed = 0
        for result in self.runner.adopt_orphans(readopt=readopt):
            killed += result.lost
            self._on_exit(result)  # the core keeps the first report of each
        for attempt_id, job_id, pid, started_at in self.runner.running():
            try:  # the head's Welcome rewinds this to the bytes it holds
                shipped = self.runner.log_path(attempt_id).stat().st_size
            except OSError:
                shipped = 0
            self._feed(s.AttemptAdopted(attempt_id, job_id, pid, started_at, shipped))
        if killed:
            log.warning("%d attempt(s) a previous agent process left were killed and reported lost (%s)", killed,
                        "multi-node, or with no record of how they ended" if readopt
                        else f"no head heard this node for over {self.config.fence_s:g} s: it may have retried them")

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set; on the way out running attempts are left to the next
        agent process (``leave_attempts_on_stop``), or killed."""
        self._recover()
        await self.bridge.start()
        self._send(self.core.register_message(_now()))
        log.info(
            "agent %s (%d vCPUs, %d MiB, public key %s) connecting to %s",
            self.config.name, self.facts.vcpus, self.facts.memory_mib, self.keys.public.decode(), ", ".join(self._link.heads),
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
            await self._close()

    async def _close(self) -> None:
        for task in list(self._starting):  # their owner: cancel what is left and wait for it
            task.cancel()
        if self._starting:
            await asyncio.gather(*self._starting, return_exceptions=True)
        if self._reports_due is not None:  # unsent reports: the exits are kept (on disk) and resent
            self._reports_due.cancel()
        await self.bridge.close()
        leave = self.config.leave_attempts_on_stop
        if leave and self.runner.running():
            log.info("leaving %d attempt(s) running: the next agent process re-adopts them",
                     len(self.runner.running()))
        await self.runner.shutdown(kill=not leave)
        if not leave:  # attempts left running keep their nosuid view; the next agent finds it mounted
            self.workdirs.release()
        self._link.close()
        self._ctx.term()
        self.nvml.close()
        log.info("agent stopped")


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
