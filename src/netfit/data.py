"""Data: arrays turned into batches without per-sample Python, and the lesson's `ImageClassifierData`.

    md = ImageClassifierData.from_arrays("data/mnist", (x, y), (x_valid, y_valid), bs=64)
    for xb, yb in md.trn_dl: ...          # xb (64, 784) float32, yb (64,) int64, on md.device

A loader indexes whole tensors with a permutation (training) or slices them in order (validation,
test), so a batch costs one gather, not 64 Python calls. The tensors are moved to the training
device once; seeding `torch.manual_seed` makes the shuffled order reproducible.
"""
import math
import os
import warnings

import numpy as np
import torch

__all__ = ["ArrayDataset", "ArrayLoader", "ImageClassifierData", "default_device", "DataError", "as_tensors", "mean_std"]


class DataError(ValueError):
    """Input arrays that netfit cannot train on; the message says what was expected and what was given."""


def _warn(message, category=UserWarning):
    """warnings.warn pointing at the first caller outside netfit (the user's line, not ours)."""
    import sys
    here = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 2  # stacklevel 1 is this function, 2 its caller
    while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == here:
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


def default_device():
    """The best device here: CUDA (`cuda:LOCAL_RANK` under torchrun), then Apple's MPS, then the CPU.

    Example:
        >>> net = torch.nn.Linear(784, 10).to(default_device())
    """
    if torch.cuda.is_available():
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun each rank takes its own GPU
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _describe(a):
    """`a`'s dtype, shape and range (NaN counted apart), for error messages; any dtype."""
    dtype = None
    if isinstance(a, torch.Tensor):
        dtype = str(a.dtype).replace("torch.", "")  # the tensor's own, not that of the copy made to describe it
        a = (a.detach().cpu().double() if a.is_floating_point() else a.detach().cpu()).numpy()
    a = np.asarray(a)
    dtype = dtype or a.dtype
    if not a.size:
        return f"an empty {dtype} array of shape {tuple(a.shape)}"
    if a.dtype.kind not in "biuf":  # strings, objects...: no order to report
        return f"{dtype} of shape {tuple(a.shape)}"
    nan = np.isnan(a) if a.dtype.kind == "f" else np.zeros(a.shape, bool)
    text = f"{dtype} of shape {tuple(a.shape)}"
    if not nan.all():
        text += f" with min {a[~nan].min().item()}, max {a[~nan].max().item()}"
    return text + (f" and {int(nan.sum())} NaN" if nan.any() else "")


def as_tensors(x, y=None, name="x", n_classes=None):
    """Check and convert one split to tensors: x float32 (N, ...), y int64 (N,).

    The checks happen here, before any computation, so that a bad array gets a sentence naming
    what was expected and what was given instead of an error deep inside torch.
    """
    if x is None:
        raise DataError(f"{name} is None; expected an array of shape (N, features)")
    if not isinstance(x, torch.Tensor):
        try:
            x = np.asarray(x)
        except Exception as e:
            raise DataError(f"{name} could not be read as an array (expected rows of equal length): {e}") from None
        if x.dtype.kind not in "biuf":
            raise DataError(f"{name} must be numeric; got dtype {x.dtype}")
        # a read-only array (a memmap opened "r") is copied: torch tensors over it would be writable
        x = torch.from_numpy(np.require(x, np.float32, ["C", "W"]))  # keeps a 0-d array 0-d, for the message
    elif x.is_complex():
        raise DataError(f"{name} must be real numbers; got a {x.dtype} tensor")
    elif not x.is_floating_point():
        x = x.float()
    elif x.dtype != torch.float32:
        x = x.float()
    if x.ndim >= 1 and len(x) == 0:
        raise DataError(f"{name} is empty (shape {tuple(x.shape)}); expected at least one row")
    if x.ndim < 2:
        raise DataError(f"{name} has shape {tuple(x.shape)}; expected (N, features) or (N, H, W), one row per example")
    if not torch.isfinite(x.sum()) and not torch.isfinite(x).all():  # the sum test is ~30x cheaper
        bad = (~torch.isfinite(x)).sum().item()
        raise DataError(f"{name} holds {bad} NaN or infinite values; expected finite numbers")
    if y is None:
        return x, None
    yname = "y" if name == "x" else name.replace("x", "y", 1)
    if not isinstance(y, torch.Tensor):
        try:
            y = np.asarray(y)
        except Exception as e:
            raise DataError(f"{yname} could not be read as an array (expected one label per row): {e}") from None
        if y.dtype.kind not in "biu":
            raise DataError(f"{yname} must hold integer class labels; got {_describe(y)}" + _label_hint(y, yname))
        y = torch.from_numpy(np.require(y, np.int64, ["C", "W"]))  # read-only (pandas) copied: torch would warn
    else:
        if y.is_floating_point() or y.is_complex():
            raise DataError(f"{yname} must hold integer class labels; got {_describe(y)}"
                            + _label_hint(y.detach().cpu().numpy() if not y.is_complex() else np.zeros(0), yname,
                                          f"{yname}.long()"))
        y = y.long()
    if y.ndim == 2 and y.shape[1] == 1:  # a column of labels, as scikit-learn and Keras take it
        y = y[:, 0]
    if y.ndim != 1:
        onehot = y.ndim == 2 and bool(((y == 0) | (y == 1)).all()) and bool((y.sum(1) == 1).all())
        raise DataError(f"{yname} has shape {tuple(y.shape)}; expected one label per row, shape ({len(x)},)"
                        + (f"; these look one-hot: use {yname}.argmax(1)" if onehot else ""))
    if len(y) != len(x):
        raise DataError(f"{name} has {len(x)} rows but {yname} has {len(y)} labels; expected the same number")
    lo, hi = y.min().item(), y.max().item()
    if lo < 0 or (n_classes is not None and hi >= n_classes):
        rng = f"in [0, {n_classes})" if n_classes is not None else "0 or more"
        raise DataError(f"{yname} must be class labels {rng}; got min {lo}, max {hi}")
    return x, y


def _label_hint(y, yname, convert=None):
    """How to turn `y` (a numpy array that is not integer labels) into labels, or where regression goes."""
    if (y.dtype.kind == "f" and y.ndim == 2 and y.shape[1] > 1 and y.size and bool(((y == 0) | (y == 1)).all())
            and bool((y.sum(1) == 1).all())):  # Keras's to_categorical
        return f" (one-hot rows: use {yname}.argmax(1))"
    if y.dtype.kind == "f" and y.size and np.isfinite(y).all() and (y == np.round(y)).all():
        return f" (whole numbers: use {convert or yname + '.astype(' + repr('int64') + ')'})"
    if y.dtype.kind == "f":
        return (f"; from_arrays is for classification: for regression targets, build the loaders yourself, "
                f"trn_dl = ArrayLoader(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor({yname}, "
                "dtype=torch.float32).reshape(len(x), -1), bs=64, shuffle=True), the same for validation without "
                "shuffle, then fit(net, (trn_dl, val_dl), ..., crit=nn.MSELoss())")
    if y.dtype.kind in "USO":
        return (f"; turn names into class indices first: classes, {yname} = np.unique({yname}, return_inverse=True) "
                "(and map x_valid's labels with the same classes)")
    return ""


def mean_std(x, chunk_values=1 << 20):
    """The mean and (population) standard deviation of all of `x`'s values, as floats, without a copy of x.

    `x.std()` in numpy builds a temporary as large as x (188 MB for Fashion-MNIST's training images),
    which is most of `netfit train`'s peak memory; this sums chunks of rows in float64 instead, so
    float32 data of any length also gets no drift from float32 accumulation.

        >>> mean_std(np.array([[0.0, 1.0], [2.0, 3.0]], np.float32))
        (1.5, 1.118033988749895)
    """
    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if x.size == 0:
        raise DataError(f"cannot take the mean of an empty array (shape {x.shape})")
    flat = x.reshape(len(x), -1) if x.ndim > 1 else x.reshape(-1, 1)
    step = max(1, chunk_values // flat.shape[1])
    chunks = [flat[i:i + step] for i in range(0, len(flat), step)]
    mean = sum(float(c.sum(dtype=np.float64)) for c in chunks) / x.size
    # second pass on the centred values: the one-pass sum of squares loses digits when |mean| >> std
    var = sum(float(np.square(c - mean, dtype=np.float64).sum()) for c in chunks) / x.size
    return mean, math.sqrt(var)


class ArrayDataset:
    """A pair of tensors indexed together: `ds[i] -> (x[i], y[i])`; `ds.x`, `ds.y` hold them whole."""

    def __init__(self, x, y=None):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return (self.x[i], self.y[i]) if self.y is not None else self.x[i]


def _tensor(a):
    """`a` as a tensor: itself, or a numpy array (or array-like) in the dtypes `from_arrays` gives, float32
    for floats and int64 for integers (numpy's float64 and int32 would meet a float32 model and NLLLoss),
    without a copy where it already is one (a read-only array is copied: torch would warn about it)."""
    if isinstance(a, torch.Tensor):
        return a
    a = np.asarray(a)
    dtype = {"f": np.float32, "i": np.int64, "u": np.int64, "b": np.int64}.get(a.dtype.kind)
    return torch.from_numpy(np.require(a, dtype, ["W"]))


class ArrayLoader:
    """Batches of `(x, y)` cut from whole tensors.

    Args:
        x: (N, ...) tensor; y: (N,) tensor or None (then batches are `x` alone). Numpy arrays are
            taken too, as float32 (floats) or int64 (integers), without a copy when they already are.
        bs: rows per batch; the last batch holds the rest unless `drop_last`.
        shuffle: a fresh permutation each epoch, from torch's global generator (seed it with
            `torch.manual_seed`) or from `generator`.

    Example:
        >>> dl = ArrayLoader(torch.zeros(10, 3), torch.arange(10), bs=4)
        >>> [len(yb) for xb, yb in dl]
        [4, 4, 2]
    """

    def __init__(self, x, y=None, bs=64, shuffle=False, drop_last=False, generator=None):
        if not isinstance(bs, int) or isinstance(bs, bool) or bs < 1:
            raise DataError(f"batch size must be a positive integer; got {bs!r}")
        self.x, self.y, self.bs = _tensor(x), None if y is None else _tensor(y), bs
        self.shuffle, self.drop_last, self.generator = shuffle, drop_last, generator
        self.dataset = ArrayDataset(self.x, self.y)

    @property
    def device(self):
        return self.x.device

    def to(self, device):
        """Move the tensors to `device` (once; a no-op when already there). Returns self."""
        device = torch.device(device)
        if self.x.device != device:
            self.x = self.x.to(device)
            self.y = self.y.to(device) if self.y is not None else None
            self.dataset = ArrayDataset(self.x, self.y)
        return self

    def __len__(self):
        return self.n_batches()

    def n_batches(self, rank=0, world=1):
        """Batches per epoch for one rank of `world` (all of them in a single process)."""
        n = len(range(rank, len(self.x), world))
        return n // self.bs if self.drop_last else math.ceil(n / self.bs)

    def rows(self, i, rank=0, world=1):
        """Rows in batch `i` of one rank's share: `bs`, fewer in its last batch, 0 past its end.

        Example:
            >>> dl = ArrayLoader(torch.zeros(10, 3), bs=4)
            >>> [dl.rows(i) for i in range(4)], [dl.rows(i, rank=1, world=2) for i in range(3)]
            ([4, 4, 2, 0], [4, 1, 0])
        """
        n = len(range(rank, len(self.x), world))
        stop = n - n % self.bs if self.drop_last else n
        return max(0, min(self.bs, stop - i * self.bs))

    def order(self, seed=None):
        """This epoch's row order: a permutation when shuffling, else None (rows in order).

        `seed` gives the permutation of that seed (what distributed ranks use to agree); otherwise
        it comes from `generator` or torch's global generator.
        """
        if not self.shuffle:
            return None
        if seed is not None:
            gen = torch.Generator().manual_seed(seed)
            return torch.randperm(len(self.x), generator=gen).to(self.x.device)
        if self.generator is not None:
            return torch.randperm(len(self.x), generator=self.generator).to(self.x.device)
        return torch.randperm(len(self.x), device=self.x.device)

    def batches(self, order=None, start=0, rank=0, world=1):
        """Batches over `order` (None: rows in order), from batch `start`, of this rank's share.

        A rank of `world` takes positions `rank::world` of the order, so the ranks' batches i together
        hold the rows of a single process's batch i with batch size `world * bs`.
        """
        if world > 1:
            order = (order if order is not None else torch.arange(len(self.x), device=self.x.device))[rank::world]
        n, bs = (len(order) if order is not None else len(self.x)), self.bs
        stop = n - n % bs if self.drop_last else n
        for i in range(start * bs, stop, bs):
            if order is None:  # contiguous slices are views: no copy at all
                xb, yb = self.x[i:i + bs], (self.y[i:i + bs] if self.y is not None else None)
            else:
                j = order[i:i + bs]
                # index_select: the same gather as x[j] at a fraction of advanced indexing's overhead
                xb, yb = self.x.index_select(0, j), (self.y.index_select(0, j) if self.y is not None else None)
            yield (xb, yb) if yb is not None else xb

    def __iter__(self):
        return _Batches(self.batches(self.order()), len(self))


class _Batches:
    """An iterator over one epoch's batches that also knows how many it yields: the lesson's
    hand-written loop does `dl = iter(md.trn_dl); for t in range(len(dl)): xt, yt = next(dl)`."""

    def __init__(self, gen, n):
        self.gen, self.n = gen, n

    def __iter__(self):
        return self

    def __next__(self):
        return next(self.gen)

    def __len__(self):
        return self.n


class ImageClassifierData:
    """The lesson's data object: training, validation and optional test loaders over arrays.

    Attributes: `trn_dl` (shuffled each epoch), `val_dl`, `test_dl` (in order, every row once, last
    batch partial), `trn_ds`, `val_ds`, `test_ds`, `trn_y`, `val_y` (numpy), `c` (number of classes),
    `classes`, `bs`, `path`, `device`.
    """

    def __init__(self, path, trn, val, bs=64, test=None, classes=None, device=None):
        self.path, self.bs = path, bs
        if isinstance(bs, bool) or not isinstance(bs, (int, np.integer)) or bs < 1:
            raise DataError(f"bs (batch size) must be a positive integer; got {bs!r}")
        bs = int(bs)
        trn_x, trn_y = _pair(trn, "trn")
        x, y = as_tensors(trn_x, trn_y, "x")
        if val is not None:
            val_x, val_y = _pair(val, "val")
            xv, yv = as_tensors(val_x, val_y, "x_valid")
        else:
            xv = yv = None
        xt = as_tensors(_test_x(test), None, "test")[0] if test is not None else None
        for name, other in (("x_valid", xv), ("the test set", xt)):
            if other is not None and other.shape[1:] != x.shape[1:]:
                raise DataError(f"{name} rows have shape {tuple(other.shape[1:])} but x rows have "
                                f"{tuple(x.shape[1:])}; expected the same")
        _warn_scale(x, [("x_valid", xv), ("the test set", xt)])
        n_seen = int(max(y.max().item(), yv.max().item() if yv is not None else 0)) + 1
        if n_seen < 2 and classes is None:
            raise DataError(f"the labels hold a single class ({n_seen - 1}); a classifier needs at least 2")
        if classes is None and not (y == 0).any() and (yv is None or not (yv == 0).any()):
            _warn(f"no training or validation label is 0, yet classes are counted from 0 (labels run "
                  f"{int(y.min())}..{n_seen - 1}, so the model gets {n_seen} outputs); if the labels start at 1, "
                  "pass y - 1")
        if classes is None and n_seen > 20:
            distinct = len(torch.unique(torch.cat([y, yv]) if yv is not None else y))
            if distinct < n_seen / 2:
                _warn(f"the labels run up to {n_seen - 1}, so the model gets {n_seen} outputs, but only {distinct} "
                      "distinct labels occur; check for a mistyped label, or map the labels to 0..C-1 (e.g. "
                      "np.unique(y, return_inverse=True)[1])")
        if classes is not None:
            classes = list(classes)
            if n_seen > len(classes):
                raise DataError(f"labels go up to {n_seen - 1} but only {len(classes)} classes were named")
        self.classes = classes if classes is not None else list(range(n_seen))
        self.c = len(self.classes)
        self.device = _device(device) if device is not None else default_device()
        self.trn_dl = ArrayLoader(x, y, bs, shuffle=True)
        self.val_dl = ArrayLoader(xv, yv, bs) if xv is not None else None
        self.test_dl = ArrayLoader(xt, None, bs) if xt is not None else None
        self.to(self.device)

    @classmethod
    def from_arrays(cls, path, trn, val, bs=64, tfms=(None, None), classes=None, num_workers=None,
                    test=None, device=None, continuous=False):
        """Wrap numpy arrays (or tensors) as the lesson does.

        Args:
            path: a folder name kept for the user (nothing is written there).
            trn, val: `(x, y)` pairs; x float (N, features) or (N, H, W), y integer labels (N,).
            bs: batch size. test: optional x array (or `(x, y)`) for `test_dl`.
            tfms, num_workers, continuous: fastai 0.7's; loading needs no workers, and augmentation
                (`callbacks=[Augment()]`) and regression targets (`continuous=True`) go another way.
            device: where the arrays live; default `default_device()`.

        Example:
            >>> x = np.random.rand(100, 784).astype("float32"); y = np.arange(100) % 10
            >>> md = ImageClassifierData.from_arrays("data/demo", (x, y), (x[:20], y[:20]), bs=32, device="cpu")
            >>> md.c, len(md.trn_dl), len(md.val_dl)
            (10, 4, 1)
        """
        if tfms is not None and any(t is not None for t in (tfms if isinstance(tfms, (tuple, list)) else [tfms])):
            raise DataError("tfms (augmentation) are not supported by from_arrays; pass tfms=None and augment "
                            "in training: fit(..., callbacks=[Augment()])")
        if continuous:
            raise DataError("continuous=True (regression targets): ImageClassifierData holds class labels; for "
                            "float targets give fit your own loaders, targets shaped like the model's outputs (a "
                            "column for one output): fit(net, (ArrayLoader(x, y.reshape(-1, 1), bs=64, shuffle=True), "
                            "ArrayLoader(x_valid, y_valid.reshape(-1, 1), bs=64)), epochs, crit=nn.MSELoss())")
        return cls(path, trn, val, bs=bs, test=test, classes=classes, device=device)

    def to(self, device):
        """Move every loader's tensors to `device` once. Returns self."""
        self.device = torch.device(device)
        for dl in (self.trn_dl, self.val_dl, self.test_dl):
            if dl is not None:
                dl.to(self.device)
        return self

    trn_ds = property(lambda self: self.trn_dl.dataset)
    val_ds = property(lambda self: self.val_dl.dataset if self.val_dl is not None else None)
    test_ds = property(lambda self: self.test_dl.dataset if self.test_dl is not None else None)
    trn_y = property(lambda self: self.trn_dl.y.cpu().numpy())
    val_y = property(lambda self: self.val_dl.y.cpu().numpy() if self.val_dl is not None else None)

    def __repr__(self):
        n_val = len(self.val_dl.x) if self.val_dl is not None else 0
        return (f"ImageClassifierData(path={self.path!r}, trn={len(self.trn_dl.x)}, val={n_val}, "
                f"bs={self.bs}, c={self.c}, device={self.device})")

    @classmethod
    def from_csv(cls, path, csv="train.csv", label="label", bs=64, valid_pct=0.2, seed=0, test_csv=None,
                 pixel_scale=255.0, classes=None, device=None):
        """Read `path/csv` (a label column and pixel columns) and hold out `valid_pct` of it to validate.

        Kaggle's digit-recognizer layout (`train.csv`: label, pixel0..pixel783; `test.csv`: pixels
        only) works as it is: `from_csv("data/digits", test_csv="test.csv")`. Pixels are divided by
        `pixel_scale`; string labels become class names. Non-numeric pixel columns are refused by name.
        See `netfit.sources.read_csv`.

        Example:
            >>> import tempfile, os; d = tempfile.mkdtemp()
            >>> rows = "".join(f"{i % 3},{i},{255 - i}\\n" for i in range(20))
            >>> _ = open(os.path.join(d, "train.csv"), "w").write("label,pixel0,pixel1\\n" + rows)
            >>> md = ImageClassifierData.from_csv(d, bs=4, valid_pct=0.25, device="cpu")
            >>> len(md.trn_dl.x), len(md.val_dl.x), md.c
            (15, 5, 3)
        """
        from pathlib import Path
        from .sources import read_csv, split_valid
        x, y, names = read_csv(Path(path) / csv, label, pixel_scale)
        if y is None:
            raise DataError(f"{Path(path) / csv} has no {label!r} column; columns to train on need labels")
        trn_idx, val_idx = split_valid(len(x), valid_pct, seed)
        val = (x[val_idx], y[val_idx]) if len(val_idx) else None
        test = read_csv(Path(path) / test_csv, label, pixel_scale)[0] if test_csv is not None else None
        return cls(path, (x[trn_idx], y[trn_idx]), val, bs=bs, test=test,
                   classes=classes if classes is not None else names, device=device)

    @classmethod
    def from_folder(cls, path, size=28, mode="L", bs=64, train="train", valid="valid", valid_pct=0.2, seed=0,
                    test=None, device=None):
        """Images in one sub-folder per class, decoded once (Pillow), resized to `size`, greyscale or RGB.

        Layouts: `path/train/<class>/*.png` with `path/valid/<class>/...` (ImageNet style); or
        `path/<class>/*.png` (or a `train` folder without `valid`), of which `valid_pct` is held out
        with `seed`. `test` names a sub-folder of `path` whose images (sorted by path) make `test_dl`.
        "L" rows are flat (N, size*size) like the lesson's MNIST; "RGB" ones are (N, 3, H, W).

        Example:
            >>> import tempfile; from pathlib import Path; from PIL import Image; d = Path(tempfile.mkdtemp())
            >>> for c in ("a", "b"):
            ...     (d / c).mkdir()
            ...     for i in range(5): Image.new("L", (32, 32), 50 * i).save(d / c / f"{i}.png")
            >>> md = ImageClassifierData.from_folder(d, size=28, valid_pct=0.2, bs=4, device="cpu")
            >>> md.classes, md.trn_dl.x.shape, len(md.val_dl.x)
            (['a', 'b'], torch.Size([8, 784]), 2)
        """
        from pathlib import Path
        from .sources import IMAGE_SUFFIXES, read_image_folder, read_images, split_valid
        root = Path(path)
        trn_dir = root / train if (root / train).is_dir() else root
        skip = {valid, test} if trn_dir == root else set()  # in path/<class>/ layout these are no classes
        x, y, classes = read_image_folder(trn_dir, size, mode,
                                          sorted(p.name for p in trn_dir.iterdir() if p.is_dir() and p.name not in skip))
        if trn_dir != root and (root / valid).is_dir():
            val = read_image_folder(root / valid, size, mode, classes)[:2]
        else:
            trn_idx, val_idx = split_valid(len(x), valid_pct, seed)
            val = (x[val_idx], y[val_idx]) if len(val_idx) else None
            x, y = x[trn_idx], y[trn_idx]
        xt = None
        if test is not None:  # loose images or class sub-folders, in sorted path order
            xt = read_images(sorted(p for p in (root / test).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES),
                             size, mode)
        return cls(path, (x, y), val, bs=bs, test=xt, classes=classes, device=device)


def _device(device, fix="use device=default_device()"):
    """torch.device(device), or a DataError naming the usual spellings, or saying that it is not here
    (and then `fix`: the CLI says to leave out --device)."""
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError):
        raise DataError(f"device {device!r} is not a torch device; expected 'cpu', 'cuda', 'cuda:1' or 'mps' "
                        f"({fix} for the best one here)") from None
    if d.type == "cuda" and not torch.cuda.is_available():
        raise DataError(f"device {device!r}: CUDA is not available here: this machine's PyTorch sees no CUDA GPU "
                        f"(torch {torch.__version__}, {'built without CUDA' if torch.version.cuda is None else 'no GPU found'}"
                        f"); {fix}, which picks the CPU here")
    if d.type == "cuda" and d.index is not None and d.index >= torch.cuda.device_count():
        raise DataError(f"device {device!r}: there are {torch.cuda.device_count()} CUDA GPUs here, numbered from 0")
    if d.type == "mps" and not torch.backends.mps.is_available():
        raise DataError(f"device {device!r}: Apple's MPS is not available here; {fix}")
    return d


def _test_x(test):
    """The inputs in what `test=` holds: x, `(x,)`, or an `(x, y)` pair (its labels unused); a list of
    two images is two images, not a pair."""
    if isinstance(test, tuple) and len(test) == 1:
        return test[0]
    if isinstance(test, (tuple, list)) and len(test) == 2 and np.ndim(test[0]) >= 2:
        y = test[1]
        if y is None or ((np.ndim(y) == 1 or (np.ndim(y) == 2 and np.shape(y)[1] == 1)) and len(y) == len(test[0])):
            return test[0]  # labels (N,) or a column (N, 1): not a second (H, W) image
    return test


def _warn_scale(x, others):
    """Warn about inputs a net trains badly on: far from mean 0 / std 1 (pixels left in 0..255), or
    validation or test inputs (`others`: (name, x) pairs) scaled differently from the training ones
    (normalised with other statistics, or not at all)."""
    lo, hi = (v.item() for v in torch.aminmax(x))
    s, m = (v.item() for v in torch.std_mean(x)) if x.numel() > 1 else (0.0, lo)
    # far-out values alone are no sign: per-pixel normalisation makes some, with mean 0 and std 1 overall
    if max(abs(lo), abs(hi)) > 30 and (abs(m) > 2 or s > 5):
        _warn(f"the training inputs range from {lo:g} to {hi:g} (mean {m:.3g}, std {s:.3g}); nets train best on "
              "inputs near mean 0 and std 1: normalise first, e.g. mean, std = x.mean(), x.std(); "
              "x = (x - mean) / std, and x_valid with the same mean and std")
    for name, xo in others:
        if xo is None or len(xo) < 2 or len(x) < 2 or not s > 0:
            continue
        so, mo = (v.item() for v in torch.std_mean(xo))
        if abs(mo - m) > s or not 0.5 < so / s < 2:
            _warn(f"{name} (mean {mo:.3g}, std {so:.3g}) is scaled differently from x (mean {m:.3g}, std {s:.3g}); "
                  "normalise every split with the training statistics: x_valid = (x_valid - mean) / std, and "
                  "the test set the same way")


def _pair(split, name):
    if not isinstance(split, (tuple, list)) or len(split) != 2:
        raise DataError(f"{name} must be an (x, y) pair; got {type(split).__name__}"
                        + (f" of length {len(split)}" if isinstance(split, (tuple, list)) else ""))
    return split
