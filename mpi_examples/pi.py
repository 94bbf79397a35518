"""Compute pi by midpoint integration of 4/(1+x^2), split across ranks.

    hpcbatch submit --nodes 4 -- mpirun python mpi_examples/pi.py [intervals]
"""

import math
import sys

from mpi4py import MPI

comm = MPI.COMM_WORLD
n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000_000
h = 1.0 / n
local = sum(4.0 / (1.0 + ((i + 0.5) * h) ** 2) for i in range(comm.rank, n, comm.size)) * h
pi = comm.reduce(local, op=MPI.SUM, root=0)
if comm.rank == 0:
    print(f"pi ~ {pi:.12f} (error {abs(pi - math.pi):.2e}) from {comm.size} ranks", flush=True)
