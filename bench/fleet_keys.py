"""Curve key pairs for emulated nodes, made, written, read and enrolled in bulk (bench/fleet_emulator.py).

A keys file holds one ``NAME PUBLIC SECRET`` line (Z85) per node; enrolling writes each
public key into a head's ``node_keys/accepted/``, as Ansible does for real nodes.
"""

from __future__ import annotations

import os

import zmq


def make_keys(count: int, prefix: str = "fnode") -> list[tuple[str, bytes, bytes]]:
    """``count`` (name, public, secret) Curve key pairs, Z85."""
    return [(f"{prefix}{i}", *zmq.curve_keypair()) for i in range(count)]


def write_keys(path: str, keys: list[tuple[str, bytes, bytes]]) -> None:
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="ascii") as f:
        for name, public, secret in keys:
            f.write(f"{name} {public.decode()} {secret.decode()}\n")


def read_keys(path: str) -> list[tuple[str, bytes, bytes]]:
    with open(path, encoding="ascii") as f:
        return [(n, pub.encode(), sec.encode()) for n, pub, sec in (line.split() for line in f if line.strip())]


def enroll(node_keys_dir: str, keys: list[tuple[str, bytes, bytes]]) -> None:
    """Pre-seed every public key as accepted (what Ansible does for real nodes)."""
    accepted = os.path.join(node_keys_dir, "accepted")
    os.makedirs(accepted, exist_ok=True)
    for name, public, _ in keys:
        with open(os.path.join(accepted, name), "wb") as f:
            f.write(public + b"\n")
