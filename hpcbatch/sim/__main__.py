"""``python -m hpcbatch.sim``: FIFO against backfill on an SWF file or a synthetic workload."""

from __future__ import annotations

import argparse
import sys

from hpcbatch.sim.simulate import simulate
from hpcbatch.sim.workload import load_swf, synthetic


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpcbatch.sim", description=__doc__)
    parser.add_argument("--swf", help="a Standard Workload Format file (Parallel Workloads Archive)")
    parser.add_argument("--synthetic", type=int, metavar="N", help="N synthetic jobs instead of a file")
    parser.add_argument("--nodes", type=int, default=32)
    parser.add_argument("--cores", type=int, default=8, help="vCPUs per node")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fair-share", action="store_true", help="one share per SWF user id")
    args = parser.parse_args(argv)
    if bool(args.swf) == bool(args.synthetic):
        parser.error("give exactly one of --swf FILE or --synthetic N")
    jobs = load_swf(args.swf) if args.swf else synthetic(args.synthetic, args.cores, args.nodes, args.seed)
    for mode in ("fifo", "backfill"):
        for line in simulate(jobs, args.nodes, args.cores, mode, fair_share=args.fair_share).lines():
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
