"""Learner (a thin layer over fit, fit_one_cycle, lr_find, predict, export) and the new `netfit train` options."""
import gzip
import json
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from netfit import EVENTS, ImageClassifierData, Learner, accuracy, export
from netfit.cli import main
from netfit.models import mlp


@pytest.fixture(scope="module")
def md(fashion):
    (x, y), (xv, yv), _ = fashion
    m, s = x[:3000].mean(), x[:3000].std()
    return ImageClassifierData.from_arrays(".", ((x[:3000] - m) / s, y[:3000]), ((xv[:1000] - m) / s, yv[:1000]),
                                           bs=64, device="cpu")


def test_learner_runs_the_same_loop(md, tmp_path):
    calls = []

    class Spy:
        pass
    for e in EVENTS:
        setattr(Spy, e, lambda self, run, e=e: calls.append(e))
    torch.manual_seed(0)
    learn = Learner(mlp(), md, metrics=[accuracy], callbacks=[Spy()])
    opt = learn.opt
    res = learn.lr_find(num_it=60)
    assert calls.count("before_fit") == 0  # the learner's callbacks stay out of the sweep
    assert 1e-7 <= res.suggestion <= 10 and learn.opt is opt
    h = learn.fit(1, verbose=False)
    assert learn.history is h and calls[0] == "before_fit" and calls[-1] == "after_fit"
    h = learn.fit_one_cycle(2, 5e-3, verbose=False)
    assert len(h) == 2 and len(h.info["lrs"]) == 2 * len(md.trn_dl) and max(h.info["lrs"]) == pytest.approx(5e-3, rel=1e-3)
    assert h[-1]["accuracy"] > 0.75 and learn.opt is opt  # one optimizer, kept across fits
    preds = learn.predict()
    assert preds.shape == (1000, 10) and accuracy(preds, md.val_y) == pytest.approx(h[-1]["accuracy"], abs=1e-6)
    np.testing.assert_allclose(learn.predict(md.val_dl.x[:5]), preds[:5], rtol=1e-5, atol=1e-5)


def test_learner_save_load_and_export(md, tmp_path):
    torch.manual_seed(0)
    learn = Learner(mlp(), md)
    learn.fit(1, verbose=False)
    before = learn.predict()
    learn.save(tmp_path / "w.safetensors")
    other = Learner(mlp(), md).load(tmp_path / "w.safetensors")
    np.testing.assert_array_equal(other.predict(), before)
    learn.export(tmp_path / "exp", arch="mlp")
    p = export.load(tmp_path / "exp")
    assert np.array_equal(p.predict(md.val_dl.x[:200].numpy()), before[:200].argmax(1))  # no mean/std: as given


@pytest.fixture(scope="module")
def small_pickle(fashion, tmp_path_factory):
    """A Fashion-MNIST subset in mnist.pkl.gz form, for `--data-path`."""
    (x, y), (xv, yv), (xt, yt) = fashion
    path = tmp_path_factory.mktemp("data") / "fashion-small.pkl.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump(((x[:3000], y[:3000]), (xv[:1000], yv[:1000]), (xt[:1000], yt[:1000])), f)
    return path


def test_cli_lr_find_schedule_and_the_rest(small_pickle, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--data-path", str(small_pickle), "--model", "logreg", "--epochs", "2", "--out", str(out),
               "--lr-find", "--schedule", "one-cycle", "--amp", "--clip", "1.0", "--accumulate", "2",
               "--early-stop", "1", "--augment", "--opt", "adamw", "--wd", "0.01"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "suggested learning rate" in text and (out / "lr_find.png").stat().st_size > 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["lr"] == m["lr_find_suggestion"] and 1e-4 < m["lr"] < 1e-1
    info = m["fit_info"]
    assert info["amp"] == "bfloat16" and max(info["lrs"]) == pytest.approx(m["lr"])
    assert len(info["lrs"]) == 2 * np.ceil(np.ceil(3000 / 64) / 2)  # one rate per optimizer step, 2 batches each
    assert m["val_accuracy"] > 0.6 and m["schedule"] == "one-cycle" and m["augment"] is True


def test_cli_lr_given_wins_and_options_are_documented(small_pickle, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--data-path", str(small_pickle), "--model", "logreg", "--epochs", "1", "--out", str(out),
               "--lr-find", "--lr", "0.002", "--schedule", "cosine", "--quiet"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["lr"] == 0.002 and m["lr_find_suggestion"] is not None and m["fit_info"]["lrs"][0] == 0.002
    assert m["early_stop"] is None and m["fit_info"]["amp"] is None  # defaults unchanged
    from netfit.cli import build_parser
    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for opt in ("--lr-find", "--schedule", "--amp", "--clip", "--accumulate", "--early-stop", "--augment"):
        assert opt in help_text
    rc = main(["train", "--data-path", str(small_pickle), "--accumulate", "0", "--out", str(out)])
    assert rc == 1 and "--accumulate" in capsys.readouterr().err


def test_learner_save_load_tied_weights_and_clear_errors(tmp_path):
    import numpy as np
    import torch
    from torch import nn
    from netfit import ExportError, ImageClassifierData, Learner
    x = np.random.default_rng(0).random((64, 4), dtype=np.float32)
    md = ImageClassifierData.from_arrays(".", (x, np.arange(64) % 3), (x, np.arange(64) % 3), device="cpu")

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.out = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 3)
            self.b.weight = self.a.weight

        def forward(self, x):
            return torch.log_softmax(self.out(self.b(self.a(x))), 1)
    learn = Learner(Tied(), md)
    path = learn.save(tmp_path / "w.safetensors")
    again = Learner(Tied(), md).load(path)
    assert torch.equal(again.model.a.weight, learn.model.a.weight) and again.model.b.weight is again.model.a.weight
    with pytest.raises(ExportError, match="do not fit this model.*Missing key"):
        Learner(nn.Linear(4, 3), md).load(path)
    (tmp_path / "junk").write_bytes(b"junk" * 10)
    with pytest.raises(ExportError, match="junk: not a weights file"):
        Learner(nn.Linear(4, 3), md).load(tmp_path / "junk")
