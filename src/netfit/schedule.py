"""Learning rates: schedules set per optimizer step, the LR finder, and per-layer rates.

    res = lr_find(net, md, opt=opt)                     # sweep 1e-7..10, model and optimizer put back
    fit(net, md, 3, opt, schedule=one_cycle(res.suggestion))   # or fit_one_cycle(net, md, 3, res.suggestion)
    opt = torch.optim.AdamW(param_groups(net, slice(1e-4, 1e-2), wd=0.01))   # one rate per layer

A schedule is a callback: before every batch it sets each param group's rate (and momentum) from
`pct`, the fraction of optimizer steps already taken (so a schedule counts steps, not epochs, and
`accumulate=k` stretches nothing). It records what the optimizer used, one entry per step, in
`history.info["lrs"]` and `history.info["moms"]` (the first param group's values); every epoch
record keeps its last `lr` as before.

Weight decay done right: `Adam(weight_decay=wd)` adds `wd * w` to the gradient (L2), which Adam
then divides by the running gradient scale, so well-trained weights are hardly decayed.
`AdamW(weight_decay=wd)` is decoupled (Loshchilov & Hutter, 2019): each step shrinks the weights
directly, `w -= lr * wd * w`, apart from the Adam update. Use AdamW, and `param_groups(..., wd=)`
to keep biases and normalisation parameters out of the decay.

The one-cycle policy follows fastai (Smith, 2018): the rate rises from `max_lr / div` to `max_lr`
over the first `pct_start` of the steps and falls to `max_lr / div_final`, both by half-cosines,
while momentum (SGD momentum, Adam beta1) moves the other way, 0.95 -> 0.85 -> 0.95.
"""
import copy
import math
from dataclasses import dataclass

import numpy as np
import torch

from .checkpoint import rng_state, set_rng_state
from .data import _warn
from .distributed import all_reduce_sum, world
from .fit import CancelFit, Callback, _group_rates, _loaders, _model_device, _spread, fit, set_lrs

__all__ = ["Schedule", "one_cycle", "cosine", "step_decay", "fit_one_cycle", "lr_find", "LRFinderResult",
           "param_groups"]


def _cos(start, end, pct):
    """A half-cosine from `start` (pct 0) to `end` (pct 1)."""
    return end + (start - end) * (1 + math.cos(math.pi * pct)) / 2


class Schedule(Callback):
    """Set every param group's rate to `peak * lr_fn(pct)` (and momentum to `mom_fn(pct)`) per step.

    Args:
        lr_fn: `pct -> multiplier` of each group's peak rate, `pct` = steps taken / total steps.
        lrs: the peak rates: one float for all groups, one per group, or None for the rates the
            optimizer holds when `fit` starts (so `set_lrs(opt, ...)` or per-layer groups set them).
        mom_fn: `pct -> momentum` for groups that have one (SGD with momentum > 0, Adam's beta1);
            None leaves momentum alone.

    `state_dict`/`load_state_dict` carry the rates used so far through a checkpoint; the position
    itself is `run.step`, which a resumed `fit` restores. After the fit (also one stopped by
    `CancelFit`) the optimizer gets back the rates and momenta it held before.

    Example:
        >>> sched = Schedule(lambda pct: 1 - pct, lrs=0.1)       # linear decay to 0
        >>> [round(sched.lr_fn(p), 2) for p in (0, 0.5, 1)]
        [1, 0.5, 0]
    """

    graph_safe = True  # its per-step handlers touch only rates and host lists (see graphs.py)

    def __init__(self, lr_fn, lrs=None, mom_fn=None):
        self.lr_fn, self.lrs, self.mom_fn = lr_fn, lrs, mom_fn
        self.used_lrs, self.used_moms, self.total = [], [], None

    def before_fit(self, run):
        groups = run.opt.param_groups
        resumed = bool(run.history.records) or run.step > 0
        if resumed and getattr(self, "saved", None) is not None:  # from the checkpoint (load_state_dict):
            return self._start(run)  # the run's own peaks and the user's rates, not the mid-schedule ones
        # what the optimizer held before: put back after the fit, so the next fit (or fit_one_cycle
        # with max_lr=None) starts from the user's rates, not from the schedule's last tiny one
        self.saved = [{k: g[k] for k in ("lr", "betas", "momentum") if k in g} for g in groups]
        if self.lrs is None:
            self.peaks = [g["lr"] for g in groups]
        else:
            self.peaks = [float(r) for r in _group_rates(groups, self.lrs)]
        if any(not p > 0 for p in self.peaks):
            raise ValueError(f"Invalid learning rate: peak rates must be positive; got {self.peaks}")
        self._start(run)

    def _start(self, run):
        """What every fit sets up, fresh or resumed: the step count, the momentum groups, the records."""
        groups = run.opt.param_groups
        per_epoch = math.ceil(run.history.info["batches_per_epoch"] / run.accumulate)
        before, self.total = getattr(self, "total", None), max(1, run.epochs * per_epoch)
        if run.step > 0 and before is not None and before != self.total:  # resumed with another epochs=
            _warn(f"the schedule was laid out over {before} steps and this resumed fit lays it over {self.total} "
                  f"(epochs={run.epochs}): the rate jumps to where step {run.step} of the new length puts it")
        # momentum only where the optimizer has it: a plain SGD(momentum=0) stays plain
        self.mom_groups = [g for g in groups if ("betas" in g) or g.get("momentum", 0) > 0] if self.mom_fn else []
        # a fresh run starts at step 0 and records anew; a resumed one keeps the steps it already took
        self.used_lrs, self.used_moms = self.used_lrs[:run.step], self.used_moms[:run.step]
        run.history.info["lrs"] = self.used_lrs
        if self.mom_groups:
            run.history.info["moms"] = self.used_moms

    def before_batch(self, run):
        pct = min(run.step / self.total, 1.0)
        f = self.lr_fn(pct)
        set_lrs(run.opt, [p * f for p in self.peaks])
        if self.mom_groups:
            m = self.mom_fn(pct)
            for g in self.mom_groups:
                if "betas" in g:
                    g["betas"] = (m, g["betas"][1])
                else:
                    g["momentum"] = m

    def before_step(self, run):
        g = run.opt.param_groups[0]
        self.used_lrs.append(g["lr"])
        if self.mom_groups:
            self.used_moms.append(g["betas"][0] if "betas" in g else g.get("momentum"))

    def after_fit(self, run):
        for g, saved in zip(run.opt.param_groups, getattr(self, "saved", [])):
            g.update(saved)

    def state_dict(self):
        return {"lrs": list(self.used_lrs), "moms": list(self.used_moms), "peaks": list(getattr(self, "peaks", [])),
                "saved": getattr(self, "saved", None), "total": self.total}

    def load_state_dict(self, state):
        self.used_lrs, self.used_moms, self.total = list(state["lrs"]), list(state["moms"]), state.get("total")
        if state.get("saved") is not None:  # checkpoints from before these were kept: before_fit works them out
            self.peaks, self.saved = list(state["peaks"]), [dict(g) for g in state["saved"]]


def one_cycle(max_lr=None, pct_start=0.25, div=25.0, div_final=1e5, moms=(0.95, 0.85, 0.95)):
    """The one-cycle schedule as a callback: `fit(..., schedule=one_cycle(1e-2))`.

    Args:
        max_lr: the peak rate: a float, one per param group, fastai's `slice(lo, hi)` (spread over
            the groups), or None for the optimizer's rates.
        pct_start: fraction of the steps spent warming up. div: start at `max_lr / div`.
        div_final: end at `max_lr / div_final`. moms: momentum at start, peak rate and end, or None.

    Example:
        >>> s = one_cycle(1e-2, pct_start=0.25)
        >>> [round(s.lr_fn(p) * 1e-2, 5) for p in (0, 0.25, 1)], s.mom_fn(0.25)
        ([0.0004, 0.01, 0.0], 0.85)
    """
    if not 0 < pct_start < 1:
        raise ValueError(f"pct_start must be in (0, 1); got {pct_start}")

    def lr_fn(pct):
        if pct < pct_start:
            return _cos(1 / div, 1.0, pct / pct_start)
        return _cos(1.0, 1 / div_final, (pct - pct_start) / (1 - pct_start))

    def mom_fn(pct):
        if pct < pct_start:
            return _cos(moms[0], moms[1], pct / pct_start)
        return _cos(moms[1], moms[2], (pct - pct_start) / (1 - pct_start))
    return Schedule(lr_fn, max_lr, mom_fn if moms is not None else None)


def cosine(lr=None, final=0.0, warmup=0.0, moms=None):
    """Cosine annealing from `lr` to `lr * final` over all steps, after a linear warm-up.

    Args:
        lr: the starting (peak) rate; None uses the optimizer's rates. final: end rate as a fraction
        of `lr`. warmup: fraction of the steps spent rising linearly from 0. moms: an optional
        `(start, end)` momentum annealed the same way.

    Example:
        >>> s = cosine(0.1)
        >>> [round(s.lr_fn(p), 3) for p in (0, 0.5, 1)]
        [1.0, 0.5, 0.0]
    """
    if not 0 <= warmup < 1:
        raise ValueError(f"warmup must be in [0, 1); got {warmup}")

    def lr_fn(pct):
        if pct < warmup:
            return pct / warmup
        return _cos(1.0, final, (pct - warmup) / (1 - warmup))
    mom_fn = (lambda pct: _cos(moms[0], moms[1], pct)) if moms is not None else None
    return Schedule(lr_fn, lr, mom_fn)


def step_decay(lr=None, gamma=0.1, milestones=(0.5, 0.75)):
    """Multiply the rate by `gamma` at each milestone, given as a fraction of all steps.

    The classic "divide by 10 at 50% and 75% of training"; the drop happens at the step that
    crosses the milestone, not at an epoch boundary.

    Example:
        >>> s = step_decay(0.1, gamma=0.1, milestones=(0.5, 0.75))
        >>> [s.lr_fn(p) for p in (0.0, 0.5, 0.8)]
        [1.0, 0.1, 0.010000000000000002]
    """
    if not 0 < gamma:
        raise ValueError(f"gamma must be positive; got {gamma}")
    return Schedule(lambda pct: gamma ** sum(pct >= m for m in milestones), lr)


def fit_one_cycle(model, data, epochs, max_lr=None, opt=None, crit=None, metrics=None, *, pct_start=0.25,
                  div=25.0, div_final=1e5, moms=(0.95, 0.85, 0.95), **fit_kwargs):
    """`fit` with the one-cycle schedule; `fit_kwargs` go to `fit` (callbacks, amp, verbose...).

    Example:
        >>> from torch import nn
        >>> from netfit import ImageClassifierData
        >>> x = np.random.rand(128, 4).astype("float32"); y = (x[:, 0] > 0.5).astype("int64")
        >>> md = ImageClassifierData.from_arrays(".", (x, y), (x, y), bs=32, device="cpu")
        >>> h = fit_one_cycle(nn.Linear(4, 2), md, 2, 1e-2, verbose=False)
        >>> len(h.info["lrs"]), max(h.info["lrs"])
        (8, 0.01)
    """
    sched = one_cycle(max_lr, pct_start=pct_start, div=div, div_final=div_final, moms=moms)
    return fit(model, data, epochs, opt, crit, metrics, schedule=sched, **fit_kwargs)


@dataclass
class LRFinderResult:
    """What `lr_find` measured: the rate and loss of each step, the smoothed loss, and suggestions.

    `suggestion` is `steepest`, the rate where the smoothed loss falls fastest against log(rate)
    (slope over a window of 12 steps), searched from the 10th step to the minimum of the smoothed
    loss; `min_div10` is the rate at that minimum divided by 10 (the older rule of thumb), given
    for comparison. For Adam on Fashion-MNIST both land between 1e-3 and 1e-2. Where the loss does
    not fall at all (a model already trained), `steepest` is a tenth of the rate at which the
    smoothed loss climbs 10% above its minimum. Neither is ever below the first rate swept.
    """
    lrs: np.ndarray
    losses: np.ndarray
    smoothed: np.ndarray
    suggestion: float
    steepest: float
    min_div10: float


class _Sweep(Callback):
    """Raise the rate exponentially per step and record the loss; stop when it diverges."""

    def __init__(self, start_lr, end_lr, num_it, beta, stop_div):
        self.rates = start_lr * (end_lr / start_lr) ** (np.arange(num_it) / max(num_it - 1, 1))
        self.beta, self.stop_div = beta, stop_div
        self.lrs, self.losses, self.smoothed, self.avg = [], [], [], 0.0

    def before_batch(self, run):
        i = len(self.losses)
        if i >= len(self.rates):
            raise CancelFit()
        set_lrs(run.opt, float(self.rates[i]))

    def after_loss(self, run):
        loss = run.loss.detach().float()
        if run.world > 1:  # under torchrun: the mean over ranks, so every rank sees one sweep and stops alike
            loss = all_reduce_sum(loss.clone()) / run.world
        loss = loss.item()  # one host read per step: the stop test needs it at once
        i = len(self.losses)
        self.lrs.append(float(self.rates[i]))
        self.losses.append(loss)
        self.avg = self.beta * self.avg + (1 - self.beta) * loss
        self.smoothed.append(self.avg / (1 - self.beta ** (i + 1)))  # debiased, as in Adam
        if self.stop_div and (not math.isfinite(loss) or self.smoothed[-1] > 4 * min(self.smoothed)):
            raise CancelFit()


def _suggest(lrs, smoothed, skip_start=10, window=6):
    """(steepest, min_div10) from a sweep; see `LRFinderResult`.

    The slope is taken over `2 * window` steps (about half a decade of rates for 200 steps from
    1e-7 to 10), not between neighbours: the first smoothed values average only a few batches and
    their step-to-step noise would otherwise look like a steep fall at the very start.
    """
    lrs, smoothed = np.asarray(lrs), np.asarray(smoothed)
    finite = np.isfinite(smoothed)
    lrs, smoothed = lrs[finite], smoothed[finite]
    if len(lrs) < 3:
        raise ValueError(f"the sweep ran {len(lrs)} steps; lr_find needs at least 3 (raise num_it or end_lr)")
    start = min(skip_start, len(lrs) - 1)  # the first smoothed values average only a few noisy batches
    lo = start + int(np.argmin(smoothed[start:]))
    min_div10 = float(max(lrs[lo] / 10, lrs[0]))  # never below the range swept
    log_lrs, best, steepest = np.log(lrs), 0.0, None
    for i in range(min(max(skip_start, window), lo), lo + 1):
        a, b = max(i - window, 0), min(i + window, len(lrs) - 1)
        slope = (smoothed[b] - smoothed[a]) / (log_lrs[b] - log_lrs[a])  # loss per e-fold of rate
        if slope < best:
            best, steepest = slope, float(lrs[i])
    if steepest is None:  # no fall at all (a trained model): a tenth of the rate where the loss starts to climb
        rise = np.nonzero(smoothed[lo:] > smoothed[lo] + 0.1 * abs(smoothed[lo]))[0]
        steepest = float(max(lrs[lo + rise[0]] if len(rise) else lrs[-1], lrs[0]) / 10)
        steepest = max(steepest, float(lrs[0]))
    return steepest, min_div10


def lr_find(model, data, crit=None, opt=None, start_lr=1e-7, end_lr=10, num_it=200, *, beta=0.98,
            stop_div=True, amp=False, callbacks=None):
    """Sweep the rate exponentially from `start_lr` to `end_lr` over `num_it` training steps.

    Stops early once the smoothed loss exceeds 4x its minimum. Afterwards the model's weights and
    buffers, the optimizer's state (moments, step counts, rates) and the random generators are put
    back exactly as they were, so `lr_find` leaves no trace on the training that follows.

    Args:
        model, data, crit, opt: as for `fit` (opt defaults to Adam; every param group gets the
            same rate during the sweep). beta: smoothing of the loss (exponential moving average).
        callbacks: e.g. augmentation to use during the sweep.

    Returns:
        an `LRFinderResult` (`lrs`, `losses`, `smoothed`, `suggestion`); draw it with `plot_lr_find`.

    Example:
        >>> from torch import nn
        >>> from netfit import ImageClassifierData
        >>> x = np.random.rand(512, 4).astype("float32"); y = (x[:, 0] > 0.5).astype("int64")
        >>> md = ImageClassifierData.from_arrays(".", (x, y), None, bs=16, device="cpu")
        >>> res = lr_find(nn.Linear(4, 2), md, num_it=50)
        >>> len(res.lrs) == len(res.losses) <= 50, 1e-7 <= res.suggestion <= 10
        (True, True)
    """
    if not 0 < start_lr < end_lr:
        raise ValueError(f"need 0 < start_lr < end_lr; got start_lr={start_lr}, end_lr={end_lr}")
    if not (isinstance(num_it, int) and num_it >= 3):
        raise ValueError(f"num_it must be an integer >= 3; got {num_it!r}")
    if hasattr(data, "to"):
        data.to(_model_device(model))
    trn_dl, _ = _loaders(data)
    opt = torch.optim.Adam(model.parameters()) if opt is None else opt
    saved_model = {k: v.detach().clone() for k, v in model.state_dict().items()}
    saved_opt, saved_rng, was_training = copy.deepcopy(opt.state_dict()), rng_state(), model.training
    sweep = _Sweep(start_lr, end_lr, num_it, beta, stop_div)
    # steps per epoch: every rank takes rank 0's count (see fit's _in_lockstep), so all ranks ask for the same epochs
    per_epoch = trn_dl.n_batches(0, world()) if hasattr(trn_dl, "n_batches") else len(trn_dl)
    try:
        fit(model, (trn_dl, None), math.ceil(num_it / per_epoch), opt, crit, None,
            list(callbacks or []) + [sweep], verbose=False, amp=amp)
    finally:
        model.load_state_dict(saved_model)
        opt.load_state_dict(saved_opt)
        set_rng_state(saved_rng)
        model.train(was_training)
    steepest, min_div10 = _suggest(sweep.lrs, sweep.smoothed)
    return LRFinderResult(np.array(sweep.lrs), np.array(sweep.losses), np.array(sweep.smoothed),
                          steepest, steepest, min_div10)


def param_groups(model, lrs, wd=None, layers=None):
    """Optimizer param groups, one per layer, each with its own rate: discriminative learning rates.

    Args:
        model: the net; its top-level children that hold trainable parameters are the layers.
        lrs: one rate for all; a list, one per layer; `slice(lo, hi)` for rates spread geometrically
            from `lo` (first layer) to `hi` (last); `slice(hi)` for `hi / 10` everywhere but `hi`
            on the last layer (fastai's convention).
        wd: weight decay for weight matrices and kernels; biases and normalisation parameters
            (tensors of one dimension) get none. None leaves the optimizer's default.
        layers: a list of modules to use as the layers instead of the top-level children.

    Returns:
        a list of dicts for `torch.optim.AdamW(...)` (or any optimizer).

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> opt = torch.optim.AdamW(param_groups(net, slice(1e-4, 1e-2)))
        >>> [round(g["lr"], 6) for g in opt.param_groups]
        [0.0001, 0.001, 0.01]
        >>> [g["weight_decay"] for g in param_groups(net, 1e-3, wd=0.1)][:2]
        [0.1, 0.0]
    """
    layers = [m for m in (layers if layers is not None else model.children())
              if any(p.requires_grad for p in m.parameters())]
    if not layers:
        raise ValueError("the model has no top-level children with trainable parameters; pass layers=[...]")
    n = len(layers)
    if isinstance(lrs, slice):
        rates = _spread(lrs, n)
    elif isinstance(lrs, (list, tuple, np.ndarray)):
        if len(lrs) != n:
            raise ValueError(f"got {len(lrs)} learning rates for {n} layers with parameters")
        rates = [float(r) for r in lrs]
    else:
        rates = [float(lrs)] * n
    groups = []
    for i, (layer, lr) in enumerate(zip(layers, rates)):
        if not lr > 0:
            raise ValueError(f"Invalid learning rate: {lr}")
        params = [p for p in layer.parameters() if p.requires_grad]
        if wd is None:
            groups.append({"params": params, "lr": lr, "layer": i})
            continue
        decay, no_decay = [p for p in params if p.ndim > 1], [p for p in params if p.ndim <= 1]
        # "layer" lets a schedule given one rate per layer find both of a layer's groups
        groups += [{"params": ps, "lr": lr, "weight_decay": w, "layer": i}
                   for ps, w in ((decay, wd), (no_decay, 0.0)) if ps]
    return groups
