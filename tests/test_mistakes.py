"""Mistakes a student makes that still run, and get a warning naming them; and the lesson's own code
(which must run without any warning)."""
import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn, optim

from netfit import (Callback, DataError, ImageClassifierData, T, V, accuracy, fit, predict, to_np)
from netfit.cli import main
from netfit.export import Predictor, save
from netfit.models import logreg

rng = np.random.default_rng(0)
X = rng.random((300, 784), dtype=np.float32)  # pixels in [0, 1], as the lesson's pickle holds them
Y = (X[:, :10].argmax(1)).astype(np.int64)     # learnable labels 0..9
MEAN, STD = X.mean(), X.std()
XN = (X - MEAN) / STD


def md_of(x=XN, y=Y, xv=None, yv=None, **kw):
    return ImageClassifierData.from_arrays("data", (x, y), (XN[:100] if xv is None else xv, Y[:100] if yv is None
                                                            else yv), device="cpu", **kw)


def warned(fn):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        result = fn()
    return [str(m.message) for m in w], result


def lesson_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(784, 10), nn.LogSoftmax(dim=1))


def test_the_lessons_code_runs_without_a_warning():
    def lesson():
        md = md_of()
        net = lesson_net()
        fit(net, md, epochs=1, crit=nn.NLLLoss(), opt=optim.Adam(net.parameters()), metrics=[accuracy], verbose=False)
        preds = predict(net, md.val_dl).argmax(1)
        return np.mean(preds == md.val_y)
    messages, acc = warned(lesson)
    assert messages == [] and acc > 0.15


@pytest.mark.parametrize("x, xv, fragment", [
    (X * 255, XN[:100], "the training inputs range from"),          # pixels left in 0..255
    (XN, X[:100], "x_valid (mean"),                                  # x_valid not normalised like x
    (XN, XN[:100] * 10, "scaled differently from x"),
])
def test_inputs_scaled_badly_get_a_warning(x, xv, fragment):
    messages, _ = warned(lambda: md_of(x=x, xv=xv))
    assert any(fragment in m for m in messages), messages


def test_labels_starting_at_1_get_a_warning():
    messages, md = warned(lambda: md_of(y=Y + 1, yv=Y[:100] + 1))
    assert md.c == 11 and any("no training or validation label is 0" in m and "pass y - 1" in m for m in messages)


def test_softmax_then_cross_entropy_gets_a_warning():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(784, 10), nn.Softmax(dim=1))
    messages, _ = warned(lambda: fit(net, md_of(), 1, optim.Adam(net.parameters()), nn.CrossEntropyLoss(),
                                     verbose=False))
    assert any("softmax is applied twice" in m for m in messages), messages


def test_log_softmax_then_cross_entropy_is_left_alone():  # harmless: log-softmax of log-probabilities changes nothing
    net = lesson_net()
    messages, _ = warned(lambda: fit(net, md_of(), 1, optim.Adam(net.parameters()), nn.CrossEntropyLoss(),
                                     verbose=False))
    assert messages == []


class Misspelled(Callback):
    def __init__(self):
        self.calls = 0

    def after_epcoh(self, run):
        self.calls += 1

    def on_epoch_end(self, run):  # fastai 0.7/1's name
        self.calls += 1


def test_misspelled_callback_events_get_a_warning_with_the_right_name():
    net, cb = lesson_net(), Misspelled()
    messages, _ = warned(lambda: fit(net, md_of(), 1, optim.Adam(net.parameters()), callbacks=[cb], verbose=False))
    assert any("Misspelled.after_epcoh is not a training event" in m and "did you mean after_epoch" in m
               for m in messages), messages
    assert any("on_epoch_end" in m and "did you mean after_epoch" in m for m in messages)
    assert cb.calls == 0


def test_resuming_a_finished_run_says_there_is_nothing_to_train(tmp_path):
    net = lesson_net()
    opt = optim.Adam(net.parameters())
    fit(net, md_of(), 2, opt, checkpoint=tmp_path / "ckpt", verbose=False)
    messages, h = warned(lambda: fit(net, md_of(), 1, opt, checkpoint=tmp_path / "ckpt", resume=True, verbose=False))
    assert any("already holds 2 epochs and epochs=1" in m for m in messages) and len(h.records) == 2


def test_resuming_mid_epoch_on_other_data_is_refused(tmp_path):
    from netfit import FitError

    class Stop(Callback):
        def after_batch(self, run):
            if run.step == 2:
                raise KeyboardInterrupt
    net = lesson_net()
    with pytest.raises(KeyboardInterrupt):
        fit(net, md_of(), 1, optim.Adam(net.parameters()), callbacks=[Stop()], checkpoint=tmp_path / "ckpt",
            checkpoint_every=1, verbose=False)
    with pytest.raises(FitError, match="mid-epoch over 300 training rows; the data has 200"):
        fit(net, md_of(x=XN[:200], y=Y[:200]), 1, optim.Adam(net.parameters()), checkpoint=tmp_path / "ckpt",
            resume=True, verbose=False)


def test_validation_leaves_the_model_in_its_mode_when_a_metric_fails():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(784, 10), nn.Dropout(0.5), nn.LogSoftmax(dim=1))

    def broken(preds, targs):  # passes fit's check on 8 rows, fails on the first batch of 64
        if len(targs) > 8:
            raise RuntimeError("broken metric")
        return 0.0
    with pytest.raises(RuntimeError, match="broken metric"):
        fit(net, md_of(), 1, optim.Adam(net.parameters()), metrics=[broken], verbose=False)
    assert net.training


def test_predict_on_a_shuffling_dataloader_gets_a_warning():
    dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.tensor(XN), torch.tensor(Y)), batch_size=64,
                                     shuffle=True)
    messages, _ = warned(lambda: predict(lesson_net(), dl))
    assert any("shuffles" in m and "shuffle=False" in m for m in messages)


def test_accuracy_reads_a_column_of_targets_as_a_vector():
    p = np.eye(4)[[0, 1, 2, 3]]
    assert accuracy(p, np.array([[0], [1], [2], [3]])) == 1.0
    assert accuracy(torch.tensor(p), torch.tensor([[0], [1], [2], [0]])).item() == 0.75
    assert accuracy(np.array([0.0, 1.0, 2.0]), np.array([0, 1, 1])) == pytest.approx(2 / 3)  # float labels are fine
    assert accuracy(np.array([[0], [1], [2]]), np.array([0, 1, 2])) == 1.0  # a column of predicted labels
    assert accuracy(torch.tensor([[0], [1], [2]]), torch.tensor([0, 1, 1])).item() == pytest.approx(2 / 3)


def test_accuracy_of_one_column_is_binary_and_names_are_refused():
    probs, t = np.array([[0.2], [0.7], [0.9]]), np.array([0, 1, 0])
    assert accuracy(probs, t) == pytest.approx(2 / 3)      # class 1 above 0.5, as Keras reads a sigmoid
    assert accuracy(torch.tensor(probs), torch.tensor(t)).item() == pytest.approx(2 / 3)
    # one rule for every batch: logits of a batch that all lie in [0, 1] are not read another way
    assert accuracy(np.array([[0.3], [0.7], [1.5]]), np.array([1, 1, 1])) == pytest.approx(2 / 3)
    with pytest.raises(DataError, match="np.unique"):     # used to return 0.0
        accuracy(np.eye(2)[[0, 1]], np.array(["cat", "dog"]))
    assert accuracy(np.eye(2)[[1, 0]], np.array([1, 0], dtype=object)) == 1.0  # pandas' nullable integers


def test_the_lessons_hand_written_loop_gets_len_of_an_iterator():
    md = md_of()
    dl = iter(md.trn_dl)
    batches = [next(dl) for t in range(len(dl))]
    assert len(batches) == len(md.trn_dl) == 5 and sum(len(yb) for _, yb in batches) == 300
    with pytest.raises(StopIteration):
        next(dl)


def test_fastai_helpers_T_V_to_np():
    t = T(np.array([1, 2]), device="cpu")
    assert t.dtype == torch.int64 and T(np.array([0.5]), device="cpu").dtype == torch.float32
    w = V(np.ones(3, "float64"), requires_grad=True, device="cpu")
    (w * 2).sum().backward()
    assert w.dtype == torch.float32 and torch.equal(w.grad, torch.full((3,), 2.0))
    np.testing.assert_array_equal(to_np(w * 2), np.full(3, 2.0, "float32"))
    a, b = to_np((torch.ones(2, dtype=torch.bfloat16), torch.zeros(1)))
    assert a.dtype == np.float32 and b.shape == (1,)


def test_predictor_scales_uint8_pixels_like_floats_in_0_1():
    p = Predictor(logreg(), {"input_shape": [784], "mean": float(MEAN), "std": float(STD)})
    pixels = (X[:20] * 255).round().astype(np.uint8)
    np.testing.assert_allclose(p.predict_proba(pixels), p.predict_proba(pixels / np.float32(255)), atol=1e-5)


def test_an_mlp_export_predicts_one_28x28_image_and_refuses_no_input():
    from netfit.export import ExportError
    p = Predictor(logreg(), {"input_shape": [784], "mean": float(MEAN), "std": float(STD)})
    one = p.predict_proba(X[3].reshape(28, 28))
    assert one.shape == (1, 10) and np.allclose(one, p.predict_proba(X[3:4]), atol=1e-6)
    assert p.predict(X[:5].reshape(5, 28, 28)).shape == (5,)
    with pytest.raises(ExportError, match=r"got no inputs \(shape \(0, 784\)\)"):
        p.predict(X[:0])


def test_an_export_without_normalisation_gets_a_warning(tmp_path):
    messages, _ = warned(lambda: save(logreg(), tmp_path / "a", arch="logreg"))
    assert any("without mean= and std=" in m for m in messages)
    messages, _ = warned(lambda: save(logreg(), tmp_path / "b", arch="logreg", mean=MEAN, std=STD))
    assert messages == []


@pytest.fixture
def digits_pickle(tmp_path):
    import gzip
    import pickle
    path = tmp_path / "mnist.pkl.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump(((X[:200], Y[:200]), (X[200:], Y[200:]), (X[:50], Y[:50])), f)
    return path


def test_cli_names_the_dataset_from_the_data_path(digits_pickle, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--data-path", str(digits_pickle), "--model", "logreg", "--epochs", "1", "--quiet",
                 "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["data"] == "mnist" and json.loads((out / "model.json").read_text())["classes"] == [str(i) for i in range(10)]
    folder = tmp_path / "idx"
    folder.mkdir()
    assert main(["train", "--data-path", str(folder), "--out", str(out)]) == 1  # a folder named nothing: ask


def test_cli_resume_refuses_other_options(digits_pickle, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", "--data-path", str(digits_pickle), "--model", "logreg", "--quiet", "--out", str(out)]
    assert main(base + ["--epochs", "1", "--bs", "32"]) == 0
    assert main(base + ["--epochs", "2", "--bs", "64", "--resume"]) == 1
    assert "--bs 32 (got 64)" in capsys.readouterr().err
    assert main(base + ["--epochs", "2", "--bs", "32", "--resume"]) == 0


def test_cli_resume_after_a_rerun_interrupted_before_its_first_save_does_not_continue_the_earlier_run(
        digits_pickle, tmp_path, capsys, monkeypatch):
    import sys
    out = tmp_path / "run"
    base = ["train", "--data-path", str(digits_pickle), "--model", "logreg", "--out", str(out)]
    assert main(base + ["--epochs", "1", "--quiet"]) == 0

    def interrupted(*args, **kwargs):  # Ctrl-C before the rerun's first checkpoint
        raise KeyboardInterrupt
    monkeypatch.setattr(sys.modules["netfit.fit"], "fit", interrupted)
    assert main(base + ["--epochs", "1", "--lr", "0.01"]) == 130
    monkeypatch.undo()
    capsys.readouterr()
    assert main(base + ["--epochs", "1", "--lr", "0.01", "--resume"]) == 0
    text = capsys.readouterr().out
    assert "no checkpoint at" in text and "from checkpoint" not in text


def test_cli_resume_refuses_another_data_path_or_lr_find(digits_pickle, tmp_path, capsys):
    import shutil
    out = tmp_path / "run"
    other = tmp_path / "mnist-copy.pkl.gz"
    shutil.copy(digits_pickle, other)
    base = ["train", "--model", "logreg", "--quiet", "--out", str(out)]
    assert main(base + ["--data-path", str(digits_pickle), "--epochs", "1"]) == 0
    assert main(base + ["--data-path", str(other), "--epochs", "2", "--resume"]) == 1
    assert "--data-path" in capsys.readouterr().err
    assert main(base + ["--data-path", str(digits_pickle), "--epochs", "2", "--lr-find", "--resume"]) == 1
    assert "--lr-find (the default) (got True)" in capsys.readouterr().err
    (out / "args.json").write_text("{'not json")
    assert main(base + ["--data-path", str(digits_pickle), "--epochs", "2", "--resume"]) == 1
    assert f"cannot read {out / 'args.json'}" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cli_device_cuda_without_cuda_is_an_error(digits_pickle, tmp_path, capsys):
    assert main(["train", "--data-path", str(digits_pickle), "--device", "cuda", "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "CUDA is not available here" in err and "leave out --device" in err and "default_device" not in err
    assert main(["train", "--data-path", str(digits_pickle), "--device", "", "--out", str(tmp_path / "r")]) == 1
    assert "device '' is not a torch device" in capsys.readouterr().err


def test_single_class_and_bad_targets_are_data_errors():
    with pytest.raises(DataError, match="single class"):
        md_of(y=Y * 0, yv=Y[:100] * 0)


def test_plots_titles_from_a_tensor_of_labels_read_as_numbers():
    from netfit import plots
    fig = plots(X[:4].reshape(-1, 28, 28), titles=torch.tensor([1, 2, 3, 4]))  # the lesson's preds.data.max(1)[1]
    assert [ax.get_title() for ax in fig.axes] == ["1", "2", "3", "4"]
    with pytest.raises(ValueError, match="one label per image"):
        plots(X[:3].reshape(-1, 28, 28), titles="abc")


def test_a_mistyped_label_gets_a_warning():
    y = Y.copy()
    y[7] = 1_000_000
    messages, md = warned(lambda: md_of(y=y))
    assert any("run up to 1000000" in m and "only 11 distinct labels" in m for m in messages), messages


def test_set_lrs_takes_a_0_d_array_and_names_a_model_passed_for_the_optimizer():
    from netfit import set_lrs
    net = lesson_net()
    opt = optim.SGD(net.parameters(), lr=0.1)
    set_lrs(opt, np.array(0.01))
    assert opt.param_groups[0]["lr"] == 0.01
    with pytest.raises(ValueError, match=r"set_lrs\(opt, lr\); got Sequential for opt"):
        set_lrs(net, 0.01)


def test_learner_fit_takes_fastais_lr_and_spots_the_old_order():
    from netfit import FitError, Learner
    learn = Learner(lesson_net(), md_of())
    learn.fit(1, 3e-3, verbose=False)
    assert learn.opt.param_groups[0]["lr"] == 3e-3
    with pytest.raises(FitError, match=r"fastai 0.7 took learn.fit\(lr, epochs\); here it is learn.fit\(1, 0.001\)"):
        learn.fit(1e-3, 1)


def test_set_lrs_refuses_an_infinite_rate():
    from netfit import set_lrs
    opt = optim.SGD(lesson_net().parameters(), lr=0.1)
    with pytest.raises(ValueError, match="finite numbers >= 0; got inf"):
        set_lrs(opt, float("inf"))
    assert opt.param_groups[0]["lr"] == 0.1


@pytest.mark.parametrize("flags, message", [(["--lr", "inf"], "--lr must be a positive finite number"),
                                            (["--lr", "0"], "--lr must be a positive finite number"),
                                            (["--momentum", "5"], "--momentum must be in [0, 1)"),
                                            (["--wd", "-1"], "--wd must be 0 or more")])
def test_cli_refuses_impossible_rates(flags, message, digits_pickle, tmp_path, capsys):
    assert main(["train", "--data-path", str(digits_pickle), "--out", str(tmp_path / "r")] + flags) == 1
    assert message in capsys.readouterr().err


def test_predict_takes_rows_as_nested_lists():
    net = lesson_net()
    np.testing.assert_array_equal(predict(net, XN[:5].tolist()), predict(net, XN[:5]))


def test_compare_reads_the_lessons_pickle(digits_pickle, tmp_path):
    out = tmp_path / "cmp"
    assert main(["compare", "--data", str(digits_pickle), "--quick", "--models", "logreg", "--quiet",
                 "--out", str(out)]) == 0
    info = json.loads((out / "compare.json").read_text())
    assert "mnist.pkl.gz" in json.dumps(info) and (out / "compare.md").is_file()


def test_a_notebook_cell_ending_in_fit_shows_the_table_once():
    pretty = pytest.importorskip("IPython.lib.pretty").pretty
    net = lesson_net()
    h = fit(net, md_of(), 2, optim.Adam(net.parameters()), metrics=[accuracy], verbose=False)
    shown = pretty(h)
    assert shown.startswith("History(2 epochs; last: trn_loss ") and "accuracy" in shown and "\n" not in shown
    assert str(h).count("\n") == 2  # print(h): the header and one row per epoch
    assert repr(h) == shown        # a plain Python prompt shows the same one line, not the table again


# ---------------------------------------------------------------- what must stay allowed (review of the checks)

def get_weights(*dims):
    return nn.Parameter(torch.randn(dims) / dims[0])


class LessonLogReg(nn.Module):
    """The lesson's hand-written logistic regression, its softmax as the notebook wrote it."""

    def __init__(self):
        super().__init__()
        self.l1_w = get_weights(28 * 28, 10)
        self.l1_b = get_weights(10)

    def forward(self, x):
        x = x.view(x.size(0), -1)
        x = (x @ self.l1_w) + self.l1_b
        return torch.log(torch.exp(x) / (1 + torch.exp(x).sum(dim=0)))


def test_the_lessons_hand_written_logreg_trains_without_a_warning():
    torch.manual_seed(0)
    net = LessonLogReg()
    messages, h = warned(lambda: fit(net, md_of(), 2, optim.Adam(net.parameters()), nn.NLLLoss(), [accuracy],
                                     verbose=False))
    assert [m for m in messages if "netfit" in m or "log-probabilities" in m] == [] and h[-1]["accuracy"] > 0.15


def test_batchnorm2d_trains_on_a_1_row_last_batch():
    from netfit.models import cnn
    torch.manual_seed(0)
    net = cnn()
    md = md_of(x=XN[:129], y=Y[:129], bs=64)  # batches of 64, 64, 1: BatchNorm2d sees 1 x H x W values
    fit(net, md, 1, optim.Adam(net.parameters()), verbose=False)


def test_helper_methods_of_a_callback_are_not_mistaken_for_events():
    class Helpers(Callback):
        def after_x(self, run):
            pass

        def on_something(self, run):
            pass
    net = lesson_net()
    messages, _ = warned(lambda: fit(net, md_of(), 1, optim.Adam(net.parameters()), callbacks=[Helpers()],
                                     verbose=False))
    assert messages == []


def test_a_dataclass_loss_and_a_subclassed_nll_loss():
    from dataclasses import dataclass

    @dataclass
    class Smoothed:
        eps: float = 0.1

        def __call__(self, out, y):
            return nn.functional.cross_entropy(out, y, label_smoothing=self.eps)

    class MyNLL(nn.NLLLoss):
        pass
    net = nn.Linear(784, 10)
    fit(net, md_of(), 1, optim.Adam(net.parameters()), Smoothed(), verbose=False)
    from netfit import FitError
    with pytest.raises(FitError, match="NLLLoss needs log-probabilities"):
        fit(net, md_of(), 1, optim.Adam(net.parameters()), MyNLL(), verbose=False)


def test_warnings_point_at_the_users_line():
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        md_of(x=X * 255)
    assert w and w[0].filename == __file__


def test_set_lrs_takes_a_one_element_tensor_and_accuracy_per_pixel():
    from netfit import set_lrs
    opt = optim.SGD(lesson_net().parameters(), lr=0.1)
    set_lrs(opt, torch.tensor(0.01))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)
    scores = torch.zeros(2, 3, 4, 4)
    scores[:, 1] = 1  # every pixel predicts class 1
    targs = torch.ones(2, 4, 4, dtype=torch.long)
    targs[0, 0, 0] = 2
    assert accuracy(scores, targs).item() == pytest.approx(31 / 32)


def test_named_by_reads_the_nearest_name(tmp_path):
    from netfit.datasets import named_by
    assert named_by("/usr/share/datasets/fashion-mnist") == "fashion-mnist"
    assert named_by("data/fashion-course/mnist") == "mnist"
    assert named_by("~/data/fmnist") == "fashion-mnist"
    assert named_by(tmp_path / "x") is None


def test_a_normalised_pickle_is_not_divided_by_255(tmp_path):
    import gzip
    import pickle
    from netfit import datasets
    path = tmp_path / "norm.pkl.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump(((XN[:50], Y[:50]), (XN[50:60], Y[50:60]), (XN[:5], Y[:5])), f)
    np.testing.assert_array_equal(datasets.mnist(path)[0][0], XN[:50])


def test_v_leaves_the_callers_tensor_alone():
    a = torch.zeros(3)
    w = V(a, requires_grad=True, device="cpu")
    assert w.requires_grad and not a.requires_grad and w.data_ptr() != a.data_ptr()


def test_predict_on_a_dataloader_of_inputs_alone():
    dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.tensor(XN[:10])), batch_size=4)
    assert predict(lesson_net(), dl).shape == (10, 10)


def test_estimator_on_unscaled_tabular_data_does_not_warn():
    pytest.importorskip("sklearn")
    from netfit import NetClassifier
    messages, _ = warned(lambda: NetClassifier(epochs=1, device="cpu").fit(X[:100] * 100, Y[:100]))
    assert [m for m in messages if "normalise" in m] == []


def test_a_failed_run_does_not_overwrite_the_options_a_resume_checks(digits_pickle, tmp_path):
    out = tmp_path / "run"
    base = ["train", "--model", "logreg", "--quiet", "--out", str(out)]
    assert main(base + ["--data-path", str(digits_pickle), "--epochs", "1"]) == 0
    assert main(base + ["--data-path", str(tmp_path / "missing.pkl.gz"), "--epochs", "1", "--lr", "0.5"]) == 1
    assert main(base + ["--data-path", str(digits_pickle), "--epochs", "2", "--resume"]) == 0


@pytest.mark.parametrize("labels, crit, fragment", [
    (lambda y: y + 7, nn.NLLLoss(), "labels must be class indices in [0, 10)"),
    (lambda y: y.float(), nn.CrossEntropyLoss(), "integer class indices for CrossEntropyLoss; got float32"),
])
def test_a_torch_dataloaders_first_batch_is_checked_before_the_loss(labels, crit, fragment):
    from torch.utils.data import DataLoader, TensorDataset
    net = lesson_net()
    before = [p.clone() for p in net.parameters()]
    dl = DataLoader(TensorDataset(torch.tensor(XN), labels(torch.tensor(Y))), batch_size=64, shuffle=True)
    with pytest.raises(DataError, match=fragment.replace("[", r"\[").replace(")", r"\)")):
        fit(net, (dl, None), 1, optim.Adam(net.parameters()), crit, verbose=False)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))  # before any step


def test_device_seed_and_random_state_spellings():
    from netfit import FitError, NetClassifier
    with pytest.raises(DataError, match="device 'gpu' is not a torch device; expected 'cpu', 'cuda'"):
        ImageClassifierData.from_arrays("data", (XN, Y), None, device="gpu")
    with pytest.raises(FitError, match="seed must be an integer or None; got 'abc'"):
        fit(lesson_net(), md_of(), 1, seed="abc", verbose=False)
    clf = NetClassifier(epochs=1, device="cpu", random_state=np.random.RandomState(0)).fit(X[:100], Y[:100])
    assert clf.score(X[:100], Y[:100]) >= 0


def test_cli_resume_without_a_checkpoint_says_it_starts_from_scratch(digits_pickle, tmp_path, capsys):
    assert main(["train", "--data-path", str(digits_pickle), "--model", "logreg", "--epochs", "1", "--resume",
                 "--out", str(tmp_path / "run")]) == 0
    assert "no checkpoint at" in capsys.readouterr().out


def test_per_pixel_normalisation_gets_no_scale_warning():
    xs = (X - X.mean(0)) / (X.std(0) + 1e-3)
    xs[0, 0] = 50.0  # a far-out value, as pixels that barely vary give
    messages, _ = warned(lambda: md_of(x=xs, xv=xs[:100]))
    assert messages == []


def regression_loaders(y):
    from netfit import ArrayLoader
    x = torch.as_tensor(XN[:64])
    return ArrayLoader(x, y, bs=16, shuffle=True), ArrayLoader(x, y, bs=16)


@pytest.mark.parametrize("y, crit, match", [
    (torch.rand(64), nn.MSELoss(), r"\(1,\) per row and the training data targets are \(\) per row.*reshape\(len\(y\), 1\)"),
    (torch.rand(64, 1).long(), nn.MSELoss(), "needs float targets"),
    (torch.arange(64) % 2, nn.BCEWithLogitsLoss(), r"\(1,\) per row; .* one int64 class label per row.*astype"),
    (torch.ones(64, 1, dtype=torch.long), nn.BCEWithLogitsLoss(), "float targets.*CrossEntropyLoss"),
])
def test_elementwise_losses_need_targets_of_the_outputs_shape(y, crit, match):
    # torch only warns for (N, 1) outputs against (N,) targets, and broadcasts to an (N, N) loss
    net = nn.Linear(784, 1)
    with pytest.raises(DataError, match=match):
        fit(net, regression_loaders(y), 1, optim.SGD(net.parameters(), 0.1), crit, verbose=False)
    fit(net, regression_loaders(torch.rand(64, 1)), 1, optim.SGD(net.parameters(), 0.1), crit, verbose=False)


def test_channels_last_images_get_a_layout_hint_and_the_default_loss_checks_shapes_too():
    x = np.random.default_rng(0).random((40, 8, 8, 1), dtype=np.float32)
    md = ImageClassifierData.from_arrays("d", (x, Y[:40]), (x, Y[:40]), device="cpu")
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10))
    for crit in (None, nn.CrossEntropyLoss()):  # crit=None: the default-loss probe used to fail in torch
        with pytest.raises(DataError, match=r"channels-last.*transpose\(0, 3, 1, 2\)"):
            fit(net, md, 1, crit=crit, verbose=False)


def test_a_shape_error_deep_in_the_model_names_the_layer_that_failed():
    x = np.random.default_rng(0).random((40, 1, 8, 12), dtype=np.float32)  # not the square images it was built for
    md = ImageClassifierData.from_arrays("d", (x, Y[:40]), (x, Y[:40]), device="cpu")
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    with pytest.raises(DataError, match=r"got through to Linear\(in_features=256.*input of shape \(\d, 384\)"):
        fit(net, md, 1, verbose=False)


def test_export_of_a_tabular_model_with_per_feature_statistics(tmp_path):
    from netfit import load
    from netfit.export import ExportError
    from netfit.models import mlp
    raw = np.random.default_rng(1).normal(50, 20, size=(40, 30))   # tabular features, far from [0, 1]
    m, s = raw.mean(0), raw.std(0)
    torch.manual_seed(0)
    net = mlp(n_in=30, n_out=2)
    meta = save(net, tmp_path / "t", arch="mlp", arch_kwargs={"n_in": 30, "n_out": 2}, mean=m, std=s)
    assert meta["input_shape"] == [30] and meta["pixels"] is False      # shape read from the first Linear
    want = net(torch.as_tensor((raw - m) / s, dtype=torch.float32)).argmax(1).numpy()
    np.testing.assert_array_equal(load(tmp_path / "t").predict(raw), want)  # raw rows, normalised per feature
    with pytest.raises(ExportError, match=r"cannot take rows of input_shape=\(784,\)"):
        save(net, tmp_path / "u", input_shape=(784,), mean=0, std=1)       # used to save, then fail at predict
    with pytest.raises(ExportError, match="one per feature"):
        save(net, tmp_path / "v", mean=m[:5], std=s[:5])


def test_cli_run_folder_mistakes_and_warnings_are_one_line(digits_pickle, tmp_path, capsys):
    run = ["train", "--data-path", str(digits_pickle), "--model", "logreg", "--epochs", "1"]
    (tmp_path / "afile.txt").write_text("x")
    assert main([*run, "--out", str(tmp_path / "afile.txt")]) == 1
    err = capsys.readouterr().err
    assert "--out" in err and "is a file; expected a folder" in err
    assert main([*run, "--quiet", "--out", str(tmp_path / "r")]) == 0
    assert main([*run, "--out", str(tmp_path / "r")]) == 0  # again: it says the earlier run is replaced
    assert "holds an earlier run" in capsys.readouterr().out
    assert main([*run, "--resume", "--out", str(tmp_path / "r")]) == 0  # nothing left: a warning, on one line
    err = capsys.readouterr().err
    assert "netfit train: warning:" in err and "nothing left to train" in err and "sys.exit" not in err


def test_cli_predict_takes_a_folder_goes_on_past_a_bad_file_and_warns_of_a_light_background(tmp_path, capsys):
    from PIL import Image
    from netfit.models import logreg as lr
    save(lr(), tmp_path / "m", arch="logreg", mean=float(MEAN), std=float(STD))
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    digit = np.zeros((28, 28), np.uint8)
    digit[6:22, 12:16] = 255                                  # a light stroke on black, as MNIST draws
    Image.fromarray(digit).save(imgs / "a.png")
    Image.fromarray(255 - digit).save(imgs / "b_inverted.png")  # a dark stroke on white, as students draw
    rc = main(["predict", "--model", str(tmp_path / "m"), str(imgs / "a.png"), str(tmp_path / "missing.png"),
               str(imgs)])
    out, err = capsys.readouterr()
    assert rc == 1 and "missing.png: no such file" in err      # reported, and the other files still predicted
    assert out.count("a.png:") == 2 and "b_inverted.png:" in out
    assert "b_inverted.png: a light background" in err and "a.png: a light" not in err


def test_an_interrupted_checkpoint_save_leaves_no_temporary_file(tmp_path, monkeypatch):
    from netfit import checkpoint
    checkpoint.save_checkpoint(tmp_path / "ckpt", {"step": 1})

    def interrupted(fd):
        raise KeyboardInterrupt
    monkeypatch.setattr(checkpoint.os, "fsync", interrupted)  # Ctrl-C in the middle of writing the file
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint(tmp_path / "ckpt", {"step": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert checkpoint.load_checkpoint(tmp_path / "ckpt")["step"] == 1


def test_shape_hints_for_functional_code_and_torchscript():
    class Net(nn.Module):  # the classic wrong view after the pooling layer, in forward's own code
        def __init__(self):
            super().__init__()
            self.conv, self.pool, self.fc = nn.Conv2d(1, 6, 5), nn.MaxPool2d(2), nn.Linear(320, 10)

        def forward(self, x):
            return self.fc(self.pool(self.conv(x.view(-1, 1, 28, 28))).view(-1, 320))
    with pytest.raises(DataError, match=r"got through MaxPool2d.*output of shape \(\d, 6, 12, 12\).*forward code"):
        fit(Net(), md_of(), 1, crit=nn.CrossEntropyLoss(), verbose=False)
    scripted = torch.jit.script(lesson_net())  # TorchScript modules take no hooks: fit must not need them
    fit(scripted, md_of(), 1, optim.Adam(scripted.parameters()), nn.NLLLoss(), verbose=False)


def test_export_edge_cases_and_the_cli_reads_a_tabular_csv_as_it_is(tmp_path, capsys):
    from netfit import load
    from netfit.models import mlp
    raw = np.random.default_rng(2).normal(100, 30, size=(12, 3))
    raw[:, 1] = 7.0                                              # a constant column: std 0
    torch.manual_seed(0)
    net = mlp(n_in=3, n_out=2)
    meta = save(net, tmp_path / "t", arch="mlp", arch_kwargs={"n_in": 3, "n_out": 2}, mean=raw.mean(0), std=raw.std(0))
    p = load(tmp_path / "t").predict_proba(raw)
    assert np.isfinite(p).all() and meta["std"][1] == 1.0     # divided by 1, as StandardScaler does
    (tmp_path / "rows.csv").write_text("\n".join(",".join(f"{v:.6f}" for v in r) for r in raw) + "\n")
    assert main(["predict", "--model", str(tmp_path / "t"), str(tmp_path / "rows.csv")]) == 0
    cli = [int(line.rsplit(": ", 1)[1]) for line in capsys.readouterr().out.splitlines()]
    np.testing.assert_array_equal(cli, p.argmax(1))               # not divided by 255 as pixels would be
    one = save(mlp(n_in=1, n_out=2), tmp_path / "one", mean=raw[:, :1].mean(0), std=raw[:, :1].std(0))
    assert one["pixels"] is False and len(one["mean"]) == 1        # one feature is still per feature
    wide = mlp(n_in=3, n_out=2).double()                           # a float64 model saves (checked in float64)
    save(wide, tmp_path / "w", arch="mlp", arch_kwargs={"n_in": 3, "n_out": 2}, mean=0, std=1)


def test_review_edge_cases_of_the_new_checks(tmp_path):
    from netfit.export import ExportError
    from netfit.models import logreg as lr

    class Shared(nn.Module):  # one layer called twice: the second call is the one that fails
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(784, 100)

        def forward(self, x):
            return torch.log_softmax(self.fc(torch.relu(self.fc(x))), 1)
    with pytest.raises(DataError, match=r"got through to Linear\(in_features=784.*input of shape \(\d, 100\)"):
        fit(Shared(), md_of(), 1, verbose=False)
    half_scripted = nn.Sequential(torch.jit.script(nn.Linear(784, 10)), nn.LogSoftmax(dim=1))
    fit(half_scripted, md_of(), 1, optim.Adam(half_scripted.parameters()), nn.NLLLoss(), verbose=False)
    assert save(lr(), tmp_path / "a", mean=(0.1307,), std=(0.3081,))["mean"] == 0.1307  # torchvision's spelling
    with pytest.raises(ExportError, match="finite and positive"):
        save(lr(), tmp_path / "b", mean=0.1, std=-0.3)
    with pytest.raises(DataError, match="missing"):
        accuracy(np.eye(2)[[1, 0]], np.array([1, None], dtype=object))


def test_review_edge_cases_of_the_plots_and_the_interrupt_hint(tmp_path, monkeypatch, capsys):
    from netfit import cli, plot_confusion, plot_history
    names = {str(i): f"c{i}" for i in range(12)}  # an id2label read from JSON: string keys, "10" sorts before "2"
    fig = plot_confusion(np.arange(12), np.arange(12), classes=names)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == [f"c{i}" for i in range(12)]
    with pytest.raises(ValueError, match="every label 0..1"):
        plot_confusion(np.array([0, 1]), np.array([0, 1]), classes={1: "a", 2: "b"})
    metrics = {"history": [{"epoch": 0, "trn_loss": 1.0}, {"epoch": 1, "trn_loss": 0.5}]}
    assert len(plot_history(metrics).axes) == 1                   # json.load(open("runs/x/metrics.json"))

    def interrupted(args):  # Ctrl-C before this run saved a checkpoint, beside an earlier run's
        import time
        args.run_folder, args.run_started = tmp_path, time.time() + 60
        raise KeyboardInterrupt
    (tmp_path / "ckpt").write_text("an earlier run's")
    monkeypatch.setattr(cli, "train", interrupted)
    assert main(["train", "--out", str(tmp_path)]) == 130
    assert capsys.readouterr().err.strip() == "netfit: interrupted"  # not "--resume" from the earlier run's file


def test_arrays_where_loaders_belong_get_a_way_forward():
    from netfit import FitError, predict
    net = lesson_net()
    with pytest.raises(FitError, match=r"pair of \(x, y\) array pairs.*from_arrays"):
        fit(net, ((XN, Y), (XN[:100], Y[:100])), 1, verbose=False)
    with pytest.raises(DataError, match=r"\(x, y\) pair of arrays; predict takes the inputs alone"):
        predict(net, (XN[:10], Y[:10]))
    with pytest.raises(DataError, match=r"dataset \(ArrayDataset\).*md.val_dl, not md.val_ds"):
        predict(net, md_of().val_ds)
    assert predict(net, XN[:10]).shape == (10, 10)


def test_an_array_loader_takes_numpy_arrays():
    from netfit import ArrayLoader
    x = XN.copy()
    x.flags.writeable = False  # e.g. from pandas: copied, with no warning from torch
    dl = ArrayLoader(x, Y.astype(np.float32).reshape(-1, 1), bs=64, shuffle=True)
    assert isinstance(dl.x, torch.Tensor) and dl.y.shape == (300, 1)
    net = nn.Sequential(nn.Linear(784, 1), nn.Flatten(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dl = ArrayLoader(x, Y.astype(np.float32), bs=64, shuffle=True)
        fit(net, (dl, None), 1, crit=nn.MSELoss(), verbose=False)


def test_a_scikit_learn_metric_fails_before_training_with_the_way_to_wrap_it():
    from netfit import FitError
    accuracy_score = pytest.importorskip("sklearn.metrics").accuracy_score
    net = lesson_net()
    before = [p.clone() for p in net.parameters()]
    with pytest.raises(FitError, match=r"metric accuracy_score fails .*\(y_true, y_pred\).*lambda preds, targs"):
        fit(net, md_of(), 1, metrics=[accuracy_score], verbose=False)
    assert all(map(torch.equal, before, net.parameters()))
    h = fit(net, md_of(), 1, metrics=[lambda preds, targs: accuracy_score(targs.cpu(), preds.argmax(1).cpu())],
            verbose=False)
    assert 0 <= h[-1]["<lambda>"] <= 1


def test_fastai_0_7s_continuous_flag_says_where_regression_goes():
    with pytest.raises(DataError, match=r"continuous=True .*ArrayLoader\(x, y.reshape\(-1, 1\), bs=64, shuffle=True\)"):
        ImageClassifierData.from_arrays(".", (XN, Y), (XN[:100], Y[:100]), continuous=True, device="cpu")
    assert ImageClassifierData.from_arrays(".", (XN, Y), (XN[:100], Y[:100]), continuous=False, num_workers=4,
                                           device="cpu").c == 10


def test_review_of_the_new_checks_what_must_stay_allowed(tmp_path):
    """Uses the checks added after a student review must not refuse (a second review's findings)."""
    from netfit import ArrayLoader, plots, scratch
    md = ImageClassifierData.from_arrays(".", (XN, Y), (XN[:100], Y[:100]), 64, None, None, None, None, "cpu")
    assert md.device == torch.device("cpu")  # device is still from_arrays' 9th argument
    for test in ((XN[:30], Y[:30, None]), (XN[:30], None)):  # labels as a column, or none
        assert md_of(test=test).test_dl.x.shape == (30, 784)
    net = lesson_net()
    x = torch.as_tensor(XN[:100])
    assert predict(net, torch.chunk(x, 2)).shape == (100, 10)  # two batches, not an (x, y) pair

    class Batches(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(torch.split(x, 32))
    assert predict(net, Batches()).shape == (100, 10)
    dl = ArrayLoader(XN.astype(np.float64), Y.astype(np.int32), bs=64, shuffle=True)  # numpy's defaults elsewhere
    assert dl.x.dtype == torch.float32 and dl.y.dtype == torch.int64
    fit(net, (dl, None), 1, verbose=False)
    assert scratch.binary_loss(np.array([1, 0, 1, 0]), 0.5) == pytest.approx(np.log(2))  # one p for every row
    assert len(plots(np.random.rand(64, 64), titles=list(range(64))).axes) == 64  # 64 titles: 64 rows of 8 x 8


def test_review_of_the_new_checks_what_they_must_say():
    from netfit import ArrayLoader, FitError
    from netfit.export import ExportError

    class TwoOutputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = lesson_net()

        def forward(self, x):
            return self.net(x), x
    net = TwoOutputs()
    with pytest.raises(FitError, match=r"metric accuracy fails .*preds a tuple, targs \(8,\) int64"):
        fit(net, md_of(), 1, crit=lambda out, y: F.nll_loss(out[0], y), metrics=[accuracy], verbose=False)
    # BCE on one class label per row: the way out the message gives works with the lesson's numpy arrays
    binary = (Y % 2).astype(np.int64)
    net = nn.Sequential(nn.Linear(784, 1), nn.Sigmoid())
    with pytest.raises(DataError, match=r"y.reshape\(-1, 1\).astype\('float32'\)"):
        fit(net, md_of(y=binary, yv=binary[:100]), 1, crit=nn.BCELoss(), verbose=False)
    loaders = (ArrayLoader(XN, binary.reshape(-1, 1).astype('float32'), bs=64, shuffle=True),
               ArrayLoader(XN[:100], binary[:100].reshape(-1, 1).astype('float32'), bs=64))
    fit(net, loaders, 1, crit=nn.BCELoss(), verbose=False)
    p = Predictor(nn.Linear(6, 2), {"input_shape": [6], "pixels": False})
    with pytest.raises(ExportError, match="expects 6 features per row; got 3"):
        p.predict(np.zeros((2, 3)))  # two rows of 3 are not one row of 6


def test_a_folder_asked_for_fashion_mnist_is_not_read_as_the_lessons_mnist_pickle(tmp_path):
    import gzip
    import pickle
    from netfit import datasets
    (tmp_path / "mnist.pkl.gz").write_bytes(gzip.compress(pickle.dumps(((X, Y), (X[:10], Y[:10]), (X[:10], Y[:10])))))
    assert datasets.mnist(tmp_path)[0][0].shape == X.shape
    with pytest.raises(datasets.DatasetError):
        datasets.fashion_mnist(tmp_path)


def test_cli_resume_names_a_zero_option_and_a_failed_run_removes_the_folders_it_made(digits_pickle, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", "--data-path", str(digits_pickle), "--model", "logreg", "--opt", "sgd", "--quiet", "--out", str(out)]
    assert main(base + ["--epochs", "1", "--momentum", "0"]) == 0
    assert main(base + ["--epochs", "2", "--resume"]) == 1
    assert "--momentum 0.0 (got 0.9)" in capsys.readouterr().err
    nested = tmp_path / "made" / "by" / "run"
    assert main(["train", "--data-path", str(tmp_path / "missing"), "--out", str(nested)]) == 1
    assert not (tmp_path / "made").exists()


def test_several_inputs_or_outputs_get_netfits_own_error():
    from torch.utils.data import DataLoader, TensorDataset
    x1, x2, y = torch.randn(64, 3), torch.randn(64, 2), torch.randint(0, 2, (64,))
    net = nn.Linear(3, 2)
    for extra in (TensorDataset(x1, x2, y), TensorDataset(x1, y, torch.rand(64))):  # y read from x2; w ignored
        with pytest.raises(DataError, match="a batch holds 3 tensors"):
            fit(net, (DataLoader(extra, batch_size=16), None), 1, verbose=False)
    with pytest.raises(DataError, match="inputs are a list, not a tensor"):
        predict(net, DataLoader(list(zip(zip(x1, x2), y)), batch_size=16))

    class Pair(nn.Module):
        def forward(self, x):
            return x, x
    with pytest.raises(DataError, match="the model returns a tuple"):
        predict(Pair(), x1)


def test_set_lrs_and_learner_fit_take_fastais_slice():
    from netfit import Learner, param_groups, set_lrs
    net = nn.Sequential(nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10), nn.LogSoftmax(dim=1))
    opt = optim.AdamW(param_groups(net, 1e-3, wd=0.01))  # 2 layers, 4 groups (no decay on biases)
    set_lrs(opt, slice(1e-4, 1e-2))
    assert sorted({round(g["lr"], 6) for g in opt.param_groups}) == [0.0001, 0.01]
    learn = Learner(lesson_net(), md_of())
    learn.fit(1, slice(3e-3), verbose=False)
    assert learn.opt.param_groups[0]["lr"] == 3e-3


def test_a_custom_cnn_on_images_without_a_channel_axis_is_told_x_none():
    x = np.random.default_rng(0).random((64, 28, 28), dtype=np.float32)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10),
                        nn.LogSoftmax(dim=1))
    md = ImageClassifierData.from_arrays(".", (x, Y[:64]), (x, Y[:64]), device="cpu")
    with pytest.raises(DataError, match=r"no channel axis: give them one with x\[:, None\]"):
        fit(net, md, 1, verbose=False)


def test_the_lessons_log_softmax_without_dim_gets_one_note_not_torchs_warning_mid_table():
    def lesson():
        md = md_of()
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 10), nn.LogSoftmax())  # as the lesson writes it
        fit(net, md, 2, optim.Adam(net.parameters()), nn.NLLLoss(), [accuracy], verbose=False)
        return predict(net, md.val_dl)
    messages, preds = warned(lesson)
    assert len(messages) == 1 and "nn.LogSoftmax() in layer '3' has no dim" in messages[0], messages
    assert messages[0].startswith("Implicit dimension choice for log_softmax has been deprecated")  # PyTorch's words
    assert np.allclose(np.exp(preds).sum(1), 1, atol=1e-5)  # dim 1, the classes


def test_the_implicit_dim_note_comes_once_per_layer_and_leaves_other_warnings_alone():
    md = md_of()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(784, 10), nn.LogSoftmax())

    class PredictEachEpoch:  # predict inside fit: no second note, no PyTorch warning mid-table
        def after_epoch(self, run):
            predict(run.model, md.val_dl)
            warnings.warn("the user's own warning")
    messages, _ = warned(lambda: [fit(net, md, 2, optim.Adam(net.parameters()), nn.NLLLoss(), verbose=False,
                                      callbacks=[PredictEachEpoch()]), predict(net, md.val_dl)])
    notes = [m for m in messages if "Implicit dimension choice" in m]
    assert len(notes) == 1 and messages.count("the user's own warning") == 2, messages
    with warnings.catch_warnings():  # warnings as errors, with an ignore written for PyTorch's own warning
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message="Implicit dimension choice for log_softmax has been deprecated")
        fresh = nn.Sequential(nn.Linear(784, 10), nn.LogSoftmax())
        fit(fresh, md, 1, optim.Adam(fresh.parameters()), nn.NLLLoss(), verbose=False)


def test_epochs_zero_says_nothing_is_trained():
    net = lesson_net()
    messages, h = warned(lambda: fit(net, md_of(), 0, optim.Adam(net.parameters()), verbose=False))
    assert len(h) == 0 and any("epochs=0: nothing to train" in m for m in messages), messages


def test_plots_refuses_rows_of_model_outputs_as_titles():
    from netfit import plots
    preds = predict(lesson_net(), XN[:8])
    for titles in (preds, torch.tensor(preds), list(preds), np.exp(preds)):  # log-probabilities, probabilities
        with pytest.raises(ValueError, match=r"titles are rows of 10 numbers, a model's outputs .*preds.argmax\(1\)"):
            plots(X[:8].reshape(-1, 28, 28), titles=titles)
    plots(X[:8].reshape(-1, 28, 28), titles=np.stack([preds.argmax(1), Y[:8]], 1))  # (pred, actual) pairs draw
    plots(X[:8].reshape(-1, 28, 28), titles=np.stack([preds.argmax(1), Y[:8], np.exp(preds.max(1))], 1))  # + prob


class BlowUpAt(Callback):
    """Multiplies the weights by 1e30 after batch `at` (a diverging fit, made exact)."""
    def __init__(self, at):
        self.at = at

    def after_batch(self, run):
        if run.batch == self.at:
            with torch.no_grad():
                for p in run.model.parameters():
                    p.mul_(1e30)


@pytest.mark.parametrize("fast", [True, False])  # the CPU's written-out step and autograd's loop
def test_a_diverged_net_fitted_again_is_told_to_be_rebuilt(fast):
    from netfit import NonFiniteLossError
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 10), nn.LogSoftmax(dim=1))
    md = md_of()
    with pytest.raises(NonFiniteLossError) as e:
        fit(net, md, 1, optim.SGD(net.parameters(), 0.1), callbacks=[BlowUpAt(1)], verbose=False, fast=fast)
    first = str(e.value)
    assert "batch 2 (optimizer step 2)" in first and "The weights are left as that step found them" in first, first
    assert "build the model and its optimizer again" in first and "sys.last_value.history" in first
    with pytest.raises(NonFiniteLossError) as e:  # a lower rate cannot help now
        fit(net, md, 1, optim.SGD(net.parameters(), 1e-4), verbose=False, fast=fast)
    again = str(e.value)
    assert "batch 0 (optimizer step 0)" in again and "before this fit updated anything" in again, again
    assert "already blown up (largest |weight|" in again and "Try a lower" not in again


def test_a_nan_from_the_forward_at_the_first_step_points_at_inputs_and_forward():
    from netfit import NonFiniteLossError

    class LogOfScores(nn.Module):  # log of raw scores: NaN wherever a score is negative
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(784, 10)

        def forward(self, x):
            return torch.log(torch.softmax(self.lin(x), 1) - 0.5)
    torch.manual_seed(0)
    net = LogOfScores()
    with pytest.raises(NonFiniteLossError, match="before this fit updated anything .*the inputs or the model's forward"):
        fit(net, md_of(), 1, optim.Adam(net.parameters()), nn.NLLLoss(), verbose=False)


def test_epochs_given_an_optimizer_names_the_argument_order():
    from netfit import FitError
    net = lesson_net()
    opt = optim.Adam(net.parameters())
    with pytest.raises(FitError, match=r"got Adam in its place: the order is fit\(net, md, epochs, opt, crit") as e:
        fit(net, md_of(), opt, 1, nn.NLLLoss())
    assert "\n" not in str(e.value)  # not the optimizer's 14-line repr


def test_a_nan_error_is_worded_for_weights_it_cannot_read():
    # a LazyLinear never built, beside the layer whose forward gives NaN: the NaN error, not a ValueError
    from netfit import NonFiniteLossError

    class NaNForward(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.unused = nn.Linear(784, 10), nn.LazyLinear(3)

        def forward(self, x):
            return torch.log(torch.softmax(self.lin(x), 1) - 0.5)
    net = NaNForward()
    with pytest.raises(NonFiniteLossError, match="before this fit updated anything") as e:
        fit(net, md_of(), 1, optim.Adam(net.lin.parameters()), nn.NLLLoss(), verbose=False)
    assert "'lin." in str(e.value) and e.value.history is not None


def test_epochs_given_metrics_names_the_argument_order():
    from netfit import FitError
    net = lesson_net()
    with pytest.raises(FitError, match=r"got a list of 1 functions \(metrics\?\) in its place: the order is"):
        fit(net, md_of(), [accuracy])


def test_the_implicit_dim_note_takes_subclasses_of_the_softmax_layers():
    class LogProbs(nn.LogSoftmax):  # a user's own subclass, still without dim
        pass
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(784, 10), LogProbs())
    messages, _ = warned(lambda: fit(net, md_of(), 1, optim.Adam(net.parameters()), nn.NLLLoss(), verbose=False))
    assert any(m.startswith("Implicit dimension choice for log_softmax") and "nn.LogProbs() in layer '1'" in m
               for m in messages), messages
