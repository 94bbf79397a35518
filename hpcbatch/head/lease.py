"""The active head's lease: one row in PostgreSQL, an expiry, and a fencing token (epoch).

Rules (no home-made consensus: PostgreSQL serializes every step):

* A head takes the lease only when it has expired: one ``UPDATE ... WHERE expires_at <
  clock_timestamp()`` that also adds one to ``epoch``. Two standbys racing both run it;
  the row lock lets exactly one of them match.
* The holder renews it every ``ttl/3`` with ``WHERE epoch = mine``. Zero rows updated
  means another head took over: the holder stops at once.
* A holder that cannot reach the database does not stop (docs/ha.md): a database restart
  must cost nothing. Once a whole ``ttl`` has passed since its last renewal it is no longer
  *confirmed* (the lease may be someone else's by now): it still answers the agents'
  heartbeats, but echoes none of them (so their fence clock runs, hpcbatch.fencing) and
  sends no order, until a renewal succeeds (the epoch is unchanged: no head took over
  meanwhile, so nothing it held back was unsafe) or finds the lease taken (it stops).
* A standby takes the lease only when its own store answers (it could not use it
  otherwise), and not in the first ``2 x ttl`` after the database server started: a lease
  that lapsed because the server was down goes back to its holder, which renews it as
  soon as the server is back, rather than to whichever head asked first.
* Time is the database server's clock only; heads' clocks never meet.
* Fencing, for a head that was paused or cut off and does not know it lost: its store
  refuses to commit under an old epoch (hpcbatch.store.postgres), and agents refuse its
  orders, which all carry its epoch (hpcbatch.protocol, node_agent.main).

A clean stop expires the lease at once, so a standby takes over without waiting ``ttl``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

log = logging.getLogger("hpcbatch.lease")

_TAKE = (
    "UPDATE head_lease SET epoch = epoch + 1, holder = %s, url = %s, "
    "expires_at = clock_timestamp() + %s * interval '1 second' "
    "WHERE id = 1 AND expires_at < clock_timestamp() "
    "AND pg_postmaster_start_time() < clock_timestamp() - %s * interval '1 second' RETURNING epoch"
)
RESTART_GRACE_TTLS = 2  # after a database restart, the holder has this many ttl to renew first
_RENEW = (
    "UPDATE head_lease SET expires_at = clock_timestamp() + %s * interval '1 second' "
    "WHERE id = 1 AND epoch = %s AND holder = %s"
)
_RELEASE = "UPDATE head_lease SET expires_at = clock_timestamp() WHERE id = 1 AND epoch = %s AND holder = %s"
_READ = (
    "SELECT epoch, holder, url, extract(epoch FROM expires_at - clock_timestamp()) FROM head_lease WHERE id = 1"
)


@dataclass(frozen=True)
class LeaseHolder:
    """Who holds the lease, as the database says now."""

    epoch: int
    head_id: str
    url: str
    expires_in_s: float  # negative: expired, up for the taking


class HeadLease:
    """This head's side of the lease; see the module docstring."""

    def __init__(self, url: str, head_id: str, advertise_url: str, ttl_s: float) -> None:
        self._url = url
        self.head_id = head_id
        self.advertise_url = advertise_url
        self.ttl_s = ttl_s
        self.epoch: int | None = None
        self._db: psycopg.AsyncConnection[Any] | None = None
        self._confirmed_until = 0.0  # monotonic: surely this head's lease until then
        # Called when a renewal succeeds again after the lease went unconfirmed (database back).
        self.on_confirmed: Callable[[], None] | None = None

    def confirmed(self) -> bool:
        """Whether this head surely still holds the lease (renewed less than ``ttl`` ago)."""
        return self.epoch is not None and time.monotonic() < self._confirmed_until

    async def _conn(self) -> psycopg.AsyncConnection[Any]:
        if self._db is None or self._db.closed:
            self._db = await psycopg.AsyncConnection.connect(
                self._url, autocommit=True, application_name="hpcbatch-head-lease", connect_timeout=5
            )
            # Never wait long on the row: a takeover blocked behind a paused head's
            # transaction retries (the server ends that transaction, see PostgresStore).
            await self._db.execute("SET lock_timeout = '1s'")
            await self._db.execute("SET statement_timeout = '5s'")
        return self._db

    async def _run(self, sql: str, args: tuple[Any, ...]) -> psycopg.AsyncCursor[Any]:
        try:
            return await (await self._conn()).execute(sql, args)
        except psycopg.OperationalError:
            if self._db is not None:
                await self._db.close()
            self._db = None
            raise

    async def holder(self) -> LeaseHolder | None:
        row = await (await self._run(_READ, ())).fetchone()
        return LeaseHolder(int(row[0]), row[1], row[2], float(row[3])) if row else None

    async def acquire(
        self, stop: asyncio.Event, poll_s: float = 0.25, usable: Callable[[], str | None] | None = None,
    ) -> int | None:
        """Wait until this head holds the lease; its epoch, or None if ``stop`` came first.

        ``usable``: None when this head's store works, else why not; the lease is not taken
        meanwhile (a head that cannot use its store must not hold the cluster's lease).
        """
        said_waiting = False
        said_unusable = False
        while not stop.is_set():
            try:
                why = usable() if usable is not None else None
                if why is not None:
                    if not said_unusable:
                        log.warning("standby: not taking the lease while this head's store is unusable: %s", why)
                        said_unusable = True
                    await asyncio.wait_for(stop.wait(), poll_s)
                    continue
                said_unusable = False
                began = time.monotonic()
                row = await (await self._run(
                    _TAKE, (self.head_id, self.advertise_url, self.ttl_s, RESTART_GRACE_TTLS * self.ttl_s),
                )).fetchone()
                if row is not None:
                    self.epoch = int(row[0])
                    self._confirmed_until = began + self.ttl_s
                    return self.epoch
                if not said_waiting:
                    current = await self.holder()
                    log.info(
                        "standby: head %s is active (epoch %s, %s); waiting for its lease to lapse",
                        current.head_id[:8] if current else "?", current.epoch if current else "?",
                        current.url if current else "?",
                    )
                    said_waiting = True
            except psycopg.Error as exc:
                log.warning("standby: cannot take the lease yet: %s", " ".join(str(exc).split()))
            except TimeoutError:
                continue
            try:
                await asyncio.wait_for(stop.wait(), poll_s)
            except TimeoutError:
                pass
        return None

    async def keep(self) -> str:
        """Renew until another head has taken the lease; returns why (the head then stops).

        An unreachable database never ends this: the lease goes unconfirmed meanwhile (see
        the module docstring) and is renewed when the database answers again.
        """
        assert self.epoch is not None
        renewed = time.monotonic()
        out_since: float | None = None  # when the first renewal failed, in this outage
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            began = time.monotonic()
            try:
                cur = await self._run(_RENEW, (self.ttl_s, self.epoch, self.head_id))
            except psycopg.Error as exc:
                if out_since is None:
                    out_since = began
                    log.error("cannot renew the lease (epoch %d): %s; this head keeps the agents' heartbeats "
                              "and, %g s after its last renewal, holds its orders until the database answers",
                              self.epoch, " ".join(str(exc).split()), self.ttl_s)
                continue
            if cur.rowcount != 1:
                current = await self.holder()
                by = f" by head {current.head_id[:8]} (epoch {current.epoch})" if current else ""
                return f"the lease (epoch {self.epoch}) was taken over{by}"
            was_confirmed = self.confirmed()
            self._confirmed_until = began + self.ttl_s
            if out_since is not None:
                log.warning("the state database answers again after %.1f s; the lease (epoch %d) is still this "
                            "head's (renewed %.1f s after the previous renewal)", began - out_since, self.epoch,
                            began - renewed)
                out_since = None
            if not was_confirmed and self.on_confirmed is not None:
                self.on_confirmed()
            renewed = began

    async def release(self) -> None:
        """Let a standby take over now (clean stop); best effort."""
        if self.epoch is None:
            return
        try:
            await self._run(_RELEASE, (self.epoch, self.head_id))
        except psycopg.Error as exc:
            log.warning("could not release the lease (a standby takes over when it lapses): %s", exc)

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None
