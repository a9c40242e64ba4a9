"""Where one training step of netfit's `fit` spends its time: phases, torch ops, Python functions.

    python bench/profile_fit.py                   # logreg, Fashion-MNIST, bs 64, Adam lr 1e-3
    python bench/profile_fit.py --model mlp --threads 1

Five views of the same epoch (782 steps), each in microseconds per step, from the least disturbed of
a few epochs (the minimum: other load on the machine only ever adds time):
  1. `fit` itself, timed from the start of an epoch to its last step (validation is not counted).
  2. The work an autograd loop must do, cut into phases with a clock around each: batch gather,
     forward, loss, zero_grad, backward, optimizer step, loss bookkeeping. For a model `fit` trains
     through autograd, what it costs beyond their sum is its own (callback events, Run attributes,
     per-step checks); for the lesson's MLPs on the CPU, which it trains with the gradient written
     out (analytic.py), the difference is what that step saves.
  3. The optimizer step with Adam's three implementations (for-loop, foreach, fused).
  4. Cutting the batches alone: netfit's ArrayLoader, the same with index_select, a DataLoader.
  5. torch.profiler's op table and cProfile's function table over one epoch of `fit`.
"""
import argparse
import cProfile
import pstats
import time

import torch
from torch import nn

from netfit import ImageClassifierData, accuracy, fit, models
from netfit.data import ArrayLoader
from netfit.metrics import Mean

BS, LR = 64, 1e-3


def load(n_train=None):
    from netfit import datasets
    (x, y), (xv, yv), _ = datasets.fashion_mnist()
    x, y = x[:n_train], y[:n_train]
    mean, std = x.mean(), x.std()
    return (x - mean) / std, y, (xv - mean) / std, yv


class TrainClock:
    """A callback timing each training pass: from before_epoch to the end of the last step."""

    def __init__(self):
        self.times = []

    def before_epoch(self, run):
        self.t0 = time.perf_counter()

    def after_batch(self, run):
        if run.batch == run.n_batches - 1:
            self.times.append(time.perf_counter() - self.t0)


def fit_us_per_step(model, data, epochs=3):
    x, y, xv, yv = data
    torch.manual_seed(0)
    net = models.get_model(model)
    md = ImageClassifierData.from_arrays(".", (x, y), (xv, yv), bs=BS, device="cpu")
    clock = TrainClock()
    h = fit(net, md, epochs, torch.optim.Adam(net.parameters(), LR), nn.NLLLoss(), [accuracy], [clock], verbose=False)
    return min(clock.times[1:]) / len(md.trn_dl) * 1e6, h.info  # min: the least disturbed epoch on a busy machine


def phases_us_per_step(model, data, opt_kwargs=None, epochs=3):
    """The core of a training step, clocked phase by phase; the least disturbed epoch, per step."""
    x, y = (torch.from_numpy(a) for a in data[:2])
    torch.manual_seed(0)
    net, crit = models.get_model(model), nn.NLLLoss()
    opt = torch.optim.Adam(net.parameters(), LR, **(opt_kwargs or {}))
    dl = ArrayLoader(x, y, BS, shuffle=True)
    names = ("gather", "forward", "loss", "zero_grad", "backward", "step", "bookkeeping")
    best = None
    for _ in range(epochs):
        spent, total = dict.fromkeys(names, 0.0), Mean()
        batches = iter(dl)
        for _ in range(len(dl)):
            t0 = time.perf_counter()
            xb, yb = next(batches)
            t1 = time.perf_counter()
            preds = net(xb)
            t2 = time.perf_counter()
            loss = crit(preds, yb)
            t3 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            t4 = time.perf_counter()
            loss.backward()
            t5 = time.perf_counter()
            opt.step()
            t6 = time.perf_counter()
            total.update(loss, len(yb))
            t7 = time.perf_counter()
            for name, dt in zip(names, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5, t7 - t6)):
                spent[name] += dt
        if best is None or sum(spent.values()) < sum(best.values()):
            best = spent
    return {k: v / len(dl) * 1e6 for k, v in best.items()}


def loaders_us_per_batch(data, epochs=3):
    """One epoch of batches and nothing else, from each way of cutting them; the least disturbed epoch."""
    from torch.utils.data import DataLoader, TensorDataset
    x, y = (torch.from_numpy(a) for a in data[:2])

    def index_select():  # ArrayLoader's loop with index_select in place of x[j]
        idx = torch.randperm(len(x))
        for i in range(0, len(x), BS):
            j = idx[i:i + BS]
            yield x.index_select(0, j), y.index_select(0, j)

    ways = {"ArrayLoader (x[j])": lambda: ArrayLoader(x, y, BS, shuffle=True),
            "index_select": index_select,
            "DataLoader(TensorDataset)": lambda: DataLoader(TensorDataset(x, y), batch_size=BS, shuffle=True)}
    n_batches = -(-len(x) // BS)
    out = {}
    for name, make in ways.items():
        best = float("inf")
        for _ in range(epochs):
            t0 = time.perf_counter()
            for _ in make():
                pass
            best = min(best, time.perf_counter() - t0)
        out[name] = best / n_batches * 1e6
    return out


def profile_tables(model, data, rows=15):
    x, y, xv, yv = data
    net = models.get_model(model)
    md = ImageClassifierData.from_arrays(".", (x, y), (xv[:64], yv[:64]), bs=BS, device="cpu")
    opt, crit = torch.optim.Adam(net.parameters(), LR), nn.NLLLoss()
    fit(net, md, 1, opt, crit, verbose=False)  # warm-up
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fit(net, md, 1, opt, crit, verbose=False)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))
    pr = cProfile.Profile()
    pr.enable()
    fit(net, md, 1, opt, crit, verbose=False)
    pr.disable()
    stats = pstats.Stats(pr).sort_stats("tottime")
    stats.print_stats(rows)
    stats.print_stats("netfit", rows)  # netfit's own functions: what fit adds around torch's calls


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="logreg", choices=list(models.MODELS))
    p.add_argument("--threads", type=int, default=0, help="torch threads (default 0: torch's choice)")
    p.add_argument("--no-tables", action="store_true", help="skip the profiler and cProfile tables")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load()
    print(f"{args.model}, bs {BS}, torch {torch.__version__}, {torch.get_num_threads()} threads; us per step")
    step, info = fit_us_per_step(args.model, data)
    print(f"fit, whole step: {step:7.1f}   ({info.get('optimizer', 'optimizer as given')}; {info.get('step')})")
    # the phases of the autograd loop, with the optimizer fit ran; when fit wrote the MLP's gradient
    # out (analytic.py) instead, "fit minus sum" is what that saved (negative), not fit's own overhead
    phases = phases_us_per_step(args.model, data, {"fused": True} if "fused" in info.get("optimizer", "") else None)
    for k, v in phases.items():
        print(f"  {k:<12} {v:7.1f}")
    print(f"  {'sum':<12} {sum(phases.values()):7.1f}   (fit minus sum: {step - sum(phases.values()):.1f})")
    for label, kw in (("for-loop", {"foreach": False}), ("foreach", {"foreach": True}), ("fused", {"fused": True})):
        print(f"Adam {label:<9} step {phases_us_per_step(args.model, data, kw)['step']:7.1f}")
    for name, us in loaders_us_per_batch(data).items():
        print(f"batches only, {name:<26} {us:7.1f}")
    if not args.no_tables:
        profile_tables(args.model, data)


if __name__ == "__main__":
    main()
