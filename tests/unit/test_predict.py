"""Run-time predictions (EASY++): the pure predictor, and the scheduler planning with it."""

from __future__ import annotations

import asyncio
import csv
import itertools
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpcbatch import protocol as p
from hpcbatch.model.jobs import ResourceRequest
from hpcbatch.model.lifecycle import JobStatus
from hpcbatch.scheduler import (
    Action,
    AttemptEnded,
    JobQueueChanged,
    JobRunnable,
    NodeUp,
    RunTimesLearned,
    Scheduler,
    SetWaitReason,
    StartAttempt,
    StartGang,
    Tick,
)
from hpcbatch.scheduler.core import WAIT_RESERVED
from hpcbatch.scheduler.predict import Predictor, RunKey, definition_name, grow
from hpcbatch.sim.__main__ import main as sim_main
from hpcbatch.sim.simulate import simulate
from hpcbatch.sim.workload import SimJob, scale_load, synthetic, without_estimates
from tests.unit.test_fencing import Cluster, run_on

_ids = itertools.count(1)
_seqs = itertools.count(1)


def _eid() -> str:
    return f"p-{next(_ids)}"


# ------------------------------------------------------------------ the predictor
def test_prediction_is_the_mean_of_the_last_two_runs_of_the_same_owner_and_definition() -> None:
    p = Predictor()
    key = RunKey("alice", "sim:1", "q")
    for run in (1000.0, 100.0, 300.0):
        p.learn(key, run)
    assert p.predict(key, None) == 200.0


def test_prediction_falls_back_to_the_owner_then_the_queue_then_nothing() -> None:
    p = Predictor()
    p.learn(RunKey("alice", "sim", "q"), 100.0)
    p.learn(RunKey("bob", "other", "q"), 900.0)
    assert p.predict(RunKey("alice", "new-definition", "q"), None) == 100.0  # alice's own history
    assert p.predict(RunKey("carol", "sim", "q"), None) == 500.0  # nothing of carol's: the queue's
    assert p.predict(RunKey("carol", "sim", "empty-queue"), None) is None


def test_the_timeout_is_the_hard_bound_and_the_plan_without_history() -> None:
    p = Predictor()
    key = RunKey("alice", "sim", "q")
    assert p.predict(key, 600) == 600.0  # no history: plan with the user's timeout
    p.learn(key, 5000.0)
    assert p.predict(key, 600) == 600.0  # history longer than the timeout: the timeout bounds it
    p.learn(key, 10.0)
    p.learn(key, 20.0)
    assert p.predict(key, 600) == 15.0


def test_revisions_of_a_job_definition_share_history() -> None:
    assert definition_name("arn:aws:batch:us-east-1:0:job-definition/sim:3") == "sim"
    assert definition_name("sim:12") == "sim" and definition_name("sim") == "sim"
    p = Predictor()
    p.learn(RunKey("alice", "arn:aws:batch:r:0:job-definition/sim:1", "q"), 40.0)
    p.learn(RunKey("alice", "other:1", "q"), 4000.0)
    assert p.predict(RunKey("alice", "sim:2", "q"), None) == 40.0


def test_a_prediction_never_plans_less_than_a_second() -> None:
    p = Predictor()
    p.learn(RunKey("a", "d", "q"), 0.0)
    assert p.predict(RunKey("a", "d", "q"), None) == 1.0


def test_bad_run_times_teach_nothing() -> None:
    p = Predictor()
    p.learn(RunKey("a", "d", "q"), float("nan"))
    p.learn(RunKey("a", "d", "q"), -5.0)
    assert p.learned == 0 and p.predict(RunKey("a", "d", "q"), None) is None


def test_history_keeps_at_most_max_keys_keys_forgetting_the_oldest() -> None:
    p = Predictor(max_keys=2)
    for owner in ("a", "b", "c"):
        p.learn(RunKey(owner, "d", ""), 10.0)
    assert p.predict(RunKey("a", "d", ""), None) is None
    assert p.predict(RunKey("c", "d", ""), None) == 10.0


@pytest.mark.parametrize(
    ("prediction", "elapsed", "timeout", "grown"),
    [(100, 101, None, 200), (100, 450, None, 800), (100, 150, 160, 160), (0.2, 0.5, None, 1.0)],
)
def test_an_outlived_prediction_doubles_past_now_capped_by_the_timeout(
    prediction: float, elapsed: float, timeout: float | None, grown: float
) -> None:
    assert grow(prediction, elapsed, timeout) == grown


# ----------------------------------------------------------- the scheduler with it
def _cluster(nodes: int = 2, vcpus: float = 1) -> Scheduler:
    s = Scheduler()
    s.handle(
        Tick(_eid(), 0.0),
        JobQueueChanged(_eid(), "q", True, 1, ("ce",)),
        *(NodeUp(_eid(), f"n{i + 1}", "ce", vcpus, 8192, 0) for i in range(nodes)),
    )
    return s


def _job(job_id: str, owner: str = "alice", nodes: int = 1, limit: int | None = None,
         definition: str = "sim:1", vcpus: float = 1) -> JobRunnable:
    return JobRunnable(_eid(), job_id, "q", ResourceRequest(vcpus=vcpus, memory_mib=512), next(_seqs),
                       num_nodes=nodes, time_limit_s=limit, owner=owner, definition=definition)


def _starts(actions: list[Action]) -> set[str]:
    return {a.job_id for a in actions if isinstance(a, StartAttempt | StartGang)}


def _reasons(actions: list[Action]) -> dict[str, str]:
    return {a.job_id: a.reason for a in actions if isinstance(a, SetWaitReason)}


def _teach(s: Scheduler, owner: str, run_s: float, times: int = 2) -> None:
    s.handle(RunTimesLearned(_eid(), tuple((owner, "sim:1", "q", run_s) for _ in range(times))))


def test_attempt_ended_with_its_run_time_teaches_the_predictor() -> None:
    s = _cluster()
    s.handle(_job("a"))
    s.handle(Tick(_eid(), 30.0), AttemptEnded(_eid(), "a", run_s=30.0))
    assert s.predictor.predict(RunKey("alice", "sim:1", "q"), None) == 30.0
    s.handle(_job("b"))
    assert s.planned_run_s("b") == 30.0


def test_a_job_without_a_timeout_backfills_before_a_reservation_when_predicted_short() -> None:
    s = _cluster(2)
    _teach(s, "bob", 1000.0)  # bob's jobs run ~1000 s
    _teach(s, "alice", 50.0)  # alice's ~50 s
    _teach(s, "carol", 5000.0)
    s.handle(_job("long", owner="bob"))  # n1 until t=1000 (predicted)
    s.handle(_job("g", owner="bob", nodes=2))
    res = s.reservation("g")
    assert res is not None and res.start_s == 1000.0  # a known start, from the prediction
    actions = s.handle(_job("slow", owner="carol"), _job("short", owner="alice"))
    assert _starts(actions) == {"short"}  # 50 s ends before t=1000; carol's 5000 s would not
    assert _reasons(actions)["slow"] == WAIT_RESERVED


def test_without_history_a_job_without_a_timeout_never_jumps_a_reservation() -> None:
    s = _cluster(2)
    s.handle(_job("long", owner="bob"))
    s.handle(_job("g", owner="bob", nodes=2))
    assert _starts(s.handle(_job("short", owner="nobody-known", definition="x"))) == set()


def test_a_job_outliving_its_prediction_is_replanned_not_killed() -> None:
    s = _cluster(2)
    _teach(s, "bob", 100.0)
    s.handle(_job("long", owner="bob"))  # planned to end at t=100
    s.handle(_job("g", owner="bob", nodes=2))
    assert s.reservation("g").start_s == 100.0  # type: ignore[union-attr]
    actions = s.handle(Tick(_eid(), 150.0))  # still running at t=150: the plan grows, no kill
    assert not any(isinstance(a, StartAttempt | StartGang) for a in actions)
    assert s.allocation("long") == ("n1", "ce")
    assert s.planned_run_s("long") == 200.0
    assert s.reservation("g").start_s == 200.0  # type: ignore[union-attr]
    assert any("plan for long: ran past its predicted end" in d for _, d in s.decisions)
    s.handle(Tick(_eid(), 900.0))
    assert s.planned_run_s("long") == 1600.0


def test_a_grown_prediction_stops_at_the_timeout() -> None:
    s = _cluster(1)
    _teach(s, "bob", 100.0)
    s.handle(_job("j", owner="bob", limit=300))
    s.handle(Tick(_eid(), 250.0))
    assert s.planned_run_s("j") == 300.0
    s.handle(Tick(_eid(), 400.0))  # past its timeout: the agent ends it; the plan stays put
    assert s.planned_run_s("j") == 300.0


def test_history_learned_at_a_restart_plans_like_history_learned_live() -> None:
    live, restarted = _cluster(), _cluster()
    for run in (10.0, 20.0):
        live.handle(_job("x"))
        live.handle(AttemptEnded(_eid(), "x", run_s=run))
    restarted.handle(RunTimesLearned(_eid(), (("alice", "sim:1", "q", 10.0), ("alice", "sim:1", "q", 20.0))))
    live.handle(_job("y"))
    restarted.handle(_job("y"))
    assert live.planned_run_s("y") == restarted.planned_run_s("y") == 15.0


# ------------------------------------------------------- the head feeds it, and restarts
def test_the_head_learns_run_times_from_exits_and_again_from_the_store_after_a_restart(tmp_path: Path) -> None:
    async def run() -> None:
        c = Cluster(tmp_path)
        job = c.submit()
        node = run_on(c, job)  # started at 1 ms
        attempt_id = job.attempts[0].attempt_id
        c.engine.on_exited(node, p.AttemptExited(attempt_id=attempt_id, job_id=job.job_id, exit_code=0,
                                                 started_at=1, stopped_at=42_001))
        c.engine.step()
        assert job.status is JobStatus.SUCCEEDED
        key = RunKey("alice", "arn:d", "q")
        assert c.engine.scheduler.predictor.predict(key, None) == 42.0
        c.engine.store.close()
        again = Cluster(tmp_path, restarted=True)
        again.engine.step()
        assert again.engine.scheduler.predictor.predict(key, None) == 42.0

    asyncio.run(run())


def test_a_lost_or_terminated_attempt_teaches_nothing() -> None:
    from hpcbatch.model.jobs import Attempt
    from hpcbatch.scheduler.predict import attempt_run_s

    ran = Attempt(attempt_id="a", node="n", compute_environment="c", log_stream_name="l", started_at=0, stopped_at=5000)
    assert attempt_run_s(ran) == 5.0
    assert attempt_run_s(msgspec.structs.replace(ran, lost=True)) is None
    assert attempt_run_s(msgspec.structs.replace(ran, terminated=True)) is None
    assert attempt_run_s(msgspec.structs.replace(ran, started_at=None)) is None


# ------------------------------------------------------------------- the simulator
def test_load_factor_divides_inter_arrival_times_and_must_be_positive() -> None:
    jobs = [SimJob("a", 100.0, 5, 1, None), SimJob("b", 130.0, 5, 1, None), SimJob("c", 160.0, 5, 1, None)]
    assert [j.submit_s for j in scale_load(jobs, 1.5)] == [100.0, 120.0, 140.0]
    with pytest.raises(ValueError, match="load factor must be positive"):
        scale_load(jobs, 0)


def test_predictions_plan_like_perfect_estimates_once_history_matches() -> None:
    # One node of 4. History: alice's "big" runs 1000 s, bob's "tiny" 5 s. Then alice's long job
    # runs, a wide job must wait for it, and bob's short job arrives: it may backfill (it ends
    # long before the wide job can start) and the wide job starts the moment the long one ends.
    history = [SimJob(f"ha{i}", 0.0, 1000.0, 2, None, "alice", "big") for i in range(2)]
    history += [SimJob(f"hb{i}", 1.0, 5.0, 1, None, "bob", "tiny") for i in range(2)]
    jobs = history + [
        SimJob("long", 2000.0, 1000.0, 2, None, "alice", "big"),
        SimJob("wide", 2001.0, 10.0, 4, None, "carol", "wide"),
        SimJob("short", 2002.0, 5.0, 1, None, "bob", "tiny"),
    ]
    waits = {e: {o.job_id: o.wait_s for o in simulate(jobs, 1, 4, "backfill", estimates=e).outcomes}
             for e in ("predicted", "perfect")}
    assert {j: waits["predicted"][j] for j in ("long", "wide", "short")} == {"long": 0.0, "wide": 999.0, "short": 0.0}
    assert {j: waits["perfect"][j] for j in ("long", "wide", "short")} == {"long": 0.0, "wide": 999.0, "short": 0.0}
    with pytest.raises(ValueError, match="estimates must be one of"):
        simulate(jobs, 1, 4, "backfill", estimates="guess")


def test_a_job_outliving_its_prediction_is_replanned_in_the_simulator_too() -> None:
    # alice's long job has no history of its own: it is planned with the queue's (bob's 5 s).
    # The wide job's reservation then always lies just ahead; each time the long job outlives
    # its plan, the plan doubles, until bob's 5 s job fits before the reservation.
    jobs = [SimJob(f"hb{i}", float(i), 5.0, 1, None, "bob", "tiny") for i in range(2)] + [
        SimJob("long", 100.0, 1000.0, 2, None, "alice", "big"),
        SimJob("wide", 101.0, 10.0, 4, None, "carol", "wide"),
        SimJob("short", 102.0, 5.0, 1, None, "bob", "tiny"),
    ]
    waits = {o.job_id: o.wait_s for o in simulate(jobs, 1, 4, "backfill", estimates="predicted").outcomes}
    assert waits["short"] < 20  # without replanning it would wait for the wide job, 1000 s
    assert waits["wide"] == 999.0


def test_per_job_csv_matches_the_summary(tmp_path: Path) -> None:
    jobs = without_estimates(synthetic(200, 8, 8, seed=3))
    result = simulate(jobs, 8, 8, "backfill", estimates="predicted", forecasts=True)
    path = tmp_path / "jobs.csv"
    result.write_csv(path)
    with open(path, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == result.jobs == 200
    assert sum(float(r["wait_s"]) for r in rows) / len(rows) == pytest.approx(result.mean_wait_s, abs=0.1)
    assert max(float(r["wait_s"]) for r in rows) == pytest.approx(result.max_wait_s, abs=1)
    assert any(line.startswith("sim_backfill_predicted_forecast_mean_abs_error_s=") for line in result.lines())


def test_predictions_beat_planning_with_nothing_and_every_job_runs() -> None:
    jobs = scale_load(without_estimates(synthetic(400, 16, 16, seed=2)), 1.5)
    none = simulate(jobs, 16, 16, "backfill", estimates="none")
    predicted = simulate(jobs, 16, 16, "backfill", estimates="predicted")
    perfect = simulate(jobs, 16, 16, "backfill", estimates="perfect")
    assert none.jobs == predicted.jobs == perfect.jobs == 400
    assert predicted.mean_wait_s < none.mean_wait_s


def test_simulator_command_takes_estimates_load_and_writes_csv(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run.csv"
    assert sim_main(["--synthetic", "100", "--nodes", "4", "--cores", "8", "--without-timeouts",
                     "--estimates", "predicted", "--load", "2", "--csv", str(out)]) == 0
    lines = capsys.readouterr().out.split()
    assert any(line.startswith("sim_backfill_predicted_max_wait_s=") for line in lines)
    assert any(line.startswith("sim_fifo_mean_bounded_slowdown=") for line in lines)
    assert (tmp_path / "run-fifo.csv").exists() and (tmp_path / "run-backfill.csv").exists()
    with pytest.raises(SystemExit):
        sim_main(["--synthetic", "10", "--load", "0"])


def test_the_simulator_recipes_in_the_docs_run_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    root = Path(__file__).resolve().parents[2]
    doc = (root / "docs" / "scheduling.md").read_text(encoding="utf-8")
    section = doc.split("## Simulator", 1)[1].split("\n## ", 1)[0]
    recipes = [line.split()[3:] for line in section.splitlines() if line.startswith("python -m hpcbatch.sim ")]
    assert len(recipes) == 2
    (tmp_path / "bench").symlink_to(root / "bench")
    monkeypatch.chdir(tmp_path)
    for argv in recipes:
        assert sim_main(argv) == 0
    out = capsys.readouterr().out
    assert "sim_fifo_mean_wait_s=713.8" in out and "sim_backfill_mean_wait_s=149.8" in out  # the figures quoted
    assert "sim_backfill_predicted_forecast_share=" in out and (tmp_path / "jobs-backfill.csv").exists()


def test_simulated_preemption_serves_the_preempting_queue_first_and_every_job_still_runs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    jobs = scale_load(without_estimates(synthetic(300, 16, 8, seed=4)), 1.5)
    result = simulate(jobs, 8, 16, "backfill", estimates="predicted", preempt=0.2)
    assert result.jobs == 300 and result.preemptions and result.lost_core_s > 0
    hi = [o.wait_s for o in result.outcomes if o.queue == "hi"]
    lo = [o.wait_s for o in result.outcomes if o.queue == "q"]
    assert hi and sum(hi) / len(hi) < sum(lo) / len(lo)
    assert simulate(jobs, 8, 16, "backfill", estimates="predicted").preemptions is None
    assert sim_main(["--synthetic", "50", "--nodes", "4", "--cores", "8", "--preempt", "0.3"]) == 0
    assert "sim_backfill_preemptions=" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        sim_main(["--synthetic", "10", "--preempt", "2"])


# -------------------------------------------------------------- properties
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(st.one_of(
    st.tuples(st.just("submit"), st.sampled_from(["alice", "bob", "carol"]), st.sampled_from([1, 2, 4]),
              st.sampled_from([1, 1, 2]), st.sampled_from([None, 30, 300])),
    st.tuples(st.just("end"), st.integers(0, 20)),
    st.tuples(st.just("tick"), st.sampled_from([5.0, 50.0, 500.0])),
), min_size=1, max_size=40))
def test_predictions_and_forecasts_never_overcommit_never_pass_a_timeout_never_look_back(
    ops: list[tuple[object, ...]],
) -> None:
    s = Scheduler()
    s.handle(Tick(_eid(), 0.0), JobQueueChanged(_eid(), "q", True, 1, ("ce",)),
             *(NodeUp(_eid(), f"n{i}", "ce", 4, 8192, 0) for i in range(3)))
    now, ids = 0.0, itertools.count()
    limits: dict[str, int | None] = {}
    running: dict[str, float] = {}
    for op in ops:
        if op[0] == "submit":
            _, owner, vcpus, nodes, limit = op
            job_id = f"j{next(ids)}"
            limits[job_id] = limit  # type: ignore[assignment]
            actions = s.handle(_job(job_id, owner=str(owner), nodes=int(nodes), limit=limit,  # type: ignore[arg-type]
                                    vcpus=float(vcpus)))  # type: ignore[arg-type]
        elif op[0] == "end":
            if not running:
                continue
            job_id = sorted(running)[int(op[1]) % len(running)]  # type: ignore[call-overload]
            actions = s.handle(AttemptEnded(_eid(), job_id, run_s=now - running.pop(job_id)))
        else:
            now += float(op[1])  # type: ignore[arg-type]
            actions = s.handle(Tick(_eid(), now))
        running.update({job_id: now for job_id in _starts(actions)})
        for i in range(3):
            used = s.node_usage(f"n{i}")
            assert used is not None and used[0] <= 4 + 1e-9
        for job_id in running:
            planned, limit = s.planned_run_s(job_id), limits[job_id]
            assert planned is None or limit is None or planned <= limit
        assert all(at >= now for at in s.forecast().values())


def test_a_restart_learns_array_tasks_and_multi_node_jobs_once_oldest_first() -> None:
    from hpcbatch.model.jobs import Attempt, JobRecord, ResourceRequest
    from hpcbatch.model.lifecycle import JobStatus
    from hpcbatch.scheduler.predict import learned_runs

    def record(job_id: str, stopped: int, ran_ms: int, **kw: object) -> JobRecord:
        attempt = Attempt(attempt_id=f"a-{job_id}", node="n", compute_environment="c", log_stream_name="l",
                          started_at=stopped - ran_ms, stopped_at=stopped)
        return JobRecord(job_id=job_id, job_name=job_id, job_queue="q", job_queue_arn="arn:q", job_definition="d:1",
                         owner="alice", status=JobStatus.SUCCEEDED, created_at=0, command=[], environment={},
                         resources=ResourceRequest(vcpus=1, memory_mib=64), container={}, attempts=[attempt],
                         **kw)  # type: ignore[arg-type]

    jobs = [record("late", 90_000, 3_000), record("arr:3", 50_000, 1_000, array_parent="arr", array_index=3),
            record("mnp#1", 70_000, 9_000, parent_id="mnp", node_index=1), record("mnp", 70_000, 2_000, num_nodes=2)]
    assert [r[3] for r in learned_runs(jobs)] == [1.0, 2.0, 3.0]  # by end: the array task, the gang, the last
