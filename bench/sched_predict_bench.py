"""Backfill without users' estimates: run-time predictions against perfect estimates (issue 21).

The synthetic workload (``hpcbatch.sim.workload.synthetic``: users re-running a few
applications) with every requested time dropped, as AWS Batch jobs usually come, on
SIM_NODES x SIM_CORES (64 x 32), SIM_JOBS jobs (5,000), arrivals sped up x1.5 and x2.0
(``--load``). Side by side, for each load:

* ``fifo``: strict first come, first served;
* ``backfill_none``: backfill with nothing to plan with (every end unknown: hpcbatch before
  predictions, on jobs without timeouts);
* ``backfill_predicted``: backfill with run-time predictions (EASY++);
* ``backfill_perfect``: backfill told every job's real run time (the bound).

Printed per load and mode: ``..._mean_wait_s``, ``..._bounded_slowdown`` (10 s threshold),
``..._max_wait_s`` (every job's wait is bounded: none starves) and ``..._jobs`` (all ran);
then ``..._predicted_vs_perfect_wait`` and ``..._slowdown`` (the goal: <= 1.2); for the
backfill modes on the first SIM_FORECAST_JOBS (1,000) jobs at x1.5, how good the start
forecast each waiting job got on arrival was (``..._forecast_share``,
``..._forecast_mean_abs_error_s``, ``..._median_...``). Last, the
scheduler's pass at 100,000 jobs on 5,000 nodes when every job has a prediction
(``sched_pass_100k_jobs_5k_nodes_predicted_cpu_s``; the goal: under 1 s).
"""

from __future__ import annotations

import os

from bench import sched_bench
from hpcbatch.sim.simulate import simulate
from hpcbatch.sim.workload import scale_load, synthetic, without_estimates

NODES = int(os.environ.get("SIM_NODES", "64"))
CORES = int(os.environ.get("SIM_CORES", "32"))
JOBS = int(os.environ.get("SIM_JOBS", "5000"))
FORECAST_JOBS = int(os.environ.get("SIM_FORECAST_JOBS", "1000"))
LOADS = (1.5, 2.0)
MODES = (("fifo", "user"), ("backfill", "none"), ("backfill", "predicted"), ("backfill", "perfect"))


def main() -> dict[str, float]:
    figures: dict[str, float] = {}
    base = without_estimates(synthetic(JOBS, CORES, NODES, seed=1))
    for load in LOADS:
        jobs = scale_load(base, load)
        tag = f"sim_load{load:g}".replace(".", "_")
        results = {}
        for mode, estimates in MODES:
            r = results[(mode, estimates)] = simulate(jobs, NODES, CORES, mode, estimates=estimates)
            name = f"{tag}_{r.mode}"
            figures[f"{name}_mean_wait_s"] = round(r.mean_wait_s, 1)
            figures[f"{name}_bounded_slowdown"] = round(r.mean_bounded_slowdown, 2)
            figures[f"{name}_max_wait_s"] = round(r.max_wait_s)
            figures[f"{name}_jobs"] = r.jobs
        predicted, perfect = results[("backfill", "predicted")], results[("backfill", "perfect")]
        figures[f"{tag}_predicted_vs_perfect_wait"] = round(predicted.mean_wait_s / perfect.mean_wait_s, 3)
        figures[f"{tag}_predicted_vs_perfect_slowdown"] = round(
            predicted.mean_bounded_slowdown / perfect.mean_bounded_slowdown, 3)
    # Start forecasts, asked as each waiting job arrives (the first FORECAST_JOBS jobs, x1.5:
    # a forecast per arrival is the costly part): share of waiting jobs given one, and its error.
    jobs = scale_load(base[:FORECAST_JOBS], 1.5)
    for estimates in ("predicted", "perfect"):
        for line in simulate(jobs, NODES, CORES, "backfill", estimates=estimates, forecasts=True).lines():
            if "_forecast_" in line:
                key, value = line.split("=")
                figures[key.replace("sim_", f"sim_{FORECAST_JOBS}_jobs_load1_5_", 1)] = float(value)
    at_scale = sched_bench.run(predicted=True)
    for key in (f"sched_pass_{sched_bench._k(sched_bench.JOBS)}_jobs_{sched_bench._k(sched_bench.NODES)}_nodes",):
        figures[f"{key}_predicted_s"] = at_scale[f"{key}_s"]
        figures[f"{key}_predicted_cpu_s"] = at_scale[f"{key}_cpu_s"]
    figures["sched_event_predicted_ms"] = at_scale["sched_event_ms"]
    return figures


if __name__ == "__main__":
    for name, value in main().items():
        print(f"{name}={value}")
