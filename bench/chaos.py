"""Chaos and fuzz figures, printed as ``name=value`` lines (run as root: namespaces, users).

* ``jobs_lost``, ``duplicate_starts``, ``duplicate_completions`` (a command run to its end
  twice) and ``agent_crashes`` (an agent process that died without being killed), all of
  which must be 0: a 1,000-job load on a 2-node namespace cluster while the head is
  ``kill -9``-ed and restarted 10 times at seeded random moments, then one agent ``kill -9``-ed
  while ``--agent-jobs`` jobs run on it, which finish while it is down (it comes back within
  the fence: their real exits must be taken, none run again; ``agent_kill_jobs``);
  ``chaos_jobs_acknowledged`` is the load, ``chaos_orphans`` and ``chaos_wrong_exit_codes``
  the other invariants (tests/chaos/invariants.py). Then the
  same on PostgreSQL with two heads, where each kill hits the active head: the figures end
  in ``_postgresql``, and ``chaos_failovers_postgresql`` counts the kills that moved the
  lease to the other head (``--stores sqlite`` leaves PostgreSQL out).
* ``fuzz_cases`` and ``fuzz_5xx`` (must be 0): the API fuzzer of tests/fuzz over every
  operation (``--fuzz-examples`` per operation), socket and SigV4.
* ``flood_requests``, ``flood_429``, ``flood_rss_growth_mib``: 100,000 signed SubmitJob
  calls from one non-admin caller (default limit: 50/s), and the head's RSS after minus
  before (measured after a warm-up flood of 5,000). The ~4,500 calls the 50/s limit lets
  through over the flood (``flood_accepted``) are real jobs the head then holds (RUNNABLE, no
  nodes), and they are most of that growth; the refused calls keep nothing.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
from pathlib import Path

from tests import pg
from tests.chaos.invariants import done_log, violations, wait_final
from tests.chaos.scenarios import Load, kill_agent_while_jobs_finish, kill_head_rounds
from tests.fuzz.driver import operations, run_fuzz
from tests.fuzz.flood import flood, rss_bytes
from tests.fuzz.wire import Wire
from tests.harness import TestCluster
from tests.variants import make_cluster

MUST_BE_ZERO = ("jobs_lost", "duplicate_starts", "duplicate_completions", "agent_crashes")


def chaos_figures(root: Path, jobs: int, rounds: int, store: str = "sqlite", agent_jobs: int = 2) -> dict[str, object]:
    """The head-kill load, then an agent kill while its jobs finish, on ``store``; PostgreSQL's
    figures carry a ``_postgresql`` suffix."""
    c = make_cluster(root, store, nodes=2, netns=os.geteuid() == 0)
    try:
        c.up()
        starts = root / "starts"
        for log in (starts, done_log(starts)):
            log.touch()
            log.chmod(0o666)
        load = Load(c, jobs, starts, "benchchaos").start()
        failovers = kill_head_rounds(c, rounds, random.Random(7))
        load.join()
        wait_final(c, load.acknowledged, timeout=600)
        # Each job's exit code is what its command exits with; the agent-kill jobs exit 0.
        acknowledged = dict(load.acknowledged)
        if agent_jobs:
            killed = kill_agent_while_jobs_finish(c, c.node_names[0], agent_jobs, starts, "benchchaos")
            wait_final(c, killed, timeout=120)
            acknowledged.update(dict.fromkeys(killed, 0))
        # Agents this run did not kill must all be alive (one it killed was started again).
        crashes = sum(1 for name in c.node_names if name not in c.procs or c.procs[name].poll() is not None)
        found = violations(c, acknowledged, starts, "benchchaos")
        figures: dict[str, object] = {
            "chaos_jobs_acknowledged": len(load.acknowledged),
            "chaos_head_kills": rounds,
            "agent_kill_jobs": agent_jobs,
            "jobs_lost": len(found["jobs_lost"]),
            "duplicate_starts": len(found["duplicate_starts"]),
            "duplicate_completions": len(found["duplicate_completions"]),
            "agent_crashes": crashes,
            "chaos_orphans": len(found["orphans"]),
            "chaos_wrong_exit_codes": len(found["wrong_exit_codes"]),
        }
        if store == "sqlite":
            return figures
        figures["chaos_failovers"] = failovers
        return {f"{name}_{store}": value for name, value in figures.items()}
    finally:
        c.close()


def fuzz_and_flood_figures(root: Path, examples: int, flood_n: int) -> dict[str, object]:
    c = TestCluster(root, nodes=0)
    try:
        c.up()
        admin = c.client.call("/hpcbatch/v1/createaccesskey", {"user": "root", "role": "admin"})
        wires = {"socket": Wire(unix_path=str(c.api_socket)),
                 "sigv4": Wire(tcp=("127.0.0.1", c.http_port), credentials=(admin["accessKeyId"], admin["secretAccessKey"]))}
        report = run_fuzz(wires, sorted(operations().items()), examples)
        for finding in report.findings:
            print(f"# fuzz finding: {finding}", file=sys.stderr)
        user = c.client.call("/hpcbatch/v1/createaccesskey", {"user": "hpcb_flood", "role": "user"})
        creds = (user["accessKeyId"], user["secretAccessKey"])
        pid = c.procs["head"].pid
        flood(c.http_port, creds, 5_000)
        before = rss_bytes(pid)
        statuses = flood(c.http_port, creds, flood_n)
        after = rss_bytes(pid)
        return {
            "fuzz_cases": report.cases,
            "fuzz_5xx": report.server_errors,
            "fuzz_findings": len(report.findings),
            "flood_requests": flood_n,
            "flood_429": statuses.get(429, 0),
            "flood_accepted": statuses.get(200, 0),  # stored jobs: most of the RSS growth
            "flood_other_5xx": sum(n for s, n in statuses.items() if s >= 500),
            "flood_rss_growth_mib": round((after - before) / 2**20, 1),
            "head_rss_mib": round(after / 2**20, 1),
        }
    finally:
        c.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--agent-jobs", type=int, default=2,
                        help="jobs that finish while their agent is down (they must fit on one node at once)")
    parser.add_argument("--fuzz-examples", type=int, default=150)
    parser.add_argument("--flood", type=int, default=100_000)
    parser.add_argument("--no-fuzz", action="store_true", help="the chaos figures only (no fuzz, no flood)")
    parser.add_argument("--stores", default="sqlite,postgresql",
                        help="comma-separated stores for the head-kill load (PostgreSQL: two heads)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hpcb-chaos-") as tmp:
        root = Path(tmp)
        (root / "fuzz").mkdir()
        (root / "chaos").mkdir()
        figures = {} if args.no_fuzz else fuzz_and_flood_figures(root / "fuzz", args.fuzz_examples, args.flood)
        for store in args.stores.split(","):
            (root / f"chaos-{store}").mkdir()
            if store == "postgresql" and (why := pg.available()):
                print(f"# PostgreSQL figures left out: {why}", file=sys.stderr)
                continue
            figures.update(chaos_figures(root / f"chaos-{store}", args.jobs, args.rounds, store, args.agent_jobs))
    for name, value in figures.items():
        print(f"{name}={value}")
    zero = [name for name, value in figures.items() if name == "fuzz_5xx" or name.startswith(MUST_BE_ZERO)]
    return 0 if all(figures[name] == 0 for name in zero) else 1


if __name__ == "__main__":
    sys.exit(main())
