"""CurveZMQ key files: generate, write and load the key pairs of the head and the agents.

A key is its Z85 text (40 characters) and a newline, one key a file; configuration names
the files, code never holds a key. A secret key file is created with mode 0600 in the same
``open`` that makes it (``O_CREAT | O_EXCL``), so it is never readable by others, not even
for a moment, and an existing file is never overwritten. Loading refuses a secret key file
that group or others may read, as ssh refuses such a private key.

    >>> pair = ensure_keypair("/tmp/k/agent.key_secret", "/tmp/k/agent.key")  # doctest: +SKIP
    >>> pair.public                                                             # doctest: +SKIP
    b'rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7'
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

import zmq
from zmq.utils import z85

from hpcbatch.errors import ClientError

KEY_LENGTH = 40  # Z85 text of a 32-byte Curve25519 key


class CurveKeyError(ClientError):
    """A key file is missing, malformed, mismatched or too readable; the message names it."""


@dataclass(frozen=True)
class KeyPair:
    """A Curve25519 key pair as Z85 bytes, the form pyzmq's socket options take."""

    public: bytes
    secret: bytes


def parse_key(text: str | bytes, where: str) -> bytes:
    """Validate one Z85 key (surrounding whitespace ignored); ``where`` names its source."""
    raw = text.encode() if isinstance(text, str) else text
    key = raw.strip()
    if len(key) != KEY_LENGTH:
        raise CurveKeyError(f"{where}: a CurveZMQ key is {KEY_LENGTH} characters of Z85 text, found {len(key)}")
    try:
        z85.decode(key)
    except (ValueError, KeyError, struct.error):  # characters outside Z85, or a value past 2**32
        raise CurveKeyError(f"{where}: not a Z85-encoded key") from None
    return key


def load_public_key(path: str | Path) -> bytes:
    """Read a public key file; a missing file is an error naming it."""
    try:
        text = Path(path).read_bytes()
    except FileNotFoundError:
        raise CurveKeyError(f"public key file {path} does not exist") from None
    except OSError as exc:
        raise CurveKeyError(f"public key file {path}: {exc.strerror}") from None
    return parse_key(text, f"public key file {path}")


def load_secret_key(path: str | Path) -> bytes:
    """Read a secret key file, refusing one that group or others may read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise CurveKeyError(f"secret key file {path} does not exist") from None
    except OSError as exc:
        raise CurveKeyError(f"secret key file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise CurveKeyError(f"secret key file {path} is not a regular file")
        if mode & 0o077:
            raise CurveKeyError(
                f"secret key file {path} is readable by group or others (mode {stat.S_IMODE(mode):04o}): "
                f"run chmod 600 {path}"
            )
        text = f.read()
    return parse_key(text, f"secret key file {path}")


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` from the start; never replaces an existing file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have taken bits away; never adds any for secrets
        os.write(fd, data + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)


def write_keypair(secret_path: str | Path, public_path: str | Path, pair: KeyPair | None = None) -> KeyPair:
    """Write ``pair`` (a new one if None) to two new files: secret 0600, public 0644."""
    pair = pair or KeyPair(*zmq.curve_keypair())
    secret, public = Path(secret_path), Path(public_path)
    for p in (secret, public):
        if p.exists():
            raise CurveKeyError(f"key file {p} exists already: refusing to overwrite it")
    secret.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    public.parent.mkdir(parents=True, exist_ok=True)
    _write_new(secret, pair.secret, 0o600)
    _write_new(public, pair.public, 0o644)
    return pair


def ensure_keypair(secret_path: str | Path, public_path: str | Path) -> KeyPair:
    """Load the key pair at these paths, generating it on first use.

    A missing public key is derived from the secret one. A missing secret key next to an
    existing public key is an error: peers pin that public key, so a silent new pair would
    lock them out (delete the public key file to start over).
    """
    secret, public = Path(secret_path), Path(public_path)
    if not secret.exists():
        if public.exists():
            raise CurveKeyError(
                f"secret key file {secret} is missing but its public key {public} exists: "
                f"restore the secret key, or delete {public} to generate a new pair"
            )
        return write_keypair(secret, public)
    secret_key = load_secret_key(secret)
    derived = zmq.curve_public(secret_key)
    if not public.exists():
        public.parent.mkdir(parents=True, exist_ok=True)
        _write_new(public, derived, 0o644)
        return KeyPair(public=derived, secret=secret_key)
    public_key = load_public_key(public)
    if public_key != derived:
        raise CurveKeyError(f"public key file {public} does not belong to secret key file {secret}")
    return KeyPair(public=public_key, secret=secret_key)
