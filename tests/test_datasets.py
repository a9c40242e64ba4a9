"""Tests of netfit.datasets: IDX reading, where datasets are found (path, cache, system folder,
download), pickles, errors, and the real MNIST / Fashion-MNIST files.

    python -m pytest -q tests/test_datasets.py

The datasets the search tests find are tiny ones built here (60 training rows, 10 test rows) and
passed with their own checksums through `files=` and `n_train=`.
"""
import functools
import gzip
import hashlib
import http.server
import os
import pickle
import shutil
import socket
import tempfile
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netfit import datasets
from netfit.datasets import DatasetError, FileSpec, read_idx

SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
FASHION_SYSTEM = Path("/usr/share/datasets/fashion-mnist")
STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
N_TRAIN = 50  # of the 60 built training rows; the other 10 validate

IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B,
             np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}


def idx_bytes(arr):
    """The IDX encoding of `arr`: 0x0000, a type byte, ndim, big-endian dims, big-endian values."""
    header = bytes([0, 0, IDX_CODES[arr.dtype], arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def build(folder, seed, gz=True):
    """Write a tiny MNIST-shaped dataset into `folder`; return (files= checksums, the arrays)."""
    rng = np.random.default_rng(seed)
    arrays = {STEMS[0]: rng.integers(0, 256, (60, 28, 28), dtype=np.uint8),
              STEMS[1]: rng.integers(0, 10, 60, dtype=np.uint8),
              STEMS[2]: rng.integers(0, 256, (10, 28, 28), dtype=np.uint8),
              STEMS[3]: rng.integers(0, 10, 10, dtype=np.uint8)}
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for stem, arr in arrays.items():
        data = idx_bytes(arr)
        (folder / (stem + ".gz" if gz else stem)).write_bytes(gzip.compress(data) if gz else data)
        files[stem] = FileSpec(raw_sha256=hashlib.sha256(data).hexdigest(), raw_size=len(data))
    return files, arrays


def check_splits(splits, arrays):
    """`splits` is the lesson's split of `arrays`: first N_TRAIN train, the rest validate; in [0, 1]."""
    (x, y), (xv, yv), (xt, yt) = splits
    assert (x.shape, xv.shape, xt.shape) == ((N_TRAIN, 784), (60 - N_TRAIN, 784), (10, 784))
    assert {a.dtype for a in (x, xv, xt)} == {np.dtype(np.float32)}
    assert {a.dtype for a in (y, yv, yt)} == {np.dtype(np.int64)}
    assert 0.0 <= x.min() and x.max() <= 1.0
    images = arrays[STEMS[0]].reshape(60, 784) / 255
    np.testing.assert_allclose(np.concatenate([x, xv]), images, rtol=1e-6)
    np.testing.assert_array_equal(np.concatenate([y, yv]), arrays[STEMS[1]])
    np.testing.assert_allclose(xt, arrays[STEMS[2]].reshape(10, 784) / 255, rtol=1e-6)
    np.testing.assert_array_equal(yt, arrays[STEMS[3]])


def load_tiny(files, **kw):
    kw = {"system_dirs": [], "mirrors": [], **kw}
    return datasets.load("mnist", files=files, n_train=N_TRAIN, **kw)


# ---------------------------------------------------------------- read_idx

REAL_SHAPES = {"t10k-images-idx3-ubyte": (10000, 28, 28), "t10k-labels-idx1-ubyte": (10000,),
               "train-labels-idx1-ubyte": (60000,)}


@pytest.mark.parametrize("stem", sorted(REAL_SHAPES))
def test_read_idx_real_mnist_gz_and_raw(stem, tmp_path):
    gz = SHARED_MNIST / (stem + ".gz")
    if not gz.exists():
        pytest.skip(f"{gz} not found")
    raw = tmp_path / stem
    raw.write_bytes(gzip.decompress(gz.read_bytes()))
    a, b = read_idx(gz), read_idx(raw)
    assert a.shape == b.shape == REAL_SHAPES[stem]
    assert a.dtype == b.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    if "labels" in stem:
        assert set(np.unique(a)) == set(range(10))


@settings(max_examples=40, deadline=None)
@given(dtype=st.sampled_from(sorted(IDX_CODES, key=str)),
       shape=st.lists(st.integers(1, 4), min_size=1, max_size=4), gz=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_read_idx_round_trips_every_type(dtype, shape, gz, seed):
    arr = (np.random.default_rng(seed).standard_normal(shape) * 100).astype(dtype)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / ("a.idx.gz" if gz else "a.idx")
        path.write_bytes(gzip.compress(idx_bytes(arr)) if gz else idx_bytes(arr))
        got = read_idx(path)
    assert got.shape == arr.shape and got.dtype == arr.dtype and got.dtype.isnative
    np.testing.assert_array_equal(got, arr)


GOOD = idx_bytes(np.arange(6, dtype=np.uint8).reshape(2, 3))  # 00 00 08 02 | 2 | 3 | 6 bytes


def bad_deflate():  # a valid gzip header whose first deflate block has the reserved type 11 (zlib.error)
    blob = bytearray(gzip.compress(GOOD))
    blob[10] |= 0b110
    return bytes(blob)


@pytest.mark.parametrize("blob, why", [
    (b"", "not an IDX file"),                                     # empty
    (b"\x01\x00" + GOOD[2:], "not an IDX file"),                  # wrong magic
    (GOOD[:2] + b"\x07" + GOOD[3:], "not an IDX file"),           # unknown type byte
    (GOOD[:3] + b"\x00" + GOOD[4:], "dimensions"),                # zero dims
    (GOOD[:3] + b"\x09", "dimensions"),                           # 9 dims declared, no room for them
    (GOOD[:-1], "truncated or corrupt"),                          # short body
    (GOOD + b"\x00", "truncated or corrupt"),                     # body longer than the dims
    (GOOD[:3] + b"\x03" + GOOD[4:], "truncated or corrupt"),      # wrong dims: 3 declared, 2 written
    (gzip.compress(GOOD)[:-12], "corrupt gzip"),                  # gzip cut short
    (bad_deflate(), "corrupt gzip"),                              # zlib.error inside gzip
], ids=["empty", "magic", "type-byte", "zero-dims", "no-room-for-dims", "short-body", "long-body", "wrong-dims",
        "gzip-cut", "bad-deflate"])
def test_read_idx_rejects_bad_files_naming_them(blob, why, tmp_path):
    path = tmp_path / "bad-idx3-ubyte.gz"
    path.write_bytes(blob)
    with pytest.raises(DatasetError, match=why) as e:
        read_idx(path)
    assert str(path) in str(e.value)


# ---------------------------------------------------------------- where load looks, in order

def test_cache_from_netfit_data_env(tmp_path, monkeypatch):
    files, arrays = build(tmp_path / "data" / "mnist", seed=0)
    monkeypatch.setenv("NETFIT_DATA", str(tmp_path / "data"))
    assert datasets.cache_dir("mnist") == tmp_path / "data" / "mnist"
    check_splits(load_tiny(files, download=False), arrays)


def test_cache_argument_and_raw_idx_files(tmp_path):
    files, arrays = build(tmp_path / "c", seed=0, gz=False)
    check_splits(load_tiny(files, cache=tmp_path / "c", download=False), arrays)


def test_cache_comes_before_system_folder(tmp_path):
    files, arrays = build(tmp_path / "cache", seed=0)
    build(tmp_path / "system", seed=0)
    (tmp_path / "system" / (STEMS[1] + ".gz")).write_bytes(b"not even gzip")  # would fail if it were read
    check_splits(load_tiny(files, cache=tmp_path / "cache", system_dirs=[tmp_path / "system"]), arrays)


@pytest.mark.parametrize("cache_state", ["missing", "empty", "corrupt"])
def test_system_folder_used_when_cache_has_nothing_good(cache_state, tmp_path):
    files, arrays = build(tmp_path / "system", seed=1)
    cache = tmp_path / "cache"
    if cache_state == "empty":
        cache.mkdir()
    if cache_state == "corrupt":
        build(cache, seed=1)
        (cache / (STEMS[0] + ".gz")).write_bytes(gzip.compress(GOOD))  # a valid IDX file, but the wrong one
    splits = load_tiny(files, cache=cache, system_dirs=[tmp_path / "nowhere", tmp_path / "system"], download=False)
    check_splits(splits, arrays)


class CountingHandler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        self.server.requests[self.path] += 1
        super().do_GET()

    def log_message(self, *args):  # keep pytest's output quiet
        pass


@pytest.fixture
def file_server(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/served; yields (base url, request counter)."""
    served = tmp_path / "served"
    served.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(CountingHandler, directory=str(served)))
    server.requests = Counter()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", server.requests
    server.shutdown()
    server.server_close()


def test_download_lands_verified_files_in_cache_then_cache_is_used(file_server, tmp_path):
    url, requests = file_server
    files, arrays = build(tmp_path / "served", seed=2)
    cache = tmp_path / "cache"
    check_splits(load_tiny(files, cache=cache, mirrors=[url], system_dirs=[tmp_path / "nowhere"]), arrays)
    assert sorted(p.name for p in cache.iterdir()) == sorted(s + ".gz" for s in STEMS)  # no *.part left
    for stem in STEMS:
        assert (cache / (stem + ".gz")).read_bytes() == (tmp_path / "served" / (stem + ".gz")).read_bytes()
    assert sum(requests.values()) == 4
    check_splits(load_tiny(files, cache=cache, mirrors=[url]), arrays)  # found in the cache: no request
    check_splits(load_tiny(files, cache=cache, download=False), arrays)
    assert sum(requests.values()) == 4


def test_download_fills_only_what_the_cache_lacks(file_server, tmp_path):
    url, requests = file_server
    files, arrays = build(tmp_path / "served", seed=2)
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(tmp_path / "served" / (STEMS[0] + ".gz"), cache)
    check_splits(load_tiny(files, cache=cache, mirrors=[url]), arrays)
    assert requests == Counter({f"/{s}.gz": 1 for s in STEMS[1:]})


def test_path_folder_skips_the_search(tmp_path, monkeypatch):
    files, arrays = build(tmp_path / "mine", seed=3, gz=False)
    build(tmp_path / "data" / "mnist", seed=4)  # a different dataset in the cache must not be used
    monkeypatch.setenv("NETFIT_DATA", str(tmp_path / "data"))
    check_splits(datasets.mnist(tmp_path / "mine", files=files, n_train=N_TRAIN), arrays)


def lesson_splits(seed=0):
    rng = np.random.default_rng(seed)
    return tuple((rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n)) for n in (50, 10, 10))


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("gz", [True, False])
def test_path_pickle_in_mnist_pkl_gz_format(protocol, gz, tmp_path):
    splits = lesson_splits()
    blob = pickle.dumps(splits, protocol=protocol)
    path = tmp_path / ("mnist.pkl.gz" if gz else "mnist.pkl")
    path.write_bytes(gzip.compress(blob) if gz else blob)
    got = datasets.mnist(path)
    for (x, y), (gx, gy) in zip(splits, got):
        assert gx.dtype == np.float32 and gy.dtype == np.int64
        np.testing.assert_array_equal(gx, x)
        np.testing.assert_array_equal(gy, y)
    assert datasets.fashion_mnist(path)[0][0].shape == (50, 784)  # the path is read whatever the name


def test_a_folder_holding_the_lessons_pickle_loads_it(tmp_path):
    splits = lesson_splits()
    folder = tmp_path / "data" / "mnist"  # the lesson: path = "data/mnist/"; get_data(URL + FILENAME, path + FILENAME)
    folder.mkdir(parents=True)
    (folder / "mnist.pkl.gz").write_bytes(gzip.compress(pickle.dumps(splits, protocol=2)))
    np.testing.assert_array_equal(datasets.mnist(str(folder) + "/")[1][0], splits[1][0])
    (folder / "other.pkl.gz").write_bytes(b"")  # the lesson's file name is the one read
    np.testing.assert_array_equal(datasets.mnist(folder)[0][1], splits[0][1])
    (folder / "mnist.pkl.gz").unlink()  # which of two others? neither: the folder's own error
    (folder / "more.pkl.gz").write_bytes(b"")
    with pytest.raises(datasets.DatasetError):
        datasets.mnist(folder)


class RunsShell:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class Evaluates:
    def __reduce__(self):
        return eval, ("__import__('os').system('true')",)


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
@pytest.mark.parametrize("payload", ["system", "eval"])
def test_malicious_pickle_is_refused_and_not_run(payload, protocol, tmp_path):
    marker = tmp_path / "pwned"
    evil = RunsShell(f"touch {marker}") if payload == "system" else Evaluates()
    (x, y), valid, test = lesson_splits()
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps(((x, evil), valid, test), protocol=protocol)))
    with pytest.raises(DatasetError, match=r"refusing to unpickle (posix\.system|(__builtin__|builtins)\.eval)") as e:
        datasets.mnist(path)
    assert str(path) in str(e.value)
    assert not marker.exists()


@pytest.mark.parametrize("blob, why", [
    (pickle.dumps(lesson_splits())[:-40], "not a readable"),
    (pickle.dumps({"x": 1}), "expected"),
    (pickle.dumps(((np.zeros((3, 784)), np.zeros(2)),) * 3), "3 images but 2 labels"),
    (gzip.compress(pickle.dumps(lesson_splits()))[:-30], "corrupt gzip"),
], ids=["truncated", "wrong-structure", "length-mismatch", "gzip-cut"])
def test_bad_pickles_raise_dataset_error_naming_the_file(blob, why, tmp_path):
    path = tmp_path / "mnist.pkl"
    path.write_bytes(blob)
    with pytest.raises(DatasetError, match=why) as e:
        datasets.mnist(path)
    assert str(path) in str(e.value)


def test_final_error_lists_what_was_tried_and_how_to_fix(tmp_path):
    files, _ = build(tmp_path / "sys", seed=0)
    (tmp_path / "sys" / (STEMS[2] + ".gz")).unlink()
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/"
    with pytest.raises(DatasetError) as e:
        load_tiny(files, cache=tmp_path / "cache", system_dirs=[tmp_path / "sys"], mirrors=[dead], attempts=1)
    msg = str(e.value)
    for expected in (f"{tmp_path / 'cache'}: no such folder", f"no {STEMS[2]} or {STEMS[2]}.gz",
                     f"{dead}{STEMS[0]}.gz", "To fix", "NETFIT_DATA", "path="):
        assert expected in msg
    with pytest.raises(DatasetError, match=r"download=False") as e:
        load_tiny(files, cache=tmp_path / "cache", system_dirs=[tmp_path / "sys"], download=False)
    with pytest.raises(DatasetError, match="dataset-fashion-mnist"):
        datasets.load("fashion-mnist", cache=tmp_path / "cache", system_dirs=[], download=False)


def test_bad_arguments_are_named(tmp_path):
    files, _ = build(tmp_path / "c", seed=0)
    with pytest.raises(DatasetError, match="unknown dataset 'cifar'"):
        datasets.load("cifar")
    with pytest.raises(ValueError, match="attempts must be an int >= 1; got 0"):
        load_tiny(files, cache=tmp_path / "c", attempts=0)
    with pytest.raises(ValueError, match="n_train must be a positive int; got 0"):
        datasets.load("mnist", cache=tmp_path / "c", files=files, n_train=0)
    with pytest.raises(ValueError, match="files must give a FileSpec for each of"):
        load_tiny({STEMS[0]: files[STEMS[0]]}, cache=tmp_path / "c")
    with pytest.raises(DatasetError, match="n_train=60 leaves nothing to validate"):
        datasets.load("mnist", tmp_path / "c", files=files, n_train=60)
    with pytest.raises(DatasetError, match="does not exist"):
        datasets.mnist(tmp_path / "nothing-here")


# ---------------------------------------------------------------- the real files

MNIST_SHA256 = {  # from /work/shared/data/README.md, independent of the constants in datasets.py
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
}


@pytest.mark.parametrize("stem", sorted(MNIST_SHA256))
def test_real_mnist_files_verify_against_known_sha256(stem):
    gz = SHARED_MNIST / (stem + ".gz")
    if not gz.exists():
        pytest.skip(f"{gz} not found")
    spec = datasets.DATASETS["mnist"].files[stem]
    assert spec.raw_sha256 == MNIST_SHA256[stem]
    data = datasets._verified(gz.read_bytes(), spec, gz)
    assert hashlib.sha256(data).hexdigest() == MNIST_SHA256[stem]
    assert hashlib.md5(gz.read_bytes()).hexdigest() == spec.gz_md5  # published gz MD5 also matches
    tampered = bytearray(data)
    tampered[-1] ^= 1
    with pytest.raises(DatasetError, match="SHA-256"):
        datasets._verified(bytes(tampered), spec, gz)


def test_real_fashion_mnist_system_folder(fashion):
    (x, y), (xv, yv), (xt, yt) = fashion
    assert (x.shape, xv.shape, xt.shape) == ((50000, 784), (10000, 784), (10000, 784))
    assert (y.shape, yv.shape, yt.shape) == ((50000,), (10000,), (10000,))
    assert x.dtype == np.float32 and y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0
    assert np.bincount(yt).tolist() == [1000] * 10  # the test set is balanced
    assert len(datasets.FASHION_CLASSES) == 10


def test_real_fashion_mnist_found_by_default_search(tmp_path, monkeypatch):
    if not FASHION_SYSTEM.is_dir():
        pytest.skip("dataset-fashion-mnist is not installed")
    monkeypatch.setenv("NETFIT_DATA", str(tmp_path))  # an empty cache: the system folder must be found
    (x, y), (xv, yv), (xt, yt) = datasets.fashion_mnist(download=False)
    assert (len(x), len(xv), len(xt)) == (50000, 10000, 10000)
    assert not (tmp_path / "fashion-mnist").exists()  # nothing was written to the cache


def test_pickle_url_downloads_into_the_cache_then_loads(file_server, tmp_path):
    url, requests = file_server
    splits = lesson_splits(1)
    (tmp_path / "served" / "mnist.pkl.gz").write_bytes(gzip.compress(pickle.dumps(splits)))
    cache = tmp_path / "cache"
    for _ in range(2):  # the second time from the cache, without a request
        got = datasets.mnist(url + "mnist.pkl.gz", cache=cache)
        np.testing.assert_array_equal(got[0][0], splits[0][0])
    assert requests == Counter({"/mnist.pkl.gz": 1})
    assert len(list(cache.glob("*-mnist.pkl.gz"))) == 1


def test_get_data_verifies_and_leaves_nothing_on_a_mismatch(file_server, tmp_path):
    url, _ = file_server
    blob = gzip.compress(pickle.dumps(lesson_splits(2)))
    (tmp_path / "served" / "mnist.pkl.gz").write_bytes(blob)
    dest = tmp_path / "data" / "mnist.pkl.gz"
    with pytest.raises(datasets.DatasetError, match="MD5 of the file is .*, expected 0{32}"):
        datasets.get_data(url + "mnist.pkl.gz", dest, md5="0" * 32)
    assert not dest.exists() and not dest.parent.exists()  # nor the folder it made for the file
    good = hashlib.md5(blob).hexdigest()
    assert datasets.get_data(url + "mnist.pkl.gz", dest, md5=good) == dest and dest.read_bytes() == blob
    other = tmp_path / "data" / "again.pkl.gz"  # sha256 as sha256sum prints it for the .gz file
    assert datasets.get_data(url + "mnist.pkl.gz", other, sha256=hashlib.sha256(blob).hexdigest()) == other
    by_hand = r"HTTP 404 File not found\. To go on without this download, copy the file to .*other\.pkl\.gz by hand"
    with pytest.raises(datasets.DatasetError, match=by_hand):
        datasets.get_data(url + "missing.pkl.gz", tmp_path / "data" / "other.pkl.gz")
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["again.pkl.gz", "mnist.pkl.gz"]
    with pytest.raises(datasets.DatasetError, match="HTTP 404"):
        datasets.get_data(url + "missing.pkl.gz", tmp_path / "new" / "deeper" / "other.pkl.gz")
    assert not (tmp_path / "new").exists()
    with pytest.raises(datasets.DatasetError, match="is a folder"):
        datasets.get_data(url + "mnist.pkl.gz", tmp_path / "data")
    # a copy put there by hand that fails the given hash: the error says so, not just "copy it by hand"
    with pytest.raises(datasets.DatasetError, match=r"uses it once it matches the hash given \(the copy there now was "
                                                    r"not used: .*MD5"):
        datasets.get_data(url + "missing.pkl.gz", dest, md5="0" * 32)


def test_pickle_honours_n_train_and_scales_0_255_pixels(tmp_path):
    (x, y), (xv, yv), (xt, yt) = lesson_splits(3)
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps(((x * 255, y), (xv * 255, yv), (xt * 255, yt)))))
    (gx, gy), (gxv, gyv), (gxt, _) = datasets.mnist(path, n_train=40)  # 50 + 10 rows split again at 40
    np.testing.assert_allclose(np.concatenate([gx, gxv]), np.concatenate([x, xv]), rtol=1e-6)
    np.testing.assert_array_equal(np.concatenate([gy, gyv]), np.concatenate([y, yv]))
    assert len(gx) == 40 and len(gxv) == 20 and gxt.max() <= 1.0
    with pytest.raises(ValueError, match="n_train=60 leaves nothing to validate"):
        datasets.mnist(path, n_train=60)


def test_an_impossible_n_train_is_refused_before_any_search(tmp_path):
    with pytest.raises(ValueError, match="n_train=60000 leaves nothing to validate: fashion-mnist's training file "
                                         "has 60000 rows"):
        datasets.fashion_mnist(n_train=60000, mirrors=["http://127.0.0.1:9/"], cache=tmp_path)


def test_an_uncompressed_file_with_only_a_gz_md5_is_read_with_size_and_header_checks(tmp_path):
    # MNIST's training images have only their .gz's MD5 published: an unpacked copy cannot match it
    files, arrays = build(tmp_path / "raw", seed=3, gz=False)
    data = idx_bytes(arrays[STEMS[0]])
    files[STEMS[0]] = FileSpec(gz_md5=hashlib.md5(gzip.compress(data, mtime=0)).hexdigest(), raw_size=len(data))
    with pytest.warns(UserWarning, match="read without a hash check.*keep train-images-idx3-ubyte.gz beside it"):
        check_splits(load_tiny(files, path=tmp_path / "raw"), arrays)
    (tmp_path / "raw" / STEMS[0]).write_bytes(data[:-784])  # one image short: the size still has to be right
    with pytest.raises(DatasetError, match="bytes once decompressed"):
        load_tiny(files, path=tmp_path / "raw")
    tampered = bytearray(data)
    tampered[-784:] = b"\xff" * 784                              # same size and header, other pixels
    (tmp_path / "raw" / STEMS[0]).write_bytes(bytes(tampered))
    (tmp_path / "raw" / (STEMS[0] + ".gz")).write_bytes(gzip.compress(data, mtime=0))  # verifiable: it wins
    check_splits(load_tiny(files, path=tmp_path / "raw"), arrays)


def test_a_damaged_gz_does_not_block_a_good_unpacked_copy(tmp_path):
    files, arrays = build(tmp_path / "raw", seed=4, gz=False)
    data = idx_bytes(arrays[STEMS[0]])
    files[STEMS[0]] = FileSpec(gz_md5=hashlib.md5(gzip.compress(data, mtime=0)).hexdigest(), raw_size=len(data))
    (tmp_path / "raw" / (STEMS[0] + ".gz")).write_bytes(gzip.compress(data, mtime=0)[:-100])  # truncated
    with pytest.warns(UserWarning, match="read without a hash check"):
        check_splits(load_tiny(files, path=tmp_path / "raw"), arrays)


def test_mnist_finds_the_lessons_pickle_in_data_mnist_of_this_folder(tmp_path, monkeypatch):
    # the lesson: get_data(URL+FILENAME, "data/mnist/" + FILENAME), then datasets.mnist() with no path
    monkeypatch.chdir(tmp_path)
    with pytest.raises(datasets.DatasetError, match=r"data/mnist/mnist\.pkl\.gz \(the lesson's pickle, under the current folder\)"):
        datasets.load("mnist", cache=tmp_path / "empty", system_dirs=(), download=False)
    (tmp_path / "data" / "mnist").mkdir(parents=True)
    splits = lesson_splits(2)
    (tmp_path / "data" / "mnist" / "mnist.pkl.gz").write_bytes(gzip.compress(pickle.dumps(splits)))
    (x, y), _, _ = datasets.load("mnist", cache=tmp_path / "empty", system_dirs=(), download=False)
    np.testing.assert_array_equal(y, splits[0][1])
    with pytest.raises(datasets.DatasetError):  # not for Fashion-MNIST
        datasets.load("fashion-mnist", cache=tmp_path / "empty", system_dirs=(), download=False)
    (tmp_path / "data" / "mnist" / "mnist.pkl.gz").write_bytes(b"damaged")  # passed over, and named
    with pytest.raises(datasets.DatasetError, match=r"mnist\.pkl\.gz \(the lesson's pickle\): "):
        datasets.load("mnist", cache=tmp_path / "empty", system_dirs=(), download=False)
