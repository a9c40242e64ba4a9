"""The training loop: `fit`, its callback protocol, the `History` it returns, and `predict`.

    history = fit(net, md, epochs=1, crit=nn.NLLLoss(), opt=optim.Adam(net.parameters()), metrics=[accuracy])
    preds = predict(net, md.val_dl)      # numpy (N, C), rows in validation order

`fit` follows fastai 0.7's argument order, `fit(model, data, n_epochs, opt, crit, metrics, callbacks)`,
and accepts `n_epochs=` as well as `epochs=`. Callbacks are objects with methods named after the
events in `EVENTS`; each gets the `Run` (model, data, opt, batch, loss, history...) and may raise
`CancelBatch`, `CancelEpoch` or `CancelFit` to stop.

Speed: the loop never reads a number back from the device inside an epoch; losses and metrics are
summed there and read once per epoch.
"""
import contextlib
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from torch.nn.parallel import DistributedDataParallel as DDP

from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .data import DataError
from .distributed import all_reduce_sum as dist_all_reduce_sum
from .distributed import barrier as dist_barrier
from .distributed import broadcast_buffers as dist_broadcast_buffers
from .distributed import gather_rows
from .distributed import rank as dist_rank
from .distributed import setup as dist_setup
from .distributed import shared_seed as dist_shared_seed
from .distributed import world as dist_world
from .metrics import Mean

__all__ = ["fit", "predict", "predict_with_targs", "set_lrs", "History", "Run", "Callback", "EVENTS",
           "CancelFit", "CancelEpoch", "CancelBatch", "FitError", "NonFiniteLossError"]

EVENTS = ("before_fit", "before_epoch", "before_batch", "after_loss", "after_backward", "before_step",
          "after_batch", "after_epoch", "after_fit")


class CancelFit(Exception):
    """Raise in a callback to end training after the current step (the History so far is kept)."""


class CancelEpoch(Exception):
    """Raise in a callback to skip the rest of this epoch's training batches."""


class CancelBatch(Exception):
    """Raise in a callback to skip the rest of this batch (no step)."""


class FitError(TypeError):
    """`fit` was called with arguments it cannot use; the message says which and why."""


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message names the epoch and step."""


class Callback:
    """Base class for callbacks: override any of the methods named in `EVENTS`; each gets the Run."""


class History:
    """Per-epoch records of a `fit` call: `history[i]` is a dict, `history["val_loss"]` a list.

    `history.info` says how the run was done (device, path, batches per epoch...).

    Example:
        >>> h = History(); h.append({"epoch": 0, "trn_loss": 0.5}); h["trn_loss"]
        [0.5]
    """

    def __init__(self, records=None, info=None):
        self.records, self.info = list(records or []), dict(info or {})

    def append(self, record):
        self.records.append(dict(record))

    def __len__(self):
        return len(self.records)

    def __iter__(self):
        return iter(self.records)

    def __getitem__(self, key):
        if isinstance(key, (int, slice)):
            return self.records[key]
        return [r.get(key) for r in self.records]

    @property
    def keys(self):
        seen = {}
        for r in self.records:
            seen.update(dict.fromkeys(r))
        return list(seen)

    def to_dict(self):
        return {"records": self.records, "info": self.info}

    def to_json(self, path=None):
        text = json.dumps(self.to_dict(), indent=2, default=str)
        if path is not None:
            with open(path, "w") as f:
                f.write(text)
        return text

    def __repr__(self):
        return _table_header(self.keys) + "".join("\n" + _table_row(r, self.keys) for r in self.records)


@dataclass
class Run:
    """Everything a callback may look at or change during `fit`."""
    model: nn.Module
    data: object
    opt: torch.optim.Optimizer
    crit: object
    metrics: list
    epochs: int
    history: History
    device: torch.device
    epoch: int = 0
    step: int = 0          # optimizer steps taken so far, across epochs
    batch: int = 0         # index of the batch within the epoch
    n_batches: int = 0
    xb: object = None
    yb: object = None
    preds: object = None
    loss: object = None
    record: dict = field(default_factory=dict)  # this epoch's figures, filled before `after_epoch`
    train_model: object = None  # the model the loop calls: `model`, or its DDP wrapper
    amp_dtype: str = None
    scaler: object = None       # GradScaler when amp runs in float16
    seed: int = None            # epoch e shuffles with `dl.order(seed + e)`; None: torch's generator
    world: int = 1
    rank: int = 0
    accumulate: int = 1
    on_nan: str = "raise"
    checkpoint: object = None
    checkpoint_every: int = None
    callbacks: list = field(default_factory=list)


def set_lrs(opt, lr):
    """Set the learning rate of every param group of `opt` (one rate, or one per group).

    Example:
        >>> opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1); set_lrs(opt, 0.01)
        >>> opt.param_groups[0]["lr"]
        0.01
    """
    lrs = list(lr) if isinstance(lr, (list, tuple, np.ndarray)) else [lr] * len(opt.param_groups)
    if len(lrs) != len(opt.param_groups):
        raise ValueError(f"got {len(lrs)} learning rates for {len(opt.param_groups)} param groups")
    for group, rate in zip(opt.param_groups, lrs):
        if not rate >= 0:
            raise ValueError(f"Invalid learning rate: {rate}")
        group["lr"] = float(rate)


def _model_device(model):
    p = next(model.parameters(), None)
    if p is None:
        p = next(model.buffers(), None)
    return p.device if p is not None else torch.device("cpu")


def _loaders(data):
    """(trn_dl, val_dl) from an ImageClassifierData-like object or a (trn_dl, val_dl) pair."""
    if hasattr(data, "trn_dl"):
        return data.trn_dl, getattr(data, "val_dl", None)
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return data[0], data[1]
    raise FitError(f"data must have trn_dl/val_dl (e.g. ImageClassifierData) or be a (trn_dl, val_dl) "
                   f"pair; got {type(data).__name__}")


def _default_crit(model, trn_dl):
    """NLLLoss for a model that returns log-probabilities, else CrossEntropyLoss (which adds the log-softmax).

    A model ending in `LogSoftmax` returns log-probabilities; so does any model whose outputs on two
    training rows have a log-sum-exp of 0 per row, like a hand-written logistic regression.
    """
    if isinstance(list(model.modules())[-1], nn.LogSoftmax):
        return nn.NLLLoss()
    x = getattr(trn_dl, "x", None)
    if isinstance(x, torch.Tensor) and len(x):
        was_training = model.training
        model.eval()
        with torch.no_grad():
            out = model(x[:2])
        model.train(was_training)
        if out.ndim == 2 and torch.allclose(out.float().logsumexp(1), torch.zeros((), device=out.device), atol=1e-4):
            return nn.NLLLoss()
    return nn.CrossEntropyLoss()


def _batch(b, device):
    xb, yb = (b[0], b[1]) if isinstance(b, (tuple, list)) else (b, None)
    if xb.device != device:
        xb = xb.to(device, non_blocking=True)
        yb = yb.to(device, non_blocking=True) if yb is not None else None
    return xb, yb


def _metric_name(m):
    return getattr(m, "__name__", None) or type(m).__name__


def _table_header(keys):
    return "  ".join(f"{k:>9}" if k != "epoch" else "epoch" for k in keys if k != "lr")


def _table_row(r, keys):
    cells = []
    for k in keys:
        v = r.get(k)
        if k == "lr":
            continue
        if k == "epoch":
            cells.append(f"{v:5d}")
        elif k == "time":
            cells.append(f"{v:8.2f}s")
        elif isinstance(v, float):
            cells.append(f"{v:9.4f}")
        else:
            cells.append(f"{str(v):>9}")
    return "  ".join(cells)


class _Progress:
    """tqdm's auto bar over the batches: a widget in Jupyter, one redrawn line on a terminal,
    nothing when output is not a terminal (or `verbose=False`). The table goes through `write`."""

    def __init__(self, verbose, total):
        self.verbose, self.bar = verbose, None
        if not verbose:
            return
        if "ipykernel" in sys.modules:  # Jupyter: a widget, if ipywidgets is there to draw it
            try:
                import ipywidgets  # noqa: F401  (tqdm's notebook bar needs it; without it, no bar)
                from tqdm.notebook import tqdm
            except ImportError:
                return
        elif sys.stderr.isatty():
            from tqdm import tqdm
        else:
            return
        self.bar = tqdm(total=total, leave=False, dynamic_ncols=True, mininterval=0.2)

    def start_epoch(self, total, desc):
        if self.bar is not None:
            self.bar.reset(total=total)
            self.bar.set_description(desc, refresh=False)

    def update(self, n):
        if self.bar is not None:
            self.bar.update(n)

    def write(self, line):
        if not self.verbose:
            return
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def fit(model, data, epochs=None, opt=None, crit=None, metrics=None, callbacks=None, *, n_epochs=None,
        verbose=True, fast=True, schedule=None, amp=False, accumulate=1, checkpoint=None,
        checkpoint_every=None, resume=False, on_nan="raise", deterministic=False, seed=None):
    """Train `model` on `data` for `epochs` epochs and return a `History`.

    Args:
        model: an `nn.Module`; it stays on its own device and `data` is moved there once.
        data: an `ImageClassifierData`, or a `(trn_dl, val_dl)` pair of iterables of `(x, y)`.
        epochs: number of epochs (also accepted as `n_epochs=`, fastai's other spelling).
        opt: an optimizer over the model's parameters (default `Adam(model.parameters())`).
        crit: the loss (default `NLLLoss` when the model returns log-probabilities, e.g. ends in
            `LogSoftmax`, else `CrossEntropyLoss`).
        metrics: functions `metric(preds, targs)`, e.g. `[accuracy]`, computed on validation data.
        callbacks: objects with methods named after `EVENTS`.
        verbose: print the per-epoch table and a progress bar.
        fast: let fit pick faster kernels with the same maths: a stock Adam, AdamW or SGD left on its
            default implementation runs its fused kernel (one kernel per step instead of ~10 small
            ops per parameter). `history.info["optimizer"]` says what ran; `fast=False` leaves it be.
        schedule: a callback that sets rates per step (e.g. `one_cycle(max_lr)`); added to callbacks.
        amp: mixed precision: bf16 autocast where supported, else fp16 with a gradient scaler.
        accumulate: step the optimizer every `accumulate` batches, with the loss divided by it, so k
            batches of size b act as one batch of size k*b.
        checkpoint: a file path; the whole training state is saved there (atomically) after every
            epoch and, with `checkpoint_every=N`, every N optimizer steps.
        resume: continue from `checkpoint` if it holds a loadable state (a fresh start otherwise).
        on_nan: "raise" stops at the first non-finite loss with `NonFiniteLossError` naming epoch
            and step (the last checkpoint stays as it was); "warn" warns and skips that step.
        deterministic: `torch.use_deterministic_algorithms(True)` for the duration of the call.
        seed: shuffle epoch e with `trn_dl.order(seed + e)` instead of torch's generator. Under
            torchrun rank 0's seed (drawn there when None) is broadcast and kept in
            `history.info["seed"]`; a single process given that seed sees the same permutations.

    Arguments and data are checked before training starts: a `FitError` or `DataError` names what
    was expected and what was given (for loaders holding arrays: finite inputs, rows the model can
    take, labels in [0, C) for a model with C outputs).

    Each epoch prints `epoch  trn_loss  val_loss  <metrics>  time`; `trn_loss` is the mean training
    loss over the epoch, validation loss and metrics are means weighted by batch size.

    Example:
        >>> from netfit import ImageClassifierData, accuracy
        >>> x = np.random.rand(256, 4).astype("float32"); y = (x[:, 0] > 0.5).astype("int64")
        >>> md = ImageClassifierData.from_arrays(".", (x, y), (x, y), bs=32, device="cpu")
        >>> net = nn.Sequential(nn.Linear(4, 2), nn.LogSoftmax(dim=1))
        >>> h = fit(net, md, 2, torch.optim.Adam(net.parameters(), 0.05), nn.NLLLoss(), [accuracy], verbose=False)
        >>> len(h), sorted(h[0])
        (2, ['accuracy', 'epoch', 'lr', 'time', 'trn_loss', 'val_loss'])
    """
    if n_epochs is not None:
        if epochs is not None and epochs != n_epochs:
            raise FitError(f"got epochs={epochs} and n_epochs={n_epochs}; pass one of them")
        epochs = n_epochs
    epochs = 1 if epochs is None else epochs
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
        raise FitError(f"epochs must be a non-negative integer; got {epochs!r}")
    if not isinstance(model, nn.Module):
        raise FitError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if isinstance(accumulate, bool) or not isinstance(accumulate, int) or accumulate < 1:
        raise FitError(f"accumulate must be a positive integer; got {accumulate!r}")
    if on_nan not in ("raise", "warn"):
        raise FitError(f"on_nan must be 'raise' or 'warn'; got {on_nan!r}")
    if (resume or checkpoint_every) and checkpoint is None:
        given = "resume=True" if resume else f"checkpoint_every={checkpoint_every!r}"
        raise FitError(f"{given} needs checkpoint='path/to/ckpt' to save to; got checkpoint=None")
    _check_args(crit, metrics, callbacks, checkpoint_every)
    trn_dl, val_dl = _loaders(data)
    device = _model_device(model)
    distributed = dist_setup(device)
    if hasattr(data, "to"):
        data.to(device)  # the arrays move once, not per batch
    opt = torch.optim.Adam(model.parameters()) if opt is None else opt
    _check_opt(model, opt)
    crit = _default_crit(model, trn_dl) if crit is None else crit
    _check_data(model, crit, [("training data", trn_dl), ("validation data", val_dl)])
    metrics = list(metrics or [])
    callbacks = list(callbacks or []) + ([schedule] if schedule is not None else [])
    handlers = {e: [getattr(cb, e) for cb in callbacks if callable(getattr(cb, e, None))] for e in EVENTS}

    def emit(event):
        for handler in handlers[event]:
            handler(run)

    world, rank = (dist_world(), dist_rank()) if distributed else (1, 0)
    history = History(info={"device": str(device), "batches_per_epoch": _n_batches(trn_dl, rank, world),
                            "optimizer": _use_fused(opt) if fast else "as given", "world_size": world,
                            "amp": _amp_dtype(amp, device)})
    run = Run(model, data, opt, crit, metrics, int(epochs), history, device)
    run.train_model = DDP(model) if distributed else model
    run.amp_dtype = _amp_dtype(amp, device)
    run.scaler = torch.amp.GradScaler(device.type) if run.amp_dtype == "float16" else None
    run.seed = dist_shared_seed(device, seed) if distributed else seed
    run.world, run.rank, run.accumulate, run.on_nan = world, rank, accumulate, on_nan
    run.checkpoint, run.checkpoint_every, run.callbacks = checkpoint, checkpoint_every, callbacks
    start_epoch, resume_at = 0, None
    if resume:
        resume_at = _restore(run, checkpoint)
        if resume_at is not None:
            start_epoch = resume_at["epoch"]
    history.info["seed"] = run.seed
    keys = ["epoch", "trn_loss"] + (["val_loss"] + [_metric_name(m) for m in metrics] if val_dl is not None else []) + ["time"]
    progress = _Progress(verbose and rank == 0, _n_batches(trn_dl, rank, world))
    progress.write(_table_header(keys))
    for r in history.records:
        progress.write(_table_row(r, keys) + "  (from checkpoint)")
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    if deterministic:
        torch.use_deterministic_algorithms(True)
    try:
        emit("before_fit")
        for epoch in range(start_epoch, int(epochs)):
            run.epoch, start = epoch, time.perf_counter()
            run.record = {"epoch": epoch}
            progress.start_epoch(_n_batches(trn_dl, rank, world), f"epoch {epoch}")
            try:
                emit("before_epoch")
                run.record["trn_loss"] = _train_epoch(run, trn_dl, emit, progress, resume_at)
            except CancelEpoch:
                run.record.setdefault("trn_loss", float("nan"))
            resume_at = None
            if val_dl is not None:
                run.record.update(_validate(model, val_dl, crit, metrics, device, rank, world))
            run.record["time"] = time.perf_counter() - start
            run.record["lr"] = opt.param_groups[0]["lr"]
            emit("after_epoch")
            history.append(run.record)
            progress.write(_table_row(run.record, keys))
            if checkpoint is not None:
                _save(run, epoch + 1, 0, None, None)
        emit("after_fit")
    except CancelFit:
        pass
    finally:
        progress.close()
        if deterministic and not was_deterministic:
            torch.use_deterministic_algorithms(False)
    return history


def _n_batches(dl, rank, world):
    return dl.n_batches(rank, world) if hasattr(dl, "n_batches") else len(dl)


def _amp_dtype(amp, device):
    """The autocast dtype for `amp` on `device`: bf16 where supported, else fp16; None when off."""
    if not amp:
        return None
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "bfloat16" if device.type == "cpu" else "float16"


def _train_epoch(run, dl, emit, progress, resume_at=None):
    """One pass over the training batches; returns the mean training loss (one host read)."""
    model, opt, crit, k = run.train_model, run.opt, run.crit, run.accumulate
    run.model.train()
    losses = Mean()
    if resume_at is not None and resume_at["batch"] > 0:  # mid-epoch: same order, same RNG, next batch
        order, first = resume_at["order"], resume_at["batch"]
        if order is not None:
            order = order.to(run.device)
        if run.rank == 0:  # the saved epoch loss so far covers all ranks: one rank carries it
            losses.values, losses.counts = list(resume_at["loss_values"]), list(resume_at["loss_counts"])
        set_rng_state(resume_at["rng"])  # the RNG as it was after the last saved step
    else:
        order = dl.order(None if run.seed is None else run.seed + run.epoch) if hasattr(dl, "order") else None
        first = 0
    if hasattr(dl, "batches"):
        batches = dl.batches(order, first, run.rank, run.world)
        run.n_batches = dl.n_batches(run.rank, run.world)
    else:  # any iterable of (x, y): no sharding, no mid-epoch resume
        batches, run.n_batches = iter(dl), len(dl)
    lockstep = run.world > 1 and hasattr(dl, "rows")
    if lockstep:  # every rank takes as many steps as rank 0 (the most); see distributed.py
        batches, run.n_batches = _in_lockstep(batches, dl, first, run.world), dl.n_batches(0, run.world)
    autocast = (torch.autocast(run.device.type, dtype=getattr(torch, run.amp_dtype)) if run.amp_dtype
                else contextlib.nullcontext())
    check_every = 1 if run.device.type == "cpu" else 32  # a finite-loss check is a host sync on GPUs
    pending, i, group_rows, full_rows = 0, first - 1, 0, None
    params = [p for g in opt.param_groups for p in g["params"]]

    def zero_grad():  # what opt.zero_grad(set_to_none=True) does, without its per-call profiler record
        for p in params:
            p.grad = None
    zero_grad()
    for i, b in enumerate(batches, start=first):
        run.batch = i
        run.xb, run.yb = _batch(b, run.device)
        try:
            emit("before_batch")
            with autocast:
                run.preds = model(run.xb)
                run.loss = crit(run.preds, run.yb)
            emit("after_loss")
            if (i + 1) % check_every == 0 or i + 1 == run.n_batches or check_every == 1:
                if not _finite(run, losses):
                    raise CancelBatch()
            rows = dl.rows(i, run.rank, run.world) if lockstep else len(run.yb)  # 0 for a stand-in
            if lockstep:  # DDP averages the ranks' gradients: weigh so the step is the mean over all its rows
                loss = run.loss * (rows * run.world / _group_rows(dl, i, k, run.n_batches, run.world))
            elif k > 1:  # each batch's share of the group's mean: len / (k * the full batch size)
                full_rows = full_rows or len(run.yb)
                loss = run.loss * (len(run.yb) / (k * full_rows))
                group_rows += len(run.yb)
            else:
                loss = run.loss
            last = (i + 1) % k == 0 or i + 1 == run.n_batches
            with model.no_sync() if lockstep and not last else contextlib.nullcontext():  # all-reduce once a group
                (run.scaler.scale(loss) if run.scaler else loss).backward()
            emit("after_backward")
            losses.update(run.loss, rows)
            if last:
                if run.scaler:
                    run.scaler.unscale_(opt)
                if not lockstep and k > 1 and group_rows != k * full_rows:  # a short last group: a mean over its rows
                    for g in opt.param_groups:
                        for p in g["params"]:
                            if p.grad is not None:
                                p.grad.mul_(k * full_rows / group_rows)
                group_rows = 0
                emit("before_step")
                if run.scaler:
                    run.scaler.step(opt)
                    run.scaler.update()
                else:
                    opt.step()
                zero_grad()
                run.step += 1
                if run.checkpoint_every and run.step % run.checkpoint_every == 0:
                    if _finite(run, losses):
                        _save(run, run.epoch, i + 1, order, losses)
            emit("after_batch")
        except CancelBatch:
            zero_grad()
        pending += 1
        if pending == 16:  # the bar redraws at most every 0.2 s anyway; fewer calls cost less
            progress.update(pending)
            pending = 0
    progress.update(pending)
    if run.world > 1:
        dist_broadcast_buffers(run.model)  # BatchNorm statistics as rank 0 has them, for validation and saving
        return _reduced_mean(losses, run.device)
    return losses.value


def _in_lockstep(batches, dl, first, world):
    """This rank's batches, then stand-ins (its loader's first row, weighted 0 by `dl.rows`) until it
    has taken as many steps as rank 0: every rank takes the same steps and optimizer updates."""
    for _ in range(first, dl.n_batches(0, world)):
        b = next(batches, None)
        yield b if b is not None else (dl.x[:1], dl.y[:1])


def _group_rows(dl, i, k, n, world):
    """Rows on all ranks in the accumulation group of batch `i` (groups of k batches; the last may be short)."""
    g = i - i % k
    return sum(dl.rows(j, r, world) for j in range(g, min(g + k, n)) for r in range(world))


def _finite(run, losses):
    """False (after warning) or an error when the loss is NaN/inf; True when all is well."""
    loss = run.loss.detach()
    # on the CPU one float read is the cheapest test; on a GPU it stays on the device until needed
    finite = math.isfinite(loss.item()) if loss.numel() == 1 and loss.device.type == "cpu" else torch.isfinite(loss).all()
    if run.world > 1:  # every rank must skip or stop alike, else the others wait in the next all-reduce
        finite = dist_all_reduce_sum(torch.tensor(float(not finite), device=run.device)) == 0
    if finite:
        return True
    where = f"epoch {run.epoch}, batch {run.batch} (optimizer step {run.step})"
    if run.device.type != "cpu" and run.on_nan == "raise":
        where = f"epoch {run.epoch}, within the 32 batches up to batch {run.batch}"
    if run.on_nan == "warn":
        warnings.warn(f"non-finite training loss {run.loss.item()} at {where}; skipped that step",
                      RuntimeWarning, stacklevel=3)
        return False
    raise NonFiniteLossError(f"training loss became {run.loss.item()} at {where}; stopped there"
                             + (f", the last good checkpoint is {run.checkpoint}" if run.checkpoint else "")
                             + ". Try a lower learning rate, or check the inputs for NaN/inf.")


def _loss_sums(mean, device):
    """`(sum of value * rows, rows)` of a Mean over all ranks, as a tensor of 2 (every rank must call)."""
    if not mean.counts:  # still take part in the all-reduce
        return dist_all_reduce_sum(torch.zeros(2, device=device))
    values = torch.stack([v.float().reshape(()).to(device) for v in mean.values])
    counts = torch.tensor(mean.counts, dtype=values.dtype, device=device)
    return dist_all_reduce_sum(torch.stack([(values * counts).sum(), counts.sum()]))


def _reduced_mean(mean, device):
    """A Mean summed over all ranks: every rank reports the same number."""
    total, n = _loss_sums(mean, device).tolist()
    return total / n if n else float("nan")


def _validate(model, dl, crit, metrics, device, rank=0, world=1):
    """Validation loss and metrics, each weighted by batch size, summed over all ranks."""
    was_training = model.training
    model.eval()
    sums, n = [], 0
    batches = dl.batches(None, 0, rank, world) if hasattr(dl, "batches") else dl
    with torch.no_grad():
        for b in batches:
            xb, yb = _batch(b, device)
            preds = model(xb)
            figures = [crit(preds, yb)] + [m(preds, yb) for m in metrics]
            sums.append(torch.stack([torch.as_tensor(f, device=device).detach().float().reshape(()) for f in figures])
                        * len(yb))
            n += len(yb)
    model.train(was_training)
    total = torch.stack(sums).sum(0) if sums else torch.zeros(1 + len(metrics), device=device)
    total = dist_all_reduce_sum(torch.cat([total, torch.tensor([float(n)], device=device)]))
    values = (total[:-1] / total[-1]).tolist()
    return {"val_loss": values[0], **{_metric_name(m): v for m, v in zip(metrics, values[1:])}}


def _save(run, epoch, batch, order, losses):
    """Write the training state so that a resumed run continues bit for bit; rank 0 writes."""
    values = [v.detach().float().cpu().reshape(()) for v in losses.values] if losses else []
    counts = list(losses.counts) if losses else []
    if losses is not None and run.world > 1:  # the epoch's loss so far over all ranks (all ranks call)
        total, n = _loss_sums(losses, run.device).tolist()
        values, counts = ([torch.tensor(total / n)], [int(n)]) if n else ([], [])
    if run.rank != 0:
        return
    state = {
        "format": 1, "epoch": epoch, "batch": batch, "step": run.step,
        "model": run.model.state_dict(), "opt": run.opt.state_dict(), "opt_class": type(run.opt).__name__,
        "scaler": run.scaler.state_dict() if run.scaler else None,
        "callbacks": [cb.state_dict() if callable(getattr(cb, "state_dict", None)) else None for cb in run.callbacks],
        "order": order.cpu() if order is not None else None,
        "loss_values": values, "loss_counts": counts, "seed": run.seed,
        "history": run.history.records, "rng": rng_state(),
    }
    save_checkpoint(run.checkpoint, state)


def _restore(run, path):
    """Load the state `_save` wrote into the run's model, optimizer and callbacks; None if none."""
    from pathlib import Path
    p = Path(path)
    dist_barrier()  # under torchrun: rank 0 may still be writing it (the end of an earlier fit)
    if not p.exists() and not p.with_name(p.name + ".prev").exists():
        run.history.info["resumed_from"] = None
        return None
    state = load_checkpoint(path)
    if state.get("opt_class", type(run.opt).__name__) != type(run.opt).__name__:
        raise FitError(f"{path}: the checkpoint holds the state of a {state['opt_class']} optimizer; "
                       f"got {type(run.opt).__name__}. Resume with the optimizer it was saved with")
    try:
        run.model.load_state_dict(state["model"])
        run.opt.load_state_dict(state["opt"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise FitError(f"{path}: the checkpoint does not fit this model/optimizer: {e}") from None
    if run.scaler is not None and state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    for cb, cb_state in zip(run.callbacks, state.get("callbacks", [])):
        if cb_state is not None and callable(getattr(cb, "load_state_dict", None)):
            cb.load_state_dict(cb_state)
    run.step = state["step"]
    if state.get("seed") is not None:  # the permutations of the run that wrote it
        run.seed = state["seed"]
    run.history.records = [dict(r) for r in state["history"]]
    run.history.info["resumed_from"] = {"epoch": state["epoch"], "batch": state["batch"], "step": state["step"]}
    if state["batch"] == 0:
        set_rng_state(state["rng"])  # at an epoch boundary: the next permutation is drawn from here
    return state


def _check_args(crit, metrics, callbacks, checkpoint_every):
    """FitError for a loss, metrics, callbacks or checkpoint interval `fit` cannot use."""
    if crit is not None and (isinstance(crit, type) or not callable(crit)):
        given = f"the class {crit.__name__}" if isinstance(crit, type) else f"{type(crit).__name__} {crit!r}"
        raise FitError(f"crit must be a loss such as nn.NLLLoss() (an instance) or F.nll_loss; got {given}")
    if metrics is not None and (not isinstance(metrics, (list, tuple))
                                or not all(callable(m) and not isinstance(m, type) for m in metrics)):
        raise FitError(f"metrics must be a list of functions metric(preds, targs), e.g. [accuracy]; got {metrics!r}")
    if callbacks is not None and not isinstance(callbacks, (list, tuple)):
        raise FitError(f"callbacks must be a list of callback objects; got one {type(callbacks).__name__} "
                       "(pass [cb])")
    every = checkpoint_every
    if every is not None and not (isinstance(every, (int, np.integer)) and not isinstance(every, bool) and every >= 1):
        raise FitError(f"checkpoint_every must be a positive number of optimizer steps; got {checkpoint_every!r}")


def _check_data(model, crit, loaders):
    """Fail before training, with a sentence, on data that the model or the loss cannot take.

    For loaders that hold their arrays (`ArrayLoader`): the inputs must be finite, one row must go
    through the model, and for NLLLoss/CrossEntropyLoss the labels must be integers in [0, C) for a
    model with C outputs (on CUDA an out-of-range label is otherwise an opaque device-side assert).
    Other iterables are left to torch, batch by batch.
    """
    for name, dl in loaders:
        x, y = getattr(dl, "x", None), getattr(dl, "y", None)
        if not isinstance(x, torch.Tensor):
            continue
        if len(x) == 0:
            raise DataError(f"the {name} holds no rows; expected at least one")
        # the sum is finite unless some value is NaN/inf (or the total overflows): ~30x cheaper than
        # testing every value, which the lesson's repeated fit calls would each pay
        if x.is_floating_point() and not torch.isfinite(x.sum()) and not torch.isfinite(x).all():
            raise DataError(f"the {name} inputs hold {(~torch.isfinite(x)).sum().item()} NaN or infinite "
                            "values; expected finite numbers")
        out = _forward_one(model, x[:1], f"the {name}")  # (1, C)
        if not isinstance(crit, (nn.NLLLoss, nn.CrossEntropyLoss)) or not isinstance(y, torch.Tensor) or y.ndim != 1:
            continue
        if y.is_floating_point() or y.is_complex():
            from .data import _describe
            raise DataError(f"the {name} labels must be integer class indices for {type(crit).__name__}; "
                            f"got {_describe(y)} (use y.long())")
        if out.ndim != 2:
            raise DataError(f"{type(crit).__name__} needs the model to give class scores of shape (N, C); "
                            f"it gives {tuple(out.shape)} for one row of the {name}")
        labels = y[y != crit.ignore_index]
        if len(labels) and (labels.min().item() < 0 or labels.max().item() >= out.shape[1]):
            raise DataError(f"the {name} labels must be class indices in [0, {out.shape[1]}) for a model with "
                            f"{out.shape[1]} outputs; got min {labels.min().item()}, max {labels.max().item()}")


def _forward_one(model, xb, what):
    """`model(xb)` in eval mode, without gradients or touching the CPU RNG; a DataError naming the
    shapes when the model cannot take `xb`."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            return model(xb)
    except RuntimeError as e:
        raise _shape_error(model, xb, e, what) from e
    finally:
        model.train(was_training)


def _shape_error(model, xb, e, what):
    """The DataError for a first forward pass that failed on `xb` (out of memory is re-raised as is)."""
    if isinstance(e, torch.OutOfMemoryError):
        raise e
    first = next((m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))), None)
    expects = (f"; its first layer {first} takes {first.in_features} features" if isinstance(first, nn.Linear)
               else f"; its first layer {first} takes {first.in_channels} channels" if first is not None else "")
    return DataError(f"{what} rows have shape {tuple(xb.shape[1:])}, which the model cannot take{expects} "
                     f"({str(e).splitlines()[0][:200]})")


def _check_opt(model, opt):
    if not isinstance(opt, torch.optim.Optimizer):
        raise FitError(f"opt must be a torch.optim.Optimizer such as optim.Adam(net.parameters()); got "
                       + (f"the class {opt.__name__}" if isinstance(opt, type) else type(opt).__name__))
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    trainable = [p for p in model.parameters() if p.requires_grad]
    if trainable and not any(id(p) in held for p in trainable):
        raise FitError("the optimizer holds none of the model's parameters; build it from this model, "
                       "e.g. optim.Adam(net.parameters())")


_FUSABLE = (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD)


def _use_fused(opt):
    """Switch a stock Adam/AdamW/SGD on its default implementation to the fused kernel; say what ran.

    Only when the user chose neither `foreach` nor `fused`, every parameter is a float tensor on one
    CPU or CUDA device, and (on CUDA, where the fused step counter lives on the device) no step has
    been taken yet. The update is the same formula; results agree to float rounding (~1e-8).
    """
    name = type(opt).__name__
    if type(opt) not in _FUSABLE:
        return f"{name} as given"
    groups = opt.param_groups
    params = [p for g in groups for p in g["params"]]
    devices = {p.device.type for p in params}
    if (any(g.get("fused") or g.get("foreach") is not None or g.get("differentiable") for g in groups)
            or len(devices) != 1 or devices - {"cpu", "cuda"}
            or any(not p.is_floating_point() or p.dtype == torch.float16 for p in params)
            or ("cuda" in devices and opt.state)):
        return f"{name} as given" + (" (fused)" if any(g.get("fused") for g in groups) else "")
    for g in groups:
        g["fused"], g["foreach"] = True, False
    return f"{name} (fused kernel)"


def _outputs(model, dl):
    """Run `model` over `dl` in eval mode without gradients: (preds, targs or None), as numpy."""
    if not isinstance(model, nn.Module):
        raise FitError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    device = _model_device(model)
    if isinstance(dl, (np.ndarray, torch.Tensor)):  # a bare array: batch it in order
        from .data import ArrayLoader, as_tensors
        dl = ArrayLoader(as_tensors(dl, None, "x")[0], None, bs=1024)
    world, rank = dist_world(), dist_rank()
    sharded = world > 1 and torch.distributed.is_initialized() and hasattr(dl, "batches")
    batches = dl.batches(None, 0, rank, world) if sharded else dl  # under torchrun: each rank a share
    if not sharded and hasattr(dl, "batches"):  # rows in order even from a shuffling loader (and no RNG drawn)
        batches = dl.batches(None)
    was_training = model.training
    model.eval()
    preds, targs = [], []
    try:
        with torch.no_grad():
            for b in batches:
                xb, yb = _batch(b, device)
                try:
                    preds.append(model(xb))
                except RuntimeError as e:  # on the first batch: inputs the model cannot take
                    if preds:
                        raise
                    raise _shape_error(model, xb, e, "the input") from e
                if yb is not None:
                    targs.append(yb)
    finally:
        model.train(was_training)
    if not preds and not sharded:
        raise DataError("the loader gave no batches; expected at least one")
    p = torch.cat(preds).float() if preds else None
    t = torch.cat(targs) if targs else None
    if sharded:  # back to one array in the original row order, on every rank
        n = len(dl.x)
        p = gather_rows(p, n, rank, world)
        t = gather_rows(t, n, rank, world) if t is not None else None
    return p.cpu().numpy(), (t.cpu().numpy() if t is not None else None)


def predict(model, dl):
    """The model's outputs over every batch of `dl`, in order, as a numpy array (N, C).

    Runs in eval mode without gradients and restores the model's mode afterwards. `dl` may be a
    loader of `(x, y)` or `x` batches, or a bare array of inputs.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 3), nn.LogSoftmax(dim=1))
        >>> predict(net, np.zeros((5, 4), dtype="float32")).shape
        (5, 3)
    """
    return _outputs(model, dl)[0]


def predict_with_targs(model, dl):
    """`(preds, targs)` as numpy arrays, both in the loader's order.

    Example:
        >>> from netfit.data import ArrayLoader
        >>> net = nn.Sequential(nn.Linear(4, 3), nn.LogSoftmax(dim=1))
        >>> preds, targs = predict_with_targs(net, ArrayLoader(torch.zeros(5, 4), torch.arange(5) % 3, bs=2))
        >>> preds.shape, targs.tolist()
        ((5, 3), [0, 1, 2, 0, 1])
    """
    p, t = _outputs(model, dl)
    if t is None:
        raise DataError("the loader yields inputs only; predict_with_targs needs (x, y) batches")
    return p, t
