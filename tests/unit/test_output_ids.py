"""Job ids in tables tell rows apart: whole where they fit, else their distinguishing ends."""

from __future__ import annotations

import io
import os
import sys
from typing import Any

import pytest

from hpcbatch.cli.output import distinct_suffixes, job_id_cells, print_jobs

# Time-ordered ids made in the same second share their first 13 characters.
IDS = [
    "01a24ba9-c3f0-7d11-8a4b-5e2f90c1d7a3",
    "01a24ba9-c3f0-7d12-9b0c-6f3e81a2e8b4",
    "01a24ba9-c3f0-7d13-a1d2-7a4f72b3f9c5",
]


def test_distinct_suffixes_are_unique_and_at_least_eight_characters() -> None:
    ends = distinct_suffixes(IDS + [IDS[0] + ":7", IDS[0] + "#1"])
    assert len(set(ends)) == 5 and all(len(e) >= 8 for e in ends)
    assert all(full.endswith(end) for full, end in zip(IDS, ends, strict=False))


def test_whole_ids_where_they_fit_and_in_pipes() -> None:
    assert job_id_cells(IDS, None) == IDS
    assert job_id_cells(IDS, 36) == IDS
    assert job_id_cells(IDS, 20) == ["…" + i[-8:] for i in IDS]


def _terminal_table(monkeypatch: pytest.MonkeyPatch, columns: int, jobs: list[dict[str, Any]]) -> str:
    master, slave = os.openpty()
    out = open(slave, "w", closefd=True)  # noqa: SIM115 - closed below, read from the pty's master
    monkeypatch.setenv("COLUMNS", str(columns))
    monkeypatch.setattr(sys, "stdout", out)
    try:
        print_jobs(jobs)
        out.flush()
        os.set_blocking(master, False)
        data = io.BytesIO()
        while True:
            try:
                chunk = os.read(master, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            data.write(chunk)
    finally:
        out.close()
        os.close(master)
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", data.getvalue().decode())


def test_a_narrow_terminal_shows_the_distinguishing_end_of_each_id(monkeypatch: pytest.MonkeyPatch) -> None:
    jobs = [{"jobId": i, "jobName": f"sweep-{n}", "jobQueue": "default", "status": "RUNNABLE", "owner": "alice",
             "createdAt": 0, "statusReason": "waiting for 4 nodes"} for n, i in enumerate(IDS)]
    narrow = _terminal_table(monkeypatch, 90, jobs)
    for i in IDS:
        assert "…" + i[-8:] in narrow, narrow
    assert narrow.count("01a24ba9-c") == 0, narrow
    wide = _terminal_table(monkeypatch, 200, jobs)
    for i in IDS:
        assert i in wide, wide
