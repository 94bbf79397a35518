"""The active head's lease: one row in PostgreSQL, an expiry, and a fencing token (epoch).

Rules (no home-made consensus: PostgreSQL serializes every step):

* A head takes the lease only when it has expired: one ``UPDATE ... WHERE expires_at <
  clock_timestamp()`` that also adds one to ``epoch``. Two standbys racing both run it;
  the row lock lets exactly one of them match.
* The holder renews it every ``ttl/3`` with ``WHERE epoch = mine``. Zero rows updated
  means another head took over: the holder stops at once. A holder that cannot reach the
  database for a whole ``ttl`` stops too (the lease may be someone else's by now).
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
from dataclasses import dataclass
from typing import Any

import psycopg

log = logging.getLogger("hpcbatch.lease")

_TAKE = (
    "UPDATE head_lease SET epoch = epoch + 1, holder = %s, url = %s, "
    "expires_at = clock_timestamp() + %s * interval '1 second' "
    "WHERE id = 1 AND expires_at < clock_timestamp() RETURNING epoch"
)
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

    async def acquire(self, stop: asyncio.Event, poll_s: float = 0.25) -> int | None:
        """Wait until this head holds the lease; its epoch, or None if ``stop`` came first."""
        said_waiting = False
        while not stop.is_set():
            try:
                row = await (await self._run(_TAKE, (self.head_id, self.advertise_url, self.ttl_s))).fetchone()
                if row is not None:
                    self.epoch = int(row[0])
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
            try:
                await asyncio.wait_for(stop.wait(), poll_s)
            except TimeoutError:
                pass
        return None

    async def keep(self) -> str:
        """Renew until the lease is lost; returns why (the head then stops)."""
        assert self.epoch is not None
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            try:
                cur = await self._run(_RENEW, (self.ttl_s, self.epoch, self.head_id))
            except psycopg.Error as exc:
                silent = time.monotonic() - renewed
                if silent >= self.ttl_s:
                    return f"could not renew the lease for {silent:.1f} s ({' '.join(str(exc).split())})"
                continue
            if cur.rowcount != 1:
                current = await self.holder()
                by = f" by head {current.head_id[:8]} (epoch {current.epoch})" if current else ""
                return f"the lease (epoch {self.epoch}) was taken over{by}"
            renewed = time.monotonic()

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
