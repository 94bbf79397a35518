"""The discrete-event simulator: SWF parsing, and FIFO against backfill on the sample workload."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcbatch.sim.__main__ import main
from hpcbatch.sim.simulate import PowerSaving, simulate
from hpcbatch.sim.workload import SimJob, load_swf, parse_swf

SAMPLE = Path(__file__).resolve().parents[2] / "bench" / "workloads" / "sample.swf"


def test_swf_lines_become_jobs_and_unrun_jobs_are_skipped() -> None:
    lines = [
        "; comment",
        "1 10 -1 100 4 -1 -1 4 300 -1 1 7 1 -1 1 1 -1 -1",
        "2 20 -1 -1 4 -1 -1 4 300 -1 5 7 1 -1 1 1 -1 -1",  # cancelled before it ran
        "3 30 -1 50 -1 -1 -1 2 -1 -1 1 8 1 -1 1 1 -1 -1",  # allocated unknown: requested procs
    ]
    assert list(parse_swf(lines)) == [
        SimJob("swf1", 10.0, 100.0, 4, 300.0, "u7"),
        SimJob("swf3", 30.0, 50.0, 2, None, "u8"),
    ]


def test_a_short_swf_line_names_its_number() -> None:
    with pytest.raises(ValueError, match="SWF line 1: 3 fields"):
        list(parse_swf(["1 2 3"]))


def test_backfill_beats_fifo_on_the_sample_and_runs_every_job() -> None:
    jobs = load_swf(SAMPLE)
    fifo = simulate(jobs, 16, 8, "fifo")
    backfill = simulate(jobs, 16, 8, "backfill")
    assert fifo.jobs == backfill.jobs == len(jobs) == 300
    assert backfill.mean_wait_s < fifo.mean_wait_s
    assert backfill.mean_bounded_slowdown < fifo.mean_bounded_slowdown
    assert 0 < fifo.utilization <= 1 and 0 < backfill.utilization <= 1


def test_fifo_never_lets_a_job_overtake() -> None:
    jobs = [SimJob("big", 0, 100, 16, 100), SimJob("wide", 1, 100, 16, 100), SimJob("small", 2, 10, 1, 10)]
    # 2 nodes x 8: big takes both; wide waits; small (would fit nowhere anyway) waits behind it.
    assert simulate(jobs, 2, 8, "fifo").mean_wait_s == pytest.approx((0 + 99 + 198) / 3)


def test_command_prints_name_value_lines(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--swf", str(SAMPLE), "--nodes", "16", "--cores", "8"]) == 0
    out = capsys.readouterr().out.split()
    assert any(line.startswith("sim_fifo_mean_wait_s=") for line in out)
    assert any(line.startswith("sim_backfill_utilization=") for line in out)


def test_power_saving_boots_a_node_for_the_first_job_and_powers_it_down_after_suspend_after() -> None:
    jobs = [SimJob("a", 0, 100, 8, None)]
    result = simulate(jobs, 2, 8, "backfill", power=PowerSaving(suspend_after_s=300, boot_s=60))
    assert result.outcomes[0].wait_s == 60  # the boot
    # n0: powered from 0 until 60 + 100 + 300 (booting, running, idle); n1 never: saved as long.
    assert result.powered_node_s == 460 and result.saved_node_s == 460


def test_power_saving_keeps_min_nodes_warm_and_never_overtakes_in_fifo() -> None:
    jobs = [SimJob("a", 1000, 100, 8, None), SimJob("b", 1001, 100, 16, None), SimJob("c", 1002, 10, 1, None)]
    warm = simulate(jobs, 2, 8, "fifo", power=PowerSaving(suspend_after_s=10_000, boot_s=60, min_nodes=1))
    starts = {o.job_id: o.start_s for o in warm.outcomes}
    assert starts["a"] == 1000  # a warm node: no boot
    assert starts["a"] <= starts["b"] <= starts["c"]  # fifo order, power-ups or not


def test_power_saving_on_the_sample_runs_every_job_and_saves_node_hours() -> None:
    jobs = load_swf(SAMPLE)
    always = simulate(jobs, 16, 8, "backfill")
    saving = simulate(jobs, 16, 8, "backfill", power=PowerSaving(suspend_after_s=300, boot_s=60))
    assert saving.jobs == always.jobs == 300
    assert saving.powered_node_s is not None and saving.saved_node_s > 0
    # Every node is accounted for the whole run (the last idle nodes' suspend_after_s past its end).
    assert saving.powered_node_s + saving.saved_node_s >= 16 * always.makespan_s
    assert always.powered_node_s is None and not any("node_hours" in line for line in always.lines())


def test_command_with_power_saving_prints_hours_saved_and_wait_added(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--swf", str(SAMPLE), "--nodes", "16", "--cores", "8", "--power-saving", "--boot-time", "90"]) == 0
    out = capsys.readouterr().out.split()
    assert any(line.startswith("sim_backfill_power_node_hours_saved=") for line in out)
    assert any(line.startswith("sim_backfill_power_mean_wait_added_s=") for line in out)
    assert any(line.startswith("sim_fifo_mean_wait_s=") for line in out)


def test_power_saving_reservations_count_the_boot_so_backfill_does_not_delay_the_gang() -> None:
    """Two nodes warm, two powered down; a 4-node gang arrives, then a long and a short job.
    Told of the boots, the core reserves the warm nodes for the gang until the boot ends (60 s):
    only the short job backfills, and the gang starts when the nodes are up. Blind to them,
    the long job takes a warm node and the gang waits for it to end."""
    from dataclasses import replace

    jobs = [SimJob("gang", 0, 100, 32, 100), SimJob("long", 1, 500, 8, 500), SimJob("short", 2, 30, 8, 30)]
    power = PowerSaving(suspend_after_s=1000, boot_s=60, min_nodes=2)
    told = {o.job_id: o.start_s for o in simulate(jobs, 4, 8, "backfill", power=power).outcomes}
    assert told == {"gang": 60, "short": 2, "long": 160}
    blind = {o.job_id: o.start_s for o in simulate(jobs, 4, 8, "backfill", power=replace(power, plan_boots=False)).outcomes}
    assert blind["gang"] == 501 and blind["long"] == 1
