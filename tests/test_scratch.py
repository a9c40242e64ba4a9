"""Every hand-written piece of `netfit.scratch` against its PyTorch twin: values and gradients on fresh
random inputs (extreme logits included), gradcheck in float64, hypothesis properties, and training
on real MNIST digits next to the `nn` version."""
import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import array_shapes, arrays
from torch import nn, optim
from torch.testing import assert_close

import netfit
from netfit import scratch

SHAPES = [(1, 1), (1, 10), (4, 3), (64, 10), (7, 1000)]
SCALES = [1.0, 100.0, 1e4]  # 1e4: exp overflows float32 and float64 unless shifted


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def _logits(shape, scale, gen, dtype=torch.float32):
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype)


def _values_and_grads(f, x, g):
    """f(x) and d<f(x), g>/dx for a fresh leaf copy of x."""
    x = x.detach().clone().requires_grad_()
    out = f(x)
    out.backward(g)
    return out.detach(), x.grad


# --- softmax and log_softmax -------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("ours, theirs", [(scratch.softmax, torch.softmax), (scratch.log_softmax, torch.log_softmax)])
def test_softmax_twins(ours, theirs, shape, scale, gen):
    x, g = _logits(shape, scale, gen), torch.randn(shape, generator=gen)
    out, grad = _values_and_grads(lambda t: ours(t, dim=-1), x, g)
    ref, ref_grad = _values_and_grads(lambda t: theirs(t, dim=-1), x, g)
    assert torch.isfinite(out).all() and torch.isfinite(grad).all()
    assert_close(out, ref)
    assert_close(grad, ref_grad)


@pytest.mark.parametrize("dim", [0, 1, -1])
@pytest.mark.parametrize("ours, theirs", [(scratch.softmax, torch.softmax), (scratch.log_softmax, torch.log_softmax)])
def test_softmax_other_dims(ours, theirs, dim, gen):
    x, g = _logits((3, 4, 5), 10.0, gen), torch.randn(3, 4, 5, generator=gen)
    out, grad = _values_and_grads(lambda t: ours(t, dim=dim), x, g)
    ref, ref_grad = _values_and_grads(lambda t: theirs(t, dim=dim), x, g)
    assert_close(out, ref)
    assert_close(grad, ref_grad)


def test_extreme_exact_logits():
    # ties at the max and +-1e4 side by side: the naive exp(x)/sum(exp(x)) gives inf/inf = NaN here
    x = torch.tensor([[1e4, 1e4, -1e4], [-1e4, -1e4, -1e4], [1e4, 0.0, -1e4]])
    assert torch.isnan(x.exp() / x.exp().sum(1, keepdim=True)).any()
    assert_close(scratch.softmax(x), torch.softmax(x, -1))
    assert_close(scratch.log_softmax(x), torch.log_softmax(x, -1))
    assert torch.isfinite(scratch.log_softmax(x)).all()


@pytest.mark.parametrize("f", [scratch.softmax, scratch.log_softmax])
@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_softmax_gradcheck(f, scale, gen):
    x = _logits((4, 6), scale, gen, torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: f(t, dim=1), (x,))


# --- nll_loss and cross_entropy ----------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", SCALES)
def test_cross_entropy_and_nll_twins(shape, scale, gen):
    x = _logits(shape, scale, gen)
    t = torch.randint(0, shape[1], (shape[0],), generator=gen)
    out, grad = _values_and_grads(lambda z: scratch.cross_entropy(z, t), x, None)
    ref, ref_grad = _values_and_grads(lambda z: F.cross_entropy(z, t), x, None)
    assert torch.isfinite(out) and torch.isfinite(grad).all()
    assert_close(out, ref)
    assert_close(grad, ref_grad)
    lp = torch.log_softmax(x, -1)
    out, grad = _values_and_grads(lambda z: scratch.nll_loss(z, t), lp, None)
    ref, ref_grad = _values_and_grads(lambda z: F.nll_loss(z, t), lp, None)
    assert_close(out, ref)
    assert_close(grad, ref_grad)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8])
def test_nll_accepts_integer_targets(dtype, gen):
    lp = torch.log_softmax(torch.randn(5, 3, generator=gen), -1)
    t = torch.tensor([0, 1, 2, 2, 0], dtype=dtype)
    assert_close(scratch.nll_loss(lp, t), F.nll_loss(lp, t.long()))


def test_losses_gradcheck(gen):
    z = _logits((5, 4), 3.0, gen, torch.float64).requires_grad_()
    t = torch.tensor([0, 3, 1, 1, 2])
    assert torch.autograd.gradcheck(lambda a: scratch.cross_entropy(a, t), (z,))
    assert torch.autograd.gradcheck(lambda a: scratch.nll_loss(a, t), (z,))


@pytest.mark.parametrize("f", [scratch.nll_loss, scratch.cross_entropy])
def test_loss_errors(f):
    z = torch.zeros(4, 10)
    with pytest.raises(TypeError, match=r"integer class indices; got dtype torch.float32"):
        f(z, torch.tensor([0.0, 1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match=r"\[0, 10\); got 2 out of range, with values -1, 10"):
        f(z, torch.tensor([-1, 1, 10, 3]))
    with pytest.raises(ValueError, match=r"expected one class index per row, shape \(4,\)"):
        f(z, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"expected \(N, C\)"):
        f(torch.zeros(10), torch.tensor([1]))


# --- properties --------------------------------------------------------------------------------

_rows = arrays(np.float64, array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=12),
               elements=st.floats(-1e4, 1e4, allow_nan=False))


@settings(max_examples=60, deadline=None)
@given(_rows)
def test_softmax_properties(a):
    x = torch.from_numpy(a)
    p, lp = scratch.softmax(x), scratch.log_softmax(x)
    assert_close(p.sum(-1), torch.ones(len(x), dtype=x.dtype))
    assert ((p >= 0) & (p <= 1)).all()
    assert (lp <= 0).all() and torch.isfinite(lp).all()
    assert_close(p, torch.softmax(x, -1))
    assert_close(lp, torch.log_softmax(x, -1))


@settings(max_examples=60, deadline=None)
@given(_rows, st.floats(-1e3, 1e3), st.data())
def test_cross_entropy_properties(a, c, data):
    x = torch.from_numpy(a)
    t = torch.tensor(data.draw(st.lists(st.integers(0, x.shape[1] - 1), min_size=len(x), max_size=len(x))))
    ce = scratch.cross_entropy(x, t)
    assert ce >= 0
    assert_close(ce, F.cross_entropy(x, t))
    # softmax only sees differences between logits: a constant added to every logit changes nothing
    assert_close(scratch.cross_entropy(x + c, t), ce, atol=1e-9, rtol=1e-9)
    assert_close(scratch.log_softmax(x + c), scratch.log_softmax(x), atol=1e-9, rtol=1e-9)
    assert_close(scratch.softmax(x + c), scratch.softmax(x), atol=1e-12, rtol=1e-9)


# --- binary_loss -------------------------------------------------------------------------------

def test_binary_loss_matches_torch(gen):
    p = torch.rand(50, generator=gen, dtype=torch.float64) * 0.98 + 0.01
    y = (torch.rand(50, generator=gen) > 0.5).double()
    assert math.isclose(scratch.binary_loss(y.numpy(), p.numpy()), F.binary_cross_entropy(p, y).item(), rel_tol=1e-12)


def test_binary_loss_safe_at_0_and_1():
    assert math.isclose(scratch.binary_loss([1, 0], [0.0, 1.0]), -math.log(1e-7), rel_tol=1e-9)
    assert scratch.binary_loss([1, 0], [1.0, 0.0]) < 1e-6
    assert np.isfinite(scratch.binary_loss(np.ones(3, "float32"), np.array([0, 0.5, 1], "float32")))


def test_binary_loss_reads_columns_and_refuses_what_it_would_broadcast_or_clip():
    y, p = np.array([1, 0, 0, 1]), np.array([0.9, 0.1, 0.2, 0.8])
    assert scratch.binary_loss(y, p[:, None]) == scratch.binary_loss(y[:, None], p) == scratch.binary_loss(y, p)
    with pytest.raises(ValueError, match=r"one probability per label; got y of shape \(4,\) and p of shape \(3,\)"):
        scratch.binary_loss(y, p[:3])
    with pytest.raises(ValueError, match="probabilities in \\[0, 1\\]; p runs from -2 to 3"):
        scratch.binary_loss([1, 0], [3.0, -2.0])  # logits: clipping would score them as perfect


# --- get_weights and LogReg --------------------------------------------------------------------

def test_get_weights():
    torch.manual_seed(0)
    w = scratch.get_weights(784, 10)
    assert isinstance(w, nn.Parameter) and w.shape == (784, 10)
    assert abs(w.std().item() * 784 - 1) < 0.05  # randn / dims[0]


def test_logreg_is_linear_then_log_softmax(gen):
    torch.manual_seed(0)
    ours = scratch.LogReg(12, 5).double()
    twin = nn.Sequential(nn.Linear(12, 5), nn.LogSoftmax(dim=1)).double()
    with torch.no_grad():
        twin[0].weight.copy_(ours.l1_w.T)
        twin[0].bias.copy_(ours.l1_b)
    x = torch.randn(9, 3, 4, generator=gen, dtype=torch.float64)  # flattened to (9, 12)
    t = torch.randint(0, 5, (9,), generator=gen)
    out, ref = ours(x), twin(x.reshape(9, 12))
    assert_close(out, ref)
    F.nll_loss(out, t).backward()
    F.nll_loss(ref, t).backward()
    assert_close(ours.l1_w.grad, twin[0].weight.grad.T)
    assert_close(ours.l1_b.grad, twin[0].bias.grad)
    assert torch.autograd.gradcheck(ours, (x.requires_grad_(),))
    assert [n for n, _ in ours.named_parameters()] == ["l1_w", "l1_b"]


# --- SGD ---------------------------------------------------------------------------------------

def _two_layers():
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


@pytest.mark.parametrize("momentum, wd, extra", [(0.0, 0.0, {}), (0.9, 0.0, {}), (0.0, 1e-3, {}), (0.9, 1e-3, {}),
                                                 (0.5, 0.1, {}), (0.9, 1e-3, {"nesterov": True}),
                                                 (0.9, 0.0, {"dampening": 0.3})])
def test_sgd_matches_torch_over_100_steps(momentum, wd, extra, gen):
    torch.manual_seed(0)
    a = _two_layers()
    b = copy.deepcopy(a)
    groups = lambda m: [{"params": m[0].parameters(), "lr": 0.05}, {"params": m[2].parameters()}]
    ours = scratch.SGD(groups(a), lr=0.02, momentum=momentum, weight_decay=wd, **extra)
    theirs = optim.SGD(groups(b), lr=0.02, momentum=momentum, weight_decay=wd, **extra)
    for _ in range(100):
        x, t = torch.randn(16, 6, generator=gen), torch.randint(0, 3, (16,), generator=gen)
        for net, opt in ((a, ours), (b, theirs)):
            opt.zero_grad()
            F.cross_entropy(net(x), t).backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert_close(p, q, atol=1e-6, rtol=0)


def test_sgd_skips_params_without_grad_and_runs_closure():
    w, unused = nn.Parameter(torch.tensor([1.0, -2.0])), nn.Parameter(torch.ones(2))
    opt = scratch.SGD([w, unused], lr=0.1)
    loss = opt.step(lambda: (w ** 2).sum().backward() or (w ** 2).sum())
    assert loss.item() == 5.0
    assert_close(w.data, torch.tensor([0.8, -1.6]))
    assert_close(unused.data, torch.ones(2))


@pytest.mark.parametrize("kwargs, err, msg", [
    ({"lr": -0.1}, ValueError, "Invalid learning rate: -0.1"),
    ({"lr": float("nan")}, ValueError, "Invalid learning rate: nan"),
    ({"lr": "0.1"}, TypeError, "Invalid learning rate: '0.1'"),
    ({"lr": 0.1, "momentum": -0.5}, ValueError, "Invalid momentum value: -0.5"),
    ({"lr": 0.1, "weight_decay": -1}, ValueError, "Invalid weight_decay value: -1"),
])
def test_sgd_validates(kwargs, err, msg):
    with pytest.raises(err, match=msg):
        scratch.SGD(nn.Linear(2, 2).parameters(), **kwargs)


def test_sgd_with_set_lrs_and_state_dict():
    w = nn.Parameter(torch.tensor([1.0]))
    opt = scratch.SGD([w], lr=0.1, momentum=0.9)
    netfit.set_lrs(opt, 0.01)
    (2 * w).sum().backward()
    opt.step()
    assert_close(w.data, torch.tensor([1.0 - 0.01 * 2]))
    again = scratch.SGD([w], lr=0.5, momentum=0.9)
    again.load_state_dict(opt.state_dict())
    assert again.param_groups[0]["lr"] == 0.01
    assert_close(again.state[w]["momentum_buffer"], torch.tensor([2.0]))


def test_sgd_in_fit_matches_torch(gen):
    x = torch.rand(300, 5, generator=gen)
    y = (x[:, 0] + x[:, 1] > 1).long()
    md = netfit.ImageClassifierData.from_arrays(".", (x, y), (x, y), bs=32, device="cpu")
    runs = []
    for make in (scratch.SGD, optim.SGD):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(5, 2), nn.LogSoftmax(dim=1))
        h = netfit.fit(net, md, 3, make(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3),
                       nn.NLLLoss(), [netfit.accuracy], verbose=False)
        runs.append(h["val_loss"])
    assert_close(torch.tensor(runs[0]), torch.tensor(runs[1]), atol=1e-5, rtol=0)


# --- training on real digits -------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits_md(mnist_digits):
    """8,000 MNIST digits to train, 2,000 to validate, normalised with the training mean and std."""
    (x, y), (xv, yv) = mnist_digits
    mean, std = x.mean(), x.std()
    return netfit.ImageClassifierData.from_arrays("mnist", ((x - mean) / std, y), ((xv - mean) / std, yv),
                                                  bs=64, device="cpu")


@pytest.fixture(scope="module")
def sequential_accuracy(digits_md):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(784, 10), nn.LogSoftmax(dim=1))
    h = netfit.fit(net, digits_md, 2, optim.Adam(net.parameters(), 1e-3), nn.NLLLoss(), [netfit.accuracy],
                   verbose=False)
    return h[-1]["accuracy"]


def test_logreg_trains_like_sequential(digits_md, sequential_accuracy):
    torch.manual_seed(0)
    net = scratch.LogReg()
    h = netfit.fit(net, digits_md, 2, optim.Adam(net.parameters(), 1e-3), nn.NLLLoss(), [netfit.accuracy],
                   verbose=False)
    assert sequential_accuracy > 0.90
    assert abs(h[-1]["accuracy"] - sequential_accuracy) <= 0.01


def test_train_loop_by_hand_and_with_opt(digits_md, sequential_accuracy):
    torch.manual_seed(0)
    net = scratch.LogReg()
    h = scratch.train_loop(net, digits_md, epochs=2, lr=0.1)
    assert len(h) == 2 and h[1]["trn_loss"] < h[0]["trn_loss"]
    assert h[-1]["accuracy"] >= sequential_accuracy - 0.015
    torch.manual_seed(0)
    net = scratch.LogReg()
    h = scratch.train_loop(net, digits_md, epochs=2, opt=scratch.SGD(net.parameters(), lr=0.01, momentum=0.9))
    assert h[-1]["accuracy"] >= sequential_accuracy - 0.015


def test_train_loop_by_hand_equals_plain_sgd(gen):
    # the raw `w.data -= w.grad * lr` loop and SGD(lr) without momentum take the same steps
    x = torch.rand(200, 8, generator=gen)
    y = torch.randint(0, 3, (200,), generator=gen)
    md = netfit.ImageClassifierData.from_arrays(".", (x, y), (x, y), bs=16, device="cpu")
    torch.manual_seed(0)
    a = scratch.LogReg(8, 3)
    b = copy.deepcopy(a)
    ha = scratch.train_loop(a, md, epochs=2, lr=0.1)
    torch.manual_seed(0)
    scratch.LogReg(8, 3)  # consume the same random numbers, so both loops shuffle alike
    hb = scratch.train_loop(b, md, epochs=2, opt=scratch.SGD(b.parameters(), lr=0.1))
    assert_close(a.l1_w, b.l1_w)
    assert_close(ha["accuracy"], hb["accuracy"])


def test_sgd_positional_order_inf_params_and_sparse_grads_are_torchs():
    w1, w2 = nn.Parameter(torch.tensor([math.inf, 1.0])), nn.Parameter(torch.tensor([math.inf, 1.0]))
    for w, make in ((w1, scratch.SGD), (w2, optim.SGD)):
        opt = make([w], 0.1, 0.9, 0.5)  # lr, momentum, dampening (not weight decay)
        assert opt.param_groups[0]["dampening"] == 0.5 and opt.param_groups[0]["weight_decay"] == 0
        w.grad = torch.tensor([0.0, 1.0])
        opt.step()
    assert torch.equal(w1.data, w2.data) and w1[0].item() == math.inf
    emb = nn.Embedding(4, 2, sparse=True)
    emb(torch.tensor([1, 2])).sum().backward()
    before = emb.weight.detach().clone()
    scratch.SGD(emb.parameters(), lr=0.1).step()
    assert torch.equal(emb.weight[0], before[0]) and not torch.equal(emb.weight[1], before[1])
    with pytest.raises(ValueError, match="Nesterov momentum requires"):
        scratch.SGD([w1], lr=0.1, nesterov=True)


def test_logreg_takes_an_empty_batch_and_train_loop_an_unused_parameter():
    from netfit import ImageClassifierData
    assert scratch.LogReg()(torch.zeros(0, 28, 28)).shape == (0, 10)
    x = np.random.default_rng(0).random((64, 784), dtype=np.float32)
    md = ImageClassifierData.from_arrays(".", (x, np.arange(64) % 10), (x, np.arange(64) % 10), bs=16, device="cpu")
    net = scratch.LogReg()
    net.unused = nn.Parameter(torch.ones(3))
    scratch.train_loop(net, md, epochs=1, lr=0.01)
    assert torch.equal(net.unused.data, torch.ones(3))
