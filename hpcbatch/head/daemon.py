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
from typing import Any

from aiohttp import web

from hpcbatch.curve import ensure_keypair
from hpcbatch.errors import HpcbatchError
from hpcbatch.fencing import default_fence_after_s
from hpcbatch.head.api import SpaceGuard, make_app
from hpcbatch.head.config import HeadConfig, load_head_config
from hpcbatch.head.engine import Engine, EngineOptions
from hpcbatch.head.faults import RAISE_ON_ENV
from hpcbatch.head.fleet import Fleet, FleetSettings
from hpcbatch.head.gc_policy import CollectorPolicy
from hpcbatch.head.ha import add_describe_route, standby_app
from hpcbatch.head.lease import HeadLease
from hpcbatch.head.logs import LogStore
from hpcbatch.head.nodekeys import NodeKeyRegistry
from hpcbatch.head.observe import mount_observers
from hpcbatch.head.power import PowerManager, Stonith
from hpcbatch.head.ratelimit import RateLimiter
from hpcbatch.head.service import BatchService
from hpcbatch.head.statedir import secure_state, state_modes
from hpcbatch.store import is_postgresql, open_store
from hpcbatch.store.postgres import DatabaseUnreachable, LeaseLost, PostgresStore

log = logging.getLogger("hpcbatch.head")

EXIT_LEASE_LOST = 75  # EX_TEMPFAIL: another head is active; systemd's Restart= brings this one back as a standby


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Head:
    """The assembled head: holds (not inherits) store, engine, fleet and service."""

    def __init__(self, config: HeadConfig) -> None:
        self.config = config
        state = config.state_path
        secure_state(config)  # 0700/0600, or refuse to start naming the chmod (docs/security.md)
        self.tls = None
        if config.tls_cert:
            from hpcbatch.tls import server_context

            self.tls = server_context(config.tls_cert, config.tls_key)
        from hpcbatch.auth.keys import SecretBox

        # Access keys' secrets are sealed in the store with this key, kept outside it.
        self.secrets = SecretBox.load(config.secrets_key_path, group_readable=bool(config.state_group))
        self.store = open_store(config.store_target, durability=config.durability, sealer=self.secrets)
        self.logs = LogStore(state / "logs", file_mode=state_modes(config)[1])
        self.head_id = uuid.uuid4().hex
        # On PostgreSQL, heads share the store and one of them is active (hpcbatch.head.lease).
        self.lease = (
            HeadLease(config.store_target, self.head_id, config.advertised_url, config.lease_ttl_s)
            if is_postgresql(config.store_target) else None
        )
        self.epoch = 0  # the fencing token every order to an agent carries; 0 without a lease
        self._held_orders: list[tuple[str, object]] = []  # while the lease is unconfirmed (database away)
        self.lost_lease: str | None = None
        self.fleet: Fleet | None = None
        # How long a cut-off agent runs on (hpcbatch.fencing): retries of a lost node wait for it.
        self.fence_after_s = (
            default_fence_after_s(config.heartbeat_interval_s, config.liveness)
            if config.fence_after_s is None else config.fence_after_s
        )
        self.engine = Engine(
            self.store,
            self.logs,
            send=self._send,
            clock_ms=_now_ms,
            options=EngineOptions(
                kill_grace_s=config.kill_grace_s,
                preempt_grace_s=config.preempt_grace_s,
                fence_after_s=self.fence_after_s,
                heartbeat_interval_s=config.heartbeat_interval_s,
                log_stream_prefix=lambda job: job.job_definition.rsplit("/", 1)[-1].split(":")[0],
                raise_on=os.environ.get(RAISE_ON_ENV),  # test-only fault injection (tests/chaos); unset in production
            ),
        )
        self.service = BatchService(self.store, self.engine, region=config.region, account=config.account_id)
        self.service.private_data = config.private_data
        self.service.allow_privileged_containers = config.allow_privileged_containers
        self.service.container_limits = config.container_limits
        self.service.power_pools = config.power.pools  # MANAGED compute environments' node pools
        self.engine.container_capabilities = config.container_capabilities
        self.service.min_state_time_limit_s = config.min_state_time_limit_s
        self.curve = ensure_keypair(config.curve_secret_key_path, config.curve_public_key_path)
        self.node_keys = NodeKeyRegistry(config.node_keys_path, auto_accept=config.auto_accept_nodes)
        self.service.node_keys = self.node_keys

    def _seal_secrets(self) -> None:
        """Seal access keys an older hpcbatch stored in the clear (the active head only: a
        standby writes nothing); a store sealed with another key file stops the head here."""
        with self.store.transaction():
            sealed = self.store.seal_access_keys()
        if sealed:
            log.info("sealed %d access key secret(s) stored in the clear with %s", sealed, self.secrets.path)

    def _send(self, node: str, message: object) -> None:
        assert self.fleet is not None
        if self.lease is not None and not self.lease.confirmed():
            # The database is away and the lease may be another head's by now: no order
            # leaves until a renewal shows it is still ours (hpcbatch.head.lease).
            self._held_orders.append((node, message))
            return
        self._send_held_orders()
        self.fleet.send(node, message)  # type: ignore[arg-type]

    def _send_held_orders(self) -> None:
        """Send what waited for the lease to be confirmed again, in order."""
        assert self.fleet is not None
        held, self._held_orders = self._held_orders, []
        if held:
            log.info("the lease is confirmed again: sending %d held message(s) to agents", len(held))
        for node, message in held:
            self.fleet.send(node, message)  # type: ignore[arg-type]

    def _lease_confirmed(self) -> None:
        if self.fleet is not None:
            self._send_held_orders()
        self.engine.request_step()  # commit what waited for the database now, not at the next retry

    def _store_problem(self) -> str | None:
        """None when the store answers now, else why not (hpcbatch.head.lease: a standby
        takes the lease only when it can use it)."""
        try:
            self.store.ping()  # type: ignore[attr-defined]
        except DatabaseUnreachable as exc:
            return exc.cause
        return None

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
            try:
                with self.store.transaction():
                    pruned = self.store.prune_jobs(cutoff)
                    # Node state changes go after the same retention as jobs: a fleet's
                    # power cycles and flaps would otherwise grow the event table for ever.
                    node_events = self.store.prune_node_events(cutoff)
                    self.store.prune_audit(_now_ms() - int(self.config.audit_retention_days * 86_400_000))
            except Exception as exc:  # disk full: prune next time, keep serving
                log.error("pruning old jobs failed, retrying in %gs: %s", self.config.prune_interval_s, exc)
                pruned, node_events = [], 0
            for job in pruned:
                for attempt in job.attempts:
                    self.logs.delete(attempt.attempt_id)
            if pruned or node_events:
                log.info("pruned %d jobs finished and %d node events recorded before the %g-day retention",
                         len(pruned), node_events, self.config.retention_days)
            await asyncio.sleep(self.config.prune_interval_s)

    async def describe(self) -> dict[str, Any]:
        """DescribeHeads: this head's role and the lease's holder (hpcbatch.head.ha)."""
        doc: dict[str, Any] = {
            "headId": self.head_id,
            "url": self.config.advertised_url,
            "role": "active" if self.fleet is not None else "standby",
            "epoch": self.epoch,
            "store": "postgresql" if self.lease is not None else "sqlite",
        }
        if self.lease is None:
            doc["active"] = {"headId": self.head_id, "url": self.config.advertised_url, "epoch": 0}
            return doc
        try:
            holder = await self.lease.holder()
        except Exception as exc:  # the database is unreachable: say so, not a 500
            doc["leaseError"] = " ".join(str(exc).split())
            return doc
        if holder is not None and holder.expires_in_s > 0:
            doc["active"] = {
                "headId": holder.head_id, "url": holder.url, "epoch": holder.epoch,
                "leaseExpiresInSeconds": round(holder.expires_in_s, 3),
            }
        return doc

    async def _wait_for_lease(self, stop: asyncio.Event) -> bool:
        """Serve as a standby until this head holds the lease; False if stopped first."""
        assert self.lease is not None
        assert isinstance(self.store, PostgresStore)
        # Reads only, until this head holds the lease: PostgreSQL refuses any write meanwhile.
        # (With the database away, the setting applies when the store connects again.)
        try:
            self.store.read_only(True)
        except DatabaseUnreachable as exc:
            log.warning("standby: %s", exc.message)
        app = standby_app(
            self.describe, self.service, roles=self.config.roles, region=self.config.region,
            limiter=RateLimiter(self.config.rates, self.config.rate_limit_exempt, time.monotonic),
        )
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        host, port = self.config.http_host_port
        await web.TCPSite(runner, host, port, reuse_address=True, ssl_context=self.tls).start()
        api_socket = self.config.api_socket_path
        api_socket.parent.mkdir(parents=True, exist_ok=True)
        await web.UnixSite(runner, str(api_socket)).start()
        os.chmod(api_socket, 0o666)
        log.info("head %s is a standby on %s://%s:%d and unix:%s", self.head_id[:8], self.config.http_scheme, host, port,
                 api_socket)
        try:
            while True:
                epoch = await self.lease.acquire(stop, usable=self._store_problem)
                if epoch is None:
                    return False
                try:
                    self.store.read_only(False)
                    self.store.fence(epoch, stall_s=self.config.lease_ttl_s)
                    break
                except DatabaseUnreachable as exc:
                    # The database went away between the take and now: a head that cannot
                    # use its store must not hold the lease. Let it go; wait as a standby.
                    log.warning("took the lease (epoch %d) but cannot use the store: %s; letting it go",
                                epoch, exc.cause)
                    try:
                        self.store.read_only(True)
                    except DatabaseUnreachable:
                        pass  # recorded: applies on the next connection
                    await self.lease.release()
        finally:
            await runner.cleanup()
        self.epoch = epoch
        self.store.on_unusable = lambda why: self._lease_lost(why, stop)
        self.lease.on_confirmed = self._lease_confirmed
        log.info("head %s took the lease: active, epoch %d", self.head_id[:8], epoch)
        return True

    def _lease_lost(self, why: str, stop: asyncio.Event) -> None:
        if self.lost_lease is None:
            self.lost_lease = why
            log.error("stopping: %s", why)
        stop.set()

    async def _keep_lease(self, stop: asyncio.Event) -> None:
        assert self.lease is not None
        self._lease_lost(await self.lease.keep(), stop)
    async def _tick_loop(self) -> None:
        """Time passes for the scheduler even when nothing else happens (decay, time limits)."""
        while True:
            await asyncio.sleep(self.config.scheduler_tick_s)
            self.engine.tick()

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set."""
        if self.lease is not None and not await self._wait_for_lease(stop):
            await self.lease.close()
            self.store.close()
            return
        self.fleet = Fleet(
            self.config.fleet_bind,
            self.engine,
            keys=self.node_keys,
            curve=self.curve,
            settings=FleetSettings(
                head_id=self.head_id, heartbeat_interval_s=self.config.heartbeat_interval_s,
                liveness=self.config.liveness, epoch=self.epoch, startup_grace_s=self.fence_after_s,
            ),
        )
        self._seal_secrets()
        if self.lease is not None:  # echo agents' heartbeats only while the lease is surely ours
            self.fleet.lease_confirmed = self.lease.confirmed
        self._load()
        runner = await self._serve_api()
        api_socket = self.config.api_socket_path
        try:
            async with asyncio.TaskGroup() as tasks:
                fleet_task = tasks.create_task(self.fleet.serve())
                prune_task = tasks.create_task(self._prune_loop())
                lease_task = tasks.create_task(self._keep_lease(stop)) if self.lease is not None else None
                tick_task = tasks.create_task(self._tick_loop())
                power_task = None
                if self.config.power.pools:  # MANAGED compute environments (docs/managed.md)
                    self.engine.power = PowerManager(self.config.power.pools, self.engine)
                    power_task = tasks.create_task(self.engine.power.serve())
                stonith_task = None
                if self.config.power.compute_environments or self.config.power.nodes or self.config.power.pools:
                    stonith = Stonith(self.config.power, self.engine.compute_environment_of, self.engine.node_fenced,
                                      self.engine.power.drivers if self.engine.power else None)
                    self.engine.fence_node = stonith.request
                    stonith_task = tasks.create_task(stonith.serve())
                await stop.wait()
                if self.lost_lease is None:
                    log.info("stopping: signal received")
                for task in (fleet_task, prune_task, lease_task, tick_task, stonith_task, power_task):
                    if task is not None:
                        task.cancel()
        finally:
            await runner.cleanup()
            api_socket.unlink(missing_ok=True)
            try:
                self.engine.flush()
            except HpcbatchError as exc:  # fenced, or the store is gone: nothing more is written, or sent
                if self.lost_lease is None and not isinstance(exc, LeaseLost):
                    raise
                self.lost_lease = self.lost_lease or exc.message
            self.fleet.close()
            self.store.close()
            await self._leave_lease()
            log.info("head stopped")

    async def _serve_api(self) -> web.AppRunner:
        """Start the HTTP API on its TCP address and its Unix socket; the runner to clean up."""
        app = make_app(
            self.service, roles=self.config.roles, region=self.config.region,
            limiter=RateLimiter(self.config.rates, self.config.rate_limit_exempt, time.monotonic),
            space=SpaceGuard(str(self.config.state_path), int(self.config.state_min_free_mib * 2**20)),
        )
        add_describe_route(app, self.describe)
        mount_observers(app, self.service, roles=self.config.roles, region=self.config.region,
                        http_url=self.config.public_http_url)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        host, port = self.config.http_host_port
        site = web.TCPSite(runner, host, port, reuse_address=True, ssl_context=self.tls)
        await site.start()
        api_socket = self.config.api_socket_path
        api_socket.parent.mkdir(parents=True, exist_ok=True)
        await web.UnixSite(runner, str(api_socket)).start()
        os.chmod(api_socket, 0o666)  # anyone may connect; SO_PEERCRED says who they are
        if self.config.state_path.resolve() in api_socket.resolve().parents:
            log.warning("api_socket %s is inside the private state directory: only its owner and root reach it; "
                        "other users need api_socket in a directory they can search (e.g. /run/hpcbatch/api.sock)",
                        api_socket)
        assert self.fleet is not None
        log.info(
            "head %s serving %s://%s:%d and unix:%s; fleet %s (CurveZMQ; agents pin %s)",
            self.head_id[:8], self.config.http_scheme, host, port, api_socket, self.fleet.endpoint, self.config.curve_public_key_path,
        )
        return runner

    async def _leave_lease(self) -> None:
        """Give the lease up on a clean stop (a standby takes over now); close it either way."""
        if self.lease is not None:
            if self.lost_lease is None:
                await self.lease.release()
            await self.lease.close()


STORE_WAIT_POLL_S = 2.0  # a head started while its PostgreSQL is away looks for it this often


def _database_problem(url: str) -> str | None:
    """Why the PostgreSQL at ``url`` cannot be reached for now, or None (also when it answers
    with a lasting refusal, a password or a database name: opening the store says that)."""
    import psycopg

    try:
        psycopg.connect(url, connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        # No SQLSTATE: no server answered (refused, no socket, timeout); 57P0x: it is
        # starting up or shutting down. Anything else will not pass by waiting.
        if exc.sqlstate is None or exc.sqlstate.startswith("57P"):
            return " ".join(str(exc).split())
    return None


async def _wait_for_database(config: HeadConfig, stop: asyncio.Event) -> bool:
    """On PostgreSQL, wait until the state database answers: a head (re)started during a
    database outage waits for it instead of exiting (docs/ha.md). False if stopped first."""
    if not is_postgresql(config.store_target):
        return True
    said = False
    while not stop.is_set():
        problem = await asyncio.to_thread(_database_problem, config.store_target)
        if problem is None:
            if said:
                log.info("the state database answers: starting")
            return True
        if not said:
            log.warning("waiting for the state database to answer: %s", problem)
            said = True
        try:
            await asyncio.wait_for(stop.wait(), STORE_WAIT_POLL_S)
        except TimeoutError:
            pass
    return False


def main(config_path: str, store: str | None = None) -> int:
    """Run the head with the config at ``config_path`` (``store`` overrides its store)."""
    try:
        config = load_head_config(config_path, store=store)
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
        if not await _wait_for_database(config, stop):
            return
        collector = CollectorPolicy(loop)  # the long-lived state out of the collector's walks
        collector.install()
        head = Head(config)
        try:
            await head.run(stop)
        finally:
            collector.uninstall()
        if head.lost_lease is not None:
            raise LeaseLost(head.lost_lease)

    try:
        asyncio.run(_serve())
    except LeaseLost as exc:
        log.error("stopped: %s (a supervisor restarts this head as a standby)", exc.message)
        return EXIT_LEASE_LOST
    except HpcbatchError as exc:  # a key file, most likely: one line naming it
        log.error("cannot start: %s", exc.message)
        return 3
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
