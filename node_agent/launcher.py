"""The launcher mpirun calls instead of ssh: ``LAUNCHER [ssh options] HOST COMMAND...``.

Open MPI/PRRTE (``plm_ssh_agent``) and MPICH Hydra (``-launcher-exec``) run it once per
remote node to start their daemon there. It asks the node's agent (the Unix socket in
``HPCBATCH_LAUNCH_SOCKET``, with the job's ``HPCBATCH_LAUNCH_SECRET``) to run COMMAND on
HOST inside the job, then waits, as ssh does: the remote command's exit code becomes its
own; 255 when the launch fails or the agent goes away. Its stdin and stdout stay open
meanwhile (mpirun watches it like an ssh process).

This file runs as the job's owner, who may not read the repository or the virtualenv: it
is standard library only, and the agent copies its text (``script_text``) into the job's
private work directory. Keep it importable by any Python 3.7+.
"""

from __future__ import annotations

import json
import os
import socket
import sys

# ssh options that take a value (OpenSSH's getopt string); all others are flags.
_SSH_VALUE_OPTIONS = set("BbcDEeFIiJLlmOoPpQRSWw")
_REPLY_LIMIT = 64 * 1024
SSH_FAILURE = 255  # what ssh exits with when it could not run the remote command


class UsageError(Exception):
    """The arguments do not name a host and a command."""


def parse_args(argv: list[str]) -> tuple[str, str]:
    """(host, command) from ssh-style arguments; ssh options are skipped, ``user@`` dropped.

    Like ssh, the command's words are joined by spaces for the remote shell.
    """
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        # A cluster of flags ("-xT"), possibly ending in a valued option ("-p22", "-o" "X").
        for j, letter in enumerate(arg[1:], start=1):
            if letter in _SSH_VALUE_OPTIONS:
                if j == len(arg) - 1:
                    i += 1  # the value is the next argument
                break
        i += 1
    if i >= len(argv):
        raise UsageError("no host given")
    host = argv[i].rpartition("@")[2]
    words = argv[i + 1 :]
    if not host or not words:
        raise UsageError("no command given" if host else "empty host name")
    return host, " ".join(words)


def launch(socket_path: str, secret: str, host: str, command: str) -> int:
    """Ask the agent to run ``command`` on ``host``; wait for its exit code."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.connect(socket_path)
        except OSError as exc:
            return _fail(f"cannot reach the node agent at {socket_path}: {exc.strerror or exc}")
        request = {"secret": secret, "host": host, "command": command}
        sock.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n") and len(data) < _REPLY_LIMIT:
            try:
                chunk = sock.recv(4096)
            except OSError as exc:
                return _fail(f"lost the node agent while {host} ran the command: {exc}")
            if not chunk:
                return _fail(f"the node agent closed the connection while {host} ran the command")
            data += chunk
    finally:
        sock.close()
    try:
        reply = json.loads(data)
    except ValueError:
        return _fail("garbled answer from the node agent")
    error = reply.get("error")
    code = reply.get("exit_code")
    if error:
        return _fail(f"{host}: {error}")
    if not isinstance(code, int):
        return _fail(f"{host}: the command ended without an exit code (killed by a signal?)")
    return code


def _fail(message: str) -> int:
    sys.stderr.write(f"hpcbatch-launcher: {message}\n")
    sys.stderr.flush()
    return SSH_FAILURE


def main(argv: list[str] | None = None) -> int:
    """Entry point: the exit code is the remote command's (255: it could not run)."""
    args = sys.argv[1:] if argv is None else argv
    try:
        host, command = parse_args(args)
    except UsageError as exc:
        return _fail(f"{exc}; usage: launcher [ssh options] HOST COMMAND...")
    socket_path = os.environ.get("HPCBATCH_LAUNCH_SOCKET", "")
    secret = os.environ.get("HPCBATCH_LAUNCH_SECRET", "")
    if not socket_path or not secret:
        return _fail("HPCBATCH_LAUNCH_SOCKET and HPCBATCH_LAUNCH_SECRET must be set (only inside an hpcbatch multi-node job)")
    return launch(socket_path, secret, host, command)


def script_text(path: str = __file__) -> str:
    """This module (or another stdlib-only one at ``path``) as a stand-alone script, with a
    shebang for the system's Python."""
    # -I: ignore PYTHONPATH, PYTHONHOME and the user's site: only the standard library.
    shebang = "#!/usr/bin/python3 -I" if os.path.exists("/usr/bin/python3") else "#!/usr/bin/env python3"
    with open(path, encoding="utf-8") as f:
        source = f.read()
    return f"{shebang}\n{source}"


if __name__ == "__main__":
    sys.exit(main())
