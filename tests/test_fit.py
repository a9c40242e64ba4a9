"""fit, its callbacks and History, set_lrs, predict and accuracy."""
import numpy as np
import pytest
import torch
from torch import nn, optim

from netfit import (EVENTS, CancelBatch, CancelEpoch, FitError, ImageClassifierData, accuracy, fit,
                    predict, predict_with_targs, set_lrs)


def blobs(n=600, d=8, c=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, (c, d))
    y = rng.integers(0, c, n)
    x = (centers[y] + rng.normal(0, 1, (n, d))).astype(np.float32)
    return x, y.astype(np.int64)


@pytest.fixture
def md():
    x, y = blobs()
    return ImageClassifierData.from_arrays(".", (x[:500], y[:500]), (x[500:], y[500:]), bs=32, device="cpu")


def logreg(d=8, c=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(d, c), nn.LogSoftmax(dim=1))


def test_fit_learns_and_returns_history(md):
    net = logreg()
    h = fit(net, md, epochs=3, crit=nn.NLLLoss(), opt=optim.Adam(net.parameters(), 0.05), metrics=[accuracy],
            verbose=False)
    assert len(h) == 3 and h["epoch"] == [0, 1, 2]
    assert h[-1]["accuracy"] > 0.9
    assert h["trn_loss"][-1] < h["trn_loss"][0]
    assert all(t > 0 for t in h["time"])
    assert h.info["device"] == "cpu"
    assert "epoch" in repr(h) and "accuracy" in h.to_json()


def test_positional_order_and_n_epochs(md):
    net = logreg()
    opt = optim.SGD(net.parameters(), 0.1)
    h = fit(net, md, 2, opt, nn.NLLLoss(), [accuracy], verbose=False)  # fastai 0.7's positional order
    assert len(h) == 2
    assert len(fit(net, md, n_epochs=1, crit=nn.NLLLoss(), opt=opt, verbose=False)) == 1
    with pytest.raises(FitError, match="n_epochs"):
        fit(net, md, epochs=1, n_epochs=2, opt=opt, verbose=False)


def test_validation_figures_are_weighted_by_batch_size(md):
    net = logreg()
    h = fit(net, md, 1, optim.SGD(net.parameters(), 0.1), nn.NLLLoss(), [accuracy], verbose=False)
    preds, targs = predict_with_targs(net, md.val_dl)  # 100 rows: batches of 32, 32, 32, 4
    full_loss = nn.NLLLoss()(torch.from_numpy(preds), torch.from_numpy(targs)).item()
    assert h[-1]["val_loss"] == pytest.approx(full_loss, rel=1e-5)
    assert h[-1]["accuracy"] == pytest.approx(accuracy(preds, targs), abs=1e-6)


def test_trn_loss_is_the_epoch_mean(md):
    net = logreg()
    losses = []

    class Record:
        def after_batch(self, run):
            losses.append((run.loss.item(), len(run.yb)))
    h = fit(net, md, 1, optim.SGD(net.parameters(), 0.1), nn.NLLLoss(), callbacks=[Record()], verbose=False)
    mean = sum(l * n for l, n in losses) / sum(n for _, n in losses)
    assert h[0]["trn_loss"] == pytest.approx(mean, rel=1e-5)


def test_defaults_pick_adam_and_nll(md):
    net = logreg()
    h = fit(net, md, 2, verbose=False, metrics=[accuracy])
    assert h[-1]["accuracy"] > 0.8
    assert "Adam" in h.info["optimizer"]


def test_events_fire_in_order(md):
    calls = []

    class Spy:
        pass
    for e in EVENTS:
        setattr(Spy, e, lambda self, run, e=e: calls.append(e))
    net = logreg()
    fit(net, md, 2, optim.SGD(net.parameters(), 0.1), nn.NLLLoss(), callbacks=[Spy()], verbose=False)
    n = len(md.trn_dl)
    assert calls[0] == "before_fit" and calls[-1] == "after_fit"
    assert calls.count("before_epoch") == calls.count("after_epoch") == 2
    assert calls.count("before_batch") == calls.count("after_batch") == 2 * n
    assert calls[1:7] == ["before_epoch", "before_batch", "after_loss", "after_backward", "before_step", "after_batch"]


def test_cancel_fit_and_epoch_and_batch(md, stop_at):
    net = logreg()
    h = fit(net, md, 5, optim.SGD(net.parameters(), 0.1), nn.NLLLoss(), callbacks=[stop_at(3)], verbose=False)
    assert len(h) == 0

    class SkipEpoch:
        def before_batch(self, run):
            if run.batch == 2:
                raise CancelEpoch()
    steps = []

    class Count:
        def after_batch(self, run):
            steps.append(run.step)
    h = fit(net, md, 2, optim.SGD(net.parameters(), 0.1), nn.NLLLoss(), callbacks=[SkipEpoch(), Count()],
            verbose=False)
    assert len(h) == 2 and len(steps) == 4

    class SkipAll:
        def before_batch(self, run):
            raise CancelBatch()
    before = [p.clone() for p in net.parameters()]
    fit(net, md, 1, optim.SGD(net.parameters(), 0.1), nn.NLLLoss(), callbacks=[SkipAll()], verbose=False)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_set_lrs():
    net = nn.Linear(2, 2)
    opt = optim.SGD([{"params": [net.weight]}, {"params": [net.bias]}], lr=0.1)
    set_lrs(opt, 1e-2)
    assert [g["lr"] for g in opt.param_groups] == [1e-2, 1e-2]
    set_lrs(opt, [1e-3, 1e-4])
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-4]
    with pytest.raises(ValueError):
        set_lrs(opt, [1e-3])
    with pytest.raises(ValueError, match="learning rates must be finite numbers >= 0; got -1"):
        set_lrs(opt, -1)


def test_set_lrs_changes_training(md):
    net = logreg()
    opt = optim.SGD(net.parameters(), 0.1)
    fit(net, md, 1, opt, nn.NLLLoss(), verbose=False)
    set_lrs(opt, 0.0)
    before = [p.clone() for p in net.parameters()]
    h = fit(net, md, 1, opt, nn.NLLLoss(), verbose=False)
    assert h[0]["lr"] == 0.0
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_fused_switch_matches_plain_optimizer(md):
    results = []
    for fast in (True, False):
        net = logreg()
        opt = optim.Adam(net.parameters(), 0.01)
        torch.manual_seed(1)
        h = fit(net, md, 2, opt, nn.NLLLoss(), [accuracy], verbose=False, fast=fast)
        results.append((h, [p.detach().clone() for p in net.parameters()]))
    (h1, w1), (h2, w2) = results
    assert "fused" in h1.info["optimizer"] and h2.info["optimizer"] == "as given"
    for a, b in zip(w1, w2):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # a user's explicit choice is left alone
    net = logreg()
    h = fit(net, md, 1, optim.Adam(net.parameters(), foreach=False), verbose=False)
    assert h.info["optimizer"] == "Adam as given"


def test_predict_order_shape_and_mode(md):
    net = nn.Sequential(nn.Linear(8, 3), nn.Dropout(0.5), nn.LogSoftmax(dim=1))
    net.train()
    p1 = predict(net, md.val_dl)
    p2 = predict(net, md.val_dl)
    assert isinstance(p1, np.ndarray) and p1.shape == (100, 3)
    np.testing.assert_array_equal(p1, p2)  # eval mode: dropout off
    assert net.training  # mode restored
    direct = net.eval()(md.val_dl.x).detach().numpy()
    np.testing.assert_allclose(p1, direct, rtol=1e-6)
    np.testing.assert_allclose(predict(net, md.val_dl.x.numpy()), direct, rtol=1e-6)
    _, targs = predict_with_targs(net, md.val_dl)
    np.testing.assert_array_equal(targs, md.val_y)
    with pytest.raises(ValueError, match="inputs only"):
        predict_with_targs(net, md.test_dl if md.test_dl is not None else [torch.zeros(2, 8)])


def test_accuracy_numpy_and_torch():
    p = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    t = np.array([1, 1, 1])
    assert accuracy(p, t) == pytest.approx(2 / 3)
    a = accuracy(torch.tensor(p), torch.tensor(t))
    assert isinstance(a, torch.Tensor) and a.item() == pytest.approx(2 / 3)
    assert accuracy(np.array([1, 0, 1]), t) == pytest.approx(2 / 3)  # labels, not scores


def test_bad_arguments(md):
    net = logreg()
    with pytest.raises(FitError, match="Module"):
        fit("net", md, 1)
    with pytest.raises(FitError, match="optimizer holds none"):
        fit(net, md, 1, optim.Adam(nn.Linear(2, 2).parameters()), verbose=False)
    with pytest.raises(FitError, match="Optimizer"):
        fit(net, md, 1, opt="adam", verbose=False)
    with pytest.raises(FitError, match="epochs"):
        fit(net, md, -1, verbose=False)
    with pytest.raises(FitError, match="trn_dl"):
        fit(net, object(), 1, verbose=False)


def test_plain_dataloaders_work_too():
    from torch.utils.data import DataLoader, TensorDataset
    x, y = blobs()
    ds = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    net = logreg()
    h = fit(net, (DataLoader(ds, batch_size=50, shuffle=True), DataLoader(ds, batch_size=50)), 2,
            optim.Adam(net.parameters(), 0.05), nn.NLLLoss(), [accuracy], verbose=False)
    assert h[-1]["accuracy"] > 0.9


def test_a_script_that_imported_ipykernel_gets_the_plain_table(md, capsys):
    pytest.importorskip("ipykernel")  # imported, as nbclient or a plotting library may, but no kernel runs
    net = logreg()
    fit(net, md, 1, optim.SGD(net.parameters(), 0.1), nn.NLLLoss())
    out = capsys.readouterr().out
    assert "it/s" not in out and out.splitlines()[0].split()[0] == "epoch"


def test_verbose_prints_table(md, capsys):
    net = logreg()
    fit(net, md, 2, optim.SGD(net.parameters(), 0.1), nn.NLLLoss(), [accuracy])
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["epoch", "trn_loss", "val_loss", "accuracy", "time"]
    assert len(out) == 3 and out[2].split()[0] == "1"
    fit(net, md, 1, optim.SGD(net.parameters(), 0.1), nn.NLLLoss(), verbose=False)
    assert capsys.readouterr().out == ""
