"""Console sign-in: sessions, one-time links, CSRF tokens.

Two ways in, both ending in a session cookie (HttpOnly, SameSite=Strict):

* an access key (the SigV4 key ``hpcbatch admin keys create`` issued): the secret is
  compared with the stored one, the session takes the key's user and role;
* a one-time link that ``hpcbatch console`` asks the head for (as Jupyter prints one):
  the link carries a random token, valid once and for ``LINK_TTL_S``, for the identity
  that asked (the kernel's peer credentials over the Unix socket, or a signed request).

Every form carries the session's CSRF token, checked on every POST. Sessions are kept in
the head's store as well as its memory, so a head restart, an upgrade or a failover to
another head on the same address (PostgreSQL) signs nobody out. The store holds only the
SHA-256 of a session's id (whoever reads the database gets no cookie), and the session's
identity, CSRF token and expiry. A session made with an access key ends when the key is
deleted or made Inactive. One-time links stay in memory: they live minutes.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from hpcbatch.auth.policy import Caller
from hpcbatch.store.base import Store

log = logging.getLogger(__name__)

COOKIE = "hpcbatch_console"
SESSION_TTL_S = 12 * 3600.0
LINK_TTL_S = 600.0
MAX_SESSIONS = 10_000


@dataclass
class Session:
    """A signed-in browser: who it acts as, and its CSRF token."""

    session_id: str
    caller: Caller
    csrf: str
    expires: float = field(default=0.0)

    def csrf_ok(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token, self.csrf)


STORE_KIND = "console-session"  # the store's resources of this kind: one per session
_SWEEP_EVERY = 64  # sign-ins between sweeps of expired sessions from the store


class Sessions:
    """Sessions (memory and the store) and one-time sign-in links (memory); module doc."""

    def __init__(self, store: Store | None = None) -> None:
        self._now = time.time  # wall clock: an expiry must mean the same after a restart
        self._store = store
        self._sessions: dict[str, Session] = {}
        self._links: dict[str, tuple[float, Caller]] = {}
        self._started = 0

    def create_link(self, caller: Caller) -> str:
        """A token that signs ``caller`` in once, within ``LINK_TTL_S``."""
        self._expire()
        token = secrets.token_urlsafe(32)
        self._links[token] = (self._now() + LINK_TTL_S, caller)
        return token

    def redeem(self, token: str) -> Session | None:
        """The link's session, or None if the token is unknown, used or stale."""
        entry = self._links.pop(token, None)
        if entry is None or entry[0] < self._now():
            return None
        return self.start(entry[1])

    def start(self, caller: Caller) -> Session:
        self._expire()
        if len(self._sessions) >= MAX_SESSIONS:  # the oldest leave memory first (the store keeps them)
            for sid in list(self._sessions)[: MAX_SESSIONS // 10]:
                del self._sessions[sid]
        session = Session(secrets.token_urlsafe(32), caller, secrets.token_urlsafe(24), self._now() + SESSION_TTL_S)
        self._sessions[session.session_id] = session
        self._save(session)
        return session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        session = self._sessions.get(session_id) or self._load(session_id)
        if session is None:  # unknown (a forged cookie costs a read, never a write)
            return None
        if session.expires < self._now() or not self._key_active(session.caller):
            self.end(session_id)
            return None
        self._sessions[session_id] = session
        return session

    def end(self, session_id: str | None) -> None:
        if not session_id:
            return
        self._sessions.pop(session_id, None)
        if self._store is not None:
            try:
                with self._store.transaction():
                    self._store.delete_resource(STORE_KIND, _stored_name(session_id))
            except Exception as exc:  # the store is away or full: it expires there on its own
                log.warning("console sign-out not stored: %s", exc)

    # ------------------------------------------------------------------ the store
    def _save(self, session: Session) -> None:
        if self._store is None:
            return
        doc = {"name": _stored_name(session.session_id), "user": session.caller.user, "role": session.caller.role, "via": session.caller.via,
               "accessKeyId": session.caller.access_key_id, "csrf": session.csrf, "expires": session.expires}
        try:
            with self._store.transaction():
                self._store.put_resource(STORE_KIND, _stored_name(session.session_id), 1, "ACTIVE", doc)
            self._started += 1
            if self._started % _SWEEP_EVERY == 0:
                self._sweep()
        except Exception as exc:  # the store is away or full: the session lives in memory only
            log.warning("console session not stored (a head restart will sign it out): %s", exc)

    def _load(self, session_id: str) -> Session | None:
        if self._store is None:
            return None
        try:
            doc = self._store.get_resource(STORE_KIND, _stored_name(session_id), 1)
        except Exception:  # the store is away: not signed in, for now
            return None
        if doc is None:
            return None
        caller = Caller(user=str(doc["user"]), role=str(doc["role"]), via=str(doc["via"]),
                        access_key_id=doc.get("accessKeyId"))
        return Session(session_id, caller, str(doc["csrf"]), float(doc["expires"]))

    def _key_active(self, caller: Caller) -> bool:
        """A session signed in with an access key lasts only while the key is Active."""
        if self._store is None or caller.access_key_id is None:
            return True
        try:
            key: dict[str, Any] | None = self._store.get_access_key(caller.access_key_id)
        except Exception:  # the store is away: the session stands
            return True
        return key is not None and key.get("status", "Active") == "Active"

    def _sweep(self) -> None:
        """Expired sessions out of the store (the store's, not only this head's)."""
        assert self._store is not None
        now = self._now()
        with self._store.transaction():
            for doc in self._store.list_resources(STORE_KIND):
                if float(doc.get("expires", 0)) < now and doc.get("name"):
                    self._store.delete_resource(STORE_KIND, str(doc["name"]))

    def _expire(self) -> None:
        now = self._now()
        for token in [t for t, (exp, _) in self._links.items() if exp < now]:
            del self._links[token]


def _stored_name(session_id: str) -> str:
    """The store's name of a session: its id's SHA-256 (the id itself is the cookie)."""
    return hashlib.sha256(session_id.encode()).hexdigest()
