"""Inputs for prediction: image files and CSV files turned into the raw rows a `Predictor` takes.

    x, labels, names = read_inputs("shoe.png", input_shape=[784])    # x (1, 784) in [0, 1]
    x, labels, names = read_inputs("test.csv", input_shape=[784])    # x (N, 784); labels (N,) or None

An image (PNG, JPEG... anything Pillow reads) becomes greyscale, is resized to the model's side
(28x28 for 784 inputs) and scaled to [0, 1]. A CSV holds one example per line: the pixel values,
optionally with a label column (the first column, or the one a header line names `label`), as in
Kaggle's MNIST and Fashion-MNIST CSVs. Values above 1 are read as 0-255 pixels and divided by 255.
"""
import csv
import math
from pathlib import Path

import numpy as np

from .data import DataError

__all__ = ["read_inputs", "read_image", "read_csv", "expand"]


def _side(input_shape):
    """(height, width) of the images a model with `input_shape` takes: (28, 28) for [784]."""
    shape = [int(s) for s in input_shape]
    if len(shape) >= 2:
        return shape[-2], shape[-1]
    side = math.isqrt(shape[0])
    if side * side != shape[0]:
        raise DataError(f"the model takes {shape[0]} features, not a square image; give it a CSV instead")
    return side, side


def read_image(path, input_shape=(784,)):
    """One image file as a row (1, H*W) of greyscale values in [0, 1], resized to the model's side."""
    from PIL import Image, UnidentifiedImageError
    h, w = _side(input_shape)
    try:
        with Image.open(path) as im:
            im = im.convert("L")  # greyscale, as MNIST is
            if im.size != (w, h):
                im = im.resize((w, h), Image.BILINEAR)
            x = np.asarray(im, dtype=np.float32) / 255  # (h, w)
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{path}: not an image Pillow can read ({e})") from None
    border = np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]])
    if border.mean() > 0.5:  # MNIST and Fashion-MNIST are light on black: a dark drawing on white reads as noise
        from .data import _warn
        _warn(f"{path}: a light background (border mean {border.mean():.2f}); the model was trained on light "
              "objects on black, so invert the image first (e.g. 255 - pixels) or the prediction is a guess")
    return x.reshape(1, h * w)


def _is_number(text):
    try:
        float(text)
        return True
    except ValueError:
        return False


def read_csv(path, n_features=784, pixels=True):
    """Rows of a CSV file: `(x (N, n_features) float32, labels (N,) int64 or None)`; pixels in [0, 1]
    (0-255 values divided by 255) unless `pixels=False`, which keeps tabular values as they are."""
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    header = rows.pop(0) if rows and not all(_is_number(v) for v in rows[0]) else None
    if not rows:
        raise DataError(f"{path}: no data rows; expected one example per line")
    widths = sorted({len(r) for r in rows})
    if len(widths) != 1 or widths[0] not in (n_features, n_features + 1):
        raise DataError(f"{path}: rows have {', '.join(map(str, widths))} columns; expected {n_features} values "
                        f"per row, or {n_features + 1} with a label column")
    try:
        a = np.array(rows, dtype=np.float64)  # (N, columns)
    except ValueError as e:
        raise DataError(f"{path}: expected numbers only; {e}") from None
    if not np.isfinite(a).all():
        raise DataError(f"{path}: holds NaN or infinite values; expected pixel values in [0, 1] or 0-255")
    labels = None
    if widths[0] == n_features + 1:
        names = [v.strip().lower() for v in header] if header else []
        col = names.index("label") if "label" in names else 0
        labels, a = a[:, col], np.delete(a, col, axis=1)
        if (labels != labels.round()).any() or labels.min() < 0:
            raise DataError(f"{path}: the label column must hold class indices 0, 1, 2...; "
                            f"got values from {labels.min()} to {labels.max()}")
        labels = labels.astype(np.int64)
    if pixels and (a.min() < 0 or a.max() > 255):
        raise DataError(f"{path}: pixel values must be in [0, 1] or 0-255; got {a.min()} to {a.max()}")
    x = a / 255 if pixels and a.max() > 1 else a  # 0-255 pixels, as in Kaggle's CSVs
    return x.astype(np.float32), labels


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")


def expand(paths):
    """The files `paths` name, a folder standing for the images and CSVs in it (sorted)."""
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            inside = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES + (".csv",))
            if not inside:
                raise DataError(f"{p}: a folder with no images (.png, .jpg...) or .csv files in it")
            files += inside
        else:
            files.append(p)
    return files


def read_inputs(path, input_shape=(784,), pixels=True):
    """`(x, labels or None, names)` for an image or a CSV file; `names` label each row for printing.
    `pixels=False` (a tabular model's export) reads CSV values as they are and refuses images."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; expected an image (.png, .jpg...), a .csv or a folder of them")
    if path.suffix.lower() == ".csv":
        x, labels = read_csv(path, math.prod(int(s) for s in input_shape), pixels)
        return x, labels, [f"{path} row {i + 1}" for i in range(len(x))]
    if not pixels:
        raise DataError(f"{path}: the model was exported for tabular rows; give it a .csv, not an image")
    return read_image(path, input_shape), None, [str(path)]
