"""Distributed data parallel on PyTorch's own engine: what `fit` and `predict` do under `torchrun`.

    torchrun --nproc-per-node=2 -m netfit train --data fashion-mnist     # or any script calling fit

When `torchrun` (or any launcher) sets WORLD_SIZE > 1, `fit` initialises the process group (nccl on
GPUs, gloo on CPUs), wraps the model in `DistributedDataParallel`, and gives each rank every
`world`-th row of the epoch's permutation (`order[rank::world]`), the same permutation on every
rank. With a per-rank batch b, step i uses the same rows as step i of a single process with batch
`world * b` over the same permutation, and gives the same update (to float rounding):

- Every row is seen exactly once per epoch across ranks; nothing is dropped (unless the loader's
  `drop_last`). When the rows do not divide evenly, a rank whose share has run out takes its
  remaining steps on a stand-in batch (its loader's first row) with weight 0, so every rank takes
  the same steps, the same all-reduces and the same optimizer updates (DDP's `join` would leave the
  short ranks' optimizer state a step behind).
- Each rank's loss is weighted by its rows over the step's rows on all ranks (`ArrayLoader.rows`),
  so DDP's average of the ranks' gradients is the mean over every row of the step, short last
  batches included.
- Validation loss and metrics are sums all-reduced over ranks: every rank reports the same numbers.
  BatchNorm statistics are broadcast from rank 0 after each epoch's training. The non-finite-loss
  check is all-reduced too, so that every rank skips or stops at the same step.
- `predict` runs each rank on its share (`rank::world`) and gathers the rows back into the original
  order on every rank.
- Only rank 0 prints, draws bars and writes checkpoints; a checkpoint holds the plain model (no
  `module.` prefix) and loads in a single process, and the other way round. `fit(resume=True)` waits
  at a barrier so no rank reads a checkpoint rank 0 is still writing; the checkpoint path must be
  readable by every node.
- `torchrun --max-restarts=K` restarts the whole group when a rank dies; with `fit(checkpoint=...,
  resume=True)` the new group continues from the last checkpoint, mid-epoch included. Launch it with
  TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1: torchrun >= 2.5 otherwise keeps one store across attempts
  and a restarted group can read the dead attempt's addresses (pytorch/pytorch#135712).
- The shuffling seed is broadcast from rank 0 (`fit(seed=...)` fixes it; `history.info["seed"]`
  records it), so a single process given that seed shuffles alike.
"""
import atexit
import os
import sys

import torch
import torch.distributed as dist

__all__ = ["world", "rank", "is_main", "setup", "all_reduce_sum", "shared_seed", "gather_rows", "barrier",
           "broadcast_buffers"]


def world():
    """Number of processes in the job (1 without a launcher)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank():
    """This process's rank (0 without a launcher, or with a RANK but no WORLD_SIZE above 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0")) if world() > 1 else 0


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
        if "TORCHELASTIC_RUN_ID" not in os.environ and rank() == 0:  # not torchrun: perhaps variables left over
            print(f"netfit: WORLD_SIZE={world()} and RANK={rank()} are set in the environment: joining a process group "
                  f"at {os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')} and waiting for "
                  "the other processes (unset WORLD_SIZE to train in this process alone)", file=sys.stderr, flush=True)
        try:
            dist.init_process_group(backend)
        except RuntimeError as e:
            if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
                raise RuntimeError(f"{e}\nnetfit: this is a torchrun restart; torchrun's store can still hold the "
                                   "previous attempt's addresses (pytorch/pytorch#135712): launch torchrun with "
                                   "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1") from e
            raise
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


def _active():
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier():
    """Wait until every rank gets here (a no-op in a single process)."""
    if _active():
        dist.barrier()


def broadcast_buffers(model):
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank (a no-op in a single process)."""
    if _active():
        for b in model.buffers():
            dist.broadcast(b, src=0)


def shared_seed(device, seed=None):
    """Rank 0's `seed` (or one drawn from torch's generator there), broadcast so every rank shuffles alike."""
    if seed is None:
        seed = torch.randint(0, 2 ** 62, (1,), dtype=torch.int64).item()
    seed = torch.tensor([int(seed)], dtype=torch.int64, device=device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast(seed, src=0)
    return int(seed.item())


def disagreement(named_values, device):
    """Under torchrun: where the ranks' values differ (`named_values`: (name, float) pairs, the same names
    on every rank), as text; None when they agree. Every rank calls, and all get the same answer."""
    if not _active():
        return None
    w, r = dist.get_world_size(), dist.get_rank()
    table = torch.zeros(w, len(named_values), dtype=torch.float64, device=device)
    table[r] = torch.tensor([float(v) for _, v in named_values], dtype=torch.float64)
    dist.all_reduce(table, op=dist.ReduceOp.SUM)  # each rank fills its own row of zeros
    table = table.cpu()
    bad = [f"{name}: " + ", ".join(f"rank {k} {table[k, j].item():.10g}" for k in range(w))
           for j, (name, _) in enumerate(named_values)
           if not torch.isclose(table[:, j], table[0, j].expand(w), rtol=0, atol=0, equal_nan=True).all()]
    return "; ".join(bad) or None


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
