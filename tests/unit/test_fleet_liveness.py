"""The head's rules for declaring silent nodes lost (hpcbatch.head.liveness): time passed in."""

from __future__ import annotations

from hpcbatch.head.liveness import LivenessJudge

DEADLINE = 5.0


def judge(**kw: float) -> LivenessJudge:
    return LivenessJudge(deadline_s=DEADLINE, stall_s=3.5, listening_since=0.0, **kw)  # type: ignore[arg-type]


def nodes(n: int) -> list[str]:
    return [f"n{i}" for i in range(n)]


def test_a_few_silent_nodes_are_failed_with_how_long_they_were_silent() -> None:
    j = judge()
    heard = {name: 10.0 for name in nodes(100)} | {"n1": 3.0, "n2": 4.0}
    j.check(9.0, heard, nodes(100))
    verdict = j.check(10.0, heard, nodes(100))
    assert sorted(verdict.lost) == [("n1", 7.0), ("n2", 6.0)]
    assert verdict.deferred == 0 and verdict.stalled_s == 0


def test_a_node_within_the_deadline_is_not_failed() -> None:
    j = judge()
    assert j.check(10.0, {"n0": 5.0}, ["n0"]).lost == []  # exactly the deadline: not yet


def test_a_stalled_head_judges_nobody_on_its_own_blind_time() -> None:
    j = judge()
    heard = {name: 10.0 for name in nodes(3)}
    assert j.check(11.0, heard, nodes(3)).lost == []
    verdict = j.check(21.0, heard, nodes(3))  # ten seconds without a check: the head was stopped
    assert verdict.lost == [] and verdict.stalled_s == 10.0
    # Silence counts again from the resume, plus a deadline for the reconnect storm: a node
    # still unheard then is lost.
    for t in range(22, 32):
        assert j.check(float(t), heard | {"n0": t - 1.0, "n1": t - 1.0}, nodes(3)).lost == []
    assert [n for n, _ in j.check(32.0, heard | {"n0": 31.0, "n1": 31.0}, nodes(3)).lost] == ["n2"]


def test_more_than_a_small_fraction_silent_at_once_is_rechecked_not_failed() -> None:
    j = judge(give_up_s=30.0)
    heard = {name: 0.0 for name in nodes(100)}
    for t in (6.0, 7.0, 8.0):
        verdict = j.check(t, heard, nodes(100))
        assert verdict.lost == [] and verdict.deferred == 100
    # What was queued is read, the nodes come back: re-checked while their number falls...
    heard = {name: 8.5 for name in nodes(100)} | {"n7": 0.0, "n9": 0.0, "n11": 0.0}
    assert j.check(9.0, heard, nodes(100)).deferred == 3
    heard["n11"] = 9.5
    assert j.check(10.0, heard, nodes(100)).deferred == 2
    # ...and the two still silent once it stops falling are failed.
    assert sorted(n for n, _ in j.check(11.0, heard, nodes(100)).lost) == ["n7", "n9"]


def test_a_mass_silence_that_lasts_is_believed_after_give_up() -> None:
    j = judge(give_up_s=10.0)
    heard = {name: 0.0 for name in nodes(20)}
    t = 6.0
    while t < 16.0:
        assert j.check(t, heard, nodes(20)).lost == []
        t += 1.0
    assert len(j.check(16.0, heard, nodes(20)).lost) == 20


def test_the_fraction_has_a_floor_for_small_fleets() -> None:
    j = judge(max_fraction=0.1, min_batch=3)
    assert j.limit(5) == 3 and j.limit(100) == 10 and j.limit(10_000) == 1000
    heard = {name: 0.0 for name in nodes(5)} | {"n3": 9.0, "n4": 9.0}
    j.check(9.0, heard, nodes(5))
    assert len(j.check(10.0, heard, nodes(5)).lost) == 3


def test_a_node_never_heard_counts_from_when_the_head_began_listening() -> None:
    j = judge()
    assert j.check(4.0, {}, ["new"]).lost == []
    assert j.check(6.0, {}, ["new"]).lost == [("new", 6.0)]


def test_a_long_recovery_that_keeps_coming_back_is_not_cut_off() -> None:
    j = judge(give_up_s=10.0)
    heard = {name: 0.0 for name in nodes(100)}
    back = 0
    for t in range(6, 40):  # 30 s of a slow reconnect storm: three nodes back a second
        assert j.check(float(t), heard, nodes(100)).lost == []
        for name in nodes(100)[back:back + 3]:
            heard[name] = float(t)
        back += 3
        for name in nodes(100)[:back]:
            heard[name] = float(t)  # and the ones back keep beating
    assert back >= 100
