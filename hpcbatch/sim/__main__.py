"""``python -m hpcbatch.sim``: FIFO against backfill on an SWF file or a synthetic workload."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hpcbatch.sim.simulate import ESTIMATES, simulate
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
    args = parser.parse_args(argv)
    if bool(args.swf) == bool(args.synthetic):
        parser.error("give exactly one of --swf FILE or --synthetic N")
    if args.load <= 0:
        parser.error(f"--load must be positive (got {args.load:g})")
    if not 0 <= args.preempt <= 1:
        parser.error(f"--preempt must be between 0 and 1 (got {args.preempt:g})")
    jobs = load_swf(args.swf) if args.swf else synthetic(args.synthetic, args.cores, args.nodes, args.seed)
    if args.without_timeouts:
        jobs = without_estimates(jobs)
    jobs = scale_load(jobs, args.load)
    for mode in ("fifo", "backfill"):
        result = simulate(jobs, args.nodes, args.cores, mode, fair_share=args.fair_share, estimates=args.estimates,
                          forecasts=args.forecasts and mode == "backfill", preempt=args.preempt)
        for line in result.lines():
            print(line)
        if args.csv:
            path = Path(args.csv)
            result.write_csv(path.with_name(f"{path.stem}-{mode}{path.suffix or '.csv'}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
