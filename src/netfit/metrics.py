"""Metrics: functions of `(preds, targs)` as the lesson writes them, and their per-epoch accumulation.

A metric is any function `metric(preds, targs) -> mean over the batch`; `fit` weights each batch's
value by its size and sums on the device, reading the result once per epoch.

    >>> accuracy(np.array([[0.1, 0.9], [0.8, 0.2]]), np.array([1, 1]))
    0.5
"""
import numpy as np
import torch

from .data import DataError

__all__ = ["accuracy", "error_rate", "Mean"]


def accuracy(preds, targs):
    """Fraction of rows whose argmax over classes equals the target.

    preds: (N, C) scores, probabilities or log-probabilities, or (N,) predicted labels (an integer
        column (N, 1) too). One float column (N, 1) is a binary classifier's P(class 1), as Keras reads
        a sigmoid's output: class 1 above 0.5 (for one logit pass `torch.sigmoid(preds)`).
    targs: (N,) integer labels (a column (N, 1) is read as (N,)).
    Works on torch tensors (returns a 0-d tensor, on the same device) and numpy arrays (returns a float).

    Example:
        >>> accuracy(torch.tensor([[2., 1.], [0., 3.]]), torch.tensor([0, 0]))
        tensor(0.5000)
    """
    if isinstance(preds, torch.Tensor):
        targs = torch.as_tensor(targs, device=preds.device)
        targs = targs.reshape(-1) if targs.ndim == 2 and targs.shape[1] == 1 else targs
        _check_pair(preds, targs, preds.is_floating_point() and preds.ndim == 1
                    and not bool((preds == preds.round()).all()))
        if preds.ndim == 2 and preds.shape[1] == 1 and not preds.is_floating_point():  # a column of labels
            labels = preds[:, 0]
        elif preds.ndim == 2 and preds.shape[1] == 1:  # binary: one column
            labels = (preds[:, 0] > 0.5).long()
        else:
            labels = preds.argmax(dim=1) if preds.ndim > 1 else preds
        return (labels == targs).float().mean()
    preds, targs = np.asarray(preds), np.asarray(targs)
    preds, targs = (np.array(a.tolist()) if a.dtype.kind == "O" else a for a in (preds, targs))  # pandas' objects
    for name, a in (("targs", targs), ("preds", preds)):
        if a.dtype.kind in "USO":
            raise DataError(f"accuracy compares class indices; got {name} of dtype {a.dtype} (names, or missing "
                            "values): map names to indices first, e.g. classes, targs = np.unique(names, "
                            "return_inverse=True)")
    targs = targs.reshape(-1) if targs.ndim == 2 and targs.shape[1] == 1 else targs
    _check_pair(preds, targs, preds.dtype.kind == "f" and preds.ndim == 1 and not (preds == np.round(preds)).all())
    if preds.ndim == 2 and preds.shape[1] == 1 and preds.dtype.kind != "f":  # a column of labels
        labels = preds[:, 0]
    elif preds.ndim == 2 and preds.shape[1] == 1:  # binary: one column
        labels = (preds[:, 0] > 0.5).astype(np.int64)
    else:
        labels = preds.argmax(axis=1) if preds.ndim > 1 else preds
    return float((labels == targs).mean())


def _check_pair(preds, targs, fractional_labels):
    """DataError unless preds are (N, C) scores, (N, C, ...) per-pixel scores or (N,) labels, and
    targs hold one label per row (or per pixel)."""
    p, t = tuple(preds.shape), tuple(targs.shape)
    if len(p) == 0:
        raise DataError(f"preds must be (N, C) class scores or (N,) labels; got shape {p}")
    if fractional_labels:
        raise DataError(f"preds of shape {p} hold fractions, not labels; expected (N, C) class scores "
                        "(one column per class) or (N,) integer labels")
    want = p[:1] + p[2:]  # (N,) for (N, C) scores; (N, H, W) for per-pixel scores (N, C, H, W)
    if t != want:
        raise DataError(f"targs must be one label per {'row' if len(want) == 1 else 'pixel'} of preds, shape "
                        f"{want}; got shape {t}")


def error_rate(preds, targs):
    """1 - accuracy.

    Example:
        >>> error_rate(np.array([[2., 1.], [0., 3.]]), np.array([0, 0]))
        0.5
    """
    return 1 - accuracy(preds, targs)


class Mean:
    """A batch-size-weighted mean kept on the device: `update(value, n)` per batch, `value` once.

    Example:
        >>> m = Mean(); m.update(torch.tensor(1.0), 3); m.update(torch.tensor(0.0), 1); m.value
        0.75
    """

    def __init__(self):
        self.reset()

    def reset(self):
        self.values, self.counts = [], []

    @property
    def n(self):
        return sum(self.counts)

    def update(self, value, n):
        # keep the 0-d tensors and weigh them at the end: no host sync and no extra op per batch
        self.values.append(value.detach() if isinstance(value, torch.Tensor) else torch.tensor(float(value)))
        self.counts.append(n)

    def sums(self, device=None):
        """`(sum of value * n, sum of n)` as one tensor of 2 on `device` (zeros before any update)."""
        device = device if device is not None else (self.values[0].device if self.values else "cpu")
        if not self.counts:
            return torch.zeros(2, device=device)
        values = torch.stack([v.float().reshape(()).to(device) for v in self.values])
        counts = torch.tensor(self.counts, dtype=values.dtype, device=device)
        return torch.stack([(values * counts).sum(), counts.sum()])

    @property
    def value(self):
        total, n = self.sums().tolist()
        return total / n if n else float("nan")
