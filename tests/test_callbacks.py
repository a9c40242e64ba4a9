"""Callbacks (early stopping, save best, clipping, CSV, TensorBoard) and fit's amp=, accumulate=,
deterministic= with seed_everything, on small real subsets."""
import csv

import numpy as np
import pytest
import torch
from torch import nn, optim

from netfit import (Augment, CSVLogger, EarlyStopping, FitError, GradientClip, ImageClassifierData, SaveBest,
                    TensorBoard, accuracy, fit, predict_with_targs, seed_everything)
from netfit.data import ArrayLoader
from netfit.models import logreg, mlp


def subset(fashion, n_trn, n_val):
    (x, y), (xv, yv), _ = fashion
    m, s = x[:n_trn].mean(), x[:n_trn].std()
    return ((x[:n_trn] - m) / s, y[:n_trn]), ((xv[:n_val] - m) / s, yv[:n_val])


@pytest.fixture(scope="module")
def small_md(fashion):
    trn, val = subset(fashion, 500, 1000)  # 500 rows overfit within a few epochs: val_loss turns up
    return ImageClassifierData.from_arrays(".", trn, val, bs=32, device="cpu")


def val_loss(net, dl):
    preds, targs = predict_with_targs(net, dl)
    return nn.NLLLoss()(torch.from_numpy(preds), torch.from_numpy(targs)).item()


def test_early_stopping_restores_the_best_weights(small_md, tmp_path):
    torch.manual_seed(0)
    net = mlp()
    stop = EarlyStopping(patience=2)
    best = SaveBest(tmp_path / "best", arch="mlp")
    h = fit(net, small_md, 20, optim.Adam(net.parameters(), 3e-3), metrics=[accuracy], callbacks=[stop, best],
            verbose=False)
    info = h.info["early_stopping"]
    losses = h["val_loss"]
    assert len(h) < 20 and info["stopped_after"] == len(h) - 1       # stopped early; its last record kept
    assert info["best_epoch"] == int(np.argmin(losses)) < len(h) - 1  # the last weights are not the best
    assert val_loss(net, small_md.val_dl) == pytest.approx(min(losses), rel=1e-5)
    assert val_loss(net, small_md.val_dl) < losses[-1] - 1e-3
    # SaveBest wrote the same best weights
    from safetensors.torch import load_file
    saved = load_file(str(tmp_path / "best" / "model.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in net.state_dict().items())
    assert h.info["save_best"]["epoch"] == info["best_epoch"]


def test_early_stopping_on_a_metric_and_bad_monitor(small_md):
    torch.manual_seed(0)
    net = mlp()
    stop = EarlyStopping(monitor="accuracy", patience=0, min_delta=1.0)  # nothing beats the first epoch by 1.0
    h = fit(net, small_md, 5, optim.Adam(net.parameters(), 3e-3), metrics=[accuracy], callbacks=[stop],
            verbose=False)
    assert len(h) == 2 and h.info["early_stopping"]["best_epoch"] == 0
    assert stop.tracker.mode == "max"
    with pytest.raises(FitError, match="'val_acc'.*accuracy"):
        fit(net, small_md, 1, metrics=[accuracy], callbacks=[EarlyStopping(monitor="val_acc")], verbose=False)


class GradSpy:
    """The gradient norm and largest entry as the optimizer will see them."""

    def __init__(self):
        self.norms, self.maxes = [], []

    def before_step(self, run):
        grads = [p.grad for p in run.model.parameters() if p.grad is not None]
        self.norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())
        self.maxes.append(max(g.abs().max().item() for g in grads))


def test_gradient_clip_by_norm_and_value(small_md):
    torch.manual_seed(0)
    net, clip, spy = mlp(), GradientClip(max_norm=0.5), GradSpy()
    fit(net, small_md, 1, optim.SGD(net.parameters(), 0.01), callbacks=[clip, spy], verbose=False)
    assert max(spy.norms) <= 0.5 + 1e-5
    assert clip.norm.item() > 0.5  # the raw norm was above the limit: clipping did something
    torch.manual_seed(0)
    net, spy = mlp(), GradSpy()
    fit(net, small_md, 1, optim.SGD(net.parameters(), 0.01), callbacks=[GradientClip(max_value=1e-3), spy],
        verbose=False)
    assert max(spy.maxes) == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="max_norm or max_value"):
        GradientClip()


def test_csv_logger_writes_each_epoch(small_md, tmp_path):
    path = tmp_path / "logs" / "log.csv"
    net = logreg()
    h = fit(net, small_md, 3, metrics=[accuracy], callbacks=[CSVLogger(path)], verbose=False)
    rows = list(csv.DictReader(open(path)))
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    assert [float(r["val_loss"]) for r in rows] == pytest.approx(h["val_loss"])
    assert {"trn_loss", "accuracy", "time", "lr"} <= set(rows[0])
    fit(net, small_md, 1, callbacks=[CSVLogger(path)], verbose=False)  # a fresh fit starts a fresh file
    assert len(list(csv.DictReader(open(path)))) == 1
    fit(net, small_md, 2, callbacks=[CSVLogger(path, append=True)], verbose=False)  # Keras's append=True
    assert [r["epoch"] for r in csv.DictReader(open(path))] == ["0", "0", "1"]


def test_tensorboard_logs_scalars(small_md, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from netfit import one_cycle
    net = logreg()
    h = fit(net, small_md, 2, metrics=[accuracy], callbacks=[TensorBoard(tmp_path / "tb")],
            schedule=one_cycle(1e-2), verbose=False)
    ev = EventAccumulator(str(tmp_path / "tb"))
    ev.Reload()
    assert {"trn_loss", "val_loss", "accuracy", "lr_per_step"} <= set(ev.Tags()["scalars"])
    assert [e.value for e in ev.Scalars("val_loss")] == pytest.approx(h["val_loss"], rel=1e-6)
    assert len(ev.Scalars("lr_per_step")) == len(h.info["lrs"])


def test_seed_everything_and_deterministic_fit_repeat_exactly(fashion):
    trn, val = subset(fashion, 2000, 500)

    def run():
        seed_everything(123)
        md = ImageClassifierData.from_arrays(".", trn, val, bs=64, device="cpu")
        net = nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Dropout(0.3), nn.Linear(64, 10), nn.LogSoftmax(1))
        h = fit(net, md, 2, metrics=[accuracy], callbacks=[Augment()], deterministic=True, verbose=False)
        return h, net
    (h1, n1), (h2, n2) = run(), run()
    strip = lambda h: [{k: v for k, v in r.items() if k != "time"} for r in h]
    assert strip(h1) == strip(h2)
    assert all(torch.equal(a, b) for a, b in zip(n1.state_dict().values(), n2.state_dict().values()))
    seed_everything(124)
    n3 = nn.Linear(784, 64)
    assert not torch.equal(n3.weight, n1[0].weight)  # and a different seed does differ
    with pytest.raises(ValueError, match="seed"):
        seed_everything(-1)


def test_amp_trains_to_the_same_accuracy(fashion):
    trn, val = subset(fashion, 6000, 5000)
    md = ImageClassifierData.from_arrays(".", trn, val, bs=64, device="cpu")
    dtypes = set()

    class Spy:
        def after_loss(self, run):
            dtypes.add(run.preds.dtype)
    acc = {}
    for amp in (False, True):
        torch.manual_seed(0)
        net = logreg()
        h = fit(net, md, 2, optim.Adam(net.parameters(), 1e-3), metrics=[accuracy], callbacks=[Spy()], amp=amp,
                verbose=False)
        acc[amp] = h[-1]["accuracy"]
    assert h.info["amp"] == "bfloat16" and torch.bfloat16 in dtypes and torch.float32 in dtypes
    assert acc[False] > 0.75 and abs(acc[True] - acc[False]) <= 0.005, acc


@pytest.mark.parametrize("n", [1024, 1000])  # a whole number of groups, and a short last group
def test_accumulating_k_batches_matches_one_big_batch(fashion, n):
    (x, y), _ = subset(fashion, n, 1)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    k, b = 4, 16
    weights, losses = [], []
    for bs, acc in ((b, k), (k * b, 1)):
        torch.manual_seed(0)
        net = mlp()
        dl = ArrayLoader(x, y, bs=bs, shuffle=True, generator=torch.Generator().manual_seed(5))  # same orders
        h = fit(net, (dl, None), 2, optim.SGD(net.parameters(), 0.05, momentum=0.9), accumulate=acc, verbose=False)
        weights.append([p.detach() for p in net.parameters()])
        losses.append(h["trn_loss"])
    for a, big in zip(*weights):
        torch.testing.assert_close(a, big, atol=2e-5, rtol=1e-4)
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    torch.manual_seed(0)
    assert not torch.equal(weights[0][0], mlp()[0].weight)  # it trained


def test_torch_scheduler_warns_about_a_schedule_longer_than_the_fit():
    import warnings
    from netfit import TorchScheduler
    x = torch.randn(64, 2)
    data = (ArrayLoader(x, (x[:, 0] > 0).long(), bs=16), None)
    net = nn.Linear(2, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with pytest.warns(UserWarning, match="OneCycleLR is laid out over 30 steps.*3 times.*one_cycle"):
        fit(net, data, 3, opt, callbacks=[TorchScheduler(torch.optim.lr_scheduler.OneCycleLR(opt, 0.1, total_steps=30))],
            verbose=False)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # laid out per epoch: as meant
        fit(net, data, 3, opt, callbacks=[TorchScheduler(torch.optim.lr_scheduler.OneCycleLR(opt, 0.1, total_steps=3)),
                                          TorchScheduler(torch.optim.lr_scheduler.StepLR(opt, 1))], verbose=False)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(FitError, match="laid out over 2 steps, 2 left.*3 more epochs"):  # torch would raise at epoch 3
        fit(net, data, 3, opt, callbacks=[TorchScheduler(torch.optim.lr_scheduler.OneCycleLR(opt, 0.1, total_steps=2))],
            verbose=False)
