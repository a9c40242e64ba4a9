"""fastai 0.7's small tensor helpers, which the lesson's hand-written cells use: `T`, `V`, `to_np`.

    xt, yt = next(iter(md.trn_dl))
    preds = to_np(net2(V(xt)))                  # (64, 10) numpy
    np.mean(preds.argmax(1) == to_np(yt))

fastai 0.7 wrapped tensors in `Variable`s; PyTorch merged the two in 0.4, so `V` returns a tensor on
the default device (`from torch.autograd import Variable` still works and returns its argument's tensor).
"""
import numpy as np
import torch

from .data import default_device

__all__ = ["T", "V", "to_np"]


def T(a, device=None):
    """An array (or list, or tensor) as a tensor on `device` (default: `default_device()`); float
    arrays become float32 and integer ones int64, as fastai 0.7's `T` did.

    Example:
        >>> T(np.array([1, 2]), device="cpu")
        tensor([1, 2])
        >>> T([0.5, 1.5], device="cpu").dtype
        torch.float32
    """
    t = a if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))
    if t.is_floating_point():
        t = t.float()
    elif t.dtype != torch.bool and not t.is_complex():
        t = t.long()
    return t.to(device if device is not None else default_device())


def V(a, requires_grad=False, device=None):
    """`T(a)` that autograd tracks when `requires_grad` (fastai 0.7's Variable wrapper).

    Example:
        >>> w = V(np.zeros(3, dtype="float32"), requires_grad=True, device="cpu")
        >>> w.requires_grad
        True
    """
    t = T(a, device)
    return t.detach().clone().requires_grad_() if requires_grad else t  # a leaf of its own: `a` stays as it was


def to_np(v):
    """A tensor (or a list or tuple of them) as numpy, detached and copied to the CPU.

    Example:
        >>> to_np(torch.tensor([1., 2.], requires_grad=True))
        array([1., 2.], dtype=float32)
    """
    if isinstance(v, (list, tuple)):
        return type(v)(to_np(o) for o in v)
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu()
        return (v.float() if v.dtype == torch.bfloat16 else v).numpy()  # numpy has no bfloat16
    return np.asarray(v)
