"""Where a GPU epoch of the CNN goes: seconds per epoch of `fit` with one setting changed at a time,
then the top CUDA kernels of an eager epoch (graph replays hide kernel names from the profiler).

    python bench/profile_gpu_cnn.py        # on a GPU; Fashion-MNIST's 60,000 training images

Base setting: cnn(64,128,256), bs 512, AdamW (fused), one-cycle rate, bf16 autocast, channels_last,
2-px shift augmentation, label smoothing 0.1, the step captured in a CUDA graph.
"""
import time

import numpy as np
import torch
from torch import nn, optim

from netfit import Augment, ImageClassifierData, datasets, fit, one_cycle
from netfit.models import cnn


class Clock:
    """Seconds of the last epoch's training steps (synchronised)."""

    def __init__(self):
        self.times = []

    def before_epoch(self, run):
        torch.cuda.synchronize()
        self.t0 = time.perf_counter()

    def after_batch(self, run):
        if run.batch == run.n_batches - 1:
            torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self.t0)


class Eager:  # an after_loss handler: graph_plan refuses the capture, the same fused optimizer runs eagerly
    def after_loss(self, run):
        pass


def epoch_seconds(x, y, channels=(64, 128, 256), bs=512, amp=True, channels_last=True, shift=True, graph=True,
                  epochs=2, profile=False):
    md = ImageClassifierData.from_arrays(".", (x, y), None, bs=bs, device="cuda")
    torch.manual_seed(0)
    net = cnn(channels=channels).cuda()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    clock = Clock()
    cbs = [clock] + ([Augment(pad=2, rotate=0)] if shift else []) + ([] if graph else [Eager()])
    if profile:
        cbs.append(Profile())
    h = fit(net, md, epochs, optim.AdamW(net.parameters(), 4e-3, weight_decay=1e-4),
            nn.CrossEntropyLoss(label_smoothing=0.1), callbacks=cbs, schedule=one_cycle(4e-3, moms=None),
            amp=amp, verbose=False)
    return clock.times[-1], h.info["step"]


class Profile:
    """Profile the last epoch's CUDA kernels."""

    def before_epoch(self, run):
        if run.epoch == run.epochs - 1:
            self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                           torch.profiler.ProfilerActivity.CUDA])
            self.prof.__enter__()

    def after_epoch(self, run):
        if run.epoch == run.epochs - 1:
            torch.cuda.synchronize()
            self.prof.__exit__(None, None, None)
            print(self.prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=60))


def main():
    torch.backends.cudnn.benchmark = True
    (x, y), (xv, yv), _ = datasets.fashion_mnist()
    x, y = np.concatenate([x, xv]), np.concatenate([y, yv])
    x = (x - x.mean()) / x.std()
    variants = [("base", {}), ("no augmentation", {"shift": False}), ("no channels_last", {"channels_last": False}),
                ("no autocast (fp32/tf32)", {"amp": False}), ("eager step (no graph)", {"graph": False}),
                ("bs 1024", {"bs": 1024}), ("channels 32,64,128", {"channels": (32, 64, 128)}),
                ("channels 32,64,128, no aug", {"channels": (32, 64, 128), "shift": False})]
    rows = []
    for name, kw in variants:
        s, step = epoch_seconds(x, y, **kw)
        rows.append((name, s, step))
        print(f"{name:<30} {s:.3f} s/epoch  {step}", flush=True)
    epoch_seconds(x, y, graph=False, profile=True)
    print("\n| variant | s/epoch (60,000 images) | step |\n|---|---|---|")
    for name, s, step in rows:
        print(f"| {name} | {s:.3f} | {step} |")


if __name__ == "__main__":
    main()
