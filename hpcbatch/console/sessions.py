"""Console sign-in: sessions, one-time links, CSRF tokens.

Two ways in, both ending in a session cookie (HttpOnly, SameSite=Strict):

* an access key (the SigV4 key ``hpcbatch admin keys create`` issued): the secret is
  compared with the stored one, the session takes the key's user and role;
* a one-time link that ``hpcbatch console`` asks the head for (as Jupyter prints one):
  the link carries a random token, valid once and for ``LINK_TTL_S``, for the identity
  that asked (the kernel's peer credentials over the Unix socket, or a signed request).

Every form carries the session's CSRF token, checked on every POST. Sessions live in the
head's memory: a head restart signs everyone out (links are cheap to get again).
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass, field

from hpcbatch.auth.policy import Caller

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


class Sessions:
    """Sessions and one-time sign-in links, in memory."""

    def __init__(self) -> None:
        self._now = time.monotonic
        self._sessions: dict[str, Session] = {}
        self._links: dict[str, tuple[float, Caller]] = {}

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
        if len(self._sessions) >= MAX_SESSIONS:  # the oldest go first
            for sid in list(self._sessions)[: MAX_SESSIONS // 10]:
                del self._sessions[sid]
        session = Session(secrets.token_urlsafe(32), caller, secrets.token_urlsafe(24), self._now() + SESSION_TTL_S)
        self._sessions[session.session_id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None or session.expires < self._now():
            self._sessions.pop(session_id or "", None)
            return None
        return session

    def end(self, session_id: str | None) -> None:
        self._sessions.pop(session_id or "", None)

    def _expire(self) -> None:
        now = self._now()
        for token in [t for t, (exp, _) in self._links.items() if exp < now]:
            del self._links[token]
