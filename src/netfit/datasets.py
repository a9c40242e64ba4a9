"""Datasets: MNIST and Fashion-MNIST as numpy arrays, found locally or downloaded and verified.

    ((x, y), (x_valid, y_valid), (x_test, y_test)) = datasets.mnist()   # float32 (N, 784) in [0, 1], int64 labels

The split is the one of the lesson's `mnist.pkl.gz`: the first 50,000 training images train,
the last 10,000 validate, the 10,000 test images test.

Where the files are looked for, in order (the first place that holds all four verified files wins):
  1. `path=` if given: a folder of IDX files (`.gz` or raw) or an `mnist.pkl.gz`-format pickle;
  2. the cache folder: `$NETFIT_DATA/<name>`, else the user cache dir (`~/.cache/netfit/<name>` on Linux);
  3. the system dataset folder (Debian's `dataset-fashion-mnist` installs `/usr/share/datasets/fashion-mnist`);
  4. a download from the publishers' mirrors into the cache.

Every file is checked by the SHA-256 of its *decompressed* bytes (Debian recompresses, so gz bytes
differ). For MNIST's training images the raw SHA-256 is not known here, so the published MD5 of the gz
file is checked instead, plus the IDX header and length. Downloads go to a temporary file beside the
final one and are renamed only once verified; https is never followed to http.
"""
import gzip
import hashlib
import io
import os
import pickle
import socket
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["mnist", "fashion_mnist", "load", "read_idx", "DatasetError", "DATASETS",
           "FASHION_CLASSES", "cache_dir"]


class DatasetError(RuntimeError):
    """A dataset could not be found, read or verified; the message says what was tried."""


@dataclass(frozen=True)
class FileSpec:
    raw_sha256: str | None = None  # SHA-256 of the decompressed bytes
    gz_md5: str | None = None      # MD5 of the publisher's .gz, used when the raw hash is unknown
    raw_size: int | None = None    # bytes once decompressed


@dataclass(frozen=True)
class DatasetSpec:
    files: dict                                   # file stem -> FileSpec
    mirrors: tuple = ()                           # base URLs, tried in order
    system_dirs: tuple = ()                       # folders a system package may install
    classes: tuple = tuple(str(i) for i in range(10))
    n_train: int = 50_000                         # rows of the training file kept for training


FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

DATASETS = {
    "mnist": DatasetSpec(
        files={
            "train-images-idx3-ubyte": FileSpec(gz_md5="f68b3c2dcbeaaa9fbdd348bbdeb94873", raw_size=47040016),
            "train-labels-idx1-ubyte": FileSpec("65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
                                                "d53e105ee54ea40749a09fcbcd1e9432", 60008),
            "t10k-images-idx3-ubyte": FileSpec("0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
                                               "9fb629c4189551a2d022fa330f9573f3", 7840016),
            "t10k-labels-idx1-ubyte": FileSpec("ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
                                               "ec29112dd5afa0611ce80d1b7f02629c", 10008),
        },
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",
                 "https://storage.googleapis.com/cvdf-datasets/mnist/"),
        system_dirs=("/usr/share/datasets/mnist",),
    ),
    "fashion-mnist": DatasetSpec(
        files={
            "train-images-idx3-ubyte": FileSpec("c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                                                "8d4fb7e6c68d591d4c3dfef9ec88bf0d", 47040016),
            "train-labels-idx1-ubyte": FileSpec("bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                                                "25c81989df183df01b3e8a0aad5dffbe", 60008),
            "t10k-images-idx3-ubyte": FileSpec("5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                                               "bef4ecab320f06d8554ea6380940ec79", 7840016),
            "t10k-labels-idx1-ubyte": FileSpec("0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
                                               "bb300cfdad3c16e7a12a480ee83cd310", 10008),
        },
        mirrors=("https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",),
        system_dirs=("/usr/share/datasets/fashion-mnist",),
        classes=FASHION_CLASSES,
    ),
}

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _open_bytes(path):
    """The decompressed bytes of `path` (gzip is recognised by its magic bytes, not its name)."""
    path = Path(path)
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise DatasetError(f"{path}: corrupt gzip file ({e})") from None
    return data


def _parse_idx(data, name):
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DatasetError(f"{name}: not an IDX file (magic number {data[:4].hex() or 'missing'}; "
                           "expected 0000 then a type byte in 08,09,0b,0c,0d,0e)")
    ndim = data[3]
    if ndim == 0 or len(data) < 4 + 4 * ndim:
        raise DatasetError(f"{name}: IDX header declares {ndim} dimensions but the file is too short for them")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = 4 + 4 * ndim + int(np.prod(dims)) * dtype.itemsize
    if len(data) != expected:
        raise DatasetError(f"{name}: IDX header says dims {dims} ({expected} bytes) but the file has "
                           f"{len(data)} bytes: truncated or corrupt")
    arr = np.frombuffer(data, dtype=dtype, offset=4 + 4 * ndim).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=False)


def read_idx(path):
    """Read one IDX file (gzip-compressed or raw) into a numpy array of its own shape and dtype.

    Checks the magic number, the dimensions and that the body length matches them.

    Example:
        >>> x = read_idx("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")  # doctest: +SKIP
        >>> x.shape, x.dtype                                                               # doctest: +SKIP
        ((10000, 28, 28), dtype('uint8'))
    """
    return _parse_idx(_open_bytes(path), str(path))


def cache_dir(name=None):
    """The folder netfit caches datasets in: `$NETFIT_DATA`, else the user cache dir."""
    root = os.environ.get("NETFIT_DATA")
    if not root:
        import platformdirs
        root = platformdirs.user_cache_dir("netfit")
    return Path(root) / name if name else Path(root)


def _find(folder, stem):
    for cand in (folder / stem, folder / (stem + ".gz")):
        if cand.is_file():
            return cand
    return None


def _verify(path, stem, spec):
    """Return the decompressed bytes of `path` if they match `spec`, else raise DatasetError."""
    data = _open_bytes(path)
    if spec.raw_sha256 is not None:
        got = hashlib.sha256(data).hexdigest()
        if got != spec.raw_sha256:
            raise DatasetError(f"{path}: SHA-256 of the decompressed content is {got}, expected {spec.raw_sha256}")
    elif spec.gz_md5 is not None:
        got = hashlib.md5(Path(path).read_bytes()).hexdigest()
        if got != spec.gz_md5:
            raise DatasetError(f"{path}: MD5 of the gz file is {got}, expected the published {spec.gz_md5}")
    if spec.raw_size is not None and len(data) != spec.raw_size:
        raise DatasetError(f"{path}: {len(data)} bytes once decompressed, expected {spec.raw_size}")
    return data


def _load_folder(folder, spec):
    """All files of `spec` from `folder`, verified and parsed, or raise DatasetError naming the problem."""
    arrays = {}
    for stem, fspec in spec.files.items():
        path = _find(folder, stem)
        if path is None:
            raise DatasetError(f"{folder}: no {stem} or {stem}.gz")
        arrays[stem] = _parse_idx(_verify(path, stem, fspec), str(path))
    return arrays


def _refuse_downgrade():
    class NoDowngrade(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req, fp, code, msg, headers, newurl):
            if req.full_url.startswith("https:") and not newurl.startswith("https:"):
                raise urllib.error.URLError(f"refused redirect from https to {newurl}")
            return super().redirect_request(req, fp, code, msg, headers, newurl)
    return urllib.request.build_opener(NoDowngrade)


def _download(url, dest, spec, timeout=30.0, deadline=600.0, max_bytes=200_000_000):
    """Download `url` to a temporary file beside `dest`, verify it, then rename it to `dest`.

    `timeout` bounds each socket read (s), `deadline` the whole transfer (s). Nothing lands at
    `dest` unless it verified, and a concurrent writer's verified file is as good as ours.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    try:
        start = time.monotonic()
        with os.fdopen(fd, "wb") as out, _refuse_downgrade().open(url, timeout=timeout) as resp:
            ctype = resp.headers.get("Content-Type", "")
            if "html" in ctype:
                raise DatasetError(f"{url}: the server sent an HTML page ({ctype}), not the data file")
            size = 0
            while chunk := resp.read(1 << 16):
                size += len(chunk)
                if size > max_bytes:
                    raise DatasetError(f"{url}: more than {max_bytes} bytes, larger than any expected file")
                if time.monotonic() - start > deadline:
                    raise DatasetError(f"{url}: still downloading after {deadline:.0f} s, gave up")
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        _parse_idx(_verify(tmp, dest.name, spec), url)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _download_all(name, spec, folder, mirrors, attempts, log):
    for stem, fspec in spec.files.items():
        dest = folder / (stem + ".gz")
        if dest.is_file():
            try:
                _verify(dest, stem, fspec)
                continue
            except DatasetError as e:
                log.append(f"cached {e}; replacing it")
                dest.unlink(missing_ok=True)
        errors = []
        for attempt in range(attempts):
            for base in mirrors:
                url = base + stem + ".gz"
                try:
                    _download(url, dest, fspec)
                    break
                except (DatasetError, OSError, urllib.error.URLError, socket.timeout, ValueError) as e:
                    errors.append(f"{url}: {e}")
            else:
                if attempt + 1 < attempts:
                    time.sleep(min(2 ** attempt, 8))  # back off before another round of all mirrors
                continue
            break
        else:
            raise DatasetError(f"could not download {stem}.gz:\n  " + "\n  ".join(errors))


class _ArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays and tuples only: an `mnist.pkl.gz` needs nothing else, and any
    other global would be code the file could make us run."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise DatasetError(f"refusing to unpickle {module}.{name}: an mnist.pkl.gz holds only numpy arrays")


def _load_pickle(path):
    try:
        splits = _ArraysOnly(io.BytesIO(_open_bytes(path)), encoding="latin1").load()
    except DatasetError:
        raise
    except Exception as e:  # a truncated or foreign pickle fails in many ways; name the file
        raise DatasetError(f"{path}: not a readable mnist.pkl.gz ({type(e).__name__}: {e})") from None
    try:
        (x, y), (xv, yv), (xt, yt) = splits
    except (TypeError, ValueError):
        raise DatasetError(f"{path}: expected ((x, y), (x_valid, y_valid), (x_test, y_test))") from None
    fix = lambda a, b: (np.asarray(a, np.float32).reshape(len(a), -1), np.asarray(b, np.int64))
    return fix(x, y), fix(xv, yv), fix(xt, yt)


def _split(arrays, n_train):
    def images(a):  # (N, 28, 28) uint8 -> (N, 784) float32 in [0, 1]
        return (a.reshape(len(a), -1).astype(np.float32) / 255.0)
    x, y = images(arrays["train-images-idx3-ubyte"]), arrays["train-labels-idx1-ubyte"].astype(np.int64)
    xt, yt = images(arrays["t10k-images-idx3-ubyte"]), arrays["t10k-labels-idx1-ubyte"].astype(np.int64)
    if len(x) != len(y) or len(xt) != len(yt):
        raise DatasetError(f"images and labels differ in length: {len(x)} vs {len(y)}, {len(xt)} vs {len(yt)}")
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:]), (xt, yt)


def load(name, path=None, *, cache=None, system_dirs=None, mirrors=None, files=None, download=True,
         attempts=3):
    """Load dataset `name` ("mnist" or "fashion-mnist") as ((x, y), (x_valid, y_valid), (x_test, y_test)).

    Args:
        path: a folder of IDX files or an `mnist.pkl.gz`-format pickle; skips the search.
        cache, system_dirs, mirrors, files: override where to look and what to expect
            (the defaults are in `DATASETS[name]` and `cache_dir(name)`).
        download: try the mirrors when nothing local verifies.
        attempts: rounds over all mirrors before giving up.

    Example:
        >>> (x, y), (xv, yv), (xt, yt) = load("fashion-mnist")   # doctest: +SKIP
        >>> x.shape, x.dtype, y.dtype                             # doctest: +SKIP
        ((50000, 784), dtype('float32'), dtype('int64'))
    """
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
    spec = DATASETS[name]
    if files is not None:
        spec = DatasetSpec(files=files, mirrors=spec.mirrors, system_dirs=spec.system_dirs,
                           classes=spec.classes, n_train=spec.n_train)
    if path is not None:
        path = Path(path).expanduser()
        if path.is_file():
            return _load_pickle(path)
        if path.is_dir():
            return _split(_load_folder(path, spec), spec.n_train)
        raise DatasetError(f"{path} does not exist; expected a folder of IDX files or an mnist.pkl.gz file")

    cache = Path(cache) if cache is not None else cache_dir(name)
    system_dirs = spec.system_dirs if system_dirs is None else tuple(system_dirs)
    mirrors = spec.mirrors if mirrors is None else tuple(mirrors)
    tried = []
    for folder in (cache, *map(Path, system_dirs)):
        if not folder.is_dir():
            tried.append(f"{folder}: no such folder")
            continue
        try:
            return _split(_load_folder(folder, spec), spec.n_train)
        except DatasetError as e:
            tried.append(str(e))
    if download and mirrors:
        try:
            _download_all(name, spec, cache, mirrors, attempts, tried)
            return _split(_load_folder(cache, spec), spec.n_train)
        except (DatasetError, OSError) as e:
            tried.append(str(e))
    hint = ("install it with `sudo apt-get install dataset-fashion-mnist`, " if name == "fashion-mnist" else "")
    raise DatasetError(f"could not load {name}. Tried:\n  - " + "\n  - ".join(tried) +
                       f"\nTo fix: {hint}copy the four IDX files into {cache} "
                       f"(or set NETFIT_DATA), or pass path= to a folder or mnist.pkl.gz.")


def mnist(path=None, **kwargs):
    """MNIST digits as ((x, y), (x_valid, y_valid), (x_test, y_test)); see `load` for where it looks.

    Example:
        >>> ((x, y), (x_valid, y_valid), _) = mnist()   # doctest: +SKIP
        >>> x.shape, x_valid.shape                      # doctest: +SKIP
        ((50000, 784), (10000, 784))
    """
    return load("mnist", path, **kwargs)


def fashion_mnist(path=None, **kwargs):
    """Fashion-MNIST as ((x, y), (x_valid, y_valid), (x_test, y_test)); class names in `FASHION_CLASSES`.

    Example:
        >>> ((x, y), (x_valid, y_valid), _) = fashion_mnist()   # doctest: +SKIP
        >>> float(x.min()), float(x.max())                      # doctest: +SKIP
        (0.0, 1.0)
    """
    return load("fashion-mnist", path, **kwargs)
