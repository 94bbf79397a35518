"""The head daemon's entry point: wire store, engine, fleet and API, run until signalled.

The API is served twice: on TCP (callers sign with SigV4) and on the Unix socket
``api_socket`` (mode 0666: the kernel's peer credentials name the caller, hpcbatch.head.api).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
import uuid

from aiohttp import web

from hpcbatch.curve import ensure_keypair
from hpcbatch.errors import HpcbatchError
from hpcbatch.head.api import make_app
from hpcbatch.head.config import HeadConfig, load_head_config
from hpcbatch.head.engine import Engine
from hpcbatch.head.fleet import Fleet
from hpcbatch.head.logs import LogStore
from hpcbatch.head.nodekeys import NodeKeyRegistry
from hpcbatch.head.service import BatchService
from hpcbatch.store import SqliteStore

log = logging.getLogger("hpcbatch.head")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Head:
    """The assembled head: holds (not inherits) store, engine, fleet and service."""

    def __init__(self, config: HeadConfig) -> None:
        self.config = config
        state = config.state_path
        state.mkdir(parents=True, exist_ok=True)
        self.store = SqliteStore(state / "hpcbatch.db", durability=config.durability)
        self.logs = LogStore(state / "logs")
        self.head_id = uuid.uuid4().hex
        self.fleet: Fleet | None = None
        self.engine = Engine(
            self.store,
            self.logs,
            send=self._send,
            clock_ms=_now_ms,
            kill_grace_s=config.kill_grace_s,
            log_stream_prefix=lambda job: job.job_definition.rsplit("/", 1)[-1].split(":")[0],
        )
        self.service = BatchService(self.store, self.engine, region=config.region, account=config.account_id)
        self.service.private_data = config.private_data
        self.service.min_state_time_limit_s = config.min_state_time_limit_s
        self.curve = ensure_keypair(config.curve_secret_key_path, config.curve_public_key_path)
        self.node_keys = NodeKeyRegistry(config.node_keys_path, auto_accept=config.auto_accept_nodes)
        self.service.node_keys = self.node_keys

    def _send(self, node: str, message: object) -> None:
        assert self.fleet is not None
        self.fleet.send(node, message)  # type: ignore[arg-type]

    def _load(self) -> None:
        for doc in self.store.list_resources("ce"):
            self.engine.compute_environment_changed(doc)
        for doc in self.store.list_resources("queue"):
            self.engine.job_queue_changed(doc)
        self.service.load_drains()
        self.engine.recover()
        self.service.ensure_default_job_definition()
        self.service.ensure_default_multinode_definition()

    async def _prune_loop(self) -> None:
        while True:
            cutoff = _now_ms() - int(self.config.retention_days * 86_400_000)
            with self.store.transaction():
                pruned = self.store.prune_jobs(cutoff)
                self.store.prune_audit(_now_ms() - int(self.config.audit_retention_days * 86_400_000))
            for job in pruned:
                for attempt in job.attempts:
                    self.logs.delete(attempt.attempt_id)
            if pruned:
                log.info("pruned %d jobs finished before the %g-day retention", len(pruned), self.config.retention_days)
            await asyncio.sleep(self.config.prune_interval_s)

    async def _tick_loop(self) -> None:
        """Time passes for the scheduler even when nothing else happens (decay, time limits)."""
        while True:
            await asyncio.sleep(self.config.scheduler_tick_s)
            self.engine.tick()

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set."""
        self.fleet = Fleet(
            self.config.fleet_bind,
            self.engine,
            keys=self.node_keys,
            curve=self.curve,
            head_id=self.head_id,
            heartbeat_interval_s=self.config.heartbeat_interval_s,
            liveness=self.config.liveness,
        )
        self._load()
        runner = web.AppRunner(
            make_app(self.service, roles=self.config.roles, region=self.config.region), access_log=None
        )
        await runner.setup()
        host, port = self.config.http_host_port
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        api_socket = self.config.api_socket_path
        api_socket.parent.mkdir(parents=True, exist_ok=True)
        await web.UnixSite(runner, str(api_socket)).start()
        os.chmod(api_socket, 0o666)  # anyone may connect; SO_PEERCRED says who they are
        log.info(
            "head %s serving http://%s:%d and unix:%s; fleet %s (CurveZMQ; agents pin %s)",
            self.head_id[:8], host, port, api_socket, self.fleet.endpoint, self.config.curve_public_key_path,
        )
        try:
            async with asyncio.TaskGroup() as tasks:
                fleet_task = tasks.create_task(self.fleet.serve())
                prune_task = tasks.create_task(self._prune_loop())
                tick_task = tasks.create_task(self._tick_loop())
                await stop.wait()
                log.info("stopping: signal received")
                fleet_task.cancel()
                prune_task.cancel()
                tick_task.cancel()
        finally:
            await runner.cleanup()
            api_socket.unlink(missing_ok=True)
            self.engine.flush()
            self.fleet.close()
            self.store.close()
            log.info("head stopped")


def main(config_path: str) -> int:
    """Run the head with the config at ``config_path``; returns the process exit code."""
    try:
        config = load_head_config(config_path)
    except HpcbatchError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 3
    logging.basicConfig(
        level=config.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr
    )

    async def _serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Head(config).run(stop)

    try:
        asyncio.run(_serve())
    except HpcbatchError as exc:  # a key file, most likely: one line naming it
        log.error("cannot start: %s", exc.message)
        return 3
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
