"""The training loop: `fit`, its callback protocol (`EVENTS`), the `Run` callbacks see, and `set_lrs`.

    history = fit(net, md, epochs=1, crit=nn.NLLLoss(), opt=optim.Adam(net.parameters()), metrics=[accuracy])

`fit` follows fastai 0.7's argument order, `fit(model, data, n_epochs, opt, crit, metrics, callbacks)`,
and accepts `n_epochs=` as well as `epochs=`. Callbacks are objects with methods named after the
events in `EVENTS`; each gets the `Run` (model, data, opt, batch, loss, history...) and may raise
`CancelBatch`, `CancelEpoch` or `CancelFit` to stop.

Speed: on a GPU the loop reads nothing back from the device inside an epoch but a NaN flag every 32
steps (losses and metrics are summed there and read once per epoch); on the CPU a loss read costs ~1 µs
and is checked every step. The step itself is one of three (`history.info["step"]`): a CUDA graph
(graphs.py), on the CPU an MLP's gradient written out (analytic.py), or the autograd loop here.
"""
import contextlib
import math
import os
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .checks import (_ORDER, FitError, _check_args, _check_data, _check_first_batch, _check_metrics, _check_opt,
                     _default_crit, _implicit_dim_note)
from .data import DataError, _warn
from .distributed import all_reduce_sum as dist_all_reduce_sum
from .distributed import barrier as dist_barrier
from .distributed import broadcast_buffers as dist_broadcast_buffers
from .distributed import disagreement as dist_disagreement
from .distributed import rank as dist_rank
from .distributed import setup as dist_setup
from .distributed import shared_seed as dist_shared_seed
from .distributed import world as dist_world
from . import graphs
from .analytic import MLPStep, ThreadTrial, mlp_plan
from .graphs import GraphedStep, graph_plan, step_plan
from .history import History, _metric_name, _Progress, _table_header, _table_row
from .metrics import Mean

__all__ = ["fit", "set_lrs", "Run", "Callback", "EVENTS", "CancelFit", "CancelEpoch", "CancelBatch",
           "NonFiniteLossError"]

EVENTS = ("before_fit", "before_epoch", "before_batch", "after_loss", "after_backward", "before_step",
          "after_batch", "after_epoch", "after_fit")


class CancelFit(Exception):
    """Raise in a callback to end training after the current step (the History so far is kept)."""


class CancelEpoch(Exception):
    """Raise in a callback to skip the rest of this epoch's training batches."""


class CancelBatch(Exception):
    """Raise in a callback to skip the rest of this batch (no step)."""


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message names the epoch and step, and `history`
    holds the epochs finished before it (as `fit` would have returned them)."""
    history = None


class Callback:
    """Base class for callbacks: override any of the methods named in `EVENTS`; each gets the Run.

    `after_fit` runs however a fit that got past `before_fit` ends: normally, by `CancelFit`, or by an
    error or Ctrl-C (then an `after_fit` that fails only warns, and the error that stopped the fit is
    the one raised), so a callback can always put back what it changed."""


@dataclass
class Run:
    """Everything a callback may look at or change during `fit` (an `opt` or `crit` replaced by a
    callback is used from the next epoch on, by every training step)."""
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
    first_step: int = 0    # `step` when this call of fit began to train (after a resume: where it resumed)
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
    trial: object = None        # ThreadTrial: the CPU step's thread count (one, or torch's), by timing
    callbacks: list = field(default_factory=list)
    epoch_losses: object = None  # this epoch's training-loss Mean so far (eager loop)
    unchecked: bool = False     # the training loader holds no arrays to check before fit: check batch 1


def _spread(rates, n):
    """fastai's `slice` of rates over `n` param groups: slice(lo, hi) spreads them geometrically from
    the first group to the last; slice(hi) gives the last group hi and the others hi / 10."""
    if rates.stop is None:
        raise ValueError(f"a slice of rates needs a stop (the last group's rate); got {rates}")
    hi = float(rates.stop)
    if n == 1:
        return [hi]
    if rates.start is None:
        return [hi / 10] * (n - 1) + [hi]
    return [float(r) for r in np.geomspace(float(rates.start), hi, n)]


def _group_rates(groups, lr):
    """One rate per param group from one rate, a list, or fastai's slice: a list or slice is per layer
    when the groups come from `param_groups` (each knows its layer; a layer may have two), else per group."""
    if isinstance(lr, (np.ndarray, torch.Tensor)) and lr.ndim == 0:  # np.array(0.01): one rate
        lr = lr.item()
    if not isinstance(lr, (slice, list, tuple, np.ndarray)):
        return [lr] * len(groups)
    layer = [g.get("layer") for g in groups]
    per_layer = None not in layer
    n = len(set(layer)) if per_layer else len(groups)
    rates = _spread(lr, n) if isinstance(lr, slice) else list(lr)
    if len(rates) == len(groups):
        return rates
    if per_layer and len(rates) == n:
        return [rates[i] for i in layer]
    raise ValueError(f"got {len(rates)} learning rates for {len(groups)} param groups"
                     + (f" ({n} layers)" if per_layer else ""))


def set_lrs(opt, lr):
    """Set the learning rate of every param group of `opt`: one rate, one per group (or per layer for
    `param_groups`' groups), or fastai's `slice(lo, hi)` spread over them.

    Example:
        >>> opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1); set_lrs(opt, 0.01)
        >>> opt.param_groups[0]["lr"]
        0.01
    """
    if not isinstance(opt, torch.optim.Optimizer):
        raise ValueError(f"set_lrs sets an optimizer's rates: set_lrs(opt, lr); got {type(opt).__name__} for opt")
    lrs = _group_rates(opt.param_groups, lr)
    for group, rate in zip(opt.param_groups, lrs):
        if isinstance(rate, torch.Tensor) and rate.numel() == 1:
            rate = rate.item()
        if isinstance(rate, bool) or not isinstance(rate, (int, float, np.number)) or not 0 <= rate < math.inf:
            raise ValueError(f"learning rates must be finite numbers >= 0; got {rate!r}")
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
        array = lambda a: isinstance(a, (np.ndarray, torch.Tensor))  # noqa: E731
        what = ("an (x, y) pair of arrays" if all(map(array, data)) else "a pair of (x, y) array pairs"
                if any(isinstance(d, (tuple, list)) and d and array(d[0]) for d in data) else None)
        if what:
            raise FitError(f"data is {what}; fit takes loaders: wrap the arrays first, md = "
                           "ImageClassifierData.from_arrays(path, (x, y), (x_valid, y_valid)), then fit(net, md, ...)")
        return data[0], data[1]
    raise FitError(f"data must have trn_dl/val_dl (e.g. ImageClassifierData) or be a (trn_dl, val_dl) "
                   f"pair; got {type(data).__name__}")


_ONE_INPUT = "for a model of several inputs, stack them into one tensor and split it in forward"


def _batch(b, device):
    if isinstance(b, (tuple, list)):  # (x, y), or [x] from a DataLoader over TensorDataset(x)
        if len(b) > 2:  # TensorDataset(x1, x2, y) would train on x2 as the labels, (x, y, w) without its weights
            raise DataError(f"a batch holds {len(b)} tensors; fit and predict take (x, y) batches (or x alone): "
                            f"{_ONE_INPUT}; per-row weights or indices have no place in a batch here")
        xb, yb = (b[0], b[1]) if len(b) > 1 else (b[0], None)
    else:
        xb, yb = b, None
    if not isinstance(xb, torch.Tensor):
        raise DataError(f"a batch's inputs are a {type(xb).__name__}, not a tensor; fit and predict take one input "
                        f"tensor per batch: {_ONE_INPUT}")
    if xb.device != device:
        xb = xb.to(device, non_blocking=True)
        yb = yb.to(device, non_blocking=True) if yb is not None else None
    return xb, yb


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
        verbose: print the per-epoch table and a progress bar; `verbose=2` also prints which
            training step ran (CUDA graph or eager, and why) and which optimizer kernel.
        fast: let fit pick faster kernels with the same maths: a stock Adam, AdamW or SGD left on its
            default implementation runs its fused kernel (one kernel per step instead of ~10 small
            ops per parameter; its param groups keep `fused=True` after the fit); on a GPU the whole step is
            captured in one CUDA graph and replayed per batch (graphs.py); on the CPU an MLP of Linear
            and ReLU layers (the lesson's nets) trains with its gradient written out and the optimizer's
            fused kernel called directly, without autograd (analytic.py). Both say what keeps a fit eager.
            `history.info["optimizer"]` and `history.info["step"]` say what ran; `fast=False` leaves the
            optimizer be and runs the plain autograd loop.
        schedule: a callback that sets rates per step (e.g. `one_cycle(max_lr)`); added to callbacks.
        amp: mixed precision: bf16 autocast where supported, else fp16 with a gradient scaler.
        accumulate: step the optimizer every `accumulate` batches, with the loss divided by it, so k
            batches of size b act as one batch of size k*b.
        checkpoint: a file path; the whole training state is saved there (atomically) after every
            epoch and, with `checkpoint_every=N`, every N optimizer steps.
        resume: continue from `checkpoint` if it holds a loadable state (a fresh start otherwise).
        on_nan: "raise" stops at the first non-finite loss with `NonFiniteLossError` naming epoch
            and step (the last checkpoint stays as it was); "warn" warns and skips that step.
        deterministic: `torch.use_deterministic_algorithms(True)` for the duration of the call (and the
            CPU step keeps torch's thread count instead of timing one thread against it).
        seed: shuffle epoch e with `trn_dl.order(seed + e)` instead of torch's generator, and keep
            torch's thread count for the CPU step (as `deterministic=True` does), so that a run seeded
            like another (weights too: `torch.manual_seed`) repeats it bit for bit. Under torchrun rank
            0's seed (drawn there when None) is broadcast and kept in `history.info["seed"]`; a single
            process given that seed sees the same permutations.

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
        raise FitError(_bad_epochs(epochs))
    if epochs == 0 and not resume:
        _warn("epochs=0: nothing to train (pass epochs=1 or more)")
    if not isinstance(model, nn.Module):
        raise FitError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if isinstance(accumulate, bool) or not isinstance(accumulate, int) or accumulate < 1:
        raise FitError(f"accumulate must be a positive integer; got {accumulate!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise FitError(f"seed must be an integer or None; got {seed!r}")
    if on_nan not in ("raise", "warn"):
        raise FitError(f"on_nan must be 'raise' or 'warn'; got {on_nan!r}")
    if (resume or checkpoint_every) and checkpoint is None:
        given = "resume=True" if resume else f"checkpoint_every={checkpoint_every!r}"
        raise FitError(f"{given} needs checkpoint='path/to/ckpt' to save to; got checkpoint=None")
    with _implicit_dim_note(model):  # one note of netfit's before the table, not PyTorch's within it
        _check_args(crit, metrics, callbacks, checkpoint_every, EVENTS)
        if checkpoint is not None and os.path.isdir(checkpoint):
            raise FitError(f"checkpoint={str(checkpoint)!r} is a folder; expected a file path such as "
                           f"{os.path.join(str(checkpoint), 'ckpt.pt')!r}")
        trn_dl, val_dl = _loaders(data)
        device = _model_device(model)
        distributed = dist_setup(device)
        if hasattr(data, "to"):
            data.to(device)  # the arrays move once, not per batch
        if distributed:
            _check_ranks_agree(trn_dl, val_dl, epochs, device)
        if not any(p.requires_grad for p in model.parameters()):
            raise FitError("the model has no parameters to train" + (" (all have requires_grad=False: frozen?)"
                                                                      if any(True for _ in model.parameters()) else ""))
        opt = torch.optim.Adam(model.parameters()) if opt is None else opt
        _check_opt(model, opt)
        crit = _default_crit(model, trn_dl) if crit is None else crit
        _check_data(model, crit, [("training data", trn_dl), ("validation data", val_dl)])
        metrics = list(metrics or [])
        _check_metrics(model, metrics, val_dl)
        if metrics and val_dl is None:
            _warn(f"metrics={[_metric_name(m) for m in metrics]} are measured on the validation data, and fit has "
                  "none: they will not appear in the History (pass a validation set)")
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
        run.unchecked = not isinstance(getattr(trn_dl, "x", None), torch.Tensor)
        run.amp_dtype = _amp_dtype(amp, device)
        run.scaler = torch.amp.GradScaler(device.type) if run.amp_dtype == "float16" else None
        run.seed = dist_shared_seed(device, seed) if distributed else seed
        run.world, run.rank, run.accumulate, run.on_nan = world, rank, accumulate, on_nan
        run.checkpoint, run.checkpoint_every, run.callbacks = checkpoint, checkpoint_every, callbacks
        # timing picks one thread or two, which round differently: off when a seed asks for a repeatable run
        run.trial = ThreadTrial(enabled=device.type == "cpu" and fast and world == 1 and seed is None)
        start_epoch, resume_at = 0, None
        if resume:
            resume_at = _restore(run, checkpoint)
            if resume_at is not None:
                start_epoch = resume_at["epoch"]
                order = resume_at.get("order")
                if order is not None and hasattr(trn_dl, "x") and len(order) != len(trn_dl.x):
                    raise FitError(f"{checkpoint}: the checkpoint stopped mid-epoch over {len(order)} training rows; "
                                   f"the data has {len(trn_dl.x)}. Resume with the data it was saved with")
                if resume_at["batch"] and "world" in resume_at:
                    resume_at["batch"] = _resume_batch(resume_at, trn_dl, world, accumulate, checkpoint)
                if start_epoch >= int(epochs) and resume_at["batch"] == 0:
                    _warn(f"{checkpoint} already holds {start_epoch} epochs and epochs={int(epochs)}: nothing left to "
                          "train (pass a larger epochs to train on)")
        if resume_at is not None and fast and not all(g.get("fused") for g in opt.param_groups):
            history.info["optimizer"] = _use_fused(opt)  # the checkpoint's groups (saved with fast=False) replaced ours
        history.info["seed"] = run.seed
        run.first_step = run.step
        graphed, history.info["step"] = _stepper(run, trn_dl, callbacks, fast)
        keys = ["epoch", "trn_loss"] + (["val_loss"] + [_metric_name(m) for m in metrics] if val_dl is not None else []) + ["time"]
        progress = _Progress(verbose and rank == 0, _n_batches(trn_dl, rank, world))
        if verbose and verbose > 1 and rank == 0:
            progress.write(f"training step: {history.info['step']}; optimizer: {history.info['optimizer']}")
        progress.write(_table_header(keys))
        for r in history.records:
            progress.write(_table_row(r, keys) + "  (from checkpoint)")
        was_deterministic = torch.are_deterministic_algorithms_enabled()
        if deterministic:
            torch.use_deterministic_algorithms(True)
        started = ended = False
        try:
            try:
                emit("before_fit")
                started = True
                for epoch in range(start_epoch, int(epochs)):
                    run.epoch, start = epoch, time.perf_counter()
                    run.record, run.epoch_losses = {"epoch": epoch}, None
                    progress.start_epoch(_n_batches(trn_dl, rank, world), f"epoch {epoch}")
                    try:
                        emit("before_epoch")
                        if graphed is not None and (resume_at is None or resume_at["batch"] == 0):
                            with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
                                run.record["trn_loss"] = _train_epoch_fast(run, trn_dl, emit, progress, graphed)
                        else:
                            run.record["trn_loss"] = _train_epoch(run, trn_dl, emit, progress, resume_at)
                    except CancelEpoch:  # the mean over the batches trained before it (NaN if none)
                        done = run.epoch_losses  # the graphed loop sets trn_loss itself
                        run.record.setdefault("trn_loss", done.value if done is not None and done.n else float("nan"))
                    if graphed is not None and graphed.why_not:  # the graph gave up: the rest of the fit runs eagerly
                        history.info["step"] = f"eager: {graphed.why_not} ({graphed.ran} until epoch {epoch})"
                        graphed = None
                    resume_at = None
                    if val_dl is not None:  # with the loss and optimizer a callback may have swapped in
                        run.record.update(_validate(model, val_dl, run.crit, metrics, device, rank, world))
                    run.record["time"] = time.perf_counter() - start
                    run.record["lr"] = run.opt.param_groups[0]["lr"]
                    cancelled = False
                    for handler in handlers["after_epoch"]:  # every callback sees the epoch, even after a CancelFit
                        try:
                            handler(run)
                        except CancelFit:  # the epoch was trained: record it, then stop
                            cancelled = True
                    if world > 1:  # a CancelFit on one rank stops them all: the others would wait in its all-reduces
                        cancelled = dist_all_reduce_sum(torch.tensor([float(cancelled)], device=device)).item() > 0
                    history.append(run.record)
                    progress.write(_table_row(run.record, keys))
                    if checkpoint is not None:
                        _save(run, epoch + 1, 0, None, None)
                    if cancelled:
                        raise CancelFit()
            except CancelFit:
                pass
            ended = True
            try:  # also after CancelFit (as fastai and Keras do): EarlyStopping restores, Schedule puts rates back
                emit("after_fit")
            except CancelFit:
                pass
        finally:
            if started and not ended:  # an error or Ctrl-C: the callbacks still tidy up (a schedule's rates back)
                _after_fit_anyway(handlers["after_fit"], run)
            run.trial.__exit__()  # torch's thread count back, even after an interrupt inside the switch
            if graphed is not None:
                graphed.end_epoch()  # plain float rates back in the param groups, even after an error
                if hasattr(graphed, "describe"):
                    history.info["step"] = graphed.describe()
            else:
                history.info["step"] += run.trial.summary()
            progress.close()
            if deterministic and not was_deterministic:
                torch.use_deterministic_algorithms(False)
        if world > 1:  # the files rank 0 wrote (checkpoint, SaveBest...) are complete before any rank reads them
            dist_barrier()
        return history


def _after_fit_anyway(handlers, run):
    """`after_fit` for a fit that an error or an interrupt ended: each handler runs, and one that fails
    warns instead of hiding the error that ended the fit."""
    for handler in handlers:
        try:
            handler(run)
        except Exception as e:
            _warn(f"{getattr(handler, '__qualname__', handler)} failed after the fit had stopped on an error: "
                  f"{type(e).__name__}: {e}")


def _stepper(run, dl, callbacks, fast):
    """The step `_train_epoch_fast` runs (None: the eager loop) and what `history.info["step"]` says.

    On a GPU, the step captured in a CUDA graph (graphs.py); on the CPU, the lesson's MLPs with their
    gradient written out (analytic.py); the eager loop for everything else, with the reason.
    """
    if run.device.type == "cpu" and fast and not graphs._STATIC_ON_CPU:
        why_not = step_plan(run, dl, callbacks)
        plan, why_not = (None, why_not) if why_not else mlp_plan(run.model, run.crit, run.opt, dl, run.amp_dtype)
        if why_not:
            return None, f"eager: {why_not}"
        step = MLPStep(run.model, run.opt, run.crit, dl, plan, run.trial)
        return step, step.describe()  # what it will do; after the fit, what it did
    why_not = graph_plan(run, dl, callbacks, fast)
    if why_not:
        return None, f"eager: {why_not}"
    return (GraphedStep(run.model, run.opt, run.crit, dl, run.amp_dtype, run.device.type == "cuda"),
            "cuda graph" if run.device.type == "cuda" else "static buffers, no capture (CPU)")


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
    losses = run.epoch_losses = Mean()  # on the run: a CancelEpoch still reports the loss of the batches done
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
    # a finite-loss check is a host sync on GPUs; on_nan="warn" must see each step's loss to skip it
    check_every = 1 if run.device.type == "cpu" or run.on_nan == "warn" else 32
    pending, i, group_rows, full_rows = 0, first - 1, 0, None

    def zero_grad():  # what opt.zero_grad(set_to_none=True) does, without its per-call profiler record
        for g in opt.param_groups:  # read each time: a callback may add a group or replace a tensor in one
            for p in g["params"]:
                p.grad = None
    zero_grad()
    trial = run.trial  # forward and backward on one thread or torch's count, whichever it timed faster
    trial.start_epoch()
    for i, b in enumerate(batches, start=first):
        trial.next()
        run.batch = i
        run.xb, run.yb = _batch(b, run.device)
        try:
            emit("before_batch")
            with trial, autocast:
                run.preds = model(run.xb)
                if run.unchecked:  # a loader _check_data could not look into: check its first batch
                    _check_first_batch(run.model, crit, run.preds, run.yb)
                    run.unchecked = False
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
            with trial, model.no_sync() if lockstep and not last else contextlib.nullcontext():  # all-reduce once a group
                (run.scaler.scale(loss) if run.scaler else loss).backward()
                trial.count()
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


def _train_epoch_fast(run, dl, emit, progress, gs):
    """`_train_epoch` through a fast step: a `GraphedStep` (a CUDA graph, graphs.py) or an `MLPStep` (the
    gradient written out on the CPU, analytic.py). The same batches in the same order, the same events
    around each step, one host read per `gs.check_every` steps (the non-finite check). The short last
    batch, and every batch after the step gives up (`gs.why_not`), run eagerly."""
    run.model.train()
    order = dl.order(None if run.seed is None else run.seed + run.epoch)
    bs, m = dl.bs, len(order) if order is not None else len(dl.x)  # as ArrayLoader.batches: a subclass's order may hold fewer rows
    run.n_batches = n = m // bs if dl.drop_last else math.ceil(m / bs)
    if run.opt is not gs.opt or run.crit is not gs.crit:  # a callback swapped them: as the eager loop, from this epoch
        gs.rebind(run.opt, run.crit)
    gs.start_epoch()
    pending, rows_done = 0, 0
    try:
        for i in range(n):
            run.batch, rows = i, min(bs, m - i * bs)  # only the last batch can be short
            try:
                graphed = rows == gs.bs and not gs.why_not
                if graphed:
                    gs.load(order, i)
                    run.xb, run.yb = gs.x, gs.y
                else:
                    j = order[i * bs:i * bs + rows] if order is not None else slice(i * bs, i * bs + rows)
                    run.xb, run.yb = dl.x[j], dl.y[j]
                emit("before_batch")
                emit("before_step")  # only graph-safe handlers (graph_plan): host state, rates
                if not (graphed and gs.step(run.xb, run.yb)):
                    gs.eager(run.xb, run.yb)
                run.preds, run.loss = gs.preds, gs.loss
                rows_done += run.yb.shape[0]  # the rows trained, also when a callback replaced the batch
                run.step += 1
                if (i + 1) % gs.check_every == 0 or i + 1 == n:
                    _check_fast_losses(run, gs)
                emit("after_batch")
            except CancelBatch:
                pass
            pending += 1
            if pending == 16:
                progress.update(pending)
                pending = 0
        _check_fast_losses(run, gs)  # also when the last batches were cancelled
    except (CancelEpoch, CancelFit):
        _check_fast_losses(run, gs)  # a NaN before the cancel still stops the fit
        if rows_done:
            run.record["trn_loss"] = gs.loss_sum() / rows_done  # the batches trained before the cancel
        raise
    finally:
        gs.end_epoch()
    progress.update(pending)
    return gs.loss_sum() / rows_done if rows_done else float("nan")


def _check_fast_losses(run, gs):
    """Raise NonFiniteLossError if a loss in the graphed steps so far was NaN/inf (one host read)."""
    if gs.bad_steps():
        where = (f"epoch {run.epoch}, batch {run.batch} (optimizer step {run.step - 1})" if gs.check_every == 1 else
                 f"epoch {run.epoch}, within the {gs.check_every} batches up to batch {run.batch}")
        raise _non_finite_error(run, gs.loss.item() if gs.check_every == 1 else "non-finite", where,
                                run.step - 1 if gs.check_every == 1 else None)


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
    ranks = ""
    if run.world > 1:  # every rank must skip or stop alike, else the others wait in the next all-reduce
        bad = torch.zeros(run.world, device=run.device)
        bad[run.rank] = float(not finite)
        ranks = [r for r, b in enumerate(dist_all_reduce_sum(bad).tolist()) if b]
        finite, ranks = not ranks, f" on rank {', '.join(map(str, ranks))}"
    if finite:
        return True
    where = f"epoch {run.epoch}, batch {run.batch} (optimizer step {run.step}){ranks}"
    if run.device.type != "cpu" and run.on_nan == "raise":
        where = f"epoch {run.epoch}, within the 32 batches up to batch {run.batch}{ranks}"
    value = run.loss.item()
    value = value if not math.isfinite(value) or not ranks else "NaN or inf"  # this rank's own loss may be fine
    if run.on_nan == "warn":
        warnings.warn(f"non-finite training loss {value} at {where}; skipped that step", RuntimeWarning, stacklevel=3)
        return False
    raise _non_finite_error(run, value, where, run.step)


def _check_ranks_agree(trn_dl, val_dl, epochs, device):
    """FitError on every rank when the processes under torchrun were given different data, batch sizes
    or epochs: each would train on its own data without a word (an unseeded random split), or wait
    forever for the others (other epochs or batch counts). Compares counts and a checksum of at most
    65,536 values of each array: one small all-reduce, the same length on every rank."""
    def checksum(a):
        if not isinstance(a, torch.Tensor) or not a.numel():
            return -1.0
        if not a.is_contiguous():
            a = a[::max(1, len(a) // 64)].contiguous()
        flat = a.reshape(-1)
        return flat[::max(1, flat.numel() // 65536)].double().sum().item()  # NaN stays NaN: compared as equal
    values = [("epochs", epochs)]
    for what, dl in (("training", trn_dl), ("validation", val_dl)):
        x = getattr(dl, "x", None)
        values += [(f"{what} length (rows; batches for a loader without arrays)",  # one name on every rank
                    -1 if dl is None else len(x) if x is not None else len(dl)),
                   (f"{what} batch size", getattr(dl, "bs", 0) or 0),
                   (f"{what} inputs (a checksum)", checksum(x)),
                   (f"{what} labels (a checksum)", checksum(getattr(dl, "y", None)))]
    bad = dist_disagreement(values, device)
    if bad:
        raise FitError(f"the processes under torchrun were given different data or settings ({bad}; -1: none); every "
                       "process must build the same arrays (seed a random split alike on all of them) and pass the same "
                       "batch size and epochs: fit shares an ArrayLoader's rows out between them itself")


def _bad_epochs(epochs):
    """FitError's text for an `epochs` that is not a count: an optimizer, loss or metrics there is an
    argument-order slip (fastai 0.7's fit(model, data, epochs, opt, crit)); long reprs cut to a line."""
    if isinstance(epochs, (list, tuple)) and epochs and all(map(callable, epochs)):
        what = f"a list of {len(epochs)} functions (metrics?)"
    elif isinstance(epochs, (torch.optim.Optimizer, nn.Module)):
        what = type(epochs).__name__
    elif callable(epochs):  # a loss or metric function
        what = getattr(epochs, "__name__", type(epochs).__name__)
    else:
        what = None
    if what:
        return f"epochs must be a non-negative integer; got {what} in its place: {_ORDER}"
    text = " ".join(repr(epochs).split())
    return f"epochs must be a non-negative integer; got {text[:80] + ('...' if len(text) > 80 else '')}"


def _largest_weight(model):
    """(largest |weight|, its parameter's name) of the model: NaN as soon as one weight is NaN. Weights
    that cannot be read as numbers (a LazyLinear not yet built, meta, sparse or float8 tensors) are
    passed over: this only words an error, it must not replace it."""
    big, name = 0.0, None
    with torch.no_grad():
        for n, p in model.named_parameters():
            try:
                m = p.detach().abs().max().item() if p.numel() and p.is_floating_point() else 0.0
            except (RuntimeError, ValueError, TypeError, NotImplementedError):
                continue
            if not m <= big:  # NaN too
                big, name = m, n
            if math.isnan(m):
                break
    return big, name


def _non_finite_error(run, value, where, step):
    """The NonFiniteLossError both training loops raise: what, where, the checkpoint, and what to try,
    which depends on the weights: once they have blown up, no learning rate brings them back. `step`:
    the optimizer step whose loss it was (None when only a range of steps is known, on a GPU: the
    updates in that range were applied)."""
    big, name = _largest_weight(run.model)
    blown = not big < 1e6  # inf and NaN too
    weights = f"largest |weight| {big:.3g}, in {name!r}"
    first = step == run.first_step
    if first and blown:  # e.g. the same net fitted again after it diverged
        advice = (f", before this fit updated anything: the model's weights are already blown up ({weights}), "
                  "most likely by an earlier fit that diverged. A lower learning rate cannot bring them back: build "
                  "the model and its optimizer again, then fit with a lower rate.")
    elif first:
        advice = (f", before this fit updated anything ({weights}): the inputs or the model's forward give NaN/inf. "
                  "Check the inputs for NaN/inf, and the forward for log/sqrt/division of values that can be 0 or less.")
    elif blown:
        state = ("are left as that step found them" if step is not None else
                 "took the updates of the steps since the last check")
        advice = (f". The weights {state} ({weights}): build the model and its optimizer again, then fit with a "
                  "lower learning rate.")
    else:
        advice = ". Try a lower learning rate, or check the inputs for NaN/inf."
    error = NonFiniteLossError(f"training loss became {value} at {where}; stopped there" + advice
                               + (f" The last checkpoint was saved before it, at {run.checkpoint}." if run.checkpoint else "")
                               + " The epochs before it: error.history (in a notebook, after the error: "
                               "import sys; sys.last_value.history).")
    error.history = run.history
    return error


def _loss_sums(mean, device):
    """`(sum of value * rows, rows)` of a Mean over all ranks, as a tensor of 2 (every rank must call)."""
    return dist_all_reduce_sum(mean.sums(device))


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
    try:
        with torch.no_grad():
            for b in batches:
                xb, yb = _batch(b, device)
                preds = model(xb)
                figures = [crit(preds, yb)] + [m(preds, yb) for m in metrics]
                sums.append(torch.stack([torch.as_tensor(f, device=device).detach().float().reshape(())
                                         for f in figures]) * len(yb))
                n += len(yb)
    finally:  # also after Ctrl-C or a failing metric: the user's model keeps its mode
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
        "callbacks": [{"name": type(cb).__name__, "state": cb.state_dict()} for cb in run.callbacks
                      if callable(getattr(cb, "state_dict", None))],  # matched by class name on resume
        "order": order.cpu() if order is not None else None,
        "loss_values": values, "loss_counts": counts, "seed": run.seed,
        "history": run.history.records, "rng": rng_state(),
        # the ranks' first `batch` batches cover positions [0, batch * bs * world) of `order`: with
        # these, a resume under another number of processes or batch size finds where that is
        "world": run.world, "bs": getattr(_loaders(run.data)[0], "bs", None),
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
    _restore_callbacks(run.callbacks, state.get("callbacks", []), path)
    run.step = state["step"]
    if state.get("seed") is not None:  # the permutations of the run that wrote it
        run.seed = state["seed"]
    run.history.records = [dict(r) for r in state["history"]]
    run.history.info["resumed_from"] = {"epoch": state["epoch"], "batch": state["batch"], "step": state["step"]}
    if state["batch"] == 0:
        set_rng_state(state["rng"])  # at an epoch boundary: the next permutation is drawn from here
    return state


def _resume_batch(state, dl, world, accumulate, path):
    """The batch to resume a mid-epoch checkpoint at under `world` processes and `dl.bs`: the ranks'
    batches 0..k-1 covered the first k * bs * world rows of the epoch's order, whoever wrote it."""
    k, bs, saved_world = state["batch"], state.get("bs"), state["world"]
    new_bs = getattr(dl, "bs", None)
    if (saved_world, bs) == (world, new_bs) or bs is None or new_bs is None or not hasattr(dl, "n_batches"):
        return k
    n_rank0 = -(-len(dl.x) // saved_world)  # rank 0 holds the most rows and takes the most batches
    if k >= (n_rank0 // bs if dl.drop_last else -(-n_rank0 // bs)):  # saved at the epoch's last step
        return dl.n_batches(0, world)
    done = k * bs * saved_world
    procs = lambda n: f"{n} process{'es' if n > 1 else ''}"  # noqa: E731
    if done % (new_bs * world) or (done // (new_bs * world)) % accumulate:
        raise FitError(f"{path}: the checkpoint stopped mid-epoch after {done} rows of the epoch ({k} batches of "
                       f"{bs} on {procs(saved_world)}), which is no whole number of "
                       f"{'accumulation groups' if accumulate > 1 else 'batches'} of {new_bs} on {procs(world)}; "
                       f"resume with {procs(saved_world)} and batch size {bs}, or from a checkpoint at an epoch's end")
    return done // (new_bs * world)


def _restore_callbacks(callbacks, saved, path):
    """Give each callback with `load_state_dict` the saved state of the same class, in order, so that
    a resume with the callbacks listed in another order (or one fewer) still matches them up."""
    if any(not (isinstance(e, dict) and set(e) == {"name", "state"}) for e in saved):  # older files: by position
        for cb, cb_state in zip(callbacks, saved):
            if cb_state is not None and callable(getattr(cb, "load_state_dict", None)):
                cb.load_state_dict(cb_state)
        return
    left = list(saved)
    for cb in callbacks:
        if not callable(getattr(cb, "load_state_dict", None)):
            continue
        match = next((e for e in left if e["name"] == type(cb).__name__), None)
        if match is None:
            _warn(f"{path}: the checkpoint holds no state for {type(cb).__name__}; it starts afresh")
            continue
        left.remove(match)
        try:
            cb.load_state_dict(match["state"])
        except (KeyError, TypeError, ValueError) as e:
            raise FitError(f"{path}: the saved state of {type(cb).__name__} does not fit it ({type(e).__name__}: "
                           f"{e}); resume with the callbacks the run was saved with") from None


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


