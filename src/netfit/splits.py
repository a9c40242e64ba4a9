"""Splits: data for `compare` from a dataset name, a CSV or arrays, as train/valid/test `(x, y)` splits.

    splits, classes, source = load_split("train.csv")      # Kaggle digit-recognizer layout, 20% validate

Labels that are strings or non-contiguous integers become indices 0..C-1 with `classes` naming them.
Non-numeric feature columns are rejected by name: categorical data is a later step.
"""
from pathlib import Path

import numpy as np
import torch

from .data import DataError
from .sources import read_table

__all__ = ["load_split", "subsample"]


def _pair(split, name):
    if isinstance(split, (str, Path)):
        x, y, _ = read_table(split)
        return x, y
    if not isinstance(split, (tuple, list)) or len(split) != 2:
        raise DataError(f"{name} must be an (x, y) pair or a CSV path; got {type(split).__name__}")
    x, y = split
    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    y = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if x.dtype.kind not in "biuf":
        raise DataError(f"{name}: x must be numeric; got dtype {x.dtype}")
    if x.ndim == 3:
        x = x.reshape(len(x), -1)  # (N, H, W) images -> flat rows
    if x.ndim != 2:
        raise DataError(f"{name}: x has shape {x.shape}; expected (N, features) or (N, H, W)")
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{name}: y has shape {y.shape} for {len(x)} rows of x; expected ({len(x)},)")
    if not np.isfinite(x).all():
        raise DataError(f"{name}: x holds {(~np.isfinite(x)).sum()} NaN or infinite values; expected finite numbers")
    return x.astype(np.float32, copy=False), y


def load_split(data, valid=None, test=None, *, classes=None, valid_frac=0.2, seed=0):
    """`(splits, classes, source)`: splits maps "train", "valid" and maybe "test" to `(x, y)`.

    x is float32 (N, features); y int64 in [0, len(classes)). Labels that are not already indices of
    `classes` (strings, non-contiguous integers) are mapped to their sorted order, and `classes`
    holds the original values as text. Without `valid`, `valid_frac` of the training rows (a seeded
    random choice) validate.

    Example:
        >>> x = np.random.rand(50, 4); y = np.array(["b", "a"] * 25)
        >>> splits, classes, _ = load_split((x, y), valid_frac=0.2)
        >>> classes, len(splits["train"][0]), len(splits["valid"][0])
        (['a', 'b'], 40, 10)
    """
    from . import datasets
    name, path = None, None
    if isinstance(data, str) and data in datasets.DATASETS:
        name = data
    elif isinstance(data, (str, Path)) and not str(data).lower().endswith(".csv") and Path(data).exists():
        name, path = datasets.named_by(data), data  # an mnist.pkl.gz or a folder of IDX files
    if name is not None:
        if valid is not None or test is not None:
            raise DataError(f"{str(data)!r} brings its own validation and test splits; pass valid=None and test=None")
        (x, y), (xv, yv), (xt, yt) = datasets.load(name, path)
        names = list(classes) if classes is not None else list(datasets.DATASETS[name].classes)
        return {"train": (x, y), "valid": (xv, yv), "test": (xt, yt)}, names, str(data)
    if isinstance(data, str) and not data.lower().endswith(".csv") and not Path(data).exists():
        raise DataError(f"data {data!r} is neither a dataset ({', '.join(datasets.DATASETS)}) nor an existing "
                        "CSV file; expected one of those or an (x, y) pair")
    source = str(data) if isinstance(data, (str, Path)) else "arrays"
    splits = {"train": _pair(data, "data")}
    if valid is not None:
        splits["valid"] = _pair(valid, "valid")
    else:
        if not 0 < valid_frac < 1:
            raise DataError(f"valid_frac must be in (0, 1); got {valid_frac}")
        x, y = splits["train"]
        n_val = max(1, int(round(len(x) * valid_frac)))
        if n_val >= len(x):
            raise DataError(f"{len(x)} rows are too few to split off a validation part; expected at least 2")
        idx = np.random.default_rng(seed).permutation(len(x))
        splits["train"], splits["valid"] = (x[idx[n_val:]], y[idx[n_val:]]), (x[idx[:n_val]], y[idx[:n_val]])
    if test is not None:
        splits["test"] = _pair(test, "test")
    n_feat = splits["train"][0].shape[1]
    for k, (x, _) in splits.items():
        if x.shape[1] != n_feat:
            raise DataError(f"{k} has {x.shape[1]} features but train has {n_feat}; expected the same columns")
    ys = [y for _, y in splits.values()]
    if classes is not None:
        names = list(classes)
        for k, (x, y) in splits.items():
            if y.dtype.kind not in "iu" or y.min() < 0 or y.max() >= len(names):
                raise DataError(f"{k} labels must be integers in [0, {len(names)}) to index classes; got "
                                f"{y.dtype} from {y.min()} to {y.max()}")
        return {k: (x, y.astype(np.int64)) for k, (x, y) in splits.items()}, names, source
    ys = [y.astype(np.int64) if y.dtype.kind == "b" else y for y in ys]  # False/True: classes 0 and 1
    splits = {k: (x, y) for (k, (x, _)), y in zip(splits.items(), ys)}
    kinds = {y.dtype.kind for y in ys}
    if kinds - set("iuUSO"):
        raise DataError(f"labels must be integers or class names; got {', '.join(str(y.dtype) for y in ys)}"
                        + (" (use y.astype('int64'))" if "f" in kinds else ""))
    if len(kinds) > 1 and not kinds <= set("iu"):
        raise DataError("labels mix numbers and text across splits; expected the same kind of label in each")
    values = np.unique(np.concatenate(ys))
    out = {k: (x, np.searchsorted(values, y).astype(np.int64)) for k, (x, y) in splits.items()}
    return out, [str(v) for v in values], source


def subsample(x, y, n, seed):
    """A seeded random subset of n rows, kept in their original order (all rows when n is None or too big).

    Example:
        >>> x, y = subsample(np.arange(10)[:, None], np.arange(10), 3, seed=0); y.shape
        (3,)
    """
    if n is None or n >= len(x):
        return x, y
    idx = np.sort(np.random.default_rng(seed).permutation(len(x))[:n])
    return x[idx], y[idx]
