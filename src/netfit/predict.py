"""Prediction: a model's outputs over a loader or an array, in row order, as numpy.

    preds = predict(net, md.val_dl)               # (N, C), eval mode, no gradients
    preds, targs = predict_with_targs(net, md.val_dl)

Under torchrun each rank predicts its share of the rows and every rank gets all of them back in the
original order.
"""
import numpy as np
import torch
from torch import nn  # noqa: F401  (used by the doctests)

from .checks import FitError, _implicit_dim_note, _shape_error
from .data import DataError, _warn
from .distributed import gather_rows
from .distributed import rank as dist_rank
from .distributed import world as dist_world
from .fit import _batch, _model_device

__all__ = ["predict", "predict_with_targs"]


def _outputs(model, dl):
    """Run `model` over `dl` in eval mode without gradients: (preds, targs or None), as numpy."""
    if not isinstance(model, nn.Module):
        raise FitError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    device = _model_device(model)
    if dl is None:
        raise DataError("got None instead of a loader or an array (md.test_dl is None when md has no test set)")
    if hasattr(dl, "trn_dl") and hasattr(dl, "val_dl"):
        raise DataError(f"got the whole {type(dl).__name__}; pass one of its loaders: md.val_dl (or md.test_dl)")
    from .data import ArrayDataset, ArrayLoader, as_tensors
    if isinstance(dl, (ArrayDataset, torch.utils.data.Dataset)) and not isinstance(dl, torch.utils.data.IterableDataset):
        # a map-style dataset: rows one at a time, each without its batch axis
        raise DataError(f"got a dataset ({type(dl).__name__}), whose items are single rows; pass a loader over it "
                        "(md.val_dl, not md.val_ds) or the array of inputs")
    if (isinstance(dl, tuple) and len(dl) == 2 and all(isinstance(a, (np.ndarray, torch.Tensor)) for a in dl)
            and dl[0].ndim >= 2 and dl[1].ndim == 1 and len(dl[1]) == len(dl[0])):  # not two batches (torch.chunk)
        raise DataError("got an (x, y) pair of arrays; predict takes the inputs alone: predict(net, x), or "
                        "predict_with_targs(net, loader) for the labels too")
    if isinstance(getattr(dl, "sampler", None), torch.utils.data.RandomSampler):
        _warn("this DataLoader shuffles (shuffle=True), so the predictions come in a random order that matches no "
              "label array; predict on a loader with shuffle=False")
    if isinstance(dl, list) and dl and isinstance(dl[0], (list, int, float)):  # x.tolist(): rows of numbers
        dl = np.asarray(dl, dtype=np.float32)
    if isinstance(dl, (np.ndarray, torch.Tensor)):  # a bare array: batch it in order
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
        with torch.no_grad(), _implicit_dim_note(model):
            for b in batches:
                xb, yb = _batch(b, device)
                try:
                    preds.append(model(xb))
                except RuntimeError as e:  # on the first batch: inputs the model cannot take
                    if preds:
                        raise
                    raise _shape_error(model, xb, e, "the input") from e
                if not isinstance(preds[-1], torch.Tensor):
                    raise DataError(f"the model returns a {type(preds[-1]).__name__}; predict collects one tensor "
                                    "of outputs per batch: call the model yourself, or predict with a module that "
                                    "returns the outputs you want (e.g. a wrapper whose forward returns out[0])")
                if yb is not None:
                    targs.append(yb)
            if sharded and not preds:  # fewer rows than ranks: an empty share, shaped as the others for the gather
                preds.append(model(dl.x[:1].to(device))[:0])
                if dl.y is not None:
                    targs.append(dl.y[:0].to(device))
    finally:
        model.train(was_training)
    if not preds and not sharded:
        raise DataError("the loader gave no batches; expected at least one")
    p = torch.cat(preds).float() if preds else None
    t = torch.cat(targs) if targs else None
    if sharded:  # back to one array in the original row order, on every rank
        n = len(dl.x)
        try:
            p = gather_rows(p, n, rank, world)
            t = gather_rows(t, n, rank, world) if t is not None else None
        except RuntimeError as e:  # e.g. gloo's "Connection closed by peer": the other ranks did not call
            if isinstance(e, torch.OutOfMemoryError):
                raise
            raise RuntimeError(f"{e}\nnetfit: under torchrun every process must call predict (each predicts its "
                               "share of the rows, then they are gathered); a call on one rank alone cannot finish") from e
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

