"""Access keys for SigV4 callers: the key pair, whose it is, and the credentials-file block.

An hpcbatch access key looks like an AWS one (``AKIA`` + 16 base32 characters, a 40-character
secret) so that every tool that validates or redacts AWS keys treats it the same way. A key
belongs to a Unix user and carries that user's role (``hpcbatch.auth.policy``); the head
stores keys and passes a lookup function to ``hpcbatch.auth.sigv4.verify``.
Pure apart from ``secrets``: the time is an argument.

Secrets at rest: the store never holds a secret in the clear. ``SecretBox`` seals each one
with AES-256-GCM under a key kept in its own 0600 file outside the database (the head's
``secrets_key_file``), bound to its access key id (the associated data), so a database dump,
a backup or a PostgreSQL replica hands out no key, and a sealed secret cannot be moved to
another key id's row. The head needs the secret itself to check signatures (SigV4 is an
HMAC), hence encryption, not a hash.
"""

from __future__ import annotations

import base64
import os
import secrets
import stat
from pathlib import Path
from typing import Literal

import msgspec

from hpcbatch.auth.policy import ROLES
from hpcbatch.errors import ClientError, ServerError

__all__ = [
    "AccessKey", "KeyStatus", "Role", "SecretBox", "SecretsKeyError", "aws_profile", "credentials_profile",
    "generate_access_key",
]

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


def aws_profile(
    key_id: str, secret: str, profile: str, *, region: str, endpoint: str | None = None, ca_bundle: str | None = None
) -> str:
    """A complete ``~/.aws/config`` profile: key, secret, region, and the head's endpoint and CA
    bundle, so boto3 and the aws CLI work at the first call (``AWS_PROFILE=profile``).

    The endpoint goes in a ``services`` section (botocore >= 1.31, aws CLI v2.13), the CA
    bundle in the profile (``ca_bundle``): both are read from the config file alone.
    """
    lines = [
        f"[profile {profile}]",
        f"aws_access_key_id = {key_id}",
        f"aws_secret_access_key = {secret}",
        f"region = {region}",
    ]
    if ca_bundle:
        lines.append(f"ca_bundle = {ca_bundle}")
    if endpoint:
        lines += [f"services = {profile}", "", f"[services {profile}]", "batch =", f"  endpoint_url = {endpoint}",
                  "cloudwatch_logs =", f"  endpoint_url = {endpoint}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- at rest

SEALED_PREFIX = "aesgcm1:"  # a sealed secret: prefix + base64(12-byte nonce + ciphertext + tag)
_KEY_BYTES = 32  # AES-256


class SecretsKeyError(ServerError):
    """The secrets key file is missing its bytes, too open, or is not the key the store was sealed with."""


class SecretBox:
    """Seal and open access-key secrets with the AES-256-GCM key read from ``path``."""

    def __init__(self, key: bytes, path: Path) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # ~15 ms: the head only

        if len(key) != _KEY_BYTES:
            raise SecretsKeyError(f"secrets key file {path}: holds {len(key)} bytes, not {_KEY_BYTES}")
        self._aead = AESGCM(key)
        self.path = path

    @classmethod
    def load(cls, path: str | Path, *, create: bool = True, group_readable: bool = False) -> SecretBox:
        """The key in ``path``, made (0600, or 0640 with ``group_readable``) on first use.

        Refused, naming the ``chmod`` to run, when others (or, unless ``group_readable``, the
        group) may read it, as ``load_secret_key`` refuses a too-open CurveZMQ key.
        """
        path = Path(path)
        mode = 0o640 if group_readable else 0o600
        if create and not path.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
            try:
                os.fchmod(fd, mode)
                os.write(fd, base64.b64encode(secrets.token_bytes(_KEY_BYTES)) + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise SecretsKeyError(f"secrets key file {path} does not exist: restore it (the store's "
                                  "access keys were sealed with it)") from None
        except OSError as exc:
            raise SecretsKeyError(f"secrets key file {path}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise SecretsKeyError(f"secrets key file {path} is not a regular file")
            if stat.S_IMODE(st.st_mode) & ~mode:
                raise SecretsKeyError(
                    f"secrets key file {path} is mode {stat.S_IMODE(st.st_mode):04o}, open to others: "
                    f"run chmod {mode:o} {path}"
                )
            text = f.read().strip()
        try:
            key = base64.b64decode(text, validate=True)
        except ValueError:
            raise SecretsKeyError(f"secrets key file {path}: not base64 text") from None
        return cls(key, path)

    @staticmethod
    def is_sealed(value: str) -> bool:
        return value.startswith(SEALED_PREFIX)

    def seal(self, key_id: str, secret: str) -> str:
        """``secret`` encrypted for the store, bound to ``key_id``."""
        nonce = secrets.token_bytes(12)
        sealed = self._aead.encrypt(nonce, secret.encode(), key_id.encode())
        return SEALED_PREFIX + base64.b64encode(nonce + sealed).decode("ascii")

    def open(self, key_id: str, sealed: str) -> str:
        """The secret ``seal`` made; SecretsKeyError when this is not the key it was sealed with."""
        from cryptography.exceptions import InvalidTag

        try:
            raw = base64.b64decode(sealed[len(SEALED_PREFIX):], validate=True)
            return self._aead.decrypt(raw[:12], raw[12:], key_id.encode()).decode()
        except (InvalidTag, ValueError):
            raise SecretsKeyError(
                f"the secret of access key {key_id} does not open with the secrets key file {self.path}: "
                "this head must use the same secrets_key_file as the head that sealed it"
            ) from None
