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
import dataclasses
import gzip
import hashlib
import http.client
import io
import math
import os
import pickle
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["mnist", "fashion_mnist", "load", "get_data", "named_by", "read_idx", "DatasetError", "DATASETS", "DatasetSpec",
           "FileSpec", "FASHION_CLASSES", "cache_dir"]


class DatasetError(RuntimeError):
    """A dataset could not be found, read or verified; the message says what was tried."""


@dataclass(frozen=True)
class FileSpec:
    raw_sha256: str | None = None  # SHA-256 of the decompressed bytes
    gz_md5: str | None = None      # MD5 of the publisher's .gz, used when the raw hash is unknown
    raw_size: int | None = None    # bytes once decompressed
    file_sha256: str | None = None  # SHA-256 of the file as published (what sha256sum prints for it)


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


def _decompress(blob, name):
    """The content of a file's bytes `blob` (gzip is recognised by its magic bytes, not its name)."""
    if blob[:2] != b"\x1f\x8b":
        return blob
    try:
        return gzip.decompress(blob)
    except (OSError, EOFError, zlib.error) as e:  # a flipped bit can surface as any of the three
        raise DatasetError(f"{name}: corrupt gzip data ({e})") from None


def _parse_idx(data, name):
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DatasetError(f"{name}: not an IDX file (magic number {data[:4].hex() or 'missing'}; "
                           "expected 0000 then a type byte in 08,09,0b,0c,0d,0e)")
    ndim = data[3]
    if ndim == 0 or len(data) < 4 + 4 * ndim:
        raise DatasetError(f"{name}: IDX header declares {ndim} dimensions but the file is too short for them")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = 4 + 4 * ndim + math.prod(dims) * dtype.itemsize  # exact: np.prod could overflow
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
    return _parse_idx(_decompress(Path(path).read_bytes(), path), path)


def cache_dir(name=None):
    """The folder netfit caches datasets in: `$NETFIT_DATA`, else the user cache dir."""
    root = os.environ.get("NETFIT_DATA")
    if not root:
        import platformdirs
        root = platformdirs.user_cache_dir("netfit")
    return Path(root) / name if name else Path(root)


def _verified(blob, spec, name):
    """The decompressed content of file bytes `blob` if it matches `spec`, else raise DatasetError."""
    data = _decompress(blob, name)
    if spec.file_sha256 is not None:
        got = hashlib.sha256(blob).hexdigest()
        if got != spec.file_sha256.lower():
            raise DatasetError(f"{name}: SHA-256 of the file is {got}, expected {spec.file_sha256}")
    if spec.raw_sha256 is not None:
        got = hashlib.sha256(data).hexdigest()
        if got != spec.raw_sha256:
            raise DatasetError(f"{name}: SHA-256 of the decompressed content is {got}, expected {spec.raw_sha256}")
    elif spec.gz_md5 is not None:
        got = hashlib.md5(blob, usedforsecurity=False).hexdigest()
        if got != spec.gz_md5.lower():
            raise DatasetError(f"{name}: MD5 of the file is {got}, expected {spec.gz_md5} (as published)")
    if spec.raw_size is not None and len(data) != spec.raw_size:
        raise DatasetError(f"{name}: {len(data)} bytes once decompressed, expected {spec.raw_size}")
    return data


def _read_verified(folder, stem, spec):
    """`stem` from `folder` as an array, from the first of `stem.gz` and `stem` that verifies.

    An unpacked `stem` whose only published hash is its .gz's (MNIST's training images) can be
    checked by size and IDX header alone: it is read so, with a warning, when no .gz verifies."""
    errors = []
    for path in (folder / (stem + ".gz"), folder / stem):
        if not path.is_file():
            continue
        try:
            blob = path.read_bytes()
            if path.name == stem and spec.raw_sha256 is None and spec.gz_md5 and blob[:2] != b"\x1f\x8b":
                arr = _parse_idx(_verified(blob, dataclasses.replace(spec, gz_md5=None), path), path)
                from .data import _warn
                _warn(f"{path}: read without a hash check (only the .gz's MD5 is published for it; its size and "
                      f"header are right)" + (f"; {errors[0]}" if errors else
                                               f"; keep {stem}.gz beside it to have it verified"))
                return arr
            return _parse_idx(_verified(blob, spec, path), path)
        except DatasetError as e:
            errors.append(str(e))
    raise DatasetError("; ".join(errors) or f"{folder}: no {stem} or {stem}.gz")


def _load_folder(folder, spec):
    """All files of `spec` from `folder`, verified and parsed, or raise DatasetError naming the problem."""
    return {stem: _read_verified(folder, stem, fspec) for stem, fspec in spec.files.items()}


class _NoDowngrade(urllib.request.HTTPRedirectHandler):
    """Follows redirects, except from https to anything else: that would drop the encryption."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        old, new = urllib.parse.urlsplit(req.full_url).scheme, urllib.parse.urlsplit(newurl).scheme
        if old.lower() == "https" and new.lower() != "https":
            raise urllib.error.URLError(f"refused redirect from {req.full_url} to {newurl}: https to {new or '?'}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_NoDowngrade)


def _download(url, dest, spec, timeout=30.0, deadline=600.0, max_bytes=200_000_000, parse=_parse_idx):
    """Download `url` to a temporary file beside `dest`, verify it, rename it to `dest`; return
    `parse(content, url)` (an IDX file's array by default).

    `timeout` bounds each socket operation (s), `deadline` the whole transfer (s; it is checked after
    each read, so a transfer stops within `timeout` of it). Nothing lands at `dest` unless it verified,
    and concurrent downloaders each rename their own verified file, so `dest` is always whole.
    """
    made = [d for d in (dest.parent, *dest.parent.parents) if not d.exists()]  # innermost first
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    done = False
    try:
        start = time.monotonic()
        with os.fdopen(fd, "wb") as out, _OPENER.open(url, timeout=timeout) as resp:
            ctype = resp.headers.get("Content-Type", "")
            if "html" in ctype.lower():
                raise DatasetError(f"{url}: the server sent an HTML page ({ctype}), not the data file")
            length = resp.headers.get("Content-Length", "")
            length = int(length) if length.isdigit() else None
            if length is not None and length > max_bytes:
                raise DatasetError(f"{url}: announces {length} bytes, more than the {max_bytes} of any expected file")
            size = 0
            # read1 returns whatever has arrived, so a server that trickles bytes still meets the deadline
            while chunk := resp.read1(1 << 16):
                if size == 0 and chunk.lstrip()[:1] == b"<":
                    raise DatasetError(f"{url}: the server sent an HTML page ({ctype or 'no type'}), not the data file")
                size += len(chunk)
                if size > max_bytes:
                    raise DatasetError(f"{url}: more than {max_bytes} bytes, larger than any expected file")
                if time.monotonic() - start > deadline:
                    raise DatasetError(f"{url}: still downloading after {deadline:g} s, gave up")
                out.write(chunk)
            if length is not None and size != length:
                raise DatasetError(f"{url}: connection closed after {size} of {length} bytes")
            out.flush()
            os.fsync(out.fileno())  # on disk before the rename, so a crash cannot leave a renamed stub
        arr = parse(_verified(Path(tmp).read_bytes(), spec, url), url)
        os.replace(tmp, dest)
        done = True
        return arr
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
        for d in made if not done else ():  # a failed download leaves no empty folders behind
            try:
                d.rmdir()
            except OSError:
                break


def _fetch(stem, spec, dest, mirrors, attempts, timeout, deadline):
    """`stem`.gz from the first mirror that serves a verified copy, in at most `attempts` rounds."""
    errors, live = [], list(mirrors)
    for attempt in range(attempts):
        if attempt:
            time.sleep(min(2 ** (attempt - 1), 8))  # back off (s) before another round of the mirrors
        for base in list(live):
            url = f"{base.rstrip('/')}/{stem}.gz"
            try:
                return _download(url, dest, spec, timeout, deadline)
            except urllib.error.HTTPError as e:
                e.close()
                errors.append(f"{url}: HTTP {e.code} {e.reason}")
                if 400 <= e.code < 500 and e.code not in (408, 429):
                    live.remove(base)  # the server says no; asking again will not change its mind
            except DatasetError as e:  # names the url already
                errors.append(str(e))
            except (OSError, http.client.HTTPException, ValueError) as e:
                errors.append(f"{url}: {type(e).__name__}: {e}")
        if not live:
            break
    raise DatasetError(f"could not download {stem}.gz:\n    " + "\n    ".join(errors))


def _download_all(spec, folder, mirrors, attempts, timeout, deadline, log):
    """Every file of `spec` as an array: its verified copy in `folder`, else a fresh download into it."""
    arrays = {}
    for stem, fspec in spec.files.items():
        try:
            arrays[stem] = _read_verified(folder, stem, fspec)
            continue
        except DatasetError as e:
            if (folder / stem).is_file() or (folder / (stem + ".gz")).is_file():
                log.append(f"{e}; downloading it again")
        # A bad raw copy would shadow the download; a bad .gz is replaced atomically by os.replace.
        (folder / stem).unlink(missing_ok=True)
        arrays[stem] = _fetch(stem, fspec, folder / (stem + ".gz"), mirrors, attempts, timeout, deadline)
    return arrays


class _ArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays and tuples only: an `mnist.pkl.gz` needs nothing else, and any
    other global would be code the file could make us run."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"),
               ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),  # protocol 5
               ("_codecs", "encode")}  # protocol 2 from Python 3 stores bytes as latin-1 text

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise DatasetError(f"refusing to unpickle {module}.{name}: an mnist.pkl.gz holds only numpy arrays")


def _load_pickle(path, n_train=None):
    """The three splits of an mnist.pkl.gz-format pickle; pixels in [0, 1] (0..255 ones are scaled).
    With `n_train`, its training and validation rows (the first 60,000 of MNIST's training file, in
    order) are split again at `n_train`, as for the IDX files."""
    blob = _decompress(path.read_bytes(), path)
    try:
        splits = _ArraysOnly(io.BytesIO(blob), encoding="latin1").load()
    except DatasetError as e:  # a refused global
        raise DatasetError(f"{path}: {e}") from None
    except Exception as e:  # a truncated or foreign pickle fails in many ways; name the file
        raise DatasetError(f"{path}: not a readable mnist.pkl.gz ({type(e).__name__}: {e})") from None
    try:
        (x, y), (xv, yv), (xt, yt) = splits
        fix = lambda a, b: (np.asarray(a, np.float32).reshape(len(a), -1), np.asarray(b, np.int64).reshape(-1))
        splits = fix(x, y), fix(xv, yv), fix(xt, yt)
    except (TypeError, ValueError):
        raise DatasetError(f"{path}: expected ((x, y), (x_valid, y_valid), (x_test, y_test)) of arrays") from None
    for (x, y), part in zip(splits, ("train", "valid", "test")):
        if len(x) != len(y):
            raise DatasetError(f"{path}: {part} has {len(x)} images but {len(y)} labels")
        if len(x) and x.min() >= 0 and 1.0 < x.max() <= 255:  # 0..255 pixels: [0, 1] like every other source
            x /= 255.0
    if n_train is not None:
        (x, y), (xv, yv), test = splits
        x, y = np.concatenate([x, xv]), np.concatenate([y, yv])
        if n_train >= len(x):
            raise ValueError(f"n_train={n_train} leaves nothing to validate: {path} has {len(x)} training and "
                             "validation rows together")
        splits = (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:]), test
    return splits


def _split(arrays, n_train):
    def images(a):  # (N, 28, 28) uint8 -> (N, 784) float32 in [0, 1]
        x = a.reshape(len(a), -1).astype(np.float32)
        x /= 255.0  # in place: one float copy of the images, not two
        return x
    x, y = images(arrays["train-images-idx3-ubyte"]), arrays["train-labels-idx1-ubyte"].astype(np.int64)
    xt, yt = images(arrays["t10k-images-idx3-ubyte"]), arrays["t10k-labels-idx1-ubyte"].astype(np.int64)
    if len(x) != len(y) or len(xt) != len(yt):
        raise DatasetError(f"images and labels differ in length: {len(x)} vs {len(y)}, {len(xt)} vs {len(yt)}")
    if n_train >= len(x):
        raise DatasetError(f"n_train={n_train} leaves nothing to validate: the training file has {len(x)} rows")
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:]), (xt, yt)


def load(name, path=None, *, cache=None, system_dirs=None, mirrors=None, files=None, download=True,
         attempts=3, n_train=None, timeout=30.0, deadline=600.0):
    """Load dataset `name` ("mnist" or "fashion-mnist") as ((x, y), (x_valid, y_valid), (x_test, y_test)).

    Args:
        path: a folder of IDX files or an `mnist.pkl.gz`-format pickle (for "mnist", also a folder
            holding `mnist.pkl.gz`, as the lesson's `data/mnist/`); skips the search. An http(s) URL of such a pickle is
            downloaded into the cache first (`get_data`).
        cache, system_dirs, mirrors, files: override where to look and what to expect
            (the defaults are in `DATASETS[name]` and `cache_dir(name)`; `files` maps each of
            the four file stems to a `FileSpec`).
        download: try the mirrors when nothing local verifies.
        attempts: rounds over all mirrors before giving up (a mirror that answers 4xx is dropped).
        n_train: rows of the training file kept for training, the rest validate (default 50,000).
        timeout: seconds any one network operation may take; deadline: seconds per file download.

    Example:
        >>> (x, y), (xv, yv), (xt, yt) = load("fashion-mnist")   # doctest: +SKIP
        >>> x.shape, x.dtype, y.dtype                             # doctest: +SKIP
        ((50000, 784), dtype('float32'), dtype('int64'))
    """
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
    spec = DATASETS[name]
    if files is not None:
        if set(files) != set(spec.files):
            raise ValueError(f"files must give a FileSpec for each of {sorted(spec.files)}; got {sorted(files)}")
        spec = DatasetSpec(files=files, mirrors=spec.mirrors, system_dirs=spec.system_dirs, classes=spec.classes,
                           n_train=spec.n_train)
    n_given, n_train = n_train, spec.n_train if n_train is None else n_train
    if not (isinstance(n_train, int) and n_train > 0):
        raise ValueError(f"n_train must be a positive int; got {n_train!r}")
    if not (isinstance(attempts, int) and attempts >= 1):
        raise ValueError(f"attempts must be an int >= 1; got {attempts!r}")
    labels = spec.files.get("train-labels-idx1-ubyte")
    if path is None and labels is not None and labels.raw_size and n_train >= labels.raw_size - 8:
        raise ValueError(f"n_train={n_train} leaves nothing to validate: {name}'s training file has "
                         f"{labels.raw_size - 8} rows")
    if path is not None and str(path).lower().startswith(("http://", "https://")):
        url = str(path)
        tag = hashlib.sha256(url.encode()).hexdigest()[:8]  # two URLs ending in the same file name differ here
        path = get_data(url, (Path(cache) if cache is not None else cache_dir(name))
                        / f"{tag}-{Path(urllib.parse.urlsplit(url).path).name}", timeout=timeout, deadline=deadline)
    if path is not None:
        path = Path(path).expanduser()
        if path.is_file():
            return _load_pickle(path, n_given)
        if path.is_dir():
            try:
                return _split(_load_folder(path, spec), n_train)
            except DatasetError:
                # the lesson's layout: path = "data/mnist/" holding the mnist.pkl.gz that get_data fetched
                # (MNIST's file: a folder asked for another dataset is not read as if it held that one)
                if name != "mnist" or not (path / "mnist.pkl.gz").is_file():
                    raise
                return _load_pickle(path / "mnist.pkl.gz", n_given)
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
            return _split(_load_folder(folder, spec), n_train)
        except DatasetError as e:
            tried.append(str(e))
    lesson = Path("data") / "mnist" / "mnist.pkl.gz"  # where the lesson's get_data(URL+FILENAME, path+FILENAME) puts it
    if name == "mnist":  # read as it is (it has no published hash): the user or the lesson's get_data put it there
        if lesson.is_file():
            try:
                return _load_pickle(lesson, n_given)
            except DatasetError as e:
                tried.append(f"{lesson.resolve()} (the lesson's pickle): {e}")
        else:
            tried.append(f"{lesson.resolve()} (the lesson's pickle, under the current folder): no such file")
    if not download:
        tried.append("download: not tried (download=False)")
    elif not mirrors:
        tried.append("download: no mirrors to try")
    else:
        try:
            return _split(_download_all(spec, cache, mirrors, attempts, timeout, deadline, tried), n_train)
        except (DatasetError, OSError) as e:
            tried.append(str(e))
    hint = ("install it with `sudo apt-get install dataset-fashion-mnist`, " if name == "fashion-mnist" else "")
    raise DatasetError(f"could not load {name}. Tried:\n  - " + "\n  - ".join(tried) +
                       f"\nTo fix: {hint}copy the four IDX files into {cache} "
                       f"(or set NETFIT_DATA), or pass path= to a folder or mnist.pkl.gz (on the command line: --data-path for netfit train, --data for netfit compare).")


def get_data(url, dest, sha256=None, md5=None, timeout=30.0, deadline=600.0):
    """Download `url` to the file `dest` unless a copy that verifies is there already; return its Path.

    fastai 0.7's `get_data(URL+FILENAME, path+FILENAME)`. `sha256` and `md5` are hashes of the file as
    published (what `sha256sum`/`md5sum` print for it); give one to have it verified. Without either,
    only an HTML page or a short transfer is refused. The file lands at `dest` only whole and verified.

    Example:
        >>> p = get_data("http://deeplearning.net/data/mnist/mnist.pkl.gz", "data/mnist/mnist.pkl.gz")  # doctest: +SKIP
        >>> ((x, y), (x_valid, y_valid), _) = mnist(p)                                                  # doctest: +SKIP
    """
    dest, spec = Path(dest).expanduser(), FileSpec(gz_md5=md5, file_sha256=sha256)
    if dest.is_dir():
        raise DatasetError(f"{dest} is a folder; expected the file path to download to, such as "
                           f"{dest / (Path(urllib.parse.urlsplit(url).path).name or 'data')}")
    stale = None
    if dest.is_file():
        try:
            _verified(dest.read_bytes(), spec, dest)
            return dest
        except DatasetError as e:
            stale = str(e)  # a stale or damaged copy: download again
    try:  # verified before the rename to dest; nothing to parse
        _download(url, dest, spec, timeout, deadline, max_bytes=2_000_000_000, parse=lambda data, name: None)
    except urllib.error.HTTPError as e:
        e.close()
        raise DatasetError(f"{url}: HTTP {e.code} {e.reason}{_by_hand(dest, spec, stale)}") from None
    except (OSError, http.client.HTTPException, ValueError) as e:
        raise DatasetError(f"{url}: {type(e).__name__}: {e}{_by_hand(dest, spec, stale)}") from None
    return dest


def _by_hand(dest, spec, stale):
    """The way out of a failed download: the file copied in by hand (and why the copy there was not used)."""
    check = " once it matches the hash given" if spec.gz_md5 or spec.file_sha256 else ""
    there = f" (the copy there now was not used: {stale})" if stale else ""
    return f". To go on without this download, copy the file to {dest} by hand; get_data then uses it{check}{there}"


def named_by(path):
    """The dataset a file or folder's name says it holds: "fashion-mnist" when "fashion" is in it, else
    "mnist" when "mnist" is, or when it is a file (a pickle is the lesson's mnist.pkl.gz format); None
    when the name does not say.

    Example:
        >>> named_by("/usr/share/datasets/fashion-mnist"), named_by("data/mnist/mnist.pkl.gz"), named_by("data/x")
        ('fashion-mnist', 'mnist', None)
    """
    path = Path(path).expanduser()
    for part in reversed(path.parts):  # the nearest name that says: data/fashion-course/mnist is MNIST
        part = part.lower()
        if "fashion" in part or "fmnist" in part:
            return "fashion-mnist"
        if "mnist" in part:
            return "mnist"
    return "mnist" if path.is_file() else None


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
