"""When a head last heard this node, kept as a file's mtime across agent restarts.

A restarted agent re-adopts the attempts it left only while that time is within the fence
(after it, the head may have retried them elsewhere: hpcbatch.fencing). ``utime`` needs no
free space, so a full disk does not lose it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


class LeaseFile:
    """``<state_dir>/lease``: its mtime (wall clock) is when a head last heard the node."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def save(self, heard_at: float) -> OSError | None:
        """Set the time (wall-clock seconds); the error, if it could not be kept."""
        try:
            os.utime(self.path, (heard_at, heard_at))
        except FileNotFoundError:
            try:
                self.path.touch()
                os.utime(self.path, (heard_at, heard_at))
            except OSError as exc:
                return exc
        except OSError as exc:
            return exc
        return None

    def fresh(self, fence_after_s: float) -> bool:
        """Whether a head heard this node (the previous agent process) within the fence."""
        if fence_after_s <= 0:
            return True
        try:
            heard = self.path.stat().st_mtime
        except FileNotFoundError:
            return True  # never heard, or an older agent: nothing says a head gave up on us
        return time.time() - heard <= fence_after_s
