"""How the CLI words times: the scheduler's ``t=SECONDS`` as local times, expected starts in UTC.

The scheduler speaks in seconds since the epoch (``t=1765036800``: it has no clock and no
time zone); people read local times, so ``human_reason`` turns every ``t=SECONDS`` into
``15:20:00 local time (in 3 min)`` before a reason is shown (``hpcbatch why`` and
``hpcbatch wait``). Below both commands' modules, so neither imports the other.
"""

from __future__ import annotations

import re
import time
from typing import Any

_EPOCH = re.compile(r"\bt=(\d{9,}(?:\.\d+)?)")


def in_words(delta_s: float) -> str:
    """A duration from now, as a person says it: ``in 40 s``, ``in 3 min``, ``in 2 h 5 min``;
    a time past: ``5 s ago`` (an overdue boot: how long overdue); within a second: ``now``.

    >>> in_words(40), in_words(185), in_words(7500), in_words(-5), in_words(0.5)
    ('in 40 s', 'in 3 min', 'in 2 h 5 min', '5 s ago', 'now')
    """
    if delta_s <= -1:
        return in_words(-delta_s).removeprefix("in ") + " ago"
    if delta_s < 1:
        return "now"
    if delta_s < 60:
        return f"in {delta_s:.0f} s"
    minutes = round(delta_s / 60)
    if minutes < 60:
        return f"in {minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"in {hours} h {minutes} min" if minutes else f"in {hours} h"


def local_time(t: float, now_s: float) -> str:
    """``HH:MM:SS local time``, with the date when it is not today."""
    stamp, today = time.localtime(t), time.localtime(now_s)
    if stamp[:3] == today[:3]:
        return time.strftime("%H:%M:%S local time", stamp)
    return time.strftime("%Y-%m-%d %H:%M:%S local time", stamp)


def human_reason(text: str, now_s: float) -> str:
    """``text`` with every ``t=EPOCH_SECONDS`` shown as a local time and how far off it is."""
    def one(m: re.Match[str]) -> str:
        t = float(m.group(1))
        return f"{local_time(t, now_s)} ({in_words(t - now_s)})"

    return _EPOCH.sub(one, text)


def start_time(ms: Any) -> str:
    """An expected start (ms since the epoch) as UTC time, ``N/A`` when unknown (as squeue)."""
    if not isinstance(ms, int | float):
        return "N/A"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))
