"""The agent's journal on its own (node_agent.journal): entries, results, acknowledgements,
what an orphan's entry says about how it ended, and writes retried after a full disk.
A temp dir stands in for the state dir; no runner, no processes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from node_agent.attempts import LOST_REASON, AttemptResult
from node_agent.journal import Journal, JournalEntry, orphan_result, read_result, remove_attempt_dir


def _entry(attempt_id: str = "a1", **kw: object) -> JournalEntry:
    fields: dict = dict(attempt_id=attempt_id, job_id="j1", pid=4242, create_time=1000.5, started_at=1_000_000)
    fields.update(kw)
    return JournalEntry(**fields)


def _result(attempt_id: str, stopped_at: int = 2_000_000, exit_code: int | None = 0) -> AttemptResult:
    return AttemptResult(attempt_id, "j1", exit_code, None, None, 1_000_000, stopped_at)


def test_a_started_attempt_is_journalled_and_its_result_replaces_the_entry(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    entry = _entry(cgroup="/sys/fs/cgroup/x/a1", status_file="/s/a1/exit_status", timeout_at=5, uid=1001,
                   adoptable=True, memory_mib=64, oom_base=2)
    journal.record_start(entry)
    (path, found), = journal.orphans()
    assert path == tmp_path / "running" / "a1.json" and found == entry  # round trip, every field
    journal.attempt_dir("a1").mkdir()
    journal.record_end(_result("a1", exit_code=3))
    assert list(journal.orphans()) == []
    assert read_result(journal.attempt_dir("a1")) == _result("a1", exit_code=3)
    assert journal.known("a1") == _result("a1", exit_code=3)


def test_the_entry_keeps_the_on_disk_keys_an_older_agent_wrote(tmp_path: Path) -> None:
    """An agent upgraded while its jobs ran reads what the previous version journalled."""
    old = {"attempt_id": "a1", "job_id": "j1", "pid": 7, "create_time": 1.5, "started_at": 2, "cgroup": None,
           "container": False, "status_file": "/s/a1/exit_status", "timeout_at": None, "memory_mib": 64,
           "uid": 1001, "adoptable": True}
    assert _entry().to_json().keys() == old.keys() | {"warning_signal", "warning_s", "warned", "oom_base"}  # only added
    entry = JournalEntry.from_json(old)
    assert entry is not None and entry.readoptable() and entry.memory_mib == 64
    assert entry.oom_base == 0  # a cgroup of its own: every OOM kill in it is the job's
    assert (entry.warning_signal, entry.warning_s, entry.warned) == (None, 0, False)  # no warning


def test_the_entry_carries_the_warning_signal_and_whether_it_was_sent(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    entry = _entry(warning_signal="USR1", warning_s=60)
    journal.record_start(entry)
    assert [e for _, e in journal.orphans()] == [entry]
    journal.record_warned(_entry(warning_signal="USR1", warning_s=60, warned=True))
    ((_, found),) = journal.orphans()
    assert (found.warning_signal, found.warning_s, found.warned) == ("USR1", 60, True)
    assert list((tmp_path / "running").iterdir()) == [tmp_path / "running" / f"{entry.attempt_id}.json"]


@pytest.mark.parametrize("junk", [{"warning_signal": 5, "warning_s": "x", "warned": "yes"},
                                  {"warning_signal": "", "warning_s": True, "warned": 1}])
def test_odd_warning_fields_read_as_no_warning(junk: dict[str, object]) -> None:
    entry = JournalEntry.from_json(_entry().to_json() | junk)
    assert entry is not None and (entry.warning_signal, entry.warning_s, entry.warned) == (None, 0, False)


@pytest.mark.parametrize("garbage", [b"{", b"[]", b'{"attempt_id": "a"}', b'{"attempt_id": "a", "pid": "x", '
                                     b'"create_time": 1, "started_at": 1}'])
def test_garbage_in_the_journal_is_removed_not_adopted(tmp_path: Path, garbage: bytes) -> None:
    journal = Journal(tmp_path)
    (tmp_path / "running" / "bad.json").write_bytes(garbage)
    journal.record_start(_entry("good"))
    assert [e.attempt_id for _, e in journal.orphans()] == ["good"]
    assert sorted(p.name for p in (tmp_path / "running").iterdir()) == ["good.json"]


def test_unacknowledged_lists_results_on_disk_oldest_first_until_forgotten(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    for attempt_id, stopped in (("late", 3), ("early", 1), ("live", 2)):
        journal.attempt_dir(attempt_id).mkdir()
        journal.record_end(_result(attempt_id, stopped))
    journal.attempt_dir("refused").mkdir()
    assert [r.attempt_id for r in journal.unacknowledged(running={"live"})] == ["early", "late"]
    journal.forget("early")
    assert journal.known("early") is None and journal.known("late") is not None
    remove_attempt_dir(journal.attempt_dir("early"), keep_workdir=False)
    assert not journal.attempt_dir("early").exists()
    assert [r.attempt_id for r in journal.unacknowledged(running=set())] == ["live", "late"]


def test_keep_workdir_leaves_only_the_owners_work_dir(tmp_path: Path) -> None:
    adir = tmp_path / "a1"
    (adir / "work").mkdir(parents=True)
    (adir / "work" / "out.dat").write_text("kept")
    (adir / "output.log").write_text("log")
    remove_attempt_dir(adir, keep_workdir=True)
    assert [p.name for p in adir.iterdir()] == ["work"] and (adir / "work" / "out.dat").read_text() == "kept"


def test_an_orphan_reads_as_its_shim_recorded_it_or_as_lost(tmp_path: Path) -> None:
    status = tmp_path / "exit_status"
    entry = _entry(status_file=str(status))
    assert entry.recorded_status() is None
    status.write_text("137\n")
    assert entry.recorded_status() == 137
    killed = orphan_result(entry, 137, now=9)
    assert (killed.exit_code, killed.reason, killed.lost) == (None, "Killed by signal SIGKILL", False)
    container = orphan_result(_entry(container=True), 137, now=9)  # podman's codes are the container's
    assert (container.exit_code, container.reason) == (137, None)
    assert orphan_result(entry, 4, now=9).exit_code == 4
    lost = orphan_result(entry, None, now=9)
    assert (lost.exit_code, lost.status_reason, lost.lost, lost.stopped_at) == (None, LOST_REASON, True, 9)


def test_a_write_that_fails_is_retried_until_it_lands(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    adir = journal.attempt_dir("a1")
    (adir / "result.json").mkdir(parents=True)  # the rename onto it fails, even for root

    async def body() -> None:
        journal.loop = asyncio.get_running_loop()
        journal.record_end(_result("a1"))
        assert journal.pending() == 1 and journal.known("a1") is not None  # answered from memory meanwhile
        (adir / "result.json").rmdir()
        async with asyncio.timeout(5):
            while journal.pending():
                await asyncio.sleep(0.05)
        journal.close()

    asyncio.run(body())
    assert json.loads((adir / "result.json").read_text())["attempt_id"] == "a1"


def test_a_write_owed_for_a_forgotten_attempt_is_dropped(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.record_end(_result("gone"))  # its directory does not exist: the write fails
    assert journal.pending() == 1
    journal.forget("gone")
    assert journal.pending() == 0
    journal.close()
