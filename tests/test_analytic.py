"""The CPU step with the MLP gradient written out (analytic.py) against its twin, autograd's eager loop:
the same weights, optimizer state, losses and events; `mlp_plan` keeps every other model eager."""
import importlib
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn, optim

from netfit import ImageClassifierData, NonFiniteLossError, accuracy, fit, one_cycle
from netfit import analytic
from netfit.analytic import MLPStep, ThreadTrial, mlp_plan
from netfit.data import ArrayLoader
from netfit.models import logreg, mlp

fit_module = importlib.import_module("netfit.fit")


def data(n=1000, n_valid=200, bs=64, seed=0, dims=(784,)):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n + n_valid, 784)).astype(np.float32)
    y = (x @ rng.normal(size=(784, 10))).argmax(1).astype(np.int64)
    x = x.reshape(-1, *dims)
    return ImageClassifierData.from_arrays(".", (x[:n], y[:n]), (x[n:], y[n:]), bs=bs, device="cpu")


def train(make, written, monkeypatch, epochs=2, opt=lambda ps: optim.Adam(ps, 1e-2), crit=None, dims=(784,),
          verbose=False, loaders=None, **kw):
    """Fit from a fixed init; `written=False` forces autograd's eager loop (the reference). `loaders()`
    gives the data to fit on (default: `data(dims=dims)`)."""
    with monkeypatch.context() as m:
        if not written:
            m.setattr(fit_module, "mlp_plan", lambda *a: (None, "test: autograd"))
        torch.manual_seed(0)
        net = make()
        o = opt(net.parameters())
        md = loaders() if loaders else data(dims=dims)
        h = fit(net, md, epochs, o, crit or nn.NLLLoss(), [accuracy], verbose=verbose, seed=1, **kw)
    assert h.info["step"].startswith("MLP gradient written out") == written, h.info["step"]
    return net, o, h


def assert_twins(a, b, atol=2e-6):
    (net_a, opt_a, h_a), (net_b, opt_b, h_b) = a, b
    for (k, p), q in zip(net_a.state_dict().items(), net_b.state_dict().values()):
        torch.testing.assert_close(p, q, atol=atol, rtol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
    for sa, sb in zip(opt_a.state.values(), opt_b.state.values()):
        assert sa.keys() == sb.keys()
        for k in sa:
            torch.testing.assert_close(sa[k], sb[k], atol=atol, rtol=1e-4, msg=lambda m, k=k: f"{k}: {m}")
    np.testing.assert_allclose(h_a["trn_loss"], h_b["trn_loss"], rtol=1e-5)
    np.testing.assert_allclose(h_a["accuracy"], h_b["accuracy"], atol=0.006)  # one validation row in 200


def flat_mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 16, bias=False), nn.ReLU(),
                         nn.Linear(16, 10), nn.LogSoftmax())  # dim=None, as the lesson writes it


CASES = {
    "logreg-Adam": dict(make=logreg),
    "mlp-AdamW-wd": dict(make=mlp, opt=lambda ps: optim.AdamW(ps, 3e-3, weight_decay=0.05)),
    "mlp-SGD-momentum-wd": dict(make=mlp, opt=lambda ps: optim.SGD(ps, 0.05, momentum=0.9, weight_decay=1e-3)),
    "mlp-SGD-nesterov-dampening": dict(make=mlp, opt=lambda ps: optim.SGD(ps, 0.05, momentum=0.8, nesterov=True)),
    "logreg-SGD-plain": dict(make=logreg, opt=lambda ps: optim.SGD(ps, 0.1)),
    "mlp-RMSprop (opt.step)": dict(make=mlp, opt=lambda ps: optim.RMSprop(ps, 1e-3)),
    "logits-CrossEntropy": dict(make=lambda: nn.Linear(784, 10), crit=nn.CrossEntropyLoss()),
    "logsoftmax-CrossEntropy": dict(make=logreg, crit=F.cross_entropy),
    "flatten-images-nobias": dict(make=flat_mlp, dims=(1, 28, 28)),
    "Adam-maximize-l2": dict(make=logreg, opt=lambda ps: optim.Adam(ps, 1e-3, weight_decay=0.01, maximize=True)),
    "Adam-two-groups": dict(make=mlp, opt=lambda ps: optim.Adam([{"params": list(ps)[:2], "lr": 1e-3},
                                                                  {"params": []}], 1e-2)),
    "one_cycle-with-moms": dict(make=mlp, schedule=None),
}


@pytest.mark.parametrize("case", CASES)
def test_written_out_step_trains_like_autograd(case, monkeypatch):
    kw = dict(CASES[case])
    if case == "Adam-two-groups":  # the second group takes the other layers
        def two(ps):
            ps = list(ps)
            return optim.Adam([{"params": ps[:2], "lr": 1e-3}, {"params": ps[2:]}], 1e-2)
        kw["opt"] = two
    if case == "one_cycle-with-moms":  # Adam's betas change every step: read afresh each step
        kw.pop("schedule")
        runs = [train(written=w, monkeypatch=monkeypatch, schedule=one_cycle(1e-2), **kw) for w in (False, True)]
    else:
        runs = [train(written=w, monkeypatch=monkeypatch, **kw) for w in (False, True)]
    # a hidden layer: a few gradient elements near 0 where Adam's m/sqrt(v) magnifies rounding (1 in 78,400 here)
    assert_twins(*runs, atol=3e-5 if kw["make"] in (mlp, flat_mlp) else 2e-6)


def test_history_says_which_step_and_kernel_ran(monkeypatch, capsys):
    net, opt, h = train(logreg, True, monkeypatch, epochs=1, verbose=2)
    assert h.info["step"] == "MLP gradient written out (CPU), Adam through its fused kernel called directly"
    assert "training step: MLP gradient written out" in capsys.readouterr().out
    _, _, h = train(mlp, True, monkeypatch, epochs=1, opt=lambda ps: optim.RMSprop(ps, 1e-3))
    assert h.info["step"].endswith("RMSprop through opt.step()")
    _, _, h = train(mlp, True, monkeypatch, epochs=1, opt=lambda ps: optim.SGD(ps, 0.1, momentum=0.9))
    assert h.info["step"].endswith("SGD through its fused kernel called directly")


def direct_kernel_calls(monkeypatch):
    """A list that gets, per written-out step, whether it called the fused kernel directly."""
    calls = []
    real = MLPStep._kernel_groups

    def spy(self):
        groups = real(self)
        calls.append(groups is not None)
        return groups
    monkeypatch.setattr(MLPStep, "_kernel_groups", spy)
    return calls


@pytest.mark.parametrize("opt", [lambda ps: optim.Adam(ps, 1e-2), lambda ps: optim.SGD(ps, 0.1, momentum=0.9)])
def test_the_fused_kernel_is_called_directly_after_the_first_step(opt, monkeypatch):
    calls = direct_kernel_calls(monkeypatch)
    train(mlp, True, monkeypatch, epochs=1, opt=opt)
    assert calls[0] is False and all(calls[1:]) and len(calls) == 16  # the first creates the state


@pytest.mark.parametrize("make,crit,kw,reason", [
    (lambda: nn.Sequential(nn.Linear(784, 10), nn.Tanh(), nn.Linear(10, 10), nn.LogSoftmax(1)), None, {},
     "not Linear layers with ReLU"),
    (lambda: nn.Sequential(nn.Linear(784, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 10), nn.LogSoftmax(1)), None,
     {}, "not Linear layers with ReLU"),
    (logreg, nn.CrossEntropyLoss(label_smoothing=0.1), {}, "label smoothing"),
    (logreg, nn.NLLLoss(weight=torch.ones(10)), {}, "class weights"),
    (logreg, None, {"amp": True}, "bfloat16 autocast"),
    (logreg, None, {"accumulate": 2}, "gradient accumulation"),
    (logreg, None, {"fast": False}, "fast=False"),
])
def test_other_models_and_settings_stay_on_autograd(make, crit, kw, reason, monkeypatch):
    torch.manual_seed(0)
    net = make()
    h = fit(net, data(), 1, optim.Adam(net.parameters()), crit, verbose=False, **kw)
    assert h.info["step"].startswith("eager: ") and reason in h.info["step"], h.info["step"]


def test_a_layer_frozen_before_fit_keeps_autograd():
    net = mlp()
    net[0].requires_grad_(False)
    w = net[0].weight.detach().clone()
    h = fit(net, data(), 1, optim.SGD(net.parameters(), 0.1), verbose=False)
    assert h.info["step"] == "eager: some of the optimizer's parameters are frozen (requires_grad=False)"
    assert torch.equal(net[0].weight, w)


def test_hooks_and_in_step_callbacks_keep_autograd():
    net = logreg()
    net[0].register_forward_hook(lambda m, i, o: None)
    h = fit(net, data(), 1, verbose=False)
    assert h.info["step"] == "eager: the model has hooks"

    class Clip:
        def after_backward(self, run):
            nn.utils.clip_grad_norm_(run.model.parameters(), 1.0)
    h = fit(mlp(), data(), 1, callbacks=[Clip()], verbose=False)
    assert "Clip handles after_backward" in h.info["step"]


def test_optimizer_hooks_run_through_opt_step(monkeypatch):
    torch.manual_seed(0)
    net = logreg()
    opt = optim.Adam(net.parameters(), 1e-2)
    calls = []
    opt.register_step_post_hook(lambda o, a, k: calls.append(1))
    h = fit(net, data(), 1, opt, verbose=False)
    assert h.info["step"].startswith("MLP gradient written out")
    assert len(calls) == h.info["batches_per_epoch"] == 16  # every step went through opt.step()


def test_batches_are_new_tensors_a_callback_may_keep(monkeypatch):
    kept = []

    class Keep:
        def before_batch(self, run):
            kept.append((run.xb, run.yb))
    md = data()
    fit(logreg(), md, 1, callbacks=[Keep()], verbose=False, seed=3)
    order = md.trn_dl.order(3)
    xs = torch.cat([x for x, _ in kept])
    assert torch.equal(xs, md.trn_dl.x[order]) and torch.equal(torch.cat([y for _, y in kept]), md.trn_dl.y[order])


def test_non_finite_loss_stops_before_the_update():
    class Poison:
        def before_batch(self, run):
            if run.batch == 5:
                run.xb = torch.full_like(run.xb, float("nan"))
            if run.batch == 4:
                self.before = [p.detach().clone() for p in run.model.parameters()]

        def after_batch(self, run):
            self.after = [p.detach().clone() for p in run.model.parameters()]
    p = Poison()
    with pytest.raises(NonFiniteLossError, match=r"epoch 0, batch 5 \(optimizer step 5\)"):
        fit(mlp(), data(), 1, callbacks=[p], verbose=False)
    assert all(not torch.isnan(a).any() for a in p.after)  # after batch 4: the NaN batch never stepped


def test_freezing_a_layer_mid_fit_hands_over_to_autograd(monkeypatch):
    class Freeze:
        def before_batch(self, run):
            if run.epoch == 1 and run.batch == 0:
                run.model[0].requires_grad_(False)
                self.w = run.model[0].weight.detach().clone()
    f = Freeze()
    net = mlp()
    h = fit(net, data(), 2, optim.SGD(net.parameters(), 0.1), callbacks=[f], verbose=False)
    assert h.info["step"].startswith("eager: a callback froze") and "until epoch 1" in h.info["step"]
    assert torch.equal(net[0].weight, f.w)


def test_checkpoint_resume_across_the_two_steps(monkeypatch, tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    full = train(mlp, True, monkeypatch, epochs=3)
    train(mlp, True, monkeypatch, epochs=2, checkpoint=ckpt)
    resumed = train(mlp, True, monkeypatch, epochs=3, checkpoint=ckpt, resume=True)
    assert_twins(full, resumed, atol=0)


def test_mlp_step_gradient_matches_autograd_for_any_batch():
    torch.manual_seed(0)
    net = flat_mlp().double()
    x, y = torch.randn(37, 1, 28, 28, dtype=torch.float64), torch.randint(0, 10, (37,))
    dl = ArrayLoader(x, y, bs=16)
    opt = optim.SGD(net.parameters(), 0.0)
    plan, why = mlp_plan(net, nn.NLLLoss(), opt, dl, None)
    assert why is None
    grads = {}
    opt.step = lambda: grads.update({p: p.grad.clone() for p in net.parameters()})  # catch what opt.step gets
    step = MLPStep(net, opt, nn.NLLLoss(), dl, plan)
    assert step.step(x, y)
    F.nll_loss(net(x), y).backward()
    for p in net.parameters():
        torch.testing.assert_close(grads[p], p.grad, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(step.preds, net(x).detach())


def test_a_callback_reshaping_the_batch_hands_over_to_autograd():
    class AsImages:  # the model takes either shape; the written-out step was planned for flat rows
        def before_batch(self, run):
            if run.epoch == 1:
                run.xb = run.xb.reshape(len(run.xb), 1, 28, 28)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.LogSoftmax(dim=1))
    h = fit(net, data(), 2, callbacks=[AsImages()], verbose=False)
    assert h.info["step"].startswith("eager: a callback changed the batch to (64, 1, 28, 28)"), h.info["step"]
    assert h.info["step"].endswith("(gradient written out until epoch 1)")
    assert h[1]["trn_loss"] < h[0]["trn_loss"]  # epoch 1 trained, through autograd


# ---- what a review found the first version got wrong: each against the autograd loop

def small_mlp():
    return nn.Sequential(nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 10), nn.LogSoftmax(dim=1))


def twins(make, opt, callbacks, monkeypatch, epochs=2):
    runs = [train(make, w, monkeypatch, epochs=epochs, opt=opt, callbacks=callbacks()) for w in (False, True)]
    assert_twins(*runs, atol=3e-5)
    return runs


def test_layers_sharing_weights_keep_autograd():
    lin = nn.Linear(16, 16)
    net = nn.Sequential(nn.Linear(784, 16), nn.ReLU(), lin, nn.ReLU(), lin, nn.ReLU(), nn.Linear(16, 10),
                        nn.LogSoftmax(dim=1))
    assert fit(net, data(), 1, verbose=False).info["step"] == "eager: layers of the model share weights"


def test_weights_whose_storage_a_callback_replaces(monkeypatch):
    class MaxNorm:  # the classic constraint, written the old way: w.data = ...
        def after_batch(self, run):
            w = run.model[0].weight
            w.data = w.data.renorm(2, 0, 0.5)
    twins(small_mlp, lambda ps: optim.Adam(ps, 1e-2), lambda: [MaxNorm()], monkeypatch)


def test_a_layer_unfrozen_into_a_new_param_group_trains(monkeypatch):
    class Unfreeze:
        def before_epoch(self, run):
            if run.epoch == 1:
                run.model[0].requires_grad_(True)
                run.opt.add_param_group({"params": list(run.model[0].parameters()), "lr": 1e-2})

    def make():
        net = small_mlp()
        net[0].requires_grad_(False)
        return net
    torch.manual_seed(0)
    w0 = make()[0].weight.detach().clone()
    (_, _, _), (net, opt, h) = twins(make, lambda ps: optim.Adam([p for p in ps if p.requires_grad], 1e-2),
                                     lambda: [Unfreeze()], monkeypatch)
    assert not torch.equal(net[0].weight, w0) and len(opt.state) == 4
    assert h.info["step"].startswith("MLP gradient written out")


@pytest.mark.parametrize("opt", [lambda ps: optim.Adam([{"params": list(ps)}, {"params": []}], 1e-2),
                                 lambda ps: optim.SGD([{"params": list(ps)}, {"params": []}], 0.1, momentum=0.9)])
def test_an_empty_param_group(opt, monkeypatch):
    twins(small_mlp, opt, list, monkeypatch)


def test_a_callback_that_halves_the_batch_counts_the_rows_it_trained(monkeypatch):
    class Half:
        def before_batch(self, run):
            run.xb, run.yb = run.xb[::2], run.yb[::2]
    (_, _, he), (_, _, hw) = twins(small_mlp, lambda ps: optim.SGD(ps, 0.1), lambda: [Half()], monkeypatch)
    assert hw.info["step"].startswith("MLP gradient written out")


def test_non_finite_loss_after_a_hand_over_stops_before_the_update():
    class Poison:
        def before_batch(self, run):
            if run.epoch == 1:
                run.xb = run.xb.reshape(len(run.xb), 1, 28, 28)  # hands over to autograd
                if run.batch == 3:
                    run.xb = torch.full_like(run.xb, float("nan"))
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.LogSoftmax(dim=1))
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, batch 3 "):
        fit(net, data(), 2, callbacks=[Poison()], verbose=False)
    assert all(torch.isfinite(p).all() for p in net.parameters())


def test_preds_are_contiguous_as_the_model_returns_them():
    seen = []

    class Flat:
        def after_batch(self, run):
            seen.append(run.preds.view(-1).shape)
    h = fit(small_mlp(), data(), 1, callbacks=[Flat()], verbose=False)
    assert h.info["step"].startswith("MLP gradient written out") and seen[0] == (640,)


# ---- a second review: the library and a user's workflow around the step

def test_labels_of_minus_100_are_ignored_as_nll_loss_does(monkeypatch):
    md = data()
    md.trn_dl.y[::7] = -100  # NLLLoss's ignore_index: these rows do not count
    torch.manual_seed(0)
    net = small_mlp()
    h = fit(net, md, 1, verbose=False)
    assert h.info["step"] == "eager: some labels are negative (the loss's ignore_index)"


def test_hooks_a_callback_adds_in_before_fit_are_called():
    calls = []

    class Watch:
        def before_fit(self, run):
            run.model[0].register_forward_hook(lambda m, i, o: calls.append(1))
    h = fit(small_mlp(), data(), 1, callbacks=[Watch()], verbose=False)
    assert len(calls) >= 16 and h.info["step"].startswith("eager: the model has hooks"), h.info["step"]


def test_an_optimizer_or_loss_a_callback_swaps_in_is_used(monkeypatch):
    class Swap:
        def before_epoch(self, run):
            if run.epoch == 1:
                run.opt = optim.SGD(run.model.parameters(), lr=0.0)  # frozen from here on
                self.w = run.model[0].weight.detach().clone()
    sw = Swap()
    net = small_mlp()
    h = fit(net, data(), 2, callbacks=[sw], verbose=False)
    assert torch.equal(net[0].weight, sw.w) and h.info["step"].startswith("MLP gradient written out")

    class Smooth:
        def before_epoch(self, run):
            run.crit = nn.CrossEntropyLoss(label_smoothing=0.2)
    h = fit(small_mlp(), data(), 1, callbacks=[Smooth()], verbose=False)
    assert h.info["step"].startswith("eager: a callback replaced the optimizer or the loss: the loss has class weights, "
                                     "label smoothing"), h.info["step"]


def test_a_batch_size_changed_between_epochs_still_covers_every_row(monkeypatch):
    class Double:
        def before_epoch(self, run):
            self.rows = 0
            run.data.trn_dl.bs = 64 * 2 ** run.epoch

        def after_batch(self, run):
            self.rows += len(run.yb)

        def after_epoch(self, run):
            assert self.rows == 1000
    twins(small_mlp, lambda ps: optim.SGD(ps, 0.1), lambda: [Double()], monkeypatch, epochs=3)


def test_a_torch_lr_scheduler_keeps_the_direct_kernel(monkeypatch):
    from netfit.callbacks import TorchScheduler
    callbacks = []

    def opt(ps):  # the scheduler wraps this run's optimizer's step; fit gets it through `callbacks`
        o = optim.Adam(ps, 1e-2)
        callbacks[:] = [TorchScheduler(torch.optim.lr_scheduler.StepLR(o, 1, gamma=0.5))]
        return o
    runs = [train(small_mlp, w, monkeypatch, opt=opt, callbacks=callbacks) for w in (False, True)]
    assert_twins(*runs, atol=3e-5)
    assert runs[1][2].info["step"].endswith("Adam through its fused kernel called directly")
    assert [r["lr"] for r in runs[1][2].records] == [1e-2, 5e-3]  # the rate each epoch trained with


def test_a_loader_whose_order_holds_half_the_rows(monkeypatch):
    class Half(ArrayLoader):  # each epoch trains on a random half of the rows, as its batches() would
        def order(self, seed=None):
            return super().order(seed)[: len(self.x) // 2]

    def loaders():
        md = data()
        return Half(md.trn_dl.x, md.trn_dl.y, bs=64, shuffle=True), md.val_dl
    runs = [train(small_mlp, w, monkeypatch, loaders=loaders) for w in (False, True)]
    assert runs[1][2].info["step"].startswith("MLP gradient written out")
    assert_twins(*runs, atol=3e-5)


class RewindState:
    """At batch 5 of epoch 1 the optimizer goes back to its state after epoch 0 (load_state_dict: new
    state tensors), and at batch 9 its state is cleared (Adam then starts over; SGD's momentum restarts)."""

    def after_epoch(self, run):
        if run.epoch == 0:
            self.saved = run.opt.state_dict()

    def after_batch(self, run):
        if run.epoch == 1 and run.batch == 5:
            run.opt.load_state_dict(self.saved)
        if run.epoch == 1 and run.batch == 9:
            run.opt.state.clear()


@pytest.mark.parametrize("opt", [lambda ps: optim.Adam(ps, 1e-2), lambda ps: optim.SGD(ps, 0.05, momentum=0.9)])
def test_optimizer_state_reloaded_or_cleared_mid_fit(opt, monkeypatch):
    (_, opt_a, _), (_, opt_b, _) = twins(small_mlp, opt, lambda: [RewindState()], monkeypatch)
    assert len(opt_a.state) == len(opt_b.state) == 4


def test_momentum_switched_on_mid_fit(monkeypatch):
    class MomentumOn:  # SGD's momentum buffers appear only from epoch 1
        def before_epoch(self, run):
            if run.epoch == 1:
                run.opt.param_groups[0]["momentum"] = 0.9
    calls = direct_kernel_calls(monkeypatch)
    (_, opt_a, _), (_, opt_b, _) = twins(small_mlp, lambda ps: optim.SGD(ps, 0.05), lambda: [MomentumOn()],
                                         monkeypatch)
    assert all(s["momentum_buffer"] is not None for s in opt_b.state.values()) and len(opt_b.state) == 4
    assert calls.count(False) == 1 and len(calls) == 32  # one opt.step() to make the buffers, then direct again


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()  # conftest runs the suite on one
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def trial_clock(monkeypatch, cost_one, cost_torch, warm=2, trial_s=2, every_s=4, longest_s=8):
    """The trial's clock reads a virtual time that each step advances by `cost_one` on one thread and
    by `cost_torch` on torch's count; returns the list of thread counts the steps ran on."""
    now, counts = [0], []
    real = MLPStep._train

    def step(self, xb, yb):
        counts.append(torch.get_num_threads())
        now[0] += cost_one if counts[-1] == 1 else cost_torch
        real(self, xb, yb)
    monkeypatch.setattr(MLPStep, "_train", step)
    monkeypatch.setattr(analytic, "perf_counter", lambda: now[0])
    for k, v in dict(warm=warm, trial_s=trial_s, every_s=every_s, longest_s=longest_s).items():
        monkeypatch.setattr(ThreadTrial, k, v)
    return counts


@pytest.mark.parametrize("one_faster", [True, False])
def test_the_step_runs_on_the_thread_count_its_trial_timed_faster(one_faster, two_threads, monkeypatch):
    in_step, in_callbacks = trial_clock(monkeypatch, 1, 1.5) if one_faster else trial_clock(monkeypatch, 2, 1), set()

    class Watch:
        def before_batch(self, run):
            in_callbacks.add(torch.get_num_threads())
        after_batch = before_batch

    fit(mlp(), data(), 2, callbacks=[Watch()], verbose=False)  # 16 steps an epoch
    # 2 warm-up steps (not timed), 2 on one thread (2 s), 2 on two, then the faster until the next trial
    if one_faster:  # the next trial 4 s later; it agrees, so the one after comes 8 s later
        assert in_step == [2, 2, 1, 1, 2, 2, 1, 1, 1, 1, 1, 1, 2, 2, 1, 1] + [1] * 8 + [2, 2] + [1] * 6
    else:  # the next trial 8 s later (it agrees with the initial choice), interrupted by the epoch's end
        assert in_step == [2, 2, 1, 1] + [2] * 10 + [1, 1] + [2, 2, 1, 1] + [2] * 10 + [1, 1]
    assert in_callbacks == {2} and torch.get_num_threads() == 2


def test_a_trial_stops_once_torchs_count_is_slower(two_threads, monkeypatch):
    in_step = trial_clock(monkeypatch, 1, 5)
    fit(mlp(), data(), 1, verbose=False)
    assert in_step == [2, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1]  # each trial's 2nd 2-thread step skipped


def test_trials_that_agree_come_further_apart(two_threads, monkeypatch):
    in_step = trial_clock(monkeypatch, 1, 5, longest_s=32)
    fit(mlp(), data(), 4, verbose=False)  # 64 steps, every 16th the short last batch, which starts no trial
    assert [i for i, c in enumerate(in_step) if c == 2] == [0, 1, 4, 11, 22, 41]  # warm-up, then 4, 8, 16 s apart


def test_deterministic_fits_keep_torchs_thread_count(two_threads, monkeypatch):
    in_step = trial_clock(monkeypatch, 1, 5)
    fit(mlp(), data(), 1, deterministic=True, verbose=False)
    assert set(in_step) == {2}


def test_seeded_fits_keep_torchs_thread_count_and_repeat_bit_for_bit(two_threads, monkeypatch):
    in_step = trial_clock(monkeypatch, 1, 5)  # one thread would be timed faster
    nets, hs = [], []
    for _ in range(2):
        torch.manual_seed(0)
        nets.append(mlp())
        hs.append(fit(nets[-1], data(), 2, seed=0, verbose=False))
    assert set(in_step) == {2} and "ThreadTrial" not in hs[0].info["step"]
    assert hs[0]["trn_loss"] == hs[1]["trn_loss"] and all(map(torch.equal, nets[0].parameters(), nets[1].parameters()))


def test_a_seeded_fit_interrupted_and_resumed_on_two_threads_ends_as_one_not_interrupted(two_threads, tmp_path):
    class CtrlC:
        def after_batch(self, run):
            if run.epoch == 1 and run.batch == 5:
                raise KeyboardInterrupt

    def run(ckpt, callbacks=(), resume=False, net=None):
        if net is None:
            torch.manual_seed(0)
            net = mlp()
        fit(net, data(), 3, callbacks=list(callbacks), seed=0, checkpoint=ckpt, checkpoint_every=4, resume=resume,
            verbose=False)
        return net
    whole = run(tmp_path / "a")
    torch.manual_seed(0)
    net = mlp()
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", [CtrlC()], net=net)
    resumed = run(tmp_path / "b", resume=True, net=net)
    assert all(map(torch.equal, whole.parameters(), resumed.parameters()))


def test_one_thread_steps_train_like_autograd(two_threads, monkeypatch):
    trial_clock(monkeypatch, 1, 5)
    twins(small_mlp, lambda ps: optim.Adam(ps, 1e-2), list, monkeypatch)


def test_history_says_how_many_steps_ran_on_one_thread(two_threads, monkeypatch):
    trial_clock(monkeypatch, 1, 1.5)
    h = fit(mlp(), data(), 1, verbose=False)
    assert h.info["step"].endswith("Adam through its fused kernel called directly; "
                                   "10 of 16 steps on one thread, 6 on 2 (ThreadTrial)")


class MidFitEdits:
    """At batch 5 of epoch 0, one of the edits a callback might make to the optimizer or the data."""

    def __init__(self, edit):
        self.edit = edit

    def after_batch(self, run):
        if run.epoch == 0 and run.batch == 5:
            self.edit(run)


def _swap_groups(run):
    g0, g1 = run.opt.param_groups
    g0["params"], g1["params"] = g1["params"], g0["params"]


def _new_group_dict(run):
    run.opt.param_groups[0] = {**run.opt.param_groups[0], "lr": 1e-4}


def _new_state_tensors(run):
    for s in run.opt.state.values():
        for k in s:
            s[k] = torch.zeros_like(s[k])


def _new_parameter(run):
    lin = run.model[0]
    lin.weight = nn.Parameter(lin.weight.detach().clone())
    run.opt.param_groups[0]["params"][0] = lin.weight


def _labels_edited(run):
    run.data.trn_dl.y[:] = run.data.trn_dl.y.flip(0)


def _two_groups(ps):
    ps = list(ps)
    return optim.Adam([{"params": ps[:2], "lr": 1e-2}, {"params": ps[2:], "lr": 1e-3}])


@pytest.mark.parametrize("edit,opt", [
    (_swap_groups, _two_groups), (_new_group_dict, None), (_new_state_tensors, None),
    (_new_state_tensors, lambda ps: optim.SGD(ps, 0.05, momentum=0.9)), (_new_parameter, None),
    (_labels_edited, None)], ids=["params swapped between groups", "a group's dict replaced",
                                  "Adam's state tensors replaced", "SGD's momentum buffers replaced",
                                  "a weight replaced in its layer and its group", "labels edited mid-epoch"])
def test_edits_a_callback_makes_mid_epoch_are_seen_at_the_next_step(edit, opt, monkeypatch):
    twins(small_mlp, opt or (lambda ps: optim.Adam(ps, 1e-2)), lambda: [MidFitEdits(edit)], monkeypatch)


def test_optimizer_hooks_run_on_torchs_thread_count(two_threads, monkeypatch):
    trial_clock(monkeypatch, 1, 5)
    seen = set()
    net = mlp()
    opt = optim.Adam(net.parameters(), fused=True)
    opt.register_step_post_hook(lambda *a: seen.add(torch.get_num_threads()))
    h = fit(net, data(), 1, opt, verbose=False)
    assert seen == {2} and h.info["step"].startswith("MLP gradient written out")


def test_history_counts_the_threads_steps_ran_on_when_a_callback_sets_them(two_threads, monkeypatch):
    class Four:
        def before_epoch(self, run):
            if run.epoch == 1:
                torch.set_num_threads(4)
    trial_clock(monkeypatch, 5, 1)  # torch's count faster: 4 steps an epoch on one thread, in trials
    h = fit(mlp(), data(), 2, callbacks=[Four()], verbose=False)
    assert h.info["step"].endswith("; 8 of 32 steps on one thread, 12 on 2, 12 on 4 (ThreadTrial)")


def test_an_interrupt_while_switching_to_one_thread_leaves_torchs_count(two_threads, monkeypatch):
    trial_clock(monkeypatch, 1, 5)
    real = torch.set_num_threads

    def set_then_interrupt(n):  # Ctrl-C handled right after the C call returns, inside __enter__
        real(n)
        if n == 1:
            raise KeyboardInterrupt
    monkeypatch.setattr(torch, "set_num_threads", set_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        fit(mlp(), data(), 1, verbose=False)
    assert torch.get_num_threads() == 2


def test_the_eager_loop_runs_forward_and_backward_on_the_faster_count(two_threads, monkeypatch):
    now, in_forward, in_callbacks = [0], [], set()
    monkeypatch.setattr(analytic, "perf_counter", lambda: now[0])
    for k, v in dict(warm=2, trial_s=2, every_s=4, longest_s=8).items():
        monkeypatch.setattr(ThreadTrial, k, v)

    def clock(module, inputs, output):  # a hook keeps the eager loop; the step costs 1 on one thread, 1.5 on two
        if module.training:
            in_forward.append(torch.get_num_threads())
            now[0] += 1 if in_forward[-1] == 1 else 1.5
            output.register_hook(lambda g: in_callbacks.add(("backward", torch.get_num_threads())))

    class Watch:
        def before_batch(self, run):
            in_callbacks.add(torch.get_num_threads())
        after_loss = after_backward = after_batch = before_batch

    net = mlp()
    net.register_forward_hook(clock)
    h = fit(net, data(), 1, callbacks=[Watch()], verbose=False)
    assert in_forward == [2, 2, 1, 1, 2, 2, 1, 1, 1, 1, 1, 1, 2, 2, 1, 1]
    assert in_callbacks == {2, ("backward", 1), ("backward", 2)} and torch.get_num_threads() == 2
    assert h.info["step"].startswith("eager: callback Watch handles after_loss")
    assert h.info["step"].endswith("; 10 of 16 steps on one thread, 6 on 2 (ThreadTrial)")


@pytest.mark.parametrize("opt", [lambda ps: optim.RMSprop(ps, 1e-3), lambda ps: optim.Adam(ps, 1e-2)])
def test_history_counts_steps_that_go_through_opt_step_on_the_thread_count_they_ran(opt, two_threads, monkeypatch):
    in_step = trial_clock(monkeypatch, 1, 5)
    net = mlp()
    h = fit(net, data(), 1, opt(net.parameters()), verbose=False)
    ones = in_step.count(1)
    assert h.info["step"].endswith(f"; {ones} of 16 steps on one thread, {16 - ones} on 2 (ThreadTrial)")
