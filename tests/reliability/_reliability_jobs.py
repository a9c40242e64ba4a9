"""The jobs that reliability tests run in processes of their own to kill them with SIGKILL, and the
helpers that run and kill them.

The tests start them from a forkserver that has imported torch and netfit once (see conftest.py):
each job is a separate process with its own memory, nothing shared with the test but a counter in
shared memory through which it reports progress, and it starts in milliseconds, not seconds.
"""
import gzip
import os
import pickle
import signal
import time
from pathlib import Path

import matplotlib
matplotlib.use("Agg")  # no display in a job
import matplotlib.pyplot  # noqa: E402,F401  `netfit train` draws its plots with it
import numpy as np
import torch
import torch._dynamo  # noqa: F401  optimizers import it when first built: seconds the forkserver pays once
from torch import nn, optim

import netfit.checkpoint as checkpoint_module
import netfit.cli  # and what `netfit train` imports when it runs
import netfit.plots  # noqa: F401
from netfit import ImageClassifierData, accuracy, fit
from netfit.checkpoint import save_checkpoint

N_ROWS, N_TRAIN, N_FEATURES, N_CLASSES = 1200, 1000, 64, 10  # 1000 rows train, 200 validate
BS, EPOCHS, EVERY = 32, 3, 5  # 32 batches per epoch (the last of 8 rows), 96 steps, a checkpoint every 5


def blobs(n=N_ROWS, d=N_FEATURES, c=N_CLASSES, seed=0):
    """Gaussian clusters, one per class: (x float32 (n, d), y int64 (n,))."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 2, (c, d))
    y = rng.integers(0, c, n)
    return (centers[y] + rng.normal(0, 1.5, (n, d))).astype(np.float32), y.astype(np.int64)


def tiny_pickle(path, seed=0):
    """An mnist.pkl.gz-format file of 608 train, 100 valid and 100 test 28x28 images of 10 classes."""
    rng = np.random.default_rng(seed)
    protos = rng.random((10, 784))

    def split(n):
        y = rng.integers(0, 10, n)
        return np.clip(protos[y] + rng.normal(0, 0.3, (n, 784)), 0, 1).astype(np.float32), y.astype(np.int64)
    with gzip.open(path, "wb") as f:
        pickle.dump((split(608), split(100), split(100)), f)
    return path


def make_net(seed=0):
    """An MLP with dropout, so that a resumed run must also restore the RNG that draws the masks."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(N_FEATURES, 128), nn.ReLU(), nn.Dropout(0.3),
                         nn.Linear(128, 64), nn.ReLU(), nn.Dropout(0.3),
                         nn.Linear(64, N_CLASSES), nn.LogSoftmax(dim=1))


class Progress:
    """Publishes the optimizer steps taken so far in shared memory, for the test to time its kill."""

    def __init__(self, counter):
        self.counter = counter

    def after_batch(self, run):
        self.counter.value = run.step


def train(folder, counter, resume, epochs=EPOCHS, every=EVERY):
    """Train on blobs with checkpoints in `folder`/ckpt; write the final weights and History to result.pt."""
    torch.set_num_threads(1)  # the same kernels in every process
    folder = Path(folder)
    x, y = blobs()
    md = ImageClassifierData.from_arrays(str(folder), (x[:N_TRAIN], y[:N_TRAIN]), (x[N_TRAIN:], y[N_TRAIN:]), bs=BS,
                                         device="cpu")
    net = make_net()
    h = fit(net, md, epochs, optim.Adam(net.parameters(), 1e-3), nn.NLLLoss(), [accuracy],
            callbacks=[Progress(counter)], verbose=False, checkpoint=folder / "ckpt", checkpoint_every=every,
            resume=resume, deterministic=True)
    records = [{k: v for k, v in r.items() if k != "time"} for r in h.records]
    torch.save({"weights": net.state_dict(), "history": records, "resumed_from": h.info.get("resumed_from")},
               folder / "result.pt")


def cli(argv):
    """`netfit ...` as the console script runs it (`netfit.cli:main`); the exit code is this process's."""
    torch.set_num_threads(1)
    raise SystemExit(netfit.cli.main(list(argv)))


def tensor_state(i, size):
    """A state whose every value says which save wrote it: a torn file could not pass for a whole one."""
    return {"i": i, "w": torch.full((size,), float(i)), "tail": torch.arange(size // 4) + i}


def save_loop(path, counter, size, start):
    """Save checkpoints to `path` forever, numbered from `start`; report each one done in `counter`."""
    for i in range(start, 1 << 30):
        save_checkpoint(path, tensor_state(i, size))
        counter.value = i


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


class _DyingFile:
    """A file that writes half of what it is given, then the process is killed."""

    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, data):
        self.f.write(data[:len(data) // 2])
        self.f.flush()
        _die()

    def __getattr__(self, name):
        return getattr(self.f, name)


def save_and_die(path, point, size):
    """Save checkpoints 1 and 2 to `path`, then die by SIGKILL at `point` inside the save of checkpoint 3.

    Points: "mid-write" (half the bytes written), "before-fsync", "after-rotate" (the old checkpoint
    renamed to .prev, the new one not yet in place), "after-rename" (before the folder's fsync).
    """
    save_checkpoint(path, tensor_state(1, size))
    save_checkpoint(path, tensor_state(2, size))
    replace, calls = os.replace, []
    if point == "mid-write":
        checkpoint_module.open = lambda *a, **k: _DyingFile(open(*a, **k))
    elif point == "before-fsync":
        os.fsync = lambda fd: _die()
    elif point in ("after-rotate", "after-rename"):
        def dying_replace(src, dst):
            replace(src, dst)
            calls.append(dst)
            if len(calls) == (1 if point == "after-rotate" else 2):
                _die()
        os.replace = dying_replace
    else:
        raise ValueError(f"unknown point {point!r}")
    save_checkpoint(path, tensor_state(3, size))
    raise AssertionError(f"save_and_die({point!r}) was not killed")


# ---------------------------------------------------------------- used by the tests, to run and kill jobs

def run_job(jobs, target, *args, timeout=120):
    """Run `target(*args)` in a job process to the end; its exit code."""
    p = jobs.Process(target=target, args=args)
    p.start()
    p.join(timeout)
    if p.is_alive():
        p.kill()
        p.join()
        raise AssertionError(f"{target.__name__} did not finish in {timeout} s")
    return p.exitcode


def kill_when(p, ready, delay=0.0, timeout=120):
    """SIGKILL process `p` once `ready()` is true, `delay` s later; False when it ended on its own first."""
    end = time.monotonic() + timeout
    while not ready():
        if not p.is_alive():
            return False
        if time.monotonic() > end:
            p.kill()
            raise AssertionError(f"process {p.pid} never became ready to kill")
        time.sleep(0.0005)
    if delay:
        time.sleep(delay)
    p.kill()  # SIGKILL: no handler, no cleanup, no flush
    p.join()
    return p.exitcode == -9
