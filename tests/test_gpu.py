"""GPU paths give the CPU's results and leave nothing on the CPU. Skipped without CUDA (see bench/gpu_check.sh)."""
import numpy as np
import pytest
import torch
from torch import nn, optim

from netfit import ImageClassifierData, accuracy, fit, predict
from netfit.models import cnn, logreg, mlp

pytestmark = pytest.mark.gpu


def small(n=4096, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 784)).astype(np.float32)
    w = rng.normal(size=(784, 10)).astype(np.float32)
    return x, (x @ w).argmax(1).astype(np.int64)


@pytest.mark.parametrize("make", [logreg, mlp, cnn])
def test_same_predictions_on_the_same_weights(make):
    x, y = small(512)
    torch.manual_seed(0)
    net = make().eval()
    p_cpu = predict(net, x)
    p_gpu = predict(net.to("cuda"), x)
    np.testing.assert_allclose(p_gpu, p_cpu, rtol=1e-3, atol=1e-3)
    assert (p_gpu.argmax(1) == p_cpu.argmax(1)).mean() > 0.99


@pytest.mark.parametrize("make", [logreg, mlp])
def test_training_curves_match_cpu(make):
    x, y = small()
    curves = {}
    for device in ("cpu", "cuda"):
        md = ImageClassifierData.from_arrays(".", (x[:3072], y[:3072]), (x[3072:], y[3072:]), bs=64, device=device)
        torch.manual_seed(0)
        net = make().to(device)
        h = fit(net, md, 3, optim.SGD(net.parameters(), 0.05), nn.NLLLoss(), [accuracy], verbose=False, seed=0)
        curves[device] = (h["val_loss"], h["accuracy"])
    np.testing.assert_allclose(curves["cuda"][0], curves["cpu"][0], rtol=2e-2)
    np.testing.assert_allclose(curves["cuda"][1], curves["cpu"][1], atol=0.02)


def test_nothing_left_on_the_cpu():
    x, y = small(1024)
    md = ImageClassifierData.from_arrays(".", (x, y), (x, y), bs=64)  # default_device(): CUDA here
    assert md.trn_dl.x.is_cuda and md.val_dl.y.is_cuda
    net = mlp().cuda()
    seen = []

    class Where:
        def after_loss(self, run):
            seen.append((run.xb.device.type, run.yb.device.type, run.loss.device.type))
    h = fit(net, md, 1, optim.Adam(net.parameters()), nn.NLLLoss(), [accuracy], [Where()], verbose=False)
    assert set(seen) == {("cuda", "cuda", "cuda")}
    assert h.info["device"].startswith("cuda")
    assert all(p.is_cuda for p in net.parameters())


def test_amp_on_gpu_trains_as_well():
    x, y = small()
    accs = []
    for amp in (False, True):
        md = ImageClassifierData.from_arrays(".", (x[:3072], y[:3072]), (x[3072:], y[3072:]), bs=64)
        torch.manual_seed(0)
        net = mlp().cuda()
        h = fit(net, md, 3, optim.Adam(net.parameters()), nn.NLLLoss(), [accuracy], verbose=False, amp=amp, seed=0)
        accs.append(h[-1]["accuracy"])
    assert abs(accs[0] - accs[1]) <= 0.02


def test_out_of_range_label_is_a_clear_error_not_a_device_assert():
    from netfit import DataError
    x, y = small(256)
    y[5] = 10
    md = ImageClassifierData.from_arrays(".", (x, y), (x, y), bs=64)  # 11 classes seen
    net = logreg().cuda()  # but 10 outputs
    with pytest.raises(DataError, match=r"\[0, 10\)"):
        fit(net, md, 1, verbose=False)


# ---- the CUDA-graph path (graphs.py): same training as the eager loop, fallbacks that say why

def _fit(make, graph, monkeypatch, epochs=2, n=1000, bs=64, opt=optim.Adam, lr=1e-2, **kw):
    import sys
    from netfit.graphs import graph_plan
    fit_module = sys.modules["netfit.fit"]  # `netfit.fit` the attribute is the function
    monkeypatch.setattr(fit_module, "graph_plan", graph_plan if graph else (lambda *a: "forced eager (test)"))
    x, y = small(n + 512)
    md = ImageClassifierData.from_arrays(".", (x[:n], y[:n]), (x[n:], y[n:]), bs=bs, device="cuda")
    torch.manual_seed(0)
    net = make().cuda()
    h = fit(net, md, epochs, opt(net.parameters(), lr), nn.NLLLoss(), [accuracy], verbose=False, seed=3, **kw)
    return net, h


@pytest.mark.parametrize("make,opt", [(logreg, optim.Adam), (mlp, optim.SGD), (mlp, optim.AdamW)])
def test_graphed_fit_matches_the_eager_loop(make, opt, monkeypatch):
    # 1000 rows, bs 64: 15 full batches (3 warm-up, 1 capture, 11 replays) and a short last one of 40
    eager, he = _fit(make, False, monkeypatch, opt=opt)
    graphed, hg = _fit(make, True, monkeypatch, opt=opt)
    assert hg.info["step"] == "cuda graph", hg.info
    assert he.info["step"].startswith("eager")
    for a, b in zip(eager.state_dict().values(), graphed.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(hg["trn_loss"], he["trn_loss"], rtol=1e-4)
    assert abs(hg[-1]["accuracy"] - he[-1]["accuracy"]) <= 0.005
    assert all(isinstance(r["lr"], float) for r in hg.records)


def test_graphed_cnn_with_bf16_and_augmentation_trains(monkeypatch):
    from netfit import Augment
    accs = {}
    for graph in (False, True):
        net, h = _fit(cnn, graph, monkeypatch, epochs=3, n=3072, amp=True, lr=3e-3,
                      callbacks=[Augment(pad=1, rotate=0)])
        accs[graph] = h[-1]["accuracy"]
    assert h.info["step"] == "cuda graph" and h.info["amp"] == "bfloat16"
    assert abs(accs[True] - accs[False]) <= 0.05, accs


def test_graphed_schedule_sets_the_same_rates(monkeypatch):
    from netfit import one_cycle
    runs = {}
    for graph in (False, True):
        sched = one_cycle(1e-2, moms=None)
        net, h = _fit(logreg, graph, monkeypatch, schedule=sched)
        runs[graph] = (net, list(sched.used_lrs), h)
    assert runs[True][2].info["step"] == "cuda graph"
    assert runs[True][1] == runs[False][1] and len(runs[True][1]) == 32
    for a, b in zip(runs[False][0].parameters(), runs[True][0].parameters()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_momentum_schedule_falls_back_to_eager_and_says_so(monkeypatch):
    from netfit import one_cycle
    net, h = _fit(logreg, True, monkeypatch, schedule=one_cycle(1e-2))
    assert h.info["step"].startswith("eager: a callback changes momentum"), h.info
    assert np.isfinite(h["trn_loss"]).all() and h["trn_loss"][-1] < h["trn_loss"][0]


def test_a_model_that_cannot_be_captured_trains_eagerly(monkeypatch):
    class Syncs(nn.Module):  # reads a value back to the host each forward: not capturable
        def __init__(self):
            super().__init__()
            self.net = logreg()

        def forward(self, x):
            return self.net(x) * (1.0 if float(x.abs().sum()) >= 0 else 0.0)
    net, h = _fit(Syncs, True, monkeypatch)
    assert h.info["step"].startswith("eager: capture failed"), h.info
    assert np.isfinite(h["trn_loss"]).all() and h["trn_loss"][-1] < h["trn_loss"][0]
    assert torch.cuda.is_available() and float(torch.ones(1, device="cuda").sum()) == 1.0  # CUDA still fine


def test_graphed_batches_and_results_live_on_the_gpu(monkeypatch):
    seen = []

    class Where:
        def after_batch(self, run):
            seen.append((run.xb.device.type, run.yb.device.type, run.loss.device.type, len(run.yb)))
    net, h = _fit(mlp, True, monkeypatch, epochs=1, callbacks=[Where()])
    assert h.info["step"] == "cuda graph"
    assert {s[:3] for s in seen} == {("cuda", "cuda", "cuda")} and [s[3] for s in seen][-2:] == [64, 40]


def test_graphed_checkpoint_resumes_on_the_cpu(tmp_path, monkeypatch):
    ck = tmp_path / "ck.pt"
    net, h = _fit(mlp, True, monkeypatch, epochs=1, checkpoint=ck)
    assert h.info["step"] == "cuda graph"
    x, y = small(1512)
    md = ImageClassifierData.from_arrays(".", (x[:1000], y[:1000]), (x[1000:], y[1000:]), bs=64, device="cpu")
    cpu_net = mlp()
    h2 = fit(cpu_net, md, 2, optim.Adam(cpu_net.parameters(), 1e-2), nn.NLLLoss(), [accuracy],
             checkpoint=ck, resume=True, verbose=False)
    assert len(h2) == 2 and h2.info["resumed_from"]["epoch"] == 1 and np.isfinite(h2["trn_loss"]).all()


def test_random_shift_layer_is_captured_with_the_step(monkeypatch):
    from netfit import RandomShift
    accs = {}
    for graph in (False, True):
        net, h = _fit(lambda: nn.Sequential(RandomShift(1), cnn()), graph, monkeypatch, epochs=3, n=3072,
                      amp=True, lr=3e-3)
        accs[graph] = h[-1]["accuracy"]
    assert h.info["step"] == "cuda graph"
    assert abs(accs[True] - accs[False]) <= 0.05, accs


def test_graphed_fit_gives_back_the_rate_as_written(monkeypatch):
    # the captured kernels read the rate from a float32 tensor; the group gets the float back, not 0.0099999998
    x, y = small(1512)
    md = ImageClassifierData.from_arrays(".", (x[:1000], y[:1000]), (x[1000:], y[1000:]), bs=64, device="cuda")
    net = logreg().cuda()
    opt = optim.Adam(net.parameters(), 0.01)
    h = fit(net, md, 2, opt, nn.NLLLoss(), verbose=False)
    assert h.info["step"] == "cuda graph" and opt.param_groups[0]["lr"] == 0.01 and h[-1]["lr"] == 0.01


def test_on_nan_warn_skips_each_bad_step_on_the_gpu():
    # the eager GPU loop reads the loss every 32 steps for on_nan="raise"; "warn" must see every step
    class Poison:
        def before_batch(self, run):
            if run.batch == 5:
                run.xb = run.xb.clone()
                run.xb[0, 0] = float("nan")
    x, y = small(1512)
    md = ImageClassifierData.from_arrays(".", (x[:1000], y[:1000]), (x[1000:], y[1000:]), bs=64, device="cuda")
    net = logreg().cuda()
    with pytest.warns(RuntimeWarning, match="batch 5 .*skipped that step"):
        h = fit(net, md, 1, optim.Adam(net.parameters()), nn.NLLLoss(), callbacks=[Poison()], verbose=False,
                on_nan="warn")
    assert all(torch.isfinite(p).all() for p in net.parameters()) and np.isfinite(h[-1]["val_loss"])


def test_a_weight_given_new_storage_mid_fit_ends_the_graph(monkeypatch):
    # a max-norm callback's `w.data = w.data.renorm(...)`: the graph would go on updating the old storage
    class MaxNorm:
        def after_batch(self, run):
            if run.batch == 8:  # past the capture (3 warm-up steps, then the capture at batch 3)
                w = next(p for p in run.model.parameters() if p.dim() == 2)
                w.data = w.data.renorm(2, 0, 1.0)
    eager, he = _fit(logreg, False, monkeypatch, epochs=1, callbacks=[MaxNorm()])
    graphed, hg = _fit(logreg, True, monkeypatch, epochs=1, callbacks=[MaxNorm()])
    assert "new storage" in hg.info["step"], hg.info
    for a, b in zip(eager.state_dict().values(), graphed.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_graphed_fit_keeps_a_rate_changed_in_place(monkeypatch):
    # during a graphed epoch the rate is a device tensor: a callback multiplying it in place must be kept
    class Decay:
        def after_batch(self, run):
            run.opt.param_groups[0]["lr"] *= 0.9
    rates = {}
    for graph in (False, True):
        net, h = _fit(logreg, graph, monkeypatch, epochs=2, callbacks=[Decay()])
        rates[graph] = [r["lr"] for r in h.records]
    assert all(isinstance(r, float) for r in rates[True])
    np.testing.assert_allclose(rates[True], rates[False], rtol=1e-5)  # 0.01 * 0.9**16 after epoch 0, not 0.01
