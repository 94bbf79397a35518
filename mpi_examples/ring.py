"""Pass a token around the ring of ranks N times; prints the round-trip time.

    hpcbatch submit --nodes 4 -- mpirun python mpi_examples/ring.py [laps]
"""

import sys
import time

from mpi4py import MPI

comm = MPI.COMM_WORLD
laps = int(sys.argv[1]) if len(sys.argv) > 1 else 100
right, left = (comm.rank + 1) % comm.size, (comm.rank - 1) % comm.size
token = 0
t0 = time.perf_counter()
for _ in range(laps):
    if comm.rank == 0:
        comm.send(token + 1, dest=right)
        token = comm.recv(source=left)
    else:
        token = comm.recv(source=left)
        comm.send(token + 1, dest=right)
if comm.rank == 0:
    lap_us = (time.perf_counter() - t0) / laps * 1e6
    assert token == laps * comm.size, token
    print(f"ring of {comm.size} ranks: {laps} laps, token={token}, {lap_us:.1f} us per lap", flush=True)
