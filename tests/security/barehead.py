"""A bare ``hpcbatch head`` (no agents) started as the operator would, for the state-at-rest and TLS tests.

Started through the CLI (``hpcbatch head --config FILE``) with an explicit umask, so a test
sees exactly what a freshly installed head makes of its state directory; ``start`` waits
until the head answers on its Unix socket or has exited (a refusal to start is a result).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hpcbatch.client import Client
from hpcbatch.errors import HpcbatchError
from tests.harness import free_port


class BareHead:
    """One head process on ``state``; ``socket``/``endpoint`` are its two APIs."""

    def __init__(self, root: Path, state: Path | None = None, extra: str = "") -> None:
        self.root = root
        self.state = state or root / "state"
        self.port = free_port()
        self.api_socket = root / "api.sock"
        self.socket = f"unix:{self.api_socket}"
        self.config = root / "head.toml"
        self.config.write_text(
            f'state_dir = "{self.state}"\nhttp_listen = "127.0.0.1:{self.port}"\n'
            f'api_socket = "{self.api_socket}"\nfleet_bind = "tcp://127.0.0.1:{free_port()}"\n{extra}'
        )
        self.scheme = "https" if "tls_cert" in extra else "http"
        self.endpoint = f"{self.scheme}://127.0.0.1:{self.port}"
        self.log = root / "head.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, umask: int = 0o022, timeout: float = 20) -> int | None:
        """Start the head under ``umask``; None once it answers as the active head, else its exit code."""
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hpcbatch.cli.main", "head", "--config", str(self.config)],
                stdout=log, stderr=subprocess.STDOUT, umask=umask, start_new_session=True,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return self.proc.returncode
            try:
                with Client(self.socket, timeout=2) as client:
                    if client.describe_head().get("role") == "active":  # on PostgreSQL: once it holds the lease
                        return None
            except HpcbatchError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"the head neither answered nor exited in {timeout:g} s: {self.output()}")

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """As root over the Unix socket (an admin)."""
        with Client(self.socket, timeout=10) as client:
            return client.call(path, body)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
