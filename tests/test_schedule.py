"""Schedules per step (one-cycle, cosine, step decay, momentum), the LR finder, per-layer rates, AdamW."""
import math

import matplotlib.figure
import numpy as np
import pytest
import torch
from torch import nn, optim

from netfit import (ImageClassifierData, accuracy, cosine, fit, fit_one_cycle, lr_find, one_cycle,
                    param_groups, plot_lr_find, set_lrs, step_decay)
from netfit.models import mlp


def blobs(n=600, d=8, c=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, (c, d))
    y = rng.integers(0, c, n)
    return (centers[y] + rng.normal(0, 1, (n, d))).astype(np.float32), y.astype(np.int64)


@pytest.fixture
def md():
    x, y = blobs()
    return ImageClassifierData.from_arrays(".", (x[:500], y[:500]), (x[500:], y[500:]), bs=32, device="cpu")


@pytest.fixture(scope="module")
def fashion_small(fashion):
    (x, y), (xv, yv), _ = fashion
    m, s = x[:4000].mean(), x[:4000].std()
    return ((x[:4000] - m) / s, y[:4000]), ((xv[:2000] - m) / s, yv[:2000])


def net(d=8, c=3, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 16), nn.ReLU(), nn.Linear(16, c), nn.LogSoftmax(dim=1))


class LrSpy:
    """What the optimizer holds at each step (the schedule sets it before the batch)."""

    def __init__(self):
        self.lrs, self.moms = [], []

    def before_step(self, run):
        g = run.opt.param_groups[0]
        self.lrs.append(g["lr"])
        self.moms.append(g["betas"][0] if "betas" in g else g["momentum"])


def test_one_cycle_sets_rate_and_momentum_per_step(md):
    m, spy = net(), LrSpy()
    h = fit(m, md, 3, optim.Adam(m.parameters()), callbacks=[spy], schedule=one_cycle(1e-2), verbose=False)
    steps = 3 * len(md.trn_dl)  # 16 batches of 32 per epoch
    lrs, moms = h.info["lrs"], h.info["moms"]
    assert len(lrs) == len(moms) == steps and lrs == spy.lrs and moms == spy.moms
    assert lrs[0] == pytest.approx(1e-2 / 25) and max(lrs) == pytest.approx(1e-2)
    peak = int(np.argmax(lrs))
    assert peak == steps // 4                                  # pct_start=0.25
    assert all(a < b for a, b in zip(lrs[:peak], lrs[1:peak + 1]))  # rises every step, not every epoch
    assert all(a > b for a, b in zip(lrs[peak:], lrs[peak + 1:]))
    assert lrs[-1] < 1e-2 / 100
    assert moms[0] == pytest.approx(0.95) and moms[peak] == pytest.approx(0.85) and moms[-1] > 0.94
    assert h["lr"] == [lrs[len(md.trn_dl) * (e + 1) - 1] for e in range(3)]  # epoch records keep the last rate


def test_schedule_counts_optimizer_steps_with_accumulation(md):
    m = net()
    h = fit(m, md, 2, optim.SGD(m.parameters(), 0.1, momentum=0.9), schedule=cosine(0.1, moms=(0.85, 0.95)),
            accumulate=3, verbose=False)
    per_epoch = math.ceil(len(md.trn_dl) / 3)
    assert len(h.info["lrs"]) == 2 * per_epoch
    assert h.info["lrs"][0] == pytest.approx(0.1) and h.info["lrs"][-1] < 0.1 * 0.05
    assert h.info["moms"][0] == pytest.approx(0.85) and h.info["moms"][-1] > 0.94


def test_cosine_and_step_decay_values():
    s = cosine(1.0, final=0.1, warmup=0.2)
    assert [s.lr_fn(p) for p in (0.0, 0.1)] == [0.0, 0.5] and s.lr_fn(0.2) == pytest.approx(1.0)
    assert s.lr_fn(0.6) == pytest.approx(0.55) and s.lr_fn(1.0) == pytest.approx(0.1)
    d = step_decay(gamma=0.5, milestones=(0.3, 0.6))
    assert [d.lr_fn(p) for p in (0.0, 0.29, 0.3, 0.59, 0.6, 0.99)] == [1, 1, 0.5, 0.5, 0.25, 0.25]


def test_step_decay_drops_within_an_epoch(md):
    m = net()
    h = fit(m, md, 1, optim.SGD(m.parameters(), 0.1), schedule=step_decay(0.2, milestones=(0.5,)), verbose=False)
    lrs = h.info["lrs"]
    assert lrs[:8] == [0.2] * 8 and lrs[8:] == [pytest.approx(0.02)] * 8
    assert "moms" not in h.info  # SGD without momentum: nothing scheduled


def test_set_lrs_and_param_groups_give_the_peaks(md):
    m = net()
    opt = optim.Adam(m.parameters())
    set_lrs(opt, 0.05)
    h = fit(m, md, 1, opt, schedule=cosine(), verbose=False)  # lr=None: start from the optimizer's rate
    assert h.info["lrs"][0] == pytest.approx(0.05)
    m = net()
    opt = optim.Adam(param_groups(m, [1e-3, 1e-2]))
    rates = []

    class Spy:
        def before_step(self, run):
            rates.append([g["lr"] for g in run.opt.param_groups])
    fit(m, md, 1, opt, callbacks=[Spy()], schedule=one_cycle(None), verbose=False)
    assert all(b == pytest.approx(10 * a) for a, b in rates)  # each group keeps its own peak
    assert max(b for _, b in rates) == pytest.approx(1e-2)
    with pytest.raises(ValueError, match="2 param groups"):
        fit(m, md, 1, opt, schedule=one_cycle([1e-3, 1e-2, 1e-1]), verbose=False)


def test_schedule_survives_resume(md, tmp_path, stop_at):
    m = net()
    full = fit(m, md, 2, optim.Adam(m.parameters()), schedule=one_cycle(1e-2), verbose=False, seed=0)
    m = net()
    opt = optim.Adam(m.parameters())
    ckpt = tmp_path / "ckpt"
    fit(m, md, 2, opt, callbacks=[stop_at(21)], schedule=one_cycle(1e-2), checkpoint=ckpt, checkpoint_every=5,
        verbose=False, seed=0)
    m = net()
    # checkpoints match callbacks by position: the same list, with a stop that never comes
    resumed = fit(m, md, 2, optim.Adam(m.parameters()), callbacks=[stop_at(-1)], schedule=one_cycle(1e-2),
                  checkpoint=ckpt, resume=True, verbose=False, seed=0)
    assert resumed.info["resumed_from"]["step"] == 20
    assert resumed.info["lrs"] == full.info["lrs"] and resumed.info["moms"] == full.info["moms"]


def test_fit_one_cycle_trains_and_records(md):
    m = net()
    h = fit_one_cycle(m, md, 2, 5e-2, metrics=[accuracy], verbose=False)
    assert h[-1]["accuracy"] > 0.9 and len(h.info["lrs"]) == 2 * len(md.trn_dl)


def test_lr_find_suggests_a_sensible_rate_and_restores_everything(fashion_small, tmp_path, stop_at):
    trn, val = fashion_small
    md = ImageClassifierData.from_arrays(".", trn, val, bs=64, device="cpu")
    torch.manual_seed(0)
    model = mlp()
    opt = optim.Adam(model.parameters(), 1e-3)
    fit(model, md, 1, opt, callbacks=[stop_at(3)], verbose=False)  # moments and step counts to restore
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    state = opt.state_dict()
    moments = {i: {k: v.clone() for k, v in s.items()} for i, s in state["state"].items()}
    groups = [{k: v for k, v in g.items()} for g in state["param_groups"]]
    torch.manual_seed(7)
    res = lr_find(model, md, opt=opt)
    after_rng = torch.rand(3)
    torch.manual_seed(7)
    assert torch.equal(after_rng, torch.rand(3))  # the generators are as they were, too
    assert 1e-4 <= res.suggestion <= 1e-1, res.suggestion
    assert len(res.lrs) == len(res.losses) == len(res.smoothed) and 100 < len(res.lrs) <= 200
    assert np.allclose(np.diff(np.log(res.lrs)), np.log(1e8) / 199)  # exponential sweep
    assert res.smoothed.min() < res.smoothed[0] - 0.5  # the loss did fall during the sweep
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    after = opt.state_dict()
    assert all(torch.equal(v, moments[i][k]) for i, s in after["state"].items() for k, v in s.items())
    assert after["param_groups"] == groups and opt.param_groups[0]["lr"] == 1e-3
    fig = plot_lr_find(res)
    assert isinstance(fig, matplotlib.figure.Figure) and fig.axes[0].get_xscale() == "log"
    fig.savefig(tmp_path / "lr_find.png")


def test_lr_find_rejects_bad_ranges(md):
    with pytest.raises(ValueError, match="start_lr"):
        lr_find(net(), md, start_lr=1.0, end_lr=1e-3)


def test_param_groups_rates_and_decay():
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    groups = param_groups(m, slice(1e-4, 1e-1))
    assert [g["lr"] for g in groups] == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1])  # ReLU has no parameters
    assert [g["lr"] for g in param_groups(m, slice(1e-2))] == pytest.approx([1e-3] * 3 + [1e-2])
    wd = param_groups(m, 1e-3, wd=0.1)
    assert [(len(g["params"]), g["weight_decay"]) for g in wd] == [(1, 0.1), (1, 0.0), (1, 0.1), (1, 0.0),
                                                                     (2, 0.0), (1, 0.1), (1, 0.0)]
    with pytest.raises(ValueError, match="3 learning rates for 4 layers"):
        param_groups(m, [1e-3] * 3)


def test_per_layer_rates_train_layers_at_their_rates(md):
    m = net()
    before = [p.detach().clone() for p in m.parameters()]
    fit(m, md, 1, optim.SGD(param_groups(m, [1e-6, 1e-1])), verbose=False)
    moved = [(p.detach() - b).abs().max().item() for p, b in zip(m.parameters(), before)]
    assert max(moved[:2]) < 1e-4 < min(moved[2:])


def test_adamw_decay_is_decoupled_and_skips_biases():
    # with zero gradients, AdamW's step is the decay alone: w <- w * (1 - lr * wd); Adam's L2 would
    # instead feed wd * w through the adaptive scaling and move w by about lr, whatever its size
    lin = nn.Linear(3, 2)
    w, b = lin.weight.detach().clone(), lin.bias.detach().clone()
    opt = optim.AdamW(param_groups(nn.Sequential(lin), 0.1, wd=0.5))
    lin.weight.grad, lin.bias.grad = torch.zeros_like(w), torch.zeros_like(b)
    opt.step()
    torch.testing.assert_close(lin.weight.detach(), w * (1 - 0.1 * 0.5))
    assert torch.equal(lin.bias.detach(), b)


def test_lr_find_suggestion_for_a_trained_model_is_inside_the_sweep():
    """A loss that does not fall (a model already trained) gets a tenth of the rate where it starts to
    climb, not a rate below the range swept."""
    from netfit.schedule import _suggest
    lrs = 1e-7 * (1e8) ** (np.arange(200) / 199)
    smoothed = np.where(lrs < 1e-2, 0.3, 0.3 + np.log10(lrs / 1e-2))
    smoothed[:3] = [0.2, 0.25, 0.28]  # the first, noisy averages
    steepest, min_div10 = _suggest(lrs, smoothed)
    assert 5e-4 < steepest < 2e-3 and min_div10 >= lrs[0]


def test_max_lr_as_fastais_slice_spreads_over_the_param_groups():
    from netfit.schedule import _spread
    assert _spread(slice(1e-4, 1e-2), 3) == pytest.approx([1e-4, 1e-3, 1e-2])
    assert _spread(slice(1e-2), 3) == pytest.approx([1e-3, 1e-3, 1e-2])
    assert _spread(slice(1e-4, 1e-2), 1) == [1e-2]


def test_one_rate_per_layer_reaches_both_groups_of_a_layer_with_weight_decay():
    from torch import nn
    from netfit import ImageClassifierData, fit, one_cycle, param_groups
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3), nn.LogSoftmax(dim=1))
    opt = torch.optim.AdamW(param_groups(net, 1e-3, wd=0.01))  # 3 layers, 6 groups (decay / no decay)
    x = np.random.default_rng(0).random((64, 4), dtype=np.float32)
    md = ImageClassifierData.from_arrays(".", (x, np.arange(64) % 3), (x, np.arange(64) % 3), device="cpu")
    for rates in ([1e-4, 1e-3, 1e-2], slice(1e-4, 1e-2)):
        sched = one_cycle(rates)
        fit(net, md, 1, opt, schedule=sched, verbose=False)
        assert sched.peaks == pytest.approx([1e-4, 1e-4, 1e-3, 1e-3, 1e-2, 1e-2])
    with pytest.raises(ValueError, match="got 2 learning rates for 6 param groups \\(3 layers\\)"):
        fit(net, md, 1, opt, schedule=one_cycle([1e-3, 1e-2]), verbose=False)


def test_resuming_a_schedule_with_more_epochs_warns_that_its_rate_jumps(tmp_path):
    from netfit import Callback, one_cycle

    class Stop(Callback):
        def after_batch(self, run):
            if run.epoch == 1 and run.batch == 3:
                raise KeyboardInterrupt
    x = np.random.default_rng(0).random((256, 6), dtype=np.float32)
    y = (x[:, 0] > 0.5).astype(np.int64)
    md = ImageClassifierData.from_arrays(".", (x, y), (x[:64], y[:64]), bs=32, device="cpu")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 2), nn.LogSoftmax(dim=1))
    opt = optim.Adam(net.parameters())
    with pytest.raises(KeyboardInterrupt):
        fit(net, md, 2, opt, schedule=one_cycle(1e-2), callbacks=[Stop()], checkpoint=tmp_path / "c",
            checkpoint_every=2, verbose=False)
    with pytest.warns(UserWarning, match="laid out over 16 steps and this resumed fit lays it over 32"):
        fit(net, md, 4, opt, schedule=one_cycle(1e-2), checkpoint=tmp_path / "c", resume=True, verbose=False)
