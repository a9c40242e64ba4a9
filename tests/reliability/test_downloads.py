"""Downloads that cannot go wrong quietly: netfit.datasets against a misbehaving local server.

    python -m pytest -q tests/reliability/test_downloads.py

A server on 127.0.0.1 answers `/<behaviour>/<file>` with one fault per behaviour (truncation, flipped
bits, HTML, 403/404/500, a reset connection, a stalled or trickling body, ...). Each test checks that
corrupt data is never accepted, that the next mirror is tried, that retries are bounded, that nothing
partial lands at the final path, that a poisoned cache is replaced, and that two processes filling
one cache both end with a verified file.
"""
import gzip
import hashlib
import http.server
import multiprocessing
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from netfit import datasets
from netfit.datasets import DatasetError, FileSpec

STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
N_TRAIN = 50  # of 60 training rows
FAST = {"attempts": 1, "timeout": 0.5, "deadline": 1.0}  # s: a stalled or trickling server fails in about 1 s


def idx_bytes(arr):  # uint8 IDX: 0x0000, type 0x08, ndim, big-endian dims, values
    return bytes([0, 0, 0x08, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape) + arr.tobytes()


def tiny_dataset(seed):
    """A tiny MNIST-shaped dataset: {stem: raw IDX bytes}."""
    rng = np.random.default_rng(seed)
    shapes = {STEMS[0]: (60, 28, 28), STEMS[1]: (60,), STEMS[2]: (10, 28, 28), STEMS[3]: (10,)}
    return {stem: idx_bytes(rng.integers(0, 256 if len(s) > 1 else 10, s, dtype=np.uint8))
            for stem, s in shapes.items()}


RAW = tiny_dataset(seed=0)
GZ = {stem + ".gz": gzip.compress(data, mtime=0) for stem, data in RAW.items()}
OTHER_GZ = {stem + ".gz": gzip.compress(data, mtime=0) for stem, data in tiny_dataset(seed=1).items()}
FILES = {stem: FileSpec(raw_sha256=hashlib.sha256(data).hexdigest(), raw_size=len(data)) for stem, data in RAW.items()}


def flip_bit(blob, at):
    blob = bytearray(blob)
    blob[at] ^= 0x10
    return bytes(blob)


# ---------------------------------------------------------------- the misbehaving server

def send(h, body, status=200, ctype="application/octet-stream", length=None):
    h.send_response(status)
    h.send_header("Content-Type", ctype)
    h.send_header("Content-Length", str(len(body) if length is None else length))
    h.end_headers()
    h.wfile.write(body)


def reset(h, body):
    """Send half the body, then reset the connection (RST, not a clean close)."""
    h.send_response(200)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body[:len(body) // 2])
    time.sleep(0.05)
    h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    h.connection.close()


def stall(h, body):
    """Headers and a few bytes, then silence until the test ends."""
    send(h, body[:100], length=len(body))
    h.server.stop.wait(10)


def trickle(h, body):
    """The right file, one byte every 10 ms: every read is quick, the whole would take minutes."""
    h.send_response(200)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    for i in range(len(body)):
        if h.server.stop.wait(0.01):
            return
        h.wfile.write(body[i:i + 1])


def rendezvous(h, body):
    """The right file, sent only once a second request for it has arrived: the two overlap."""
    if h.path.endswith(STEMS[0] + ".gz"):
        try:
            h.server.barrier.wait()
        except threading.BrokenBarrierError:
            return send(h, b"no second downloader", 500, "text/plain")
    send(h, body)


FAULTS = {  # behaviour -> what the server does instead of serving the file; none of these may be accepted
    "truncated": lambda h, body: send(h, body[:len(body) // 2]),
    "closed-early": lambda h, body: send(h, body[:len(body) // 2], length=len(body)),
    "empty": lambda h, body: send(h, b""),
    "bit-flip": lambda h, body: send(h, flip_bit(body, len(body) // 2)),
    "bad-deflate": lambda h, body: send(h, body[:10] + bytes([body[10] | 0b110]) + body[11:]),  # zlib.error
    "wrong-file": lambda h, body: send(h, OTHER_GZ[h.path.rsplit("/", 1)[1]]),  # a valid IDX, not ours
    "raw-bit-flip": lambda h, body: send(h, gzip.compress(flip_bit(gzip.decompress(body), 1000))),
    "html": lambda h, body: send(h, b"<html><body>Please sign in</body></html>", ctype="text/html; charset=utf-8"),
    "html-as-binary": lambda h, body: send(h, b"\n<!DOCTYPE html><html>Rate limited</html>"),
    "403": lambda h, body: h.send_error(403),
    "404": lambda h, body: h.send_error(404),
    "500": lambda h, body: h.send_error(500),
    "reset": reset,
    "stall": stall,
    "trickle": trickle,
    "huge": lambda h, body: send(h, body, length=10**12),
}
def no_length(h, body):
    """The right file, its end marked only by closing the connection (no Content-Length)."""
    h.send_response(200)
    h.end_headers()
    h.wfile.write(body)


BEHAVIOURS = {"good": lambda h, body: send(h, body), "no-length": no_length, "rendezvous": rendezvous,
              "late-fault": lambda h, body: send(h, body[:-1], length=len(body)) if STEMS[2] in h.path else send(h, body), **FAULTS}


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        _, behaviour, name = self.path.split("/", 2)
        with self.server.lock:
            self.server.hits[behaviour, name] += 1
        if behaviour not in BEHAVIOURS or name not in GZ:
            return self.send_error(404)
        BEHAVIOURS[behaviour](self, GZ[name])

    def log_message(self, *args):
        pass


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # clients hang up on faults; that is expected
        pass


@pytest.fixture(scope="module")
def live_server():
    server = Server(("127.0.0.1", 0), Handler)
    server.lock, server.stop, server.hits = threading.Lock(), threading.Event(), Counter()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.stop.set()
    server.shutdown()
    server.server_close()


@pytest.fixture
def server(live_server):
    live_server.hits.clear()
    live_server.url = lambda behaviour: f"http://127.0.0.1:{live_server.server_address[1]}/{behaviour}/"
    return live_server


def load(cache, mirrors, **kw):
    return datasets.load("mnist", cache=cache, system_dirs=[], mirrors=mirrors, files=FILES, n_train=N_TRAIN, **kw)


def assert_is_our_data(splits):
    (x, y), (xv, yv), (xt, yt) = splits
    expected = datasets._split({s: datasets._parse_idx(d, s) for s, d in RAW.items()}, N_TRAIN)
    for got, want in zip((x, y, xv, yv, xt, yt), [a for pair in expected for a in pair]):
        np.testing.assert_array_equal(got, want)


def assert_cache_verified(cache, stems=STEMS):
    """`cache` holds exactly `stems`, each verified; no partial file anywhere."""
    assert sorted(p.name for p in cache.iterdir()) == sorted(s + ".gz" for s in stems)
    for stem in stems:
        assert gzip.decompress((cache / (stem + ".gz")).read_bytes()) == RAW[stem]


# ---------------------------------------------------------------- the tests

def test_no_fault_is_ever_accepted_as_data(server, tmp_path):
    outcome = {}
    for fault in FAULTS:
        cache = tmp_path / fault
        start = time.monotonic()
        try:
            load(cache, [server.url(fault)], **FAST)
            outcome[fault] = "ACCEPTED"
        except DatasetError as e:
            outcome[fault] = f"refused in {time.monotonic() - start:.2f} s: {str(e).splitlines()[-2].strip()}"
        leftovers = sorted(p.name for p in cache.iterdir()) if cache.exists() else []
        assert leftovers == [], f"{fault} left {leftovers} in the cache"
    print("\n".join(f"{fault:>15}: {what}" for fault, what in outcome.items()))
    accepted = [fault for fault, what in outcome.items() if what == "ACCEPTED"]
    assert len(outcome) == len(FAULTS) == 16
    assert accepted == [], f"corrupt downloads accepted as data: {accepted}"
    assert max(server.hits[fault, STEMS[0] + ".gz"] for fault in FAULTS) == 1  # attempts=1: one request each


def test_next_mirror_is_tried(server, tmp_path):
    mirrors = [server.url("bit-flip"), server.url("404"), server.url("reset"), server.url("good")]
    assert_is_our_data(load(tmp_path / "cache", mirrors, attempts=1))
    assert_cache_verified(tmp_path / "cache")
    for stem in STEMS:  # every file: the faulty mirrors in order, then the good one
        assert server.hits["bit-flip", stem + ".gz"] == server.hits["good", stem + ".gz"] == 1
        assert server.hits["reset", stem + ".gz"] == 1
        assert server.hits["404", stem + ".gz"] == 1


def test_retries_are_bounded(server, tmp_path):
    mirrors = [server.url(b) for b in ("reset", "500", "404", "403", "truncated")]
    start = time.monotonic()
    with pytest.raises(DatasetError, match="could not download train-images-idx3-ubyte.gz") as e:
        load(tmp_path / "cache", mirrors, attempts=2)
    assert time.monotonic() - start < 8  # one back-off of 1 s between the two rounds
    name = STEMS[0] + ".gz"
    hits = {b: server.hits[b, name] for b in ("reset", "500", "404", "403", "truncated")}
    assert hits == {"reset": 2, "500": 2, "404": 1, "403": 1, "truncated": 2}  # 4xx: not asked again
    assert sum(server.hits.values()) == 8 <= 2 * len(mirrors)  # and no other file was tried
    assert str(e.value).count(name + ": ") == 8  # every failed request is in the error, with its reason


def test_partial_download_never_lands_at_the_final_path(server, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(DatasetError, match=f"{STEMS[2]}.gz: connection closed after"):
        load(cache, [server.url("late-fault")], attempts=1)
    assert_cache_verified(cache, stems=STEMS[:2])  # the verified files stay; the truncated one is not there
    assert_is_our_data(load(cache, [server.url("good")], attempts=1))  # the next call fetches only what is missing
    assert sum(n for (b, _), n in server.hits.items() if b == "good") == 2
    assert_cache_verified(cache)


def test_max_bytes_bounds_a_body_of_unannounced_length(server, tmp_path):
    dest = tmp_path / "cache" / (STEMS[0] + ".gz")
    with pytest.raises(DatasetError, match="more than 1000 bytes"):
        datasets._download(server.url("no-length") + dest.name, dest, FILES[STEMS[0]], max_bytes=1000)
    assert len(GZ[dest.name]) > 1000
    with pytest.raises(DatasetError, match="announces 1000000000000 bytes"):
        datasets._download(server.url("huge") + dest.name, dest, FILES[STEMS[0]])
    assert not dest.parent.exists()  # nothing left behind, not even the folder made for the file


def test_https_to_http_redirect_is_refused():
    handler = datasets._NoDowngrade()
    for src in ("https://mirror.example/mnist/a.gz", "HTTPS://mirror.example/mnist/a.gz"):
        for dst in ("http://evil.example/a.gz", "ftp://evil.example/a.gz", "HTTP://evil.example/a.gz"):
            with pytest.raises(urllib.error.URLError, match="refused redirect"):
                handler.redirect_request(urllib.request.Request(src), None, 302, "Found", {}, dst)
    ok = handler.redirect_request(urllib.request.Request("https://a.example/x"), None, 301, "Moved", {},
                                  "https://b.example/x")
    assert ok.full_url == "https://b.example/x"
    ok = handler.redirect_request(urllib.request.Request("http://a.example/x"), None, 302, "Found", {},
                                  "http://b.example/x")  # plain http mirrors may move within http
    assert ok.full_url == "http://b.example/x"
    # the opener downloads go through uses this handler, not urllib's default one
    redirects = [h for h in datasets._OPENER.handlers if isinstance(h, urllib.request.HTTPRedirectHandler)]
    assert [type(h) for h in redirects] == [datasets._NoDowngrade]


@pytest.mark.parametrize("poison", ["bit-flip.gz", "wrong-file.gz", "garbage-raw"])
def test_poisoned_cache_file_is_detected_and_replaced(poison, server, tmp_path):
    cache = tmp_path / "cache"
    load(cache, [server.url("good")])
    target = STEMS[1]
    if poison == "bit-flip.gz":
        (cache / (target + ".gz")).write_bytes(flip_bit(GZ[target + ".gz"], 30))
    elif poison == "wrong-file.gz":
        (cache / (target + ".gz")).write_bytes(OTHER_GZ[target + ".gz"])
    else:  # a raw copy is looked at before the .gz; a bad one must not shadow the good download forever
        (cache / (target + ".gz")).unlink()
        (cache / target).write_bytes(b"\x00\x00\x08\x01" + b"\xff" * 20)
    server.hits.clear()
    assert_is_our_data(load(cache, [server.url("good")], attempts=1))
    assert server.hits == Counter({("good", target + ".gz"): 1})  # only the poisoned file was fetched
    assert_cache_verified(cache)
    assert_is_our_data(load(cache, [], download=False))  # and the cache alone now serves


def test_two_processes_filling_an_empty_cache_both_end_verified(server, tmp_path):
    server.barrier = threading.Barrier(2, timeout=60)
    cache = tmp_path / "cache"
    kwargs = {"cache": cache, "system_dirs": [], "mirrors": [server.url("rendezvous")], "files": FILES,
              "n_train": N_TRAIN, "timeout": 60.0}
    spawn = multiprocessing.get_context("spawn")
    procs = [spawn.Process(target=datasets.load, args=("mnist",), kwargs=kwargs) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert server.hits["rendezvous", STEMS[0] + ".gz"] == 2  # both downloaded the first file at once
    assert_cache_verified(cache)
    assert_is_our_data(load(cache, [], download=False))
