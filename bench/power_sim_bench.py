"""Power saving on a trace (simulated): node-hours saved against mean wait added, as ``name=value`` lines.

The simulator (hpcbatch.sim) drives the real scheduler core and the head's own power planner
(hpcbatch.scheduler.power) through two workloads, each run with every node always on and then
with idle nodes powered down after ``suspend_after_s`` and booted on demand in BOOT_S (90 s):

* ``sample``: bench/workloads/sample.swf (300 jobs) on 16 nodes x 8 cores;
* ``synthetic``: POWER_SIM_JOBS (3,000) synthetic jobs (hpcbatch.sim.workload.synthetic) on
  32 nodes x 16 cores at 50 % load (a cluster that is often idle, where power saving pays).

Printed per workload and ``suspend_after_s`` (300 and 1,800 s), backfill:
``power_sim_<workload>_suspend<S>_node_hours_saved`` (node-hours powered down),
``..._saved_share`` (of all node-hours), ``..._mean_wait_added_s`` and ``..._max_wait_added_s``
(against always on), and the always-on ``power_sim_<workload>_mean_wait_s``. The same with
``_blind`` before ``_mean_wait_added_s``/``_max_wait_added_s``/``_node_hours_saved``: the core
told nothing of the boots (reservations and backfill see registered nodes only, as before
issue 20), so the two are compared in one sitting. ``..._forecast_median_abs_error_s`` (and
``_blind_...``): how far the start forecast each waiting job got on arrival was from its start.

Run: ``python -m bench.power_sim_bench``.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from hpcbatch.sim.simulate import PowerSaving, SimResult, simulate
from hpcbatch.sim.workload import load_swf, synthetic

BOOT_S = 90.0
SUSPEND_AFTER_S = (300.0, 1800.0)
JOBS = int(os.environ.get("POWER_SIM_JOBS", "3000"))
SAMPLE = Path(__file__).resolve().parent / "workloads" / "sample.swf"


def _lines(name: str, suspend_after_s: float, always: SimResult, saving: SimResult) -> list[str]:
    p = f"power_sim_{name}_suspend{suspend_after_s:.0f}"
    total = (saving.powered_node_s or 0.0) + saving.saved_node_s
    return [
        f"{p}_node_hours_saved={saving.saved_node_s / 3600:.1f}",
        f"{p}_saved_share={saving.saved_node_s / total if total else 0.0:.3f}",
        f"{p}_mean_wait_added_s={saving.mean_wait_s - always.mean_wait_s:.1f}",
        f"{p}_max_wait_added_s={saving.max_wait_s - always.max_wait_s:.0f}",
        f"{p}_forecast_median_abs_error_s={_forecast_error(saving):.0f}",
    ]


def _forecast_error(result: SimResult) -> float:
    errors = sorted(abs(o.forecast_s - o.start_s) for o in result.outcomes if o.forecast_s is not None)
    return errors[len(errors) // 2] if errors else 0.0


def main() -> None:
    workloads = {
        "sample": (load_swf(SAMPLE), 16, 8),
        "synthetic": (synthetic(JOBS, 16, 32, seed=1, load=0.5), 32, 16),
    }
    for name, (jobs, nodes, cores) in workloads.items():
        always = simulate(jobs, nodes, cores, "backfill")
        print(f"power_sim_{name}_mean_wait_s={always.mean_wait_s:.1f}")
        for suspend_after_s in SUSPEND_AFTER_S:
            power = PowerSaving(suspend_after_s, BOOT_S)
            saving = simulate(jobs, nodes, cores, "backfill", power=power, forecasts=True)
            assert saving.jobs == always.jobs, f"{name}: {saving.jobs} of {always.jobs} jobs ran with power saving"
            print("\n".join(_lines(name, suspend_after_s, always, saving)))
            blind = simulate(jobs, nodes, cores, "backfill", power=replace(power, plan_boots=False), forecasts=True)
            p = f"power_sim_{name}_suspend{suspend_after_s:.0f}_blind"
            print(f"{p}_node_hours_saved={blind.saved_node_s / 3600:.1f}")
            print(f"{p}_mean_wait_added_s={blind.mean_wait_s - always.mean_wait_s:.1f}")
            print(f"{p}_max_wait_added_s={blind.max_wait_s - always.max_wait_s:.0f}")
            print(f"{p}_forecast_median_abs_error_s={_forecast_error(blind):.0f}")


if __name__ == "__main__":
    main()
