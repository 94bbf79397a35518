"""Access keys for SigV4 callers: the key pair, whose it is, and the credentials-file block.

An hpcbatch access key looks like an AWS one (``AKIA`` + 16 base32 characters, a 40-character
secret) so that every tool that validates or redacts AWS keys treats it the same way. A key
belongs to a Unix user and carries that user's role (``hpcbatch.auth.policy``); the head
stores keys and passes a lookup function to ``hpcbatch.auth.sigv4.verify``.
Pure apart from ``secrets``: the time is an argument.
"""

from __future__ import annotations

import base64
import secrets
from typing import Literal

import msgspec

from hpcbatch.auth.policy import ROLES
from hpcbatch.errors import ClientError

__all__ = ["AccessKey", "KeyStatus", "Role", "credentials_profile", "generate_access_key"]

Role = Literal["admin", "developer", "user"]
# AWS IAM's words for a key that may / may not be used (UpdateAccessKey's Status).
KeyStatus = Literal["Active", "Inactive"]


class AccessKey(msgspec.Struct, frozen=True, kw_only=True):
    """One access key: the pair, the Unix user it acts as, that user's role, and its status."""

    access_key_id: str
    secret_access_key: str
    user: str
    role: Role
    status: KeyStatus = "Active"
    created_at: int  # epoch ms

    @property
    def active(self) -> bool:
        """Whether the key may sign requests (only an ``Active`` key may)."""
        return self.status == "Active"

    def __repr__(self) -> str:
        # Keep the secret out of logs and tracebacks; AWS shows only the id too.
        return (
            f"AccessKey(access_key_id={self.access_key_id!r}, user={self.user!r}, "
            f"role={self.role!r}, status={self.status!r}, created_at={self.created_at})"
        )


def generate_access_key(user: str, role: str, now_ms: int) -> AccessKey:
    """A new Active key for ``user`` with ``role``: ``AKIA`` + 16 base32 chars, 40-char secret."""
    if role not in ROLES:
        raise ClientError(f"role: must be one of {', '.join(ROLES)}, not {role!r}")
    if not user:
        raise ClientError("user: must be a Unix user name")
    # 10 random bytes are exactly 16 base32 characters (A-Z, 2-7), as in AWS key ids;
    # 30 random bytes are exactly 40 base64 characters, AWS's secret length and alphabet.
    key_id = "AKIA" + base64.b32encode(secrets.token_bytes(10)).decode("ascii")
    secret = base64.b64encode(secrets.token_bytes(30)).decode("ascii")
    return AccessKey(
        access_key_id=key_id,
        secret_access_key=secret,
        user=user,
        role=role,  # type: ignore[arg-type]  # checked against ROLES above
        status="Active",
        created_at=int(now_ms),
    )


def credentials_profile(key: AccessKey, profile: str) -> str:
    """The ``~/.aws/credentials`` block for ``key`` under ``[profile]``."""
    return (
        f"[{profile}]\n"
        f"aws_access_key_id = {key.access_key_id}\n"
        f"aws_secret_access_key = {key.secret_access_key}\n"
    )
