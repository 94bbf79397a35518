"""The newest head epoch an agent has seen, kept in its state folder across restarts.

Fencing (docs/ha.md) works only if an agent never forgets the newest epoch: a restarted
agent that started from 0 would again obey a paused former head that wakes up before the
new one reaches it. So the epoch is written (atomically: a temporary file, fsync, rename,
fsync of the folder) before the agent acts on an order of a newer head, and read back at
start. It is tied to the head's public key: an agent moved to another cluster (another
key) starts from 0 there, instead of refusing that cluster's heads forever.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger("hpcbatch.agent")

FILE_NAME = "head-epoch.json"


class HeadEpoch:
    """``<state_dir>/head-epoch.json``: ``{"epoch": n, "headKey": "<the head's public key>"}``."""

    def __init__(self, state_dir: Path, head_key: bytes) -> None:
        self.path = state_dir / FILE_NAME
        self._head_key = head_key.decode("ascii", "replace").strip()

    def load(self) -> int:
        """The remembered epoch, or 0 (none yet, another cluster's, or unreadable: said in the log)."""
        try:
            doc = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as exc:
            log.warning("%s cannot be read (%s): starting from head epoch 0", self.path, exc)
            return 0
        if not isinstance(doc, dict) or doc.get("headKey") != self._head_key:
            return 0  # written for another head key pair: another cluster
        epoch = doc.get("epoch")
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            log.warning("%s holds no epoch: starting from head epoch 0", self.path)
            return 0
        return epoch

    def save(self, epoch: int) -> None:
        """Remember ``epoch``, atomically and durably; raises OSError if it cannot."""
        tmp = self.path.with_name(FILE_NAME + ".tmp")
        data = json.dumps({"epoch": epoch, "headKey": self._head_key}).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        folder = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
