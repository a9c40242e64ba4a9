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
