"""Allreduce latency (8 bytes) and bandwidth (a large array) across the job's ranks.

    hpcbatch submit --nodes 4 -- mpirun python mpi_examples/allreduce.py [MiB]
"""

import sys
import time

import numpy as np
from mpi4py import MPI

comm = MPI.COMM_WORLD
mib = float(sys.argv[1]) if len(sys.argv) > 1 else 64.0
small = np.ones(1, dtype=np.float64)
out = np.empty_like(small)
for _ in range(10):  # warm up the connections
    comm.Allreduce(small, out)
t0 = time.perf_counter()
reps = 200
for _ in range(reps):
    comm.Allreduce(small, out)
latency_us = (time.perf_counter() - t0) / reps * 1e6
big = np.ones(int(mib * (1 << 20) / 8), dtype=np.float64)
result = np.empty_like(big)
comm.Barrier()
t0 = time.perf_counter()
comm.Allreduce(big, result)
seconds = time.perf_counter() - t0
assert result[0] == comm.size
if comm.rank == 0:
    print(f"ranks={comm.size} allreduce_8B_latency_us={latency_us:.1f} "
          f"allreduce_{mib:g}MiB_s={seconds:.3f} algbw_MiB_per_s={mib / seconds:.1f}", flush=True)
