"""Reading your own data into arrays: a CSV of labels and pixels, or a folder of images per class.

    x, y, classes = read_csv("data/digits/train.csv", label="label")      # Kaggle's digit-recognizer
    x, y, classes = read_image_folder("data/pets/train", size=64, mode="RGB")

Both decode everything once into float32 arrays in [0, 1]; `ImageClassifierData.from_csv` and
`from_folder` build on them and feed the same `ArrayLoader` as `from_arrays`.
"""
import csv
from pathlib import Path

import numpy as np

from .data import DataError

__all__ = ["read_csv", "read_table", "read_image_folder", "read_images", "split_valid", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def read_csv(path, label="label", pixel_scale=255.0):
    """A CSV with a header row: the `label` column (if present) and numeric pixel columns.

    Args:
        label: name of the label column; a file without it (Kaggle's test.csv) gives `y = None`.
            Integer labels are kept; other labels are class names, numbered in sorted order.
        pixel_scale: every pixel is divided by it (255 for 8-bit images; 1 for values already scaled).

    Returns:
        (x float32 (N, D), y int64 (N,) or None, classes: the names for labels that were names, else None)

    Example:
        >>> import tempfile, os; p = os.path.join(tempfile.mkdtemp(), "t.csv")
        >>> _ = open(p, "w").write("label,pixel0,pixel1\\n3,0,255\\n1,51,0\\n")
        >>> x, y, classes = read_csv(p); (x * 255).tolist(), y.tolist()
        ([[0.0, 255.0], [51.0, 0.0]], [3, 1])
    """
    x, y, _ = read_table(path, label, required=False)
    if x.size and pixel_scale == 255.0 and (x.min() < 0 or x.max() > 255):
        from .data import _warn
        _warn(f"{path}: values range from {x.min():g} to {x.max():g}, not 8-bit pixels (0..255), yet each is divided "
              "by pixel_scale=255; for other data pass pixel_scale=1 and normalise the columns yourself")
    x /= np.float32(pixel_scale)
    if y is None or y.dtype.kind in "iu":
        return x, y, None
    classes = sorted(set(y.tolist()))
    return x, np.searchsorted(np.array(classes), y).astype(np.int64), classes


def read_table(path, label="label", required=True):
    """Read a CSV with a header row: `(x, y, feature_names)`, values as they are in the file.

    x is float32 (N, features) from every column but `label`; y holds the label column (integers, or
    strings when it is not numeric), or None when the file has no such column and `required` is
    False (Kaggle's test.csv). Non-numeric feature columns are rejected with their names and lines.

    Example:
        >>> import tempfile, os; p = os.path.join(tempfile.mkdtemp(), "t.csv")
        >>> _ = open(p, "w").write("label,pixel0,pixel1\\n3,0,255\\n1,12,0\\n")
        >>> x, y, cols = read_table(p); x.shape, y.tolist(), cols
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
    if label not in header and not required:
        li = None
    elif label not in header:
        shown = ", ".join(header[:5]) + (", ..." if len(header) > 5 else "")
        raise DataError(f"{path} has no {label!r} column (columns: {shown}); expected Kaggle's digit-recognizer "
                        f"layout: {label}, pixel0, ..., pixel783")
    else:
        li = header.index(label)
    features = [h for i, h in enumerate(header) if i != li]
    if not features:
        raise DataError(f"{path} has only the {label!r} column; expected feature columns after it")
    try:  # the fast path: every cell numeric
        arr = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)
    except ValueError:
        arr = None
    if arr is not None and arr.shape[1] == len(header):
        y = arr[:, li] if li is not None else None
        x = (np.delete(arr, li, axis=1) if li is not None else arr).astype(np.float32)
    else:
        x, y = _read_csv_slow(path, header, li)
    if len(x) == 0:
        raise DataError(f"{path} has a header but no rows; expected at least one")
    bad = ~np.isfinite(x)  # "nan", "inf", or a number too large for float32: before any model trains
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise DataError(f"{path}: column {features[c]!r} holds {x[r, c]} in data row {r + 1} ({int(bad.sum())} such "
                        "cells); expected finite numbers: fill or drop the missing values first")
    if y is not None and y.dtype.kind in "USO":
        blank = np.array([str(v).strip() == "" for v in y])
        if blank.any():
            raise DataError(f"{path}: the {label!r} column is empty in data row {int(np.argmax(blank)) + 1} "
                            f"({int(blank.sum())} such rows); expected a label on every row")
    if y is not None and y.dtype.kind == "f":
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
        raise DataError(f"{path}: non-numeric columns {what}{more}; netfit takes numeric feature columns "
                        "only (categorical and missing values are not supported yet): drop or encode them")
    if li is None:
        y = None
    else:
        try:
            y = np.array([float(v) for v in labels])
        except ValueError:
            y = np.array(labels)
    return np.array(rows, dtype=np.float32).reshape(len(rows), len(header) - 1), y



def read_image_folder(folder, size=28, mode="L", classes=None):
    """Images in one sub-folder per class, decoded once with Pillow, resized to `size`.

    Args:
        folder: holds `<class>/<image>.png|jpg|jpeg`. size: an int (square) or (height, width).
        mode: "L" for greyscale, rows flat (N, H*W) as the lesson's MNIST; "RGB" gives (N, 3, H, W).
        classes: the class names in label order (default: the sub-folders, sorted).

    Returns:
        (x float32 in [0, 1], y int64 (N,), classes)

    Example:
        >>> import tempfile; from PIL import Image; root = Path(tempfile.mkdtemp())
        >>> for c in ("cat", "dog"): (root / c).mkdir(); Image.new("L", (40, 30)).save(root / c / "a.png")
        >>> x, y, classes = read_image_folder(root, size=28); x.shape, y.tolist(), classes
        ((2, 784), [0, 1], ['cat', 'dog'])
    """
    folder = Path(folder)
    if mode not in ("L", "RGB"):
        raise DataError(f"mode must be 'L' (greyscale) or 'RGB'; got {mode!r}")
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder; expected one sub-folder of images per class")
    classes = list(classes) if classes is not None else sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{folder} has no sub-folders; expected one sub-folder of images per class")
    files, labels = [], []
    for label, name in enumerate(classes):
        sub = folder / name
        found = sorted(p for p in sub.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if sub.is_dir() else []
        files += found
        labels += [label] * len(found)
    if not files:
        raise DataError(f"no {'/'.join(IMAGE_SUFFIXES)} images under {folder}/<class>/ for classes {classes}")
    return read_images(files, size, mode), np.array(labels, dtype=np.int64), classes


def read_images(files, size=28, mode="L"):
    """Decode and resize image files in the given order: float32 in [0, 1], (N, H*W) for "L", (N, 3, H, W) for "RGB".

    Example:
        >>> import tempfile; from PIL import Image; p = Path(tempfile.mkdtemp()) / "a.jpg"
        >>> Image.new("RGB", (10, 20), (255, 0, 0)).save(p); x = read_images([p], size=(8, 4), mode="RGB")
        >>> x.shape, round(float(x[0, 0].mean()), 1)
        ((1, 3, 8, 4), 1.0)
    """
    from PIL import Image
    h, w = (size, size) if isinstance(size, int) else size
    images = []
    for p in files:
        try:
            with Image.open(p) as im:
                images.append(np.asarray(im.convert(mode).resize((w, h), Image.Resampling.BILINEAR), dtype=np.uint8))
        except OSError as e:
            raise DataError(f"{p}: not a readable image ({e})") from None
    if not images:
        raise DataError(f"no images to read; expected {'/'.join(IMAGE_SUFFIXES)} files")
    x = np.stack(images).astype(np.float32) / 255                   # (N, H, W) or (N, H, W, 3)
    x = x.reshape(len(x), h * w) if mode == "L" else x.transpose(0, 3, 1, 2)  # (N, H*W) or (N, 3, H, W)
    return np.ascontiguousarray(x)


def split_valid(n, valid_pct, seed=0):
    """(train_idx, valid_idx): a random `valid_pct` of `n` rows to validate, fixed by `seed`.

    Example:
        >>> t, v = split_valid(10, 0.2); len(t), len(v), sorted(np.r_[t, v].tolist()) == list(range(10))
        (8, 2, True)
    """
    if not 0 <= valid_pct < 1:
        raise DataError(f"valid_pct must be in [0, 1); got {valid_pct}")
    perm = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * valid_pct))
    if valid_pct > 0 and n_val == 0 and n > 1:
        n_val = 1
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])
