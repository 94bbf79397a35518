"""``python -m hpcbatch.sim``: FIFO against backfill on an SWF file or a synthetic workload.

With ``--power-saving``, each mode runs twice, every node always on and then with nodes powered
down when idle (the MANAGED pools' planner), and prints node-hours saved against mean wait added.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hpcbatch.sim.simulate import ESTIMATES, PowerSaving, power_saving_lines, simulate
from hpcbatch.sim.workload import load_swf, scale_load, synthetic, without_estimates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpcbatch.sim", description=__doc__)
    parser.add_argument("--swf", help="a Standard Workload Format file (Parallel Workloads Archive)")
    parser.add_argument("--synthetic", type=int, metavar="N", help="N synthetic jobs instead of a file")
    parser.add_argument("--nodes", type=int, default=32)
    parser.add_argument("--cores", type=int, default=8, help="vCPUs per node")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fair-share", action="store_true", help="one share per SWF user id")
    parser.add_argument("--estimates", choices=ESTIMATES, default="user",
                        help="what backfill plans with: the users' requested times, run-time predictions "
                             "(bounded by them), the real run times, or nothing [default: user]")
    parser.add_argument("--without-timeouts", action="store_true",
                        help="drop every requested time first (jobs carry no attemptDurationSeconds)")
    parser.add_argument("--load", type=float, default=1.0, metavar="F",
                        help="arrivals F times as fast: inter-arrival times divided by F [default: 1]")
    parser.add_argument("--csv", metavar="PATH",
                        help="also write every job's outcome, one CSV per mode: PATH with -fifo/-backfill before "
                             "its suffix")
    parser.add_argument("--forecasts", action="store_true",
                        help="measure start-time forecasts: asked as each job arrives, compared with its start")
    parser.add_argument("--preempt", type=float, default=0.0, metavar="F",
                        help="a share F of the jobs goes to a queue that preempts the others' (backfill)")
    parser.add_argument("--power-saving", action="store_true",
                        help="also run with nodes powered down when idle, booted on demand")
    parser.add_argument("--suspend-after", type=float, default=300.0, metavar="S",
                        help="with --power-saving: idle this long, a node is powered down [default: 300]")
    parser.add_argument("--boot-time", type=float, default=60.0, metavar="S",
                        help="with --power-saving: a powered-up node registers this long after [default: 60]")
    args = parser.parse_args(argv)
    if bool(args.swf) == bool(args.synthetic):
        parser.error("give exactly one of --swf FILE or --synthetic N")
    if args.load <= 0:
        parser.error(f"--load must be positive (got {args.load:g})")
    if not 0 <= args.preempt <= 1:
        parser.error(f"--preempt must be between 0 and 1 (got {args.preempt:g})")
    if args.suspend_after < 0 or args.boot_time < 0:
        parser.error("--suspend-after and --boot-time must be >= 0 seconds")
    jobs = load_swf(args.swf) if args.swf else synthetic(args.synthetic, args.cores, args.nodes, args.seed)
    if args.without_timeouts:
        jobs = without_estimates(jobs)
    jobs = scale_load(jobs, args.load)
    saving = PowerSaving(args.suspend_after, args.boot_time) if args.power_saving else None
    for mode in ("fifo", "backfill"):
        result = simulate(jobs, args.nodes, args.cores, mode, fair_share=args.fair_share, estimates=args.estimates,
                          forecasts=args.forecasts and mode == "backfill", preempt=args.preempt)
        print("\n".join(result.lines()))
        if args.csv:
            path = Path(args.csv)
            result.write_csv(path.with_name(f"{path.stem}-{mode}{path.suffix or '.csv'}"))
        if saving is not None:
            powered = simulate(jobs, args.nodes, args.cores, mode, fair_share=args.fair_share,
                               estimates=args.estimates, forecasts=args.forecasts and mode == "backfill",
                               preempt=args.preempt, power=saving)
            print("\n".join(powered.lines() + power_saving_lines(result, powered)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
