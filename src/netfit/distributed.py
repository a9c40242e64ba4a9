"""Distributed data parallel on PyTorch's own engine: what `fit` and `predict` do under `torchrun`.

    torchrun --nproc-per-node=2 -m netfit train --data fashion-mnist     # or any script calling fit

When `torchrun` (or any launcher) sets WORLD_SIZE > 1, `fit` initialises the process group (nccl on
GPUs, gloo on CPUs), wraps the model in `DistributedDataParallel`, and gives each rank every
`world`-th row of the epoch's permutation (`order[rank::world]`), the same permutation on every
rank. Every row is seen exactly once per epoch across ranks; when the rows do not divide evenly,
some ranks take one batch fewer and DDP's `join` keeps the others from waiting forever, so nothing
is padded and nothing dropped. With a per-rank batch b, step i uses the same rows as step i of a
single process with batch `world * b` over the same permutation.
"""
import atexit
import os

import torch
import torch.distributed as dist

__all__ = ["world", "rank", "is_main", "setup", "all_reduce_sum", "shared_seed", "gather_rows"]


def world():
    """Number of processes in the job (1 without a launcher)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank():
    """This process's rank (0 without a launcher)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main():
    """True on the process that prints, draws bars and writes files."""
    return rank() == 0


def local_device():
    """The GPU this rank should use (`cuda:LOCAL_RANK`), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return torch.device("cpu")


def setup(device):
    """Initialise the default process group once if the environment asks for more than one process.

    Returns True when running distributed. The backend is nccl for CUDA devices, gloo otherwise.
    """
    if world() <= 1 or not dist.is_available():
        return False
    if not dist.is_initialized():
        backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(torch.device(device))
        dist.init_process_group(backend)
        atexit.register(_teardown)
    return True


def _teardown():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t):
    """Sum a tensor over all ranks in place (a no-op in a single process); returns it."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def shared_seed(device):
    """A seed drawn on rank 0 from torch's generator and broadcast, so every rank shuffles alike."""
    seed = torch.randint(0, 2 ** 62, (1,), dtype=torch.int64).to(device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast(seed, src=0)
    return int(seed.item())


def gather_rows(local, n, r, w):
    """Rows computed on each rank for positions `r::w` back to one (n, ...) tensor in the original order."""
    size = -(-n // w)  # every rank sends the same length: pad its share to ceil(n / w) rows
    padded = local.new_zeros((size, *local.shape[1:]))
    padded[:len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(w)]
    dist.all_gather(parts, padded)
    out = local.new_empty((n, *local.shape[1:]))
    for k, part in enumerate(parts):
        count = len(range(k, n, w))
        out[k::w] = part[:count]
    return out
