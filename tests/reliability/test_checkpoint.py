"""Checkpoints and exports that survive kills, refuse corrupt and malicious files, and `netfit predict`.

    python -m pytest -q tests/reliability/test_checkpoint.py              # 12 random kills, ~90 bad files
    python -m pytest -q tests/reliability/test_checkpoint.py --runslow    # 100 kills, ~430 bad files

- Kills during a save: a process saves checkpoints in a loop and is killed by SIGKILL at random
  moments (and once at each step of a save: mid-write, before fsync, between the two renames,
  after them); every time a checkpoint must load, whole (every value says which save wrote it).
- Corrupt files (truncated, bit-flipped, wrong header) and malicious ones (pickles whose
  `__reduce__` runs `os.system`, raw and inside a netfit header with a correct SHA-256) are
  refused with a CheckpointError naming the file, and nothing runs: each payload is first shown
  to run when loaded unsafely.
- A checkpoint of one model (or optimizer) is refused for another with a clear error.
- `netfit.load` refuses a tampered or missing export; `netfit predict` reads PNG and CSV inputs.
"""
import gzip
import io
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn, optim

import _reliability_jobs as J
from _reliability_jobs import kill_when, run_job
from netfit import ExportError, FitError, ImageClassifierData, fit, load
from netfit.checkpoint import MAGIC, CheckpointError, load_checkpoint, save_checkpoint
from netfit.cli import main
from netfit.export import save
from netfit.models import logreg

SIZE = 1 << 20  # floats in a saved state: 4 MB, so that a kill often lands inside the write


# ---------------------------------------------------------------- kills during a save

def check_whole(state, expected):
    i = state["i"]
    assert i in expected, f"loaded save {i}; expected one of {sorted(expected)}"
    assert torch.equal(state["w"], torch.full((SIZE,), float(i)))
    assert torch.equal(state["tail"], torch.arange(SIZE // 4) + i)


def test_kills_during_save_leave_a_loadable_checkpoint(jobs, tmp_path, figure, long_mode):
    n = 100 if long_mode else 12
    path, rng = tmp_path / "ckpt", np.random.default_rng(0)
    done, last = 0, 0
    where = {"left a partly written temp file": 0, "fell between the two renames (only .prev left)": 0}
    for k in range(n):
        counter = jobs.RawValue("q", 0)
        start = last + 1
        p = jobs.Process(target=J.save_loop, args=(str(path), counter, SIZE, start))
        p.start()
        before = set(tmp_path.glob("ckpt.tmp.*"))
        assert kill_when(p, lambda: counter.value >= start, delay=rng.uniform(0, 0.08))
        where["left a partly written temp file"] += bool(set(tmp_path.glob("ckpt.tmp.*")) - before)
        where["fell between the two renames (only .prev left)"] += not path.exists()
        state = load_checkpoint(path)  # falls back to .prev when the kill fell between the renames
        check_whole(state, {counter.value, counter.value + 1})
        last = state["i"]
        done += 1
    figure("SIGKILLs during checkpoint saves leaving a loadable, whole checkpoint", done, n,
           ", ".join(f"{v} {k}" for k, v in where.items()))


@pytest.mark.parametrize("point, expected, from_prev", [
    ("mid-write", 2, False), ("before-fsync", 2, False), ("after-rotate", 2, True), ("after-rename", 3, False)])
def test_kill_at_each_step_of_a_save(jobs, tmp_path, point, expected, from_prev, figure):
    path = tmp_path / "ckpt"
    assert run_job(jobs, J.save_and_die, str(path), point, SIZE) == -9  # SIGKILL inside the save of checkpoint 3
    assert path.exists() != from_prev
    check_whole(load_checkpoint(path), {expected})
    figure(f"SIGKILL {point} in a save leaves a loadable checkpoint", 1, 1, f"loaded save {expected}")


def test_resume_from_prev_when_the_latest_is_gone(tmp_path):
    """Killed between the renames: only ckpt.prev is there, and fit resumes from it."""
    md, net = small_data(), small_net()
    fit(net, md, 1, optim.Adam(net.parameters()), verbose=False, checkpoint=tmp_path / "ckpt")
    fit(net, md, 2, optim.Adam(net.parameters()), verbose=False, checkpoint=tmp_path / "ckpt", resume=True)
    os.replace(tmp_path / "ckpt", tmp_path / "ckpt.prev")
    net2 = small_net()
    h = fit(net2, md, 2, optim.Adam(net2.parameters()), verbose=False, checkpoint=tmp_path / "ckpt", resume=True)
    assert h.info["resumed_from"]["epoch"] == 2 and len(h) == 2


# ---------------------------------------------------------------- corrupt and malicious checkpoints

def small_data():
    x, y = J.blobs(200, 8, 3)
    return ImageClassifierData.from_arrays(".", (x[:160], y[:160]), (x[160:], y[160:]), bs=32, device="cpu")


def small_net(n_out=3, hidden=16):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, n_out), nn.LogSoftmax(dim=1))


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
    """The bytes of a real checkpoint written by fit."""
    folder = tmp_path_factory.mktemp("good")
    net = small_net()
    fit(net, small_data(), 1, optim.Adam(net.parameters()), verbose=False, checkpoint=folder / "ckpt",
        checkpoint_every=2)
    return (folder / "ckpt").read_bytes()


def with_header(body):
    import hashlib
    return MAGIC + hashlib.sha256(body).hexdigest().encode() + b"\n" + body


def corrupt_files(good, rng, n_random):
    """{name: bytes}: truncated, bit-flipped and wrongly headed versions of the checkpoint `good`."""
    header_end = good.index(b"\n", len(MAGIC)) + 1
    cuts = [0, 5, len(MAGIC), len(MAGIC) + 20, header_end, header_end + 1, len(good) - 1,
            *rng.integers(header_end, len(good) - 1, n_random)]
    files = {f"truncated to {c} of {len(good)} bytes": good[:c] for c in cuts}
    for at in [0, len(MAGIC) - 2, len(MAGIC) + 3, header_end, len(good) - 1, *rng.integers(0, len(good), n_random)]:
        b = bytearray(good)
        b[at] ^= 1 << int(rng.integers(8))
        files[f"bit flipped at byte {at}"] = bytes(b)
    body = good[header_end:]
    files.update({
        "header version 2": b"NETFIT-CKPT 2\n" + good[len(MAGIC):],
        "no header (a bare torch.save file)": body,
        "hash of another body": with_header(body)[:header_end] + body[:-1] + bytes([body[-1] ^ 1]),
        "header without its newline": MAGIC + good[len(MAGIC):header_end - 1],
        "empty file": b"",
        "an HTML page": b"<!doctype html><html><body>404 Not Found</body></html>",
        "gzip of the checkpoint": gzip.compress(good),
        "header with a body that is not a torch file": with_header(b"PK\x03\x04 not really a zip"),
    })
    return files


class RunsCommand:
    """Pickles to `os.system(command)`: loading it unsafely runs the command."""

    def __init__(self, command, how="os.system"):
        self.command, self.how = command, how

    def __reduce__(self):
        if self.how == "eval":
            return (eval, (f"__import__('os').system({self.command!r})",))
        return (os.system, (self.command,))


def malicious_bodies(marker):
    """{name: file body} of pickles that would run `touch marker` when loaded without weights_only."""
    cmd = f"touch {marker}"

    def saved(obj):
        buf = io.BytesIO()
        torch.save(obj, buf)
        return buf.getvalue()
    return {
        "torch.save of an object whose __reduce__ calls os.system": saved(RunsCommand(cmd)),
        "torch.save of a state dict hiding one": saved({"model": {"w": torch.ones(2)}, "x": RunsCommand(cmd)}),
        "torch.save of a __reduce__ calling eval": saved(RunsCommand(cmd, "eval")),
        "plain pickle (protocol 2) calling os.system": pickle.dumps(RunsCommand(cmd), protocol=2),
        "hand-written protocol 0 pickle: os.system": b"cos\nsystem\n(S'" + cmd.encode() + b"'\ntR.",
    }


def refused(path, fallback=False):
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path, fallback=fallback)
    assert str(path) in str(e.value), f"the error does not name the file: {e.value}"
    return str(e.value)


def test_corrupt_checkpoints_are_refused(tmp_path, good_checkpoint, figure, long_mode):
    files = corrupt_files(good_checkpoint, np.random.default_rng(0), 200 if long_mode else 30)
    n_refused = 0
    for i, (name, blob) in enumerate(files.items()):
        path = tmp_path / f"ckpt{i}"
        path.write_bytes(blob)
        refused(path)
        n_refused += 1
    figure("corrupt checkpoints (truncated, bit-flipped, wrong header) refused with CheckpointError naming the file",
           n_refused, len(files))


def test_malicious_checkpoints_are_refused_and_nothing_runs(tmp_path, figure):
    control, marker = tmp_path / "control-ran", tmp_path / "netfit-ran"
    n, n_refused = 0, 0
    for name, body in malicious_bodies(control).items():  # the control: unsafe loading does run them
        try:
            torch.load(io.BytesIO(body), weights_only=False) if not body.startswith(b"cos") else pickle.loads(body)
        except Exception:
            pass
        assert control.exists(), f"the payload {name!r} does not run even when loaded unsafely"
        control.unlink()
    for name, body in malicious_bodies(marker).items():
        for framed, blob in (("raw", body), ("in a netfit header with the right SHA-256", with_header(body))):
            path = tmp_path / f"evil{n}"
            path.write_bytes(blob)
            n += 1
            message = refused(path)
            if framed != "raw":
                assert "weights_only" in message
            net = small_net()  # and through fit(resume=True)
            with pytest.raises(CheckpointError, match=str(path)):
                fit(net, small_data(), 1, optim.Adam(net.parameters()), verbose=False, checkpoint=path, resume=True)
            assert not marker.exists(), f"{name} ({framed}) ran its command"
            n_refused += 1
    figure("malicious checkpoints (pickles running os.system/eval) refused, nothing executed", n_refused, n)


def test_a_refused_latest_checkpoint_falls_back_to_prev_with_a_warning(tmp_path, good_checkpoint):
    (tmp_path / "ckpt.prev").write_bytes(good_checkpoint)
    (tmp_path / "ckpt").write_bytes(good_checkpoint[:-10])
    with pytest.warns(RuntimeWarning, match="ckpt.prev"):
        assert load_checkpoint(tmp_path / "ckpt")["step"] > 0
    (tmp_path / "ckpt.prev").write_bytes(good_checkpoint[:100])
    message = refused(tmp_path / "ckpt", fallback=True)
    assert "ckpt.prev" in message  # both files are named


# ---------------------------------------------------------------- a checkpoint for another model

def test_checkpoint_of_another_model_is_refused(tmp_path):
    net = small_net()
    fit(net, small_data(), 1, optim.Adam(net.parameters()), verbose=False, checkpoint=tmp_path / "ckpt")
    other = small_net(hidden=32)
    with pytest.raises(FitError, match=r"(?s)ckpt: the checkpoint does not fit this model.*size mismatch for 0.weight"):
        fit(other, small_data(), 2, optim.Adam(other.parameters()), verbose=False, checkpoint=tmp_path / "ckpt",
            resume=True)
    with pytest.raises(FitError, match=r"ckpt: the checkpoint holds the state of a Adam optimizer; got SGD"):
        fit(net, small_data(), 2, optim.SGD(net.parameters(), 0.1), verbose=False, checkpoint=tmp_path / "ckpt",
            resume=True)
    save_checkpoint(tmp_path / "notfit", {"step": 3})  # a valid file, but not fit's state
    with pytest.raises(FitError, match="notfit"):
        fit(net, small_data(), 2, optim.Adam(net.parameters()), verbose=False, checkpoint=tmp_path / "notfit",
            resume=True)


# ---------------------------------------------------------------- exports: netfit.load

@pytest.fixture
def export(tmp_path):
    """A run folder with a logreg whose class c answers images with a bright band in rows 2c..2c+4."""
    net = logreg()
    with torch.no_grad():
        net[0].weight.copy_(torch.from_numpy(np.stack([band(c) for c in range(10)]).reshape(10, 784) - 0.2))
        net[0].bias.zero_()
    from netfit.datasets import FASHION_CLASSES
    save(net, tmp_path / "run", arch="logreg", classes=FASHION_CLASSES)
    return tmp_path / "run"


def band(c, side=28):
    img = np.zeros((side, side), np.float32)
    img[2 * c * side // 28 + 3 * side // 28: (2 * c + 4) * side // 28 + 3 * side // 28] = 1.0
    return img


def test_load_refuses_tampered_or_missing_files(export, figure):
    assert load(export).predict(band(3).reshape(1, -1))[0] == 3
    cases = 0
    w = export / "model.safetensors"
    good = w.read_bytes()
    for at in (10, len(good) // 2, len(good) - 1):  # a flipped bit anywhere: the SHA-256 differs
        w.write_bytes(good[:at] + bytes([good[at] ^ 1]) + good[at + 1:])
        with pytest.raises(ExportError, match="model.safetensors: SHA-256 .* differs"):
            load(export)
        cases += 1
    w.write_bytes(good[:-100])
    with pytest.raises(ExportError, match="model.safetensors: SHA-256"):
        load(export)
    cases += 1
    # a pickle that runs code, renamed model.safetensors, with model.json's hash updated to match: safetensors
    # reads tensors only, so it is refused as not a safetensors file and nothing runs
    import hashlib
    import json
    marker = export / "ran"
    evil = pickle.dumps(RunsCommand(f"touch {marker}"))
    w.write_bytes(evil)
    meta = json.loads((export / "model.json").read_text())
    (export / "model.json").write_text(json.dumps({**meta, "weights_sha256": hashlib.sha256(evil).hexdigest()}))
    with pytest.raises(ExportError, match="model.safetensors"):
        load(export)
    assert not marker.exists()
    cases += 1
    w.write_bytes(good)
    (export / "model.json").write_text(json.dumps({**meta, "arch": "resnet9000"}))
    with pytest.raises(ExportError, match="model.json: cannot rebuild the model"):
        load(export)
    (export / "model.json").write_text("{not json")
    with pytest.raises(ExportError, match="model.json: not valid JSON"):
        load(export)
    (export / "model.json").unlink()
    with pytest.raises(ExportError, match="expected model.json and model.safetensors"):
        load(export)
    cases += 3
    figure("tampered, foreign or missing export files refused by netfit.load", cases, 8)


# ---------------------------------------------------------------- netfit predict

def png(path, img, size=56, mode="RGB"):
    from PIL import Image
    im = Image.fromarray((img * 255).astype(np.uint8)).resize((size, size)).convert(mode)
    im.save(path)
    return path


def test_predict_images_and_csv(export, tmp_path, capsys):
    a, b = png(tmp_path / "a.png", band(3)), png(tmp_path / "b.png", band(7), size=28, mode="RGBA")
    assert main(["predict", "--model", str(export), str(a), str(b)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{a}: Dress", f"{b}: Sneaker"]

    rows = np.stack([band(c).reshape(-1) for c in (0, 1, 8)])
    plain = tmp_path / "plain.csv"
    np.savetxt(plain, rows, fmt="%.3f", delimiter=",")  # values in [0, 1], no header, no label
    labelled = tmp_path / "labelled.csv"
    header = "label," + ",".join(f"pixel{i}" for i in range(784))
    np.savetxt(labelled, np.column_stack([[0, 1, 2], rows * 255]), fmt="%d", delimiter=",", header=header, comments="")
    assert main(["predict", "--model", str(export), str(plain), str(labelled)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:3] == [f"{plain} row 1: T-shirt/top", f"{plain} row 2: Trouser", f"{plain} row 3: Bag"]
    assert out[3:6] == [f"{labelled} row 1: T-shirt/top", f"{labelled} row 2: Trouser", f"{labelled} row 3: Bag"]
    assert out[6] == f"{labelled}: accuracy 0.6667 on 3 labelled rows"


def write(name, text):
    return lambda d: (d / name).write_text(text) and None or d / name


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing.png", "missing.png: no such file"),
    (write("x.png", "not an image"), "x.png: not an image Pillow can read"),
    (write("w.csv", "1,2,3\n4,5,6\n"), "w.csv: rows have 3 columns; expected 784"),
    (write("r.csv", "0," * 783 + "0\n" + "0," * 700 + "0\n"), "rows have 701, 784 columns"),
    (write("n.csv", "0," * 783 + "nan\n"), "NaN or infinite"),
    (write("e.csv", ""), "no data rows"),
    (write("s.csv", "0," * 783 + "300\n"), "pixel values must be in [0, 1] or 0-255; got 0.0 to 300.0"),
])
def test_predict_errors_are_one_line(export, tmp_path, capsys, make, message):
    path = make(tmp_path)
    assert main(["predict", "--model", str(export), str(path)]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_predict_missing_model_and_debug(tmp_path, capsys):
    img = png(tmp_path / "a.png", band(0))
    assert main(["predict", "--model", str(tmp_path / "nope"), str(img)]) == 1
    err = capsys.readouterr().err
    assert "expected model.json and model.safetensors" in err and len(err.strip().splitlines()) == 1
    for argv in (["--debug", "predict"], ["predict", "--debug"]):  # --debug before or after the command
        with pytest.raises(ExportError):
            main([*argv, "--model", str(tmp_path / "nope"), str(img)])


def test_resume_with_fast_after_a_run_saved_with_fast_false_says_which_optimizer_ran(tmp_path):
    from torch import nn, optim
    from netfit import ImageClassifierData, fit
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 8)).astype(np.float32); y = (x[:, 0] > 0).astype(np.int64)
    md = ImageClassifierData.from_arrays(".", (x, y), (x[:64], y[:64]), bs=32, device="cpu")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 2), nn.LogSoftmax(dim=1))
    fit(net, md, 1, optim.Adam(net.parameters()), verbose=False, fast=False, checkpoint=tmp_path / "ckpt")
    opt = optim.Adam(net.parameters())
    h = fit(net, md, 2, opt, verbose=False, checkpoint=tmp_path / "ckpt", resume=True)
    assert h.info["optimizer"] == "Adam (fused kernel)" and all(g["fused"] for g in opt.param_groups), h.info


def test_a_mid_epoch_checkpoint_resumes_at_the_same_row_under_another_batch_size(tmp_path):
    # the ranks' first k batches cover k * bs * world rows of the epoch's order: a resume under another
    # batch size or number of processes starts at that row, or is refused where no batch starts there
    from torch import nn, optim
    from netfit import FitError, ImageClassifierData, fit
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 8)).astype(np.float32); y = (x[:, 0] > 0).astype(np.int64)

    class StopAt:  # an interrupt after batch 4 of epoch 0; the checkpoint of step 3 is the last
        def after_batch(self, run):
            if run.batch == 4:
                raise KeyboardInterrupt

    class FirstBatch:
        def before_batch(self, run):
            self.first = getattr(self, "first", run.batch)

    def run(bs, callbacks, resume):
        md = ImageClassifierData.from_arrays(".", (x, y), (x[:64], y[:64]), bs=bs, device="cpu")
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(8, 2), nn.LogSoftmax(dim=1))
        return fit(net, md, 1, optim.Adam(net.parameters()), verbose=False, checkpoint=tmp_path / "ckpt",
                   checkpoint_every=3, resume=resume, callbacks=callbacks, seed=0)
    with pytest.raises(KeyboardInterrupt):
        run(32, [StopAt()], False)
    with pytest.raises(FitError, match=r"after 96 rows of the epoch \(3 batches of 32 on 1 process\), which is no whole "
                                        r"number of batches of 64 on 1 process"):
        run(64, [], True)
    first = FirstBatch()
    h = run(16, [first], True)
    assert h.info["resumed_from"]["batch"] == 3 and first.first == 6  # 96 rows in: batch 6 of 16 rows


def test_a_checkpoint_from_an_epochs_last_step_resumes_under_another_batch_size(tmp_path):
    # interrupted during validation, after the mid-epoch save of the last step: all 512 rows are done, so any
    # batch size resumes at the epoch's end; and an accumulation group cut in two is refused
    from torch import nn, optim
    from netfit import FitError, ImageClassifierData, fit
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 8)).astype(np.float32); y = (x[:, 0] > 0).astype(np.int64)

    class StopAt:
        def __init__(self, event, batch=None):
            self.event, self.batch = event, batch

        def after_epoch(self, run):
            if self.event == "after_epoch":
                raise KeyboardInterrupt

        def after_batch(self, run):
            if self.event == "after_batch" and run.batch == self.batch:
                raise KeyboardInterrupt

    def run(bs, callbacks, resume, path, accumulate=1, every=16):
        md = ImageClassifierData.from_arrays(".", (x, y), (x[:64], y[:64]), bs=bs, device="cpu")
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(8, 2), nn.LogSoftmax(dim=1))
        return fit(net, md, 2, optim.Adam(net.parameters()), verbose=False, checkpoint=path, accumulate=accumulate,
                   checkpoint_every=every, resume=resume, callbacks=callbacks, seed=0)
    with pytest.raises(KeyboardInterrupt):
        run(32, [StopAt("after_epoch")], False, tmp_path / "end")  # the save of step 16 = batch 16 of 16
    h = run(40, [], True, tmp_path / "end")  # 512 rows are 12.8 batches of 40: the epoch is over, not refused
    assert h.info["resumed_from"]["batch"] == 16 and len(h) == 2
    with pytest.raises(KeyboardInterrupt):  # accumulate 2: saves every optimizer step (2 batches); stop after batch 6
        run(32, [StopAt("after_batch", 6)], False, tmp_path / "acc", accumulate=2, every=1)
    with pytest.raises(FitError, match=r"after 192 rows .* no whole number of accumulation groups of 64 on 1 process"):
        run(64, [], True, tmp_path / "acc", accumulate=2, every=1)  # 192 rows = 3 batches of 64: half a group
