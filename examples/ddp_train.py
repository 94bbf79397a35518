"""A tiny DistributedDataParallel training run: linear regression on synthetic data.

Start it with torchrun on every node of a multi-node job (hpcbatch sets MASTER_ADDR,
MASTER_PORT, NNODES, NODE_RANK and GLOO_SOCKET_IFNAME/NCCL_SOCKET_IFNAME):

    torchrun --nnodes $NNODES --node-rank $NODE_RANK --nproc-per-node 2 \
        --master-addr $MASTER_ADDR --master-port $MASTER_PORT examples/ddp_train.py

Uses nccl when CUDA is available, gloo otherwise. Rank 0 prints one summary line:
``world_size=W ranks_seen=[...] hosts=[...] loss_first=... loss_last=...``.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--samples", type=int, default=256, help="samples per rank, cycled")
    parser.add_argument("--features", type=int, default=16,
                        help="model size: more features, more gradient bytes per all-reduce")
    parser.add_argument("--lr", type=float, default=0.2, help="scaled by 64/(64 + features)")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    dist.init_process_group(backend="nccl" if cuda else "gloo")  # env:// from torchrun
    rank, world = dist.get_rank(), dist.get_world_size()

    # The same true weights everywhere; each rank its own fixed shard of the data.
    torch.manual_seed(0)
    true_w = torch.randn(args.features, 1) / args.features**0.5
    true_b = torch.randn(1)
    gen = torch.Generator().manual_seed(1000 + rank)
    x = torch.randn(args.samples, args.features, generator=gen)
    y = x @ true_w + true_b + 0.01 * torch.randn(args.samples, 1, generator=gen)
    x, y = x.to(device), y.to(device)

    torch.manual_seed(1)  # identical initial weights (DDP broadcasts rank 0's anyway)
    model = DistributedDataParallel(nn.Linear(args.features, 1).to(device),
                                    device_ids=[local_rank] if cuda else None)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr * 64 / (64 + args.features))
    loss_fn = nn.MSELoss()
    batches = max(1, args.samples // args.batch)

    losses: list[float] = []
    for step in range(args.steps):
        i = (step % batches) * args.batch
        xb, yb = x[i:i + args.batch], y[i:i + args.batch]
        opt.zero_grad()
        loss = loss_fn(model(xb), yb)
        loss.backward()  # DDP all-reduces the gradients here
        opt.step()
        mean = loss.detach().clone()
        dist.all_reduce(mean, op=dist.ReduceOp.SUM)
        losses.append(float(mean) / world)

    seen: list[tuple[int, str] | None] = [None] * world
    dist.all_gather_object(seen, (rank, socket.gethostname()))
    if rank == 0:
        pairs = [p for p in seen if p is not None]
        ranks = sorted(r for r, _ in pairs)
        hosts = sorted({h for _, h in pairs})
        print(f"world_size={world} ranks_seen={ranks} hosts={hosts} "
              f"loss_first={losses[0]:.6f} loss_last={losses[-1]:.6f}", flush=True)
    dist.barrier()
    dist.destroy_process_group()
    # Leave without the interpreter's teardown: there gloo's worker threads can abort the process
    # (SIGABRT, "terminate called without an active exception", with no Python frame) after all
    # the work is done, and torchrun then fails this node and the other node waits out its exit
    # barrier (5 minutes). Seen here about once in three runs on 2 loaded cores.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
