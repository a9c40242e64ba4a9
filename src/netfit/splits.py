"""Splits: data for `compare` from a dataset name, a CSV or arrays, as train/valid/test `(x, y)` splits.

    splits, classes, source = load_split("train.csv")      # Kaggle digit-recognizer layout, 20% validate
    x, y, columns = read_csv("train.csv")                   # float32 (N, 784), labels (N,)

Labels that are strings or non-contiguous integers become indices 0..C-1 with `classes` naming them.
Non-numeric feature columns are rejected by name: categorical data is a later step.
"""
import csv
from pathlib import Path

import numpy as np
import torch

from .data import DataError

__all__ = ["load_split", "read_csv", "subsample"]


def read_csv(path, label="label"):
    """Read a CSV in Kaggle's digit-recognizer layout: `(x, y, feature_names)`.

    x is float32 (N, features) from every column but `label`; y holds the label column (integers, or
    strings when it is not numeric). Non-numeric feature columns are rejected with their names.

    Example:
        >>> import tempfile, os; p = os.path.join(tempfile.mkdtemp(), "t.csv")
        >>> _ = open(p, "w").write("label,pixel0,pixel1\\n3,0,255\\n1,12,0\\n")
        >>> x, y, cols = read_csv(p); x.shape, y.tolist(), cols
        ((2, 2), [3, 1], ['pixel0', 'pixel1'])
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist; expected a CSV file with a {label!r} column")
    with open(path, newline="") as f:
        header = next(csv.reader(f), None)
    if not header:
        raise DataError(f"{path} is empty; expected a header row with a {label!r} column")
    header = [h.strip() for h in header]
    if label not in header:
        shown = ", ".join(header[:5]) + (", ..." if len(header) > 5 else "")
        raise DataError(f"{path} has no {label!r} column (columns: {shown}); expected Kaggle's digit-recognizer "
                        f"layout: {label}, pixel0, ..., pixel783")
    li = header.index(label)
    features = [h for i, h in enumerate(header) if i != li]
    if not features:
        raise DataError(f"{path} has only the {label!r} column; expected feature columns after it")
    try:  # the fast path: every cell numeric
        arr = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)
    except ValueError:
        arr = None
    if arr is not None and arr.shape[1] == len(header):
        y, x = arr[:, li], np.delete(arr, li, axis=1).astype(np.float32)
    else:
        x, y = _read_csv_slow(path, header, li)
    if len(x) == 0:
        raise DataError(f"{path} has a header but no rows; expected at least one")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            bad = y[~(np.isfinite(y) & (y == np.round(y)))][0]
            raise DataError(f"{path}: the {label!r} column holds {bad}, not a class; expected integer labels "
                            "or class names")
        y = y.astype(np.int64)
    return x, y, features


def _read_csv_slow(path, header, li):
    """Parse cell by cell to say which columns are not numeric (and where), or read string labels."""
    bad, rows, labels = {}, [], []
    with open(path, newline="") as f:
        reader = csv.reader(f)
        next(reader)
        for n, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise DataError(f"{path}: line {n} has {len(row)} fields but the header has {len(header)}")
            values = []
            for i, cell in enumerate(row):
                if i == li:
                    labels.append(cell.strip())
                    continue
                try:
                    values.append(float(cell))
                except ValueError:
                    bad.setdefault(header[i], (n, cell))
                    values.append(np.nan)
            rows.append(values)
    if bad:
        what = "; ".join(f"{c!r} (line {n}: {v!r})" if v.strip() else f"{c!r} (line {n} is empty)"
                         for c, (n, v) in list(bad.items())[:8])
        more = f" and {len(bad) - 8} more" if len(bad) > 8 else ""
        raise DataError(f"{path}: non-numeric columns {what}{more}; netfit compare takes numeric feature columns "
                        "only (categorical and missing values are not supported yet): drop or encode them")
    try:
        y = np.array([float(v) for v in labels])
    except ValueError:
        y = np.array(labels)
    return np.array(rows, dtype=np.float32).reshape(len(rows), len(header) - 1), y


def _pair(split, name):
    if isinstance(split, (str, Path)):
        x, y, _ = read_csv(split)
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
    if isinstance(data, str) and data in datasets.DATASETS:
        if valid is not None or test is not None:
            raise DataError(f"{data!r} brings its own validation and test splits; pass valid=None and test=None")
        (x, y), (xv, yv), (xt, yt) = datasets.load(data)
        names = list(classes) if classes is not None else list(datasets.DATASETS[data].classes)
        return {"train": (x, y), "valid": (xv, yv), "test": (xt, yt)}, names, data
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
