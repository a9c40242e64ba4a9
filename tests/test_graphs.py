"""The graphed training path (graphs.py) on the CPU: static buffers without capture must train exactly
like the eager loop; `graph_plan` must refuse what a captured step cannot do. The capture itself
runs in tests/test_gpu.py."""
import importlib

import numpy as np
import pytest
import torch
from torch import nn, optim

from netfit import ImageClassifierData, NonFiniteLossError, accuracy, fit, one_cycle
from netfit import graphs
from netfit.callbacks import GradientClip
from netfit.models import cnn, logreg, mlp

fit_module = importlib.import_module("netfit.fit")


def data(n=1000, n_valid=200, bs=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n + n_valid, 784)).astype(np.float32)
    y = (x @ rng.normal(size=(784, 10))).argmax(1).astype(np.int64)
    return ImageClassifierData.from_arrays(".", (x[:n], y[:n]), (x[n:], y[n:]), bs=bs, device="cpu")


def train(make, static, monkeypatch, epochs=2, opt=optim.Adam, callbacks=None, schedule=None, n=1000,
          verbose=False, **kw):
    monkeypatch.setattr(graphs, "_STATIC_ON_CPU", static)
    monkeypatch.setattr(fit_module, "mlp_plan", lambda *a: (None, "not on a CUDA GPU (test: no written-out step)"))
    torch.manual_seed(0)
    net = make()
    h = fit(net, data(n), epochs, opt(net.parameters(), 1e-2), nn.NLLLoss(), [accuracy],
            callbacks=callbacks, schedule=schedule, verbose=verbose, seed=1, **kw)
    return net, h


@pytest.mark.parametrize("make,opt", [(logreg, optim.Adam), (mlp, optim.SGD), (cnn, optim.AdamW)])
def test_static_path_trains_exactly_like_the_eager_loop(make, opt, monkeypatch):
    # 1000 rows, bs 64: 15 full batches and a short one of 40, every epoch
    eager, he = train(make, False, monkeypatch, opt=opt)
    static, hs = train(make, True, monkeypatch, opt=opt)
    assert he.info["step"].startswith("eager: not on a CUDA GPU")
    assert hs.info["step"].startswith("static buffers")
    for a, b in zip(eager.state_dict().values(), static.state_dict().values()):
        assert torch.equal(a, b)
    np.testing.assert_allclose(hs["trn_loss"], he["trn_loss"], rtol=1e-6)
    assert hs["accuracy"] == he["accuracy"]


def test_static_path_with_a_schedule_and_a_batch_callback(monkeypatch):
    seen = {}

    class Count:
        def before_batch(self, run):
            seen[run.step] = len(run.yb)

    results = []
    for static in (False, True):
        seen.clear()
        sched = one_cycle(1e-2, moms=None)
        net, h = train(logreg, static, monkeypatch, callbacks=[Count()], schedule=sched)
        results.append((net.state_dict(), list(sched.used_lrs), dict(seen), h[-1]["lr"]))
    (w0, lrs0, seen0, lr0), (w1, lrs1, seen1, lr1) = results
    assert lrs0 == lrs1 and len(lrs0) == 32 and seen0 == seen1 and lr0 == lr1
    assert sorted(set(seen1.values())) == [40, 64]
    assert all(torch.equal(w0[k], w1[k]) for k in w0)


def test_a_callback_replacing_the_batch_is_honoured(monkeypatch):
    class Zero:  # zero inputs: only the bias can learn
        def before_batch(self, run):
            run.xb = torch.zeros_like(run.xb)
    net, h = train(logreg, True, monkeypatch, callbacks=[Zero()])
    assert h.info["step"].startswith("static buffers")
    net0 = logreg()
    torch.manual_seed(0)
    net0 = logreg()
    assert torch.equal(net[0].weight, net0[0].weight)  # no gradient ever reached the weights
    assert not torch.equal(net[0].bias, net0[0].bias)


@pytest.mark.parametrize("kw,reason", [
    ({"fast": False}, "fast=False"),
    ({"accumulate": 2}, "accumulation"),
    ({"on_nan": "warn"}, "on_nan"),
    ({"callbacks": [GradientClip(1.0)]}, "GradientClip handles before_step"),
    ({"opt": optim.RMSprop}, "RMSprop is not a stock"),
])
def test_plan_says_why_a_fit_runs_eagerly(kw, reason, monkeypatch):
    net, h = train(logreg, True, monkeypatch, epochs=1, **kw)
    assert h.info["step"].startswith("eager: ") and reason in h.info["step"]


def test_momentum_changed_every_step_ends_the_graph_and_training_goes_on(monkeypatch):
    # one_cycle with moms changes Adam's betas each step: after MAX_RECAPTURES the rest runs eagerly
    eager, he = train(logreg, False, monkeypatch, schedule=one_cycle(1e-2))
    static, hs = train(logreg, True, monkeypatch, schedule=one_cycle(1e-2))
    assert "momentum" in hs.info["step"] and hs.info["step"].startswith("eager:")
    for a, b in zip(eager.state_dict().values(), static.state_dict().values()):
        assert torch.equal(a, b)
    np.testing.assert_allclose(hs["trn_loss"], he["trn_loss"], rtol=1e-6)


def test_non_finite_loss_stops_the_graphed_path(monkeypatch):
    class Poison:  # batch 7 (a replayed one: past the warm-up) gets a NaN input
        def before_batch(self, run):
            if run.batch == 7:
                run.xb = run.xb.clone()
                run.xb[0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="epoch 0, within the 32 batches up to batch 15"):
        train(logreg, True, monkeypatch, callbacks=[Poison()])


def test_rates_are_plain_floats_after_fit(monkeypatch):
    net, h = train(logreg, True, monkeypatch, schedule=one_cycle(1e-2, moms=None))
    assert isinstance(h[-1]["lr"], float)


def test_verbose_2_says_which_step_ran(monkeypatch, capsys):
    train(logreg, True, monkeypatch, epochs=1, verbose=2)
    out = capsys.readouterr().out
    assert "training step: static buffers, no capture (CPU); optimizer: Adam (fused kernel)" in out


def test_a_model_or_optimizer_with_hooks_is_not_graphed(monkeypatch):
    # a replay would not call a hook's Python: activation statistics or an EMA in a step hook would go stale
    calls = []
    monkeypatch.setattr(graphs, "_STATIC_ON_CPU", True)
    monkeypatch.setattr(fit_module, "mlp_plan", lambda *a: (None, "not on a CUDA GPU (test: no written-out step)"))
    net = logreg()
    net.register_forward_hook(lambda m, i, o: calls.append(1))
    h = fit(net, data(), 1, optim.Adam(net.parameters(), 1e-2), nn.NLLLoss(), verbose=False)
    assert h.info["step"].startswith("eager: the model has hooks"), h.info
    net = logreg()
    opt = optim.Adam(net.parameters(), 1e-2)
    opt.register_step_post_hook(lambda *a: calls.append(2))
    h = fit(net, data(), 1, opt, nn.NLLLoss(), verbose=False)
    assert h.info["step"].startswith("eager: the optimizer has step hooks"), h.info
    assert calls.count(1) >= 16 and calls.count(2) == 16  # every batch of 1000 rows in 64s

    class HookAtFit:  # hooks a callback adds when the fit begins end the graph from the first epoch
        def before_fit(self, run):
            run.model.register_forward_hook(lambda m, i, o: calls.append(3))
    net = logreg()
    h = fit(net, data(), 1, optim.Adam(net.parameters(), 1e-2), nn.NLLLoss(), callbacks=[HookAtFit()], verbose=False)
    assert "the model has hooks" in h.info["step"] and calls.count(3) >= 16, h.info


def test_a_param_group_added_mid_fit_ends_the_graph_and_trains_eagerly(monkeypatch):
    class AddGroup:  # at batch 5, a new layer's weights join the optimizer (as a fine-tuning callback may)
        def __init__(self, extra):
            self.extra = extra

        def after_batch(self, run):
            if run.epoch == 0 and run.batch == 5:
                run.opt.add_param_group({"params": list(self.extra.parameters())})
    results = {}
    for static in (False, True):
        torch.manual_seed(0)
        extra = nn.Linear(2, 2)
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.body, self.extra = logreg(), extra

            def forward(self, x):  # the extra layer's gradient is not zero: it must not add up over steps
                return self.body(x) + 0.01 * self.extra(x[:, :2]).mean(1, keepdim=True)
        net, h = train(Net, static, monkeypatch, opt=lambda ps, lr: optim.Adam(list(ps)[:2], lr, fused=True),
                       callbacks=[AddGroup(extra)])  # the body's weights; the extra layer's join at batch 5
        results[static] = (net, h)
    assert "param groups" in results[True][1].info["step"], results[True][1].info
    for a, b in zip(results[False][0].state_dict().values(), results[True][0].state_dict().values()):
        assert torch.equal(a, b)

