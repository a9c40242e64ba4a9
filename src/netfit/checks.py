"""Checks at fit's boundary: arguments, optimizer and data are tested before any training, so that a
mistake gets one sentence naming what was expected and what was given instead of an error deep in
torch (or, on CUDA, an opaque device-side assert). Also the default loss for a model.
"""
import numpy as np
import torch
from torch import nn

from .data import DataError

__all__ = []


class FitError(TypeError):
    """`fit` was called with arguments it cannot use; the message says which and why."""


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

