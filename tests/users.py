"""Real Unix users for identity tests (root only): created once, idempotently, left in place.

Tests that switch users skip elsewhere with a stated reason; CI runs as root, so they run.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import subprocess
from typing import Any

from tests import prereq

GROUP = "hpcb_grp"
USERS = ("hpcb_alice", "hpcb_bob", "hpcb_dev")


def need_root() -> None:
    if os.geteuid() != 0:
        prereq.skip("users", "needs root to create users and switch to them (CI runs as root)")


def ensure_users() -> None:
    """Create the test group and users if missing (idempotent, safe when run concurrently)."""
    need_root()
    try:
        grp.getgrnam(GROUP)
    except KeyError:
        subprocess.run(["groupadd", "-f", GROUP], check=True)
    for name in USERS:
        try:
            pwd.getpwnam(name)
            if name not in grp.getgrnam(GROUP).gr_mem:  # made by someone else, without the group
                subprocess.run(["usermod", "-aG", GROUP, name], check=True)
        except KeyError:
            result = subprocess.run(
                ["useradd", "--create-home", "--shell", "/bin/sh", "--groups", GROUP, name],
                capture_output=True, text=True,
            )
            if result.returncode not in (0, 9):  # 9: the name exists (a racing creator)
                raise RuntimeError(f"useradd {name}: {result.stderr.strip()}") from None


def call_as(user: str, endpoint: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """Call the head as ``user`` over its Unix socket; returns the reply or {"error": ..., "code": ...}.

    A forked child drops to the user's uid, gid and groups and then connects, so the kernel's
    peer credentials name that user. The child uses the client already imported here: the
    user needs no access to this checkout, only to the socket.
    """
    from hpcbatch.client import Client
    from hpcbatch.errors import HpcbatchError

    pw = pwd.getpwnam(user)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(read_fd)
            os.setgroups(os.getgrouplist(user, pw.pw_gid))
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
            try:
                with Client(endpoint, timeout=20) as client:
                    out: dict[str, Any] = client.call(path, body)
            except HpcbatchError as exc:
                out = {"error": exc.message, "type": type(exc).__name__}
            os.write(write_fd, json.dumps(out).encode())
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    chunks = []
    while chunk := os.read(read_fd, 65536):
        chunks.append(chunk)
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"call_as({user}) child failed")
    result: dict[str, Any] = json.loads(b"".join(chunks))
    return result
