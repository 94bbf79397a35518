"""Hello from every rank: rank, size and the host it runs on.

    hpcbatch submit --nodes 4 -- mpirun python mpi_examples/hello.py
"""

import socket

from mpi4py import MPI

comm = MPI.COMM_WORLD
total = comm.allreduce(comm.rank, op=MPI.SUM)
print(f"hello from rank {comm.rank} of {comm.size} on {socket.gethostname()} (sum of ranks {total})", flush=True)
