"""Callbacks for `fit`: early stopping, saving the best model, gradient clipping, CSV and TensorBoard logs,
and `TorchScheduler`, which steps one of PyTorch's own LR schedulers once per epoch.

    fit(net, md, 20, callbacks=[EarlyStopping(patience=3), SaveBest("runs/best"), CSVLogger("log.csv")])

Each is a small class with methods named after `fit`'s events; none is on unless passed. The ones
that write files do so on rank 0 only, so they work unchanged under torchrun.
"""
import csv
import difflib
import math
from pathlib import Path

import torch

from .checks import FitError
from .data import _warn
from .fit import CancelFit, Callback

__all__ = ["EarlyStopping", "SaveBest", "GradientClip", "CSVLogger", "TensorBoard", "TorchScheduler"]


_LOWER_IS_BETTER = ("loss", "error", "mse", "mae", "mape", "norm", "perplexity")
_HIGHER_IS_BETTER = ("acc", "auc", "auroc", "f1", "fbeta", "precision", "recall", "specificity", "sensitivity", "r2",
                     "dice", "iou", "map", "mcc", "psnr", "ssim", "bleu")


def _higher_is_better(name):
    """Keras's "auto": names holding a loss or an error (dice_loss, error_rate, heatmap_mse, mape) are
    minimised, scores (MulticlassAccuracy, mAP50, mIoU, auroc) maximised, anything else minimised."""
    name = name.lower()
    if any(k in name for k in _LOWER_IS_BETTER):
        return False
    return any(k in name for k in _HIGHER_IS_BETTER)


class _Monitor:
    """Tracks the best value of one epoch figure: higher is better for scores (accuracy, auc, f1...),
    lower for the rest (losses, error rates, mse...)."""

    def __init__(self, monitor, mode, min_delta, owner):
        if mode == "auto":  # as Keras: higher is better for scores, lower for everything else (losses, mse...)
            mode = "max" if _higher_is_better(monitor) else "min"
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'auto', 'min' or 'max'; got {mode!r}")
        if not min_delta >= 0:
            raise ValueError(f"min_delta must be >= 0; got {min_delta}")
        self.monitor, self.mode, self.min_delta, self.owner = monitor, mode, min_delta, owner
        self.best, self.best_epoch = None, None

    def check(self, run):
        """FitError before training when the figure can only come from validation and there is none."""
        from .fit import _loaders
        from .history import _metric_name
        validation = ["val_loss"] + [_metric_name(m) for m in run.metrics]
        if self.monitor in validation and _loaders(run.data)[1] is None:
            raise FitError(f"{self.owner} monitors {self.monitor!r}, a validation figure, but fit has no validation "
                           "data; pass a val set, or monitor='trn_loss'")
        known = ["trn_loss", "lr", "time"] + validation
        if self.monitor in known:
            return
        keras = self.monitor[4:] if self.monitor.startswith("val_") else None  # Keras: val_accuracy, val_acc
        named = [k for k in known if keras and (k == keras or (keras == "acc" and k == "accuracy"))]
        if named:
            raise FitError(f"{self.owner} monitors {self.monitor!r}: fit names the validation figures without "
                           f"Keras's val_ prefix; use monitor={named[0]!r} (the figures: {known})")
        # other names may be figures a callback adds to run.record; one close to fit's own is likely a typo
        close = ["trn_loss"] if self.monitor == "loss" else difflib.get_close_matches(self.monitor, known, 1, 0.75)
        if close:
            _warn(f"{self.owner} monitors {self.monitor!r}, which fit does not record: did you mean {close[0]!r}? "
                  f"(fit records {known}; a callback may add other figures to run.record)")

    def value(self, run):
        if self.monitor not in run.record:
            raise FitError(f"{self.owner} monitors {self.monitor!r} but the epoch records hold "
                           f"{sorted(run.record)}; pass monitor= one of those (validation figures need a val_dl)")
        return run.record[self.monitor]

    def improved(self, value):
        """True (and remembered) when `value` beats the best by more than `min_delta`."""
        if value is None or not math.isfinite(value):
            return False
        better = (self.best is None or (value < self.best - self.min_delta if self.mode == "min"
                                         else value > self.best + self.min_delta))
        if better:
            self.best = value
        return better


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class EarlyStopping(Callback):
    """Stop when `monitor` has not improved for `patience` epochs; put the best weights back at the end.

    Args:
        monitor: an epoch figure: "val_loss", "trn_loss" or a metric's name ("accuracy").
        mode: "min", "max", or "auto" (min for names holding loss, error, mse, mae, mape or norm; max
            for names holding a score: acc, auc, f1, precision, recall, r2, dice, iou, map...; min for
            everything else).
        patience: epochs without improvement to wait. min_delta: smallest change that counts.
        restore_best: load the weights of the best epoch when training ends, stopped early or not
            (Keras leaves the last ones by default; this does not).

    `history.info["early_stopping"]` says the best epoch, its value and the epoch it stopped after.
    Early stopping ends `fit` before the next epoch starts, so the stopping epoch's record is kept.

    Example:
        >>> stop = EarlyStopping(monitor="accuracy", patience=2)
        >>> stop.tracker.mode       # "accuracy" is a score: higher is better
        'max'
    """

    def __init__(self, monitor="val_loss", mode="auto", patience=3, min_delta=0.0, restore_best=True):
        if not (isinstance(patience, int) and patience >= 0):
            raise ValueError(f"patience must be a non-negative integer; got {patience!r}")
        self.tracker = _Monitor(monitor, mode, min_delta, "EarlyStopping")
        self.patience, self.restore_best = patience, restore_best
        self.wait, self.best_weights, self.stop = 0, None, False

    def before_fit(self, run):
        self.tracker.check(run)
        m = self.tracker
        if not run.history.records:  # a fresh run; a resumed one keeps what load_state_dict gave it
            m.best = m.best_epoch = self.best_weights = None
            self.wait, self.stop = 0, False
        elif m.best is not None:  # and says so in the History, as the run it continues did
            self._report(run, run.history[-1]["epoch"] if self.stop else None)

    def before_epoch(self, run):
        if self.stop:
            raise CancelFit()

    def after_epoch(self, run):
        m = self.tracker
        improved = m.improved(m.value(run))
        if improved:
            m.best_epoch, self.wait = run.epoch, 0
            if self.restore_best:
                self.best_weights = _weights(run.model)
        else:
            self.wait += 1
        if not improved and self.wait >= self.patience and run.epoch + 1 < run.epochs:
            self.stop = True  # the best weights come back in after_fit: later callbacks (SaveBest) see this epoch's
        self._report(run, run.epoch if self.stop else None)

    def _report(self, run, stopped_after):
        m = self.tracker
        run.history.info["early_stopping"] = {"monitor": m.monitor, "best": m.best, "best_epoch": m.best_epoch,
                                              "stopped_after": stopped_after}

    def after_fit(self, run):
        self._restore(run)

    def _restore(self, run):
        if self.restore_best and self.best_weights is not None:
            run.model.load_state_dict(self.best_weights)

    def state_dict(self):
        return {"best": self.tracker.best, "best_epoch": self.tracker.best_epoch, "wait": self.wait,
                "stop": self.stop, "weights": self.best_weights}

    def load_state_dict(self, state):
        self.tracker.best, self.tracker.best_epoch = state["best"], state["best_epoch"]
        self.wait, self.stop, self.best_weights = state["wait"], state["stop"], state["weights"]


class SaveBest(Callback):
    """Write the model to `path` (safetensors + JSON, via `netfit.export.save`) whenever `monitor` improves.

    Args:
        path: the folder to write; `netfit.export.load(path)` reads it back when `arch` is given.
        monitor, mode, min_delta: as for `EarlyStopping`.
        export_kwargs: passed to `netfit.export.save` (arch, classes, mean, std...).

    Example:
        >>> import tempfile
        >>> save_best = SaveBest(tempfile.mkdtemp(), monitor="accuracy", arch="mlp")
    """

    def __init__(self, path, monitor="val_loss", mode="auto", min_delta=0.0, **export_kwargs):
        self.path, self.export_kwargs = Path(path), export_kwargs
        self.tracker = _Monitor(monitor, mode, min_delta, "SaveBest")

    def before_fit(self, run):
        self.tracker.check(run)
        m = self.tracker
        if not run.history.records:
            m.best = m.best_epoch = None
        elif m.best is not None:  # resumed: the History says what was saved, as the run it continues did
            self._report(run)

    def after_epoch(self, run):
        from .export import save
        m = self.tracker
        if m.improved(m.value(run)):
            m.best_epoch = run.epoch
            if run.rank == 0:
                save(run.model, self.path, **self.export_kwargs)
            self._report(run)

    def _report(self, run):
        m = self.tracker
        run.history.info["save_best"] = {"path": str(self.path), "monitor": m.monitor, "best": m.best,
                                         "epoch": m.best_epoch}

    def state_dict(self):
        return {"best": self.tracker.best, "best_epoch": self.tracker.best_epoch}

    def load_state_dict(self, state):
        self.tracker.best, self.tracker.best_epoch = state["best"], state["best_epoch"]


class GradientClip(Callback):
    """Clip gradients before each optimizer step: each entry to `max_value`, then the global norm to `max_norm`.

    Runs on `before_step`, after `fit` has unscaled fp16 gradients, so the limits are in true units.
    `self.norm` holds the last step's norm before clipping (a tensor on the device, read it when you need it).

    Example:
        >>> clip = GradientClip(max_norm=1.0)
    """

    def __init__(self, max_norm=None, max_value=None):
        if max_norm is None and max_value is None:
            raise ValueError("GradientClip needs max_norm or max_value; got neither")
        for name, v in (("max_norm", max_norm), ("max_value", max_value)):
            if v is not None and not v > 0:
                raise ValueError(f"{name} must be positive; got {v}")
        self.max_norm, self.max_value, self.norm = max_norm, max_value, None

    def before_step(self, run):
        params = [p for g in run.opt.param_groups for p in g["params"] if p.grad is not None]
        if self.max_value is not None:
            torch.nn.utils.clip_grad_value_(params, self.max_value)
        if self.max_norm is not None:
            self.norm = torch.nn.utils.clip_grad_norm_(params, self.max_norm)


class CSVLogger(Callback):
    """Append each epoch's record (epoch, losses, metrics, time, lr) as a row of a CSV file.

    A fresh `fit` starts the file anew, unless `append=True` (as Keras's CSVLogger: a second fit's rows
    follow the first's, under the same header); a resumed one appends to it.

    Example:
        >>> import tempfile, os
        >>> log = CSVLogger(os.path.join(tempfile.mkdtemp(), "log.csv"))
    """

    def __init__(self, path, append=False):
        self.path, self.append, self.keys = Path(path), append, None

    def before_fit(self, run):
        if run.rank != 0:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.keys = None
        if (not run.history.records and not self.append) or not self.path.exists() or not self.path.stat().st_size:
            self.path.write_text("")
        else:
            with open(self.path, newline="") as f:
                self.keys = next(csv.reader(f), None)

    def after_epoch(self, run):
        if run.rank != 0:
            return
        with open(self.path, "a", newline="") as f:
            if self.keys is None:
                self.keys = list(run.record)
                csv.writer(f).writerow(self.keys)
            csv.DictWriter(f, self.keys, extrasaction="ignore").writerow(run.record)


class TensorBoard(Callback):
    """Log each epoch's figures, and the rate per step when a schedule records it, to TensorBoard.

    Needs the `tensorboard` package (`pip install tensorboard`); it is imported only when training
    starts. View with `tensorboard --logdir runs/tb`.

    Example:
        >>> tb = TensorBoard("runs/tb")   # then fit(..., callbacks=[tb])
    """

    def __init__(self, log_dir):
        self.log_dir, self.writer, self.logged_steps = str(log_dir), None, 0

    def before_fit(self, run):
        if run.rank != 0:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ImportError(f"TensorBoard logging needs the tensorboard package (pip install tensorboard): {e}") \
                from None
        self.close()
        self.writer, self.logged_steps = SummaryWriter(self.log_dir), 0

    def after_epoch(self, run):
        if self.writer is None:
            return
        for k, v in run.record.items():
            if k != "epoch" and isinstance(v, (int, float)):
                self.writer.add_scalar(k, v, run.epoch)
        lrs = run.history.info.get("lrs", [])
        for step in range(self.logged_steps, len(lrs)):
            self.writer.add_scalar("lr_per_step", lrs[step], step)
        self.logged_steps = len(lrs)
        self.writer.flush()  # an early stop skips after_fit: each epoch is on disk when it ends

    def after_fit(self, run):
        self.close()

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class TorchScheduler(Callback):
    """Step a `torch.optim.lr_scheduler` scheduler after each epoch, as PyTorch's own loops do;
    `ReduceLROnPlateau` is stepped with the epoch's `monitor` figure.

    Per-step schedules are netfit's `schedule=` (`one_cycle`, `cosine`, ...), which also survive a
    checkpoint; this callback carries the scheduler's state through checkpoints too.

    Example:
        >>> opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
        >>> cb = TorchScheduler(torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5))
        >>> # fit(net, md, 3, opt, callbacks=[cb])  -> rates 0.1, 0.05, 0.025 for the three epochs
    """

    def __init__(self, scheduler, monitor="val_loss"):
        if not hasattr(scheduler, "step") or not hasattr(scheduler, "optimizer"):
            raise FitError(f"TorchScheduler takes a torch.optim.lr_scheduler scheduler; got {type(scheduler).__name__}")
        self.scheduler, self.monitor = scheduler, monitor

    def before_fit(self, run):
        name = type(self.scheduler).__name__
        if isinstance(self.scheduler, torch.optim.lr_scheduler.OneCycleLR):  # a fixed length, in steps
            left, epochs = self.scheduler.total_steps - self.scheduler.last_epoch, run.epochs - len(run.history)
            if epochs > left:  # torch raises once it is stepped past its end
                raise FitError(f"{name} is laid out over {self.scheduler.total_steps} steps, {left} left, and this fit "
                               f"steps it once per epoch for {epochs} more epochs; build it with "
                               "total_steps=epochs, or use fit(..., schedule=one_cycle(max_lr)) for a per-batch schedule")
            if left > epochs:
                _warn(f"{name} is laid out over {self.scheduler.total_steps} steps and TorchScheduler steps it once per "
                      f"epoch, {run.epochs} times: it will not reach its end; for a per-batch schedule use "
                      "fit(..., schedule=one_cycle(max_lr)) (or cosine)")
        if self.scheduler.optimizer is not run.opt:
            raise FitError(f"the {name} was built for another optimizer than the one fit "
                           "trains with; build it from the same opt")

    def after_epoch(self, run):
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            if self.monitor not in run.record:
                raise FitError(f"ReduceLROnPlateau monitors {self.monitor!r} but the epoch records hold "
                               f"{sorted(run.record)}; pass monitor= one of those")
            self.scheduler.step(run.record[self.monitor])
        else:
            self.scheduler.step()

    def state_dict(self):
        return self.scheduler.state_dict()

    def load_state_dict(self, state):
        self.scheduler.load_state_dict(state)
