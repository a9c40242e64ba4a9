"""Reproducibility: `seed_everything` seeds every random generator a training run draws from.

    seed_everything(0)
    net = mlp()                                              # the same initial weights every time
    history = fit(net, md, 3, seed=0)                        # the same History and weights on CPU
"""
import os
import random

import numpy as np
import torch

__all__ = ["seed_everything"]


def seed_everything(seed):
    """Seed Python's `random`, numpy's global generator and torch (CPU and every GPU); returns `seed`.

    Also sets `PYTHONHASHSEED`, which only reaches processes started afterwards (workers, torchrun
    children): the running interpreter fixed its string hashing when it started. Pair it with
    `fit(..., seed=seed)` (the shuffles, and on the CPU torch's thread count for every step instead of
    `netfit.analytic.ThreadTrial`'s timed choice) or `fit(..., deterministic=True)` for identical runs;
    seeding alone leaves those free.

    Example:
        >>> _ = seed_everything(42); a = torch.rand(2)
        >>> _ = seed_everything(42); torch.equal(a, torch.rand(2))
        True
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2 ** 32:
        raise ValueError(f"seed must be an integer in [0, 2**32); got {seed!r}")
    seed = int(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return seed
