"""Scratch: the lesson's hand-written pieces, each a few lines of elementary tensor ops.

    from netfit import scratch
    net = scratch.LogReg()                                  # logistic regression with its own softmax
    loss = scratch.cross_entropy(logits, targets)           # = F.cross_entropy(logits, targets)
    opt = scratch.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    history = scratch.train_loop(net, md, epochs=1, lr=1e-2)  # the lesson's loop, w.data -= w.grad * lr

Every piece has a PyTorch twin (`torch.softmax`, `F.nll_loss`, `torch.optim.SGD`...) and
`tests/test_scratch.py` checks that both give the same values and gradients, on extreme inputs too.
They are written to be read, not to be fast: use the torch versions for real work.
"""
import numbers
import time

import numpy as np
import torch
from torch import nn

from .history import History

__all__ = ["get_weights", "softmax", "log_softmax", "LogReg", "binary_loss", "nll_loss", "cross_entropy",
           "SGD", "train_loop"]


def get_weights(*dims):
    """A trainable tensor of shape `dims`, standard normal divided by `dims[0]`, as the lesson defines it.

    Dividing by the number of inputs keeps `x @ w` small at the start (its spread is about
    1/sqrt(dims[0]) for unit-scale `x`; Kaiming/He initialisation divides by sqrt(dims[0]) instead,
    for outputs of order one).

    Example:
        >>> w = get_weights(784, 10); w.shape, w.requires_grad
        (torch.Size([784, 10]), True)
    """
    return nn.Parameter(torch.randn(dims) / dims[0])


def log_softmax(x, dim=-1):
    """log softmax(x) along `dim`: `x_i - log sum_j exp(x_j)`, computed as `(x_i - m) - log sum_j exp(x_j - m)`.

    With `m = max_j x_j` every exponent is <= 0, so nothing overflows and the sum is >= 1, so its log
    is finite: logits of +-1e4 give finite results where the naive formula gives inf or NaN.

    Example:
        >>> x = torch.tensor([[1e4, 0.0, -1e4], [1.0, 2.0, 3.0]])
        >>> torch.allclose(log_softmax(x), torch.log_softmax(x, -1))
        True
    """
    # the result does not depend on m, so m needs no gradient (and none flows to the argmax twice)
    m = x.amax(dim, keepdim=True).detach()
    shifted = x - m                                    # same shape as x, every entry <= 0
    return shifted - shifted.exp().sum(dim, keepdim=True).log()


def softmax(x, dim=-1):
    """softmax(x) along `dim`: `exp(x_i) / sum_j exp(x_j)`, shifted by the max so it cannot overflow.

    The lesson's notebook wrote `torch.exp(x) / (1 + torch.exp(x).sum(dim=0))`: that sums over the
    batch (dim 0) instead of over the classes, adds a stray 1, and overflows to inf/inf = NaN once a
    logit passes ~89 (float32). Here each row sums to 1 over `dim` and any finite logits work.

    Example:
        >>> p = softmax(torch.tensor([[1e4, 0.0], [1.0, 1.0]])); p
        tensor([[1.0000, 0.0000],
                [0.5000, 0.5000]])
        >>> p.sum(-1)
        tensor([1., 1.])
    """
    e = (x - x.amax(dim, keepdim=True).detach()).exp()  # in (0, 1]; the largest entry is exactly 1
    return e / e.sum(dim, keepdim=True)


class LogReg(nn.Module):
    """Logistic regression written out: `log_softmax(x @ l1_w + l1_b)`, the lesson's first net by hand.

    Args:
        n_in: inputs per example (784 for 28x28 images); input of shape (N, 28, 28) is flattened.
        n_out: classes.

    Shape: input (N, n_in) or (N, *) with n_in entries per row; output (N, n_out) log-probabilities,
    so pair it with `NLLLoss` (or `scratch.nll_loss`), exactly like `nn.Sequential(nn.Linear, nn.LogSoftmax)`.

    Example:
        >>> net = LogReg(); out = net(torch.rand(5, 28, 28)); out.shape
        torch.Size([5, 10])
        >>> torch.allclose(out.exp().sum(1), torch.ones(5))
        True
    """

    def __init__(self, n_in=28 * 28, n_out=10):
        super().__init__()
        self.l1_w = get_weights(n_in, n_out)
        self.l1_b = get_weights(n_out)

    def forward(self, x):
        x = x.flatten(1)                      # (N, 28, 28) -> (N, 784); an empty batch stays (0, 784)
        x = x @ self.l1_w + self.l1_b         # (N, 10): the bias broadcasts over the rows
        return log_softmax(x, dim=-1)


def binary_loss(y, p, eps=1e-7):
    """The lesson's binary cross-entropy in numpy: `mean(-(y log p + (1 - y) log(1 - p)))`.

    `p` is clipped to `[eps, 1 - eps]` first, so a confident prediction of exactly 0 or 1 costs
    `-log(eps)` (about 16 for the default) instead of `log(0) = -inf` and a NaN from `0 * -inf`.
    The arithmetic is done in float64, where `1 - 1e-7` is representable. Columns (N, 1) are read as
    one value per row and one number serves every row; other shapes that differ, and `p` outside
    [0, 1] (logits), are a ValueError.

    Example:
        >>> binary_loss(np.array([1, 0, 0, 1]), np.array([0.9, 0.1, 0.2, 0.8])).round(4)
        np.float64(0.1643)
        >>> bool(np.isfinite(binary_loss(np.array([1, 0]), np.array([0.0, 1.0]))))
        True
    """
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    y, p = (a.reshape(-1) if a.ndim == 2 and a.shape[1] == 1 else a for a in (y, p))  # a column: one per row
    if y.ndim and p.ndim and y.shape != p.shape:  # numpy would broadcast (N,) against (N, 1) to an (N, N) mean
        raise ValueError(f"binary_loss needs one probability per label; got y of shape {y.shape} and p of shape "
                         f"{p.shape}")
    if p.size and not (p.min() >= 0 and p.max() <= 1):
        raise ValueError(f"binary_loss takes probabilities in [0, 1]; p runs from {p.min():g} to {p.max():g} (for "
                         "logits, pass 1 / (1 + np.exp(-logits)))")
    p = np.clip(p, eps, 1 - eps)
    return np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _check_target(target, n_classes, n_rows):
    """Raise a TypeError/ValueError naming the problem if `target` cannot index `n_classes` classes."""
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a tensor of class indices; got {type(target).__name__}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"target must hold integer class indices; got dtype {target.dtype} (use target.long())")
    if target.shape != (n_rows,):
        raise ValueError(f"target has shape {tuple(target.shape)}; expected one class index per row, "
                         f"shape ({n_rows},)")
    bad = (target < 0) | (target >= n_classes)
    if bad.any():  # one read from the device per call: the price of a readable error
        values = target[bad].unique().tolist()
        shown = ", ".join(map(str, values[:10])) + (", ..." if len(values) > 10 else "")
        raise ValueError(f"target must be class indices in [0, {n_classes}); got {bad.sum().item()} "
                         f"out of range, with values {shown}")


def nll_loss(log_probs, target):
    """Mean negative log-likelihood: `-mean_i log_probs[i, target[i]]`, the same as `F.nll_loss`.

    Args:
        log_probs: (N, C) log-probabilities (e.g. from `log_softmax`).
        target: (N,) integer class indices in [0, C); a float target is a TypeError, an index
            outside the range a ValueError naming the bad values.

    Example:
        >>> lp = torch.log_softmax(torch.randn(4, 3), -1); t = torch.tensor([0, 2, 1, 2])
        >>> torch.allclose(nll_loss(lp, t), torch.nn.functional.nll_loss(lp, t))
        True
    """
    if log_probs.ndim != 2:
        raise ValueError(f"log_probs has shape {tuple(log_probs.shape)}; expected (N, C), one row per example")
    _check_target(target, log_probs.shape[1], log_probs.shape[0])
    picked = log_probs.gather(1, target.long()[:, None])  # (N, 1): each row's log-prob of its class
    return -picked.mean()


def cross_entropy(logits, target):
    """Cross-entropy from raw scores: `nll_loss(log_softmax(logits), target)`, the same as `F.cross_entropy`.

    Per row that is `log sum_j exp(z_j) - z_target`, always >= 0, and unchanged by adding a constant
    to a row of logits.

    Example:
        >>> z = torch.tensor([[1e4, -1e4], [0.0, 0.0]]); t = torch.tensor([1, 0])
        >>> cross_entropy(z, t), torch.nn.functional.cross_entropy(z, t)
        (tensor(10000.3467), tensor(10000.3467))
    """
    if logits.ndim != 2:
        raise ValueError(f"logits has shape {tuple(logits.shape)}; expected (N, C), one row per example")
    return nll_loss(log_softmax(logits, dim=1), target)


def _check_hyper(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"Invalid {name}: {value!r}; expected a number, got {type(value).__name__}")
    if not value >= 0:  # also rejects NaN
        raise ValueError(f"Invalid {name}: {value}; expected a number >= 0")


class SGD(torch.optim.Optimizer):
    """Stochastic gradient descent with momentum and weight decay, the maths of `torch.optim.SGD`:

        d_p = grad + weight_decay * p                  # weight decay: the gradient of wd/2 * ||p||^2
        buf = momentum * buf + (1 - dampening) * d_p   # buf = d_p on the first step
        d_p = d_p + momentum * buf if nesterov else buf
        p   = p - lr * d_p                             # (p - lr * d_p when momentum is 0)

    Args:
        params: parameters or param groups, as for any torch optimizer.
        lr: learning rate (step size), >= 0. `netfit.set_lrs(opt, lr)` changes it between steps.
        momentum: fraction of the previous step kept, >= 0. dampening: share of the new gradient
            left out of the momentum buffer, >= 0. weight_decay: L2 penalty factor, >= 0.
        nesterov: look ahead along the momentum (needs momentum > 0 and dampening 0).
        The positional order is torch.optim.SGD's: `SGD(params, lr, momentum, dampening, weight_decay, nesterov)`.

    Example:
        >>> w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
        >>> opt = SGD([w], lr=0.1, momentum=0.9); (w ** 2).sum().backward(); opt.step(); w.data
        tensor([ 0.8000, -1.6000])
    """

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        _check_hyper("learning rate", lr)
        _check_hyper("momentum value", momentum)
        _check_hyper("dampening value", dampening)
        _check_hyper("weight_decay value", weight_decay)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(f"Nesterov momentum requires a momentum and zero dampening; got momentum={momentum}, "
                             f"dampening={dampening}")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=bool(nesterov)))

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns `closure()` if one is given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # the `alpha=` forms round exactly as torch.optim.SGD does, so on the CPU both take bit-identical
        # steps: at a high learning rate any rounding difference grows until two runs part ways
        for group in self.param_groups:
            lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
            dampening, nesterov = group.get("dampening", 0.0), group.get("nesterov", False)
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad.add(p, alpha=wd) if wd != 0 else p.grad  # grad + wd * p (0 * inf would be NaN)
                if momentum:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.clone(d_p).detach()
                    else:
                        state["momentum_buffer"].mul_(momentum).add_(d_p, alpha=1 - dampening)
                    buf = state["momentum_buffer"]
                    d_p = d_p.add(buf, alpha=momentum) if nesterov else buf
                p.add_(d_p, alpha=-lr)                     # p - lr * d_p
        return loss


def train_loop(model, data, epochs=1, lr=1e-2, opt=None, crit=None):
    """The lesson's hand-written training loop; returns a `History` with one record per epoch.

    Without `opt` each batch does the update by hand, `w -= lr * dloss/dw` for every parameter, then
    zeroes the gradients (`.backward()` adds to `.grad`). With `opt` it does `zero_grad`, `backward`,
    `step`. After each epoch it measures the validation loss and accuracy.

    Args:
        model: an `nn.Module` returning log-probabilities (as `LogReg` does), unless `crit` says otherwise.
        data: an `ImageClassifierData` (or a `(trn_dl, val_dl)` pair) yielding `(xb, yb)` batches.
        lr: step size of the hand update (ignored when `opt` is given).
        crit: `crit(preds, yb) -> loss`; default `scratch.nll_loss`.

    Example:
        >>> from netfit import ImageClassifierData
        >>> x = np.random.rand(256, 4).astype("float32"); y = (x[:, 0] > 0.5).astype("int64")
        >>> md = ImageClassifierData.from_arrays(".", (x, y), (x, y), bs=32, device="cpu")
        >>> h = train_loop(LogReg(4, 2), md, epochs=2, lr=0.1); sorted(h[-1])
        ['accuracy', 'epoch', 'time', 'trn_loss', 'val_loss']
    """
    crit = nll_loss if crit is None else crit
    trn_dl, val_dl = (data.trn_dl, data.val_dl) if hasattr(data, "trn_dl") else data
    params = [p for p in model.parameters() if p.requires_grad]
    device = params[0].device
    history = History(info={"device": str(device), "opt": type(opt).__name__ if opt else f"by hand, lr={lr}"})
    for epoch in range(epochs):
        start = time.perf_counter()
        model.train()
        trn_loss, n = 0.0, 0
        for xb, yb in trn_dl:
            xb, yb = xb.to(device), yb.to(device)
            loss = crit(model(xb), yb)
            if opt is None:
                loss.backward()
                for w in params:
                    if w.grad is None:            # a parameter the loss did not use
                        continue
                    w.data -= w.grad * lr         # a step downhill; .data keeps autograd out of it
                    w.grad.zero_()                # .backward() adds to .grad: clear it for the next batch
            else:
                opt.zero_grad()
                loss.backward()
                opt.step()
            trn_loss, n = trn_loss + loss.detach() * len(yb), n + len(yb)  # summed on the device
        record = {"epoch": epoch, "trn_loss": (trn_loss / n).item()}
        if val_dl is not None:
            record.update(_evaluate(model, val_dl, crit, device))
        record["time"] = time.perf_counter() - start
        history.append(record)
    return history


@torch.no_grad()
def _evaluate(model, dl, crit, device):
    """Validation loss and accuracy over `dl`, weighted by batch size."""
    model.eval()
    loss, correct, n = 0.0, 0, 0
    for xb, yb in dl:
        xb, yb = xb.to(device), yb.to(device)
        preds = model(xb)                                  # (bs, C)
        loss = loss + crit(preds, yb) * len(yb)
        correct = correct + (preds.argmax(1) == yb).sum()
        n += len(yb)
    model.train()
    return {"val_loss": (loss / n).item(), "accuracy": (correct / n).item()}
