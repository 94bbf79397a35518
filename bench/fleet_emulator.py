"""Thousands of emulated nodes against one real head: the fleet's figures as ``name=value`` lines.

Each emulated node is the project's own ``node_agent.main.Agent`` (its register, heartbeat,
fence, receive, dispatch and monitor logic, unchanged) with a stub runner: ``sleep S`` lasts S
seconds, any other command exits 0 at once; no process, cgroup, work directory or output.
Many agents share one process, one asyncio loop and one ZeroMQ context; every agent has its
own DEALER socket, its own Curve key pair (enrolled in bulk: the public keys are pre-seeded
into the head's ``node_keys/accepted/``) and the real handshake. Processes hold at most
``--per-process`` agents (default 400), so an emulator never starves its own agents.

``bench/fleet`` (all on this machine, a fresh head per size)::

    bench/fleet --nodes 1000,5000            # figures per size
    bench/fleet --nodes 1000 --stall 10      # and a 10 s SIGSTOP of the head under running jobs

Figures, per size N (suffix ``_N``): ``join_s`` (all N ACTIVE), ``head_cpu_idle_pct`` and
``head_cpu_load_pct`` (% of one core: idle, then during the throughput run), ``head_rss_mib``,
``emulator_cpu_max_pct`` (the busiest emulator process: under 100 means it kept up),
``nodes_lost`` (the head's "lost" log lines over the whole run), ``listnodes_s`` (one unpaged
call: a page of at most 1,000) and ``listnodes_all_s`` (every page; medians of 3), ``single_submit_to_start_median_s``/``_p99_s`` (one job at a time), ``gang64_submit_to
_start_median_s``/``_p99_s`` (64-node gangs), ``jobs_per_s`` (``--jobs`` ``true`` jobs,
submit to all SUCCEEDED) and, with ``--stall``, ``stall_nodes_lost``/``stall_jobs_retried``.
The agents' own cost, which on one machine is taken from the head: ``agent_cpu_us_per_heartbeat``
(all emulators' CPU while idle, per node per heartbeat interval: the beat, the head's answer,
libzmq's I/O thread), ``emulator_cpu_load_pct`` (all emulators, % of one core, during the
throughput run) and ``agent_cpu_us_per_job`` (their CPU over that run less the idle rate, per
job). ``HPCBATCH_FLEET_PROFILE=DIR bench/fleet ...`` profiles every emulator (cProfile, CPU
time) into ``DIR/emulator-FIRST-PHASE.pstats``: phase 0 the join, 1 idle, 2 the jobs.

Measured here (2 shared cores, one sitting, each command once, A = issue 22's head, B = the
head before it, same emulators; 1-min load average when each size began: A 3.6/4.1, B 10.2/6.9):

    figure (1,000 | 5,000 nodes)        A              B
    head_cpu_idle_pct                   6.7 | 28.3     8.9 | 38.1
    join_s                              2.1 | 10.3     4.4 | 68.4
    listnodes_s (all, unpaged)          0.018 | 0.36   0.045 | 5.3
    single submit->start p99 s          0.018 | 0.25   0.068 | 2.6
    gang64 submit->start median s       0.0045 | 0.012  0.0057 | 0.021
    jobs_per_s                          1966 | 459     1801 | 255
    10 s SIGSTOP: nodes lost, jobs lost 0, 0 | 0, 0    1000, 200 | 4956, 200

The agents' cost (same sitting, 21:35-22:31, 2 cores shared with other work: 1-min load 2.4
to 10, so jobs/s swings twofold between runs; the CPU figures hold). O = the agent before the
pure core (1afb6e8), M = the agent after it and batching (b13f4ff), N = this one (the
socket read and written without pyzmq's futures, beats from a timer, a ZMTP PING every half
timeout, not every beat). 1,000 nodes, ``--idle 5 --singles 10 --gangs 2 --jobs 2000``,
medians of 3, this head::

    figure                          O       M       N
    agent_cpu_us_per_heartbeat      110     138     68
    emulator_cpu_load_pct           17.9    20.6    9.4
    head_cpu_idle_pct               7.6     7.6     6.4

5,000 nodes, ``--idle 3 --singles 10 --gangs 2 --jobs 2000``, each run listed (one or two)::

    with this head                  O           M            N
    agent_cpu_us_per_heartbeat      131         141, 190     77, 71
    emulator_cpu_load_pct           66          83, 99       41, 42
    head_cpu_idle_pct               32.0        30.3, 36.3   25.0, 22.7
    jobs_per_s                      4.6         8.2, 3.6     28.4, 19.2
    with the head of 1afb6e8 (--head-src)
    agent_cpu_us_per_heartbeat      112, 138    170          81, 91
    emulator_cpu_load_pct           64, 71      90           40, 44
    jobs_per_s                      43.2, 22.9  16.1         32.1, 11.9

Where M's emulators took a core under load the head's loop stalled for 4 s at a time. The
jobs/s of this head with O's agents (4.6) against O's own head (43.2, 22.9) is the head's
business, not the agents' (with N's agents the two heads are within the noise).
Profile of one idle phase (1,000 nodes, 10 s, cProfile of the three emulators, main thread):
O 5.6 s, M 6.3 s, N 3.0 s; M's extra was pyzmq's future machinery (a NOBLOCK receive that
fails after every message, a future and several EVENTS reads per send and receive).

Session 6, quiet machine (1-min load 0.2-1.1), each command once. The 5,000-node throughput
had fallen from 459 (above) to ~30 jobs/s: SubmitJob's satisfiability check (issue 18, added
after those figures) walked every node on every submit, 69 % of the head's CPU under load
(py-spy). It now keeps its node shapes until a node registers or a selector or compute
environment changes (hpcbatch/head/service/satisfiable.py). 5,000 nodes, ``--idle 3 --singles
10 --gangs 2 --jobs 2000``, before | after::

    jobs_per_s                          31.7 | 994
    head_cpu_load_pct                   96 | 91
    single submit->start median, p99 s  0.0171, 0.110 | 0.0033, 0.0178
    gang64 submit->start p99 s          0.0287 | 0.0118

10,000 nodes now run on this machine too (emulators and head share the 2 cores, both busy
under load), ``--idle 10 --singles 20 --gangs 4 --jobs 4000 --stall 10``, before | after the
head's ROUTER was read and written without pyzmq's futures (hpcbatch/wire.py; with pyzmq's
future machinery 40 % of the head's CPU at this size)::

    head_cpu_idle_pct                   50.8 | 45.9
    head_cpu_load_pct                   77.7 | 79.1
    jobs_per_s                          451 | 542
    gang64 submit->start p99 s          0.221 | 0.0155
    single submit->start median, p99 s  0.020, 0.176 | 0.0022, 0.236
    nodes lost (run, 10 s SIGSTOP)      0, 0 | 0, 0

Five minutes idle at 10,000 (``--idle 300 --singles 50 --gangs 10 --jobs 10000 --stall 10``):
0 nodes lost, head 45.4 % of a core idle, 427.6 jobs/s, RSS 1,129 MiB, the stall lost nothing.
The single-job p99 outliers were Python's full garbage collections (18 in one run, 90-450 ms
each); hpcbatch/head/gc_policy.py freezes the survivors of each, which in the same sitting
gave 10 full collections of at most 65 ms (258 ms in all, against 3.2 s).

With 2 s heartbeats (``--heartbeat 2``, what docs/ha.md suggests for fleets of thousands),
10,000 nodes, ``--idle 10 --singles 50 --gangs 4 --jobs 4000 --stall 10``, one run: 1,256.5
jobs/s sustained, head 23.7 % of a core idle and 83.5 % under load, single submit->start
median 1.3 ms (p99 185 ms), gang64 p99 19 ms, 0 nodes lost, the stall lost nothing. With 1 s
heartbeats the same machine gave 502.6 jobs/s, idle 49.6 % (after gc_policy; one run).

Session 7 (ListNodes answers a page of 1,000 unless asked for fewer), 10,000 nodes, 1 s
heartbeats, ``--idle 10 --singles 20 --gangs 4 --jobs 4000 --stall 10``, two runs on a quiet
machine: listnodes_s (one page) 0.074 s and listnodes_all_s (ten) 0.675 s, against 0.5-0.7 s
for one unpaged call before; 572.2 and 394.9 jobs/s; head idle 52.9 and 52.8 %; single
submit->start median 14.9 and 3.0 ms, p99 300 and 125 ms; gang64 p99 72.7 and 26.2 ms; 0
nodes lost, the stall lost nothing. The spread between runs is the two cores shared with
the emulators (1.0-1.1 cores of emulator CPU under load). Heartbeat jitter (each beat 0.95-1.05
intervals after the last) was tried and dropped: the emulators' timers then fire one per loop
turn instead of many, their CPU rose by half, and the 10,000-node join starved the head (nodes
lost, handshakes timing out) twice in two runs.

Session 8, a noisier sitting (load average 3.5-4.4 before each run), 10,000 nodes, same
flags as session 7's: 248.7 and 192.0 jobs/s, 0 nodes lost, single submit->start median 26
and 114 ms, p99 416 and 444 ms, gang64 p99 180 and 48 ms. A third run lost 171 nodes and did
37 jobs/s: its emulators took 140 % of a core and could not send their heartbeats (the head
judged them right). The session's starting tree, run between them, did not get 10,000 nodes
ACTIVE within 600 s. At 2,000 nodes (``--idle 5 --singles 10 --gangs 2 --jobs 2000``) the
starting tree and the session's end did 1,042.8 and 1,763.8 jobs/s, 0 nodes lost.

10,000 nodes from other machines against a real head (so that the emulators do not take the
head's cores)::

    # on the head's machine: N key pairs, the public ones enrolled in the head's key folder
    .venv/bin/python -m bench.fleet_emulator keys --nodes 10000 --out fleet-keys.txt \\
        --enroll /var/lib/hpcbatch/node_keys
    # copy fleet-keys.txt and the head's public key to each emulator machine; on machine i of
    # 4, nodes 2500*i .. 2500*i+2499, 400 agents a process (more starve their own loop):
    for first in $(seq $((2500*i)) 400 $((2500*i+2499))); do
        .venv/bin/python -m bench.fleet_emulator swarm --head tcp://HEAD:8472 --head-key head.key \
            --keys fleet-keys.txt --first $first --count $((first+400 > 2500*(i+1) ? 2500*(i+1)-first : 400)) &
    done

Run ``bench.fleet_emulator measure --endpoint URL --head-pid PID --nodes 10000`` on the head's
machine for the same figures against that head (it submits to the job queue ``default``).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from bench.fleet_keys import enroll, make_keys, read_keys, write_keys
from bench.fleet_measure import HeadUnderTest, measure, run_size, stall_check
from bench.fleet_swarm import PROFILE_ENV, EmulatedAgent, StubRunner, swarm_main
from hpcbatch.client import Client

__all__ = [
    "PER_PROCESS", "PROFILE_ENV", "EmulatedAgent", "HeadUnderTest", "StubRunner", "enroll", "main", "make_keys",
    "measure", "read_keys", "run_size", "stall_check", "write_keys",
]

PER_PROCESS = 400


def _bench_main(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, lambda signum, frame: (_ for _ in ()).throw(SystemExit(f"stopped by signal {signum}")))
    for nodes in (int(n) for n in args.nodes.split(",")):
        load = os.getloadavg()[0]
        results = run_size(nodes, args)
        print(f"nodes={nodes}")
        print(f"loadavg_1m_before_{nodes}={load:.2f}")
        for name, value in results.items():
            print(f"{name}_{nodes}={value}")
        sys.stdout.flush()
    return 0


def _measure_main(args: argparse.Namespace) -> int:
    client = Client(args.endpoint, timeout=60, max_workers=8)
    target = HeadUnderTest(client, args.head_pid, args.head_log)
    for name, value in measure(target, args.nodes_count, args, [], None).items():
        print(f"{name}={value}")
    return 0


def _keys_main(args: argparse.Namespace) -> int:
    keys = make_keys(args.nodes)
    write_keys(args.out, keys)
    if args.enroll:
        enroll(args.enroll, keys)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/fleet", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--heartbeat", type=float, default=1.0)
    common.add_argument("--liveness", type=int, default=5)
    figures = argparse.ArgumentParser(add_help=False)
    figures.add_argument("--idle", type=float, default=15.0, help="seconds of idle head CPU measured")
    figures.add_argument("--singles", type=int, default=100, help="single jobs timed submit->start")
    figures.add_argument("--gangs", type=int, default=10, help="64-node gangs timed submit->start")
    figures.add_argument("--jobs", type=int, default=2000, help="true jobs for the throughput figure")
    bench = sub.add_parser("bench", parents=[common, figures], help="a fresh local head per size (default)")
    bench.add_argument("--nodes", default="1000")
    bench.add_argument("--per-process", type=int, default=PER_PROCESS)
    bench.add_argument("--stall", type=float, default=0.0, help="SIGSTOP the head this long under running jobs")
    bench.add_argument("--keep", action="store_true", help="keep the state folder (logs)")
    bench.add_argument("--head-src", default="", help="run the head from this source tree (a before/after comparison)")
    swarm = sub.add_parser("swarm", parents=[common], help="run emulated agents against a head")
    swarm.add_argument("--head", required=True)
    swarm.add_argument("--head-key", required=True)
    swarm.add_argument("--keys", required=True)
    swarm.add_argument("--first", type=int, default=0)
    swarm.add_argument("--count", type=int, default=PER_PROCESS)
    swarm.add_argument("--vcpus", type=int, default=2)
    swarm.add_argument("--memory", type=int, default=4096)
    swarm.add_argument("--group-size", type=int, default=128, help="nodes per placement group")
    swarm.add_argument("--fence", type=float, default=None)
    keys = sub.add_parser("keys", help="make key pairs (and enroll them in a head's key folder)")
    keys.add_argument("--nodes", type=int, required=True)
    keys.add_argument("--out", required=True)
    keys.add_argument("--enroll", default="", help="the head's node_keys_dir")
    meas = sub.add_parser("measure", parents=[figures], help="figures against a running head")
    meas.add_argument("--endpoint", required=True)
    meas.add_argument("--head-pid", type=int, required=True)
    meas.add_argument("--nodes", dest="nodes_count", type=int, required=True)
    meas.add_argument("--head-log", default=None)
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["bench", *argv]
    args = parser.parse_args(argv)
    if args.command == "swarm":
        return swarm_main(args)
    if args.command == "keys":
        return _keys_main(args)
    if args.command == "measure":
        return _measure_main(args)
    return _bench_main(args)


if __name__ == "__main__":
    sys.exit(main())
