"""The graphed training path (graphs.py, fit._train_epoch_fast) against the eager loop where
callbacks change the batch, cancel, or make the graph give up mid-epoch. CPU tests use the static-buffer stand-in (graphs._STATIC_ON_CPU), like
tests/test_graphs.py; the `gpu` tests need a real capture and are skipped without CUDA."""
import importlib

import numpy as np
import pytest
import torch
from torch import nn, optim

from netfit import CancelBatch, CancelEpoch, ImageClassifierData, NonFiniteLossError, accuracy, fit, one_cycle
from netfit import graphs
from netfit.augment import Augment
from netfit.models import logreg, mlp

fit_module = importlib.import_module("netfit.fit")


def data(n=1000, n_valid=200, bs=64, seed=0, device="cpu"):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n + n_valid, 784)).astype(np.float32)
    y = (x @ rng.normal(size=(784, 10))).argmax(1).astype(np.int64)
    return ImageClassifierData.from_arrays(".", (x[:n], y[:n]), (x[n:], y[n:]), bs=bs, device=device)


def train(make, static, monkeypatch, epochs=2, callbacks=None, schedule=None, **kw):
    # 1000 rows, bs 64: batches 0..14 full (0-2 warm-up, 3 capture, 4.. static), batch 15 short (40 rows)
    monkeypatch.setattr(graphs, "_STATIC_ON_CPU", static)
    monkeypatch.setattr(fit_module, "mlp_plan", lambda *a: (None, "not on a CUDA GPU (test: no written-out step)"))
    torch.manual_seed(0)
    net = make()
    h = fit(net, data(), epochs, optim.Adam(net.parameters(), 1e-2), nn.NLLLoss(), [accuracy],
            callbacks=callbacks, schedule=schedule, verbose=False, seed=1, **kw)
    assert ("not on a CUDA GPU" in h.info["step"]) != static, h.info["step"]
    return net, h


def same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# ---- a callback's new batch: eager trains on run.xb/run.yb as the callback left them

def test_labels_replaced_in_before_batch_are_trained_on(monkeypatch):
    class ZeroLabels:  # e.g. label noise / relabelling: the eager loop trains on the new labels
        def before_batch(self, run):
            run.yb = torch.zeros_like(run.yb)
    eager, _ = train(logreg, False, monkeypatch, callbacks=[ZeroLabels()])
    static, _ = train(logreg, True, monkeypatch, callbacks=[ZeroLabels()])
    assert same_weights(eager, static)


def test_batch_reshaped_in_before_batch_trains(monkeypatch):
    class AsImages:  # the model takes either shape; eager is fine, the static copy_ cannot broadcast
        def before_batch(self, run):
            run.xb = run.xb.reshape(len(run.xb), 1, 28, 28)

    def make():
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.LogSoftmax(dim=1))
    eager, _ = train(make, False, monkeypatch, epochs=1, callbacks=[AsImages()])
    # a view of the static buffer with another shape: the graph gives up and says why
    static, _ = train(make, True, monkeypatch, epochs=1, callbacks=[AsImages()])
    assert same_weights(eager, static)


# ---- the non-finite check is skipped when the epoch does not reach its last batch

class _Poison:
    def __init__(self, at=7):
        self.at = at

    def before_batch(self, run):
        if run.batch == self.at:
            run.xb = run.xb.clone()
            run.xb[0, 0] = float("nan")


@pytest.mark.parametrize("static", [False, True])
def test_nan_then_cancel_epoch_still_raises(static, monkeypatch):
    class CancelAt10:
        def before_batch(self, run):
            if run.batch == 10:
                raise CancelEpoch()
    with pytest.raises(NonFiniteLossError):
        train(logreg, static, monkeypatch, epochs=1, callbacks=[_Poison(), CancelAt10()])


@pytest.mark.parametrize("static", [False, True])
def test_nan_then_cancelled_last_batch_still_raises(static, monkeypatch):
    class SkipLast:
        def before_batch(self, run):
            if run.batch == run.n_batches - 1:
                raise CancelBatch()
    with pytest.raises(NonFiniteLossError):
        train(logreg, static, monkeypatch, epochs=2, callbacks=[_Poison(), SkipLast()])


# ---- falling back to eager mid-epoch (one_cycle with moms: after MAX_RECAPTURES, at batch 7)

def test_fallback_does_not_emit_the_batch_events_twice(monkeypatch):
    lrs = {}
    for static in (False, True):
        sched = one_cycle(1e-2)
        train(logreg, static, monkeypatch, schedule=sched)
        lrs[static] = list(sched.used_lrs)
    assert len(lrs[False]) == 32
    assert lrs[True] == lrs[False]  # batch 7's before_step runs once


def test_fallback_with_augmentation_trains_like_eager(monkeypatch):
    # batch 7's before_batch runs twice: Augment draws its random warp twice, the RNG stream shifts
    eager, _ = train(logreg, False, monkeypatch, epochs=1, schedule=one_cycle(1e-2),
                     callbacks=[Augment(pad=1, rotate=5)])
    static, _ = train(logreg, True, monkeypatch, epochs=1, schedule=one_cycle(1e-2),
                      callbacks=[Augment(pad=1, rotate=5)])
    assert same_weights(eager, static)


def test_fallback_then_cancel_epoch_leaves_the_fit_eager(monkeypatch):
    class CancelAt10:
        def before_batch(self, run):
            if run.epoch == 0 and run.batch == 10:  # after the fallback at batch 7
                raise CancelEpoch()
    monkeypatch.setattr(graphs, "_STATIC_ON_CPU", True)
    torch.manual_seed(0)
    net = logreg()
    sched = one_cycle(1e-2)
    h = fit(net, data(), 2, optim.Adam(net.parameters(), 1e-2), nn.NLLLoss(), callbacks=[CancelAt10()],
            schedule=sched, verbose=False, seed=1)
    # fit's `if graphed.why_not` must not be skipped by CancelEpoch: epoch 1 runs the eager loop
    assert h.info["step"].startswith("eager: a callback changes momentum"), h.info["step"]
    assert h.info["step"].endswith("(graphed until epoch 0)"), h.info["step"]  # says epoch 1
    # and epoch 1 fell back again at batch 0: before_batch/before_step twice there as well
    assert len(sched.used_lrs) == 10 + 16  # epoch 0 cancelled at batch 10, epoch 1 whole


# ---- MAX_RECAPTURES counts over the whole fit (minor): a rate of change once per epoch is not "every step"

def test_a_hyperparameter_changed_once_per_epoch_keeps_the_graph(monkeypatch):
    class DecayPerEpoch:
        def before_epoch(self, run):
            for g in run.opt.param_groups:
                g["weight_decay"] = 1e-4 * (run.epoch + 1)
    static, h = train(logreg, True, monkeypatch, epochs=6, callbacks=[DecayPerEpoch()])
    assert h.info["step"].startswith("static buffers"), h.info["step"]


# ---- CancelBatch from a graph-safe before_step: the same steps; the graphed loop never computed
# that batch's loss, so trn_loss leaves it out (documented in graphs.py)

def test_an_optimizer_swapped_in_by_a_callback_ends_the_graph_and_is_used(monkeypatch):
    class Swap:  # the Run lets a callback replace run.opt (used from the next epoch); the graph holds the old one
        def before_epoch(self, run):
            if run.epoch == 1:
                run.opt = optim.SGD(run.model.parameters(), lr=0.0)
    eager, _ = train(logreg, False, monkeypatch, callbacks=[Swap()])
    static, h = train(logreg, True, monkeypatch, callbacks=[Swap()])
    assert h.info["step"] == "eager: a callback replaced the optimizer or the loss (graphed until epoch 1)"
    assert same_weights(eager, static)


def test_a_batch_size_changed_between_epochs_ends_the_graph(monkeypatch):
    class Bigger:
        def before_epoch(self, run):
            run.data.trn_dl.bs = 64 + 36 * run.epoch
    eager, _ = train(logreg, False, monkeypatch, callbacks=[Bigger()])
    static, h = train(logreg, True, monkeypatch, callbacks=[Bigger()])
    assert h.info["step"] == "eager: the loader's batch size changed from 64 to 100 (graphed until epoch 1)"
    assert same_weights(eager, static)


def test_cancel_batch_in_before_step_skips_the_same_step(monkeypatch):
    class SkipStep5:
        graph_safe = True

        def before_step(self, run):
            if run.batch == 5:
                raise CancelBatch()
    eager, he = train(logreg, False, monkeypatch, epochs=1, callbacks=[SkipStep5()])
    static, hs = train(logreg, True, monkeypatch, epochs=1, callbacks=[SkipStep5()])
    assert same_weights(eager, static)
    assert hs["trn_loss"] == pytest.approx(he["trn_loss"], rel=1e-2)


# ---- GPU only: what the CPU stand-in cannot show (every stand-in step reassigns preds/loss and
# follows requires_grad; a replay does neither)

def _fit_gpu(graph, monkeypatch, make=mlp, epochs=2, callbacks=None, opt=optim.Adam):
    import sys
    fit_module = sys.modules["netfit.fit"]
    monkeypatch.setattr(fit_module, "graph_plan", graphs.graph_plan if graph else (lambda *a: "forced eager (test)"))
    torch.manual_seed(0)
    net = make().cuda()
    h = fit(net, data(device="cuda"), epochs, opt([p for p in net.parameters()], 1e-2), nn.NLLLoss(),
            [accuracy], callbacks=callbacks, verbose=False, seed=3)
    assert h.info["step"] == ("cuda graph" if graph else "eager: forced eager (test)"), h.info
    return net, h


@pytest.mark.gpu
def test_gpu_run_loss_and_preds_are_this_batchs_in_every_epoch(monkeypatch):
    seen = []

    class Record:
        def after_batch(self, run):
            seen.append((run.epoch, run.batch, len(run.preds), float(run.loss)))
    _fit_gpu(True, monkeypatch, callbacks=[Record()])
    # after epoch 0's eager short batch, self.preds/self.loss point at its tensors; replays in
    # epoch 1 leave them there: every batch of epoch 1 reports 40 preds and one stale loss
    assert all(n == (40 if b == 15 else 64) for e, b, n, _ in seen)
    assert len({loss for e, b, n, loss in seen if e == 1}) > 1


@pytest.mark.gpu
def test_gpu_unfreezing_a_layer_mid_fit_trains_it(monkeypatch):
    class Unfreeze:
        def before_epoch(self, run):
            if run.epoch == 1:
                for p in run.model[0].parameters():
                    p.requires_grad_(True)

    def make():
        net = mlp()
        for p in net[0].parameters():
            p.requires_grad_(False)
        return net
    eager, _ = _fit_gpu(False, monkeypatch, make=make, callbacks=[Unfreeze()])
    graphed, _ = _fit_gpu(True, monkeypatch, make=make, callbacks=[Unfreeze()])
    # the graph captured in epoch 0 neither computes nor applies layer 0's gradient in epoch 1
    torch.testing.assert_close(graphed[0].weight, eager[0].weight, rtol=1e-3, atol=1e-4)
