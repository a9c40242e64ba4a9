"""Augmentation on the device: one random affine warp per image, applied to a whole batch at once.

    fit(net, md, 5, callbacks=[Augment(pad=2, rotate=10)])      # training batches only
    probs = predict_tta(net, md.val_dl, n=4)                      # mean over the plain and 4 warped copies

A random crop of an image padded by `pad` pixels is the image shifted by a whole number of pixels in
[-pad, pad]; a translation and a rotation are shifts and turns of the sampling grid. `Augment`
folds them (and an optional horizontal flip) into one 2x3 matrix per image and warps the batch with a
single `affine_grid` + `grid_sample` call on the batch's device: no Python per sample. Pixels brought
in from outside the image repeat the border (`padding_mode="border"`), which for normalised digits
and clothes is the background. Flips are off by default: a mirrored 2 or 7 is not a digit.

`RandomShift` is the whole-pixel shift alone, as a layer of the model (as Keras puts its random
translation layers in the model): it works in training mode only, and being part of the forward
pass it is captured with the rest of the step in `fit`'s CUDA graph, where a callback's warp runs
eagerly around each replay.

    net = nn.Sequential(RandomShift(2), cnn())
"""
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import DataError
from .fit import Callback
from .predict import predict

__all__ = ["Augment", "RandomShift", "predict_tta"]


class Augment(Callback):
    """Random crop-with-padding, translation, rotation and (optionally) flip of each training batch.

    Args:
        pad: crop padding in pixels: each image moves by a whole number of pixels in [-pad, pad].
        translate: a further shift of up to this fraction of the image side (continuous).
        rotate: the largest rotation, in degrees, either way.
        flip: mirror half of the images left-right (for clothes, not for digits).
        shape: (C, H, W) of one image when rows are flat; None infers (1, s, s) or (3, s, s).
        padding_mode: how `grid_sample` fills pixels from outside: "border", "zeros" or "reflection".

    Shape:
        x: (N, D) flat rows, (N, H, W) or (N, C, H, W); the output has the same shape and dtype.

    Example:
        >>> aug = Augment(pad=2, rotate=10)
        >>> aug(torch.rand(8, 784)).shape
        torch.Size([8, 784])
    """

    def __init__(self, pad=2, translate=0.0, rotate=10.0, flip=False, shape=None, padding_mode="border"):
        if not (isinstance(pad, int) and pad >= 0):
            raise ValueError(f"pad must be a non-negative integer (pixels); got {pad!r}")
        if not 0 <= translate < 1:
            raise ValueError(f"translate must be a fraction of the image side in [0, 1); got {translate}")
        if not 0 <= rotate <= 180:
            raise ValueError(f"rotate must be in [0, 180] degrees; got {rotate}")
        if padding_mode not in ("border", "zeros", "reflection"):
            raise ValueError(f"padding_mode must be 'border', 'zeros' or 'reflection'; got {padding_mode!r}")
        self.pad, self.translate, self.rotate, self.flip = pad, translate, rotate, flip
        self.shape, self.padding_mode = shape, padding_mode

    def _images(self, x):
        return _images(x, self.shape)

    def theta(self, n, h, w, device):
        """(n, 2, 3) random affine matrices mapping output to input coordinates in [-1, 1]."""
        angle = (torch.rand(n, device=device) * 2 - 1) * math.radians(self.rotate)
        cos, sin = angle.cos(), angle.sin()
        sx = torch.ones(n, device=device)
        if self.flip:
            sx = torch.where(torch.rand(n, device=device) < 0.5, -sx, sx)
        # one pixel is 2/w of the [-1, 1] range: whole-pixel shifts sample pixel centres exactly
        px = torch.randint(-self.pad, self.pad + 1, (n, 2), device=device).float()
        px = torch.stack([px[:, 0] * (2 / w), px[:, 1] * (2 / h)], 1)  # no host-to-device copy per batch
        shift = px + (torch.rand(n, 2, device=device) * 2 - 1) * 2 * self.translate
        return torch.stack([torch.stack([cos * sx, -sin, shift[:, 0]], 1),
                            torch.stack([sin * sx, cos, shift[:, 1]], 1)], 1)  # (n, 2, 3)

    def __call__(self, x):
        imgs = self._images(x)                                            # (N, C, H, W)
        n, c, h, w = imgs.shape
        grid = F.affine_grid(self.theta(n, h, w, x.device), (n, c, h, w), align_corners=False)  # (N, H, W, 2)
        out = F.grid_sample(imgs.float(), grid, mode="bilinear", padding_mode=self.padding_mode,
                            align_corners=False)
        return out.to(x.dtype).reshape(x.shape)

    def before_batch(self, run):
        run.xb = self(run.xb)  # labels untouched: every warp keeps the class


def _images(x, shape=None):
    """x as (N, C, H, W): 4-d as it is, (N, H, W) with one channel, flat rows by `shape` or as square
    1- or 3-channel images."""
    if x.ndim == 4:
        return x
    if x.ndim == 3:
        return x[:, None]
    if x.ndim != 2:
        raise DataError(f"Augment expects (N, D), (N, H, W) or (N, C, H, W) images; got shape {tuple(x.shape)}")
    if shape is not None:
        return x.reshape(len(x), *shape)
    d = x.shape[1]
    for c in (1, 3):
        side = math.isqrt(d // c)
        if c * side * side == d:
            return x.reshape(len(x), c, side, side)
    raise DataError(f"cannot tell the image shape of rows of {d} values; pass shape=(C, H, W)")


class RandomShift(nn.Module):
    """Shift each training image by a random whole number of pixels in [-pad, pad] (both axes);
    pixels brought in repeat the border. The identity in eval mode.

    A layer rather than a callback, so that `fit` captures it with the step in one CUDA graph.

    Shape:
        x: (N, D) flat rows of square images, (N, H, W) or (N, C, H, W); the output has x's shape.

    Example:
        >>> shift = RandomShift(2)
        >>> shift(torch.rand(8, 784)).shape, torch.equal(shift.eval()(x := torch.rand(3, 784)), x)
        (torch.Size([8, 784]), True)
    """

    def __init__(self, pad=2, shape=None):
        super().__init__()
        if not (isinstance(pad, int) and pad >= 0):
            raise ValueError(f"pad must be a non-negative integer (pixels); got {pad!r}")
        self.pad, self.shape = pad, shape

    def forward(self, x):
        if not self.training or self.pad == 0:
            return x
        imgs = _images(x, self.shape)                                     # (N, C, H, W)
        n, c, h, w = imgs.shape
        p, dev = self.pad, x.device
        padded = F.pad(imgs, (p, p, p, p), mode="replicate")              # (N, C, H+2p, W+2p)
        off = torch.randint(0, 2 * p + 1, (2, n, 1), device=dev)          # row and column offsets
        rows = torch.arange(h, device=dev) + off[0]                       # (N, H)
        cols = torch.arange(w, device=dev) + off[1]                       # (N, W)
        out = padded[torch.arange(n, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None],
                     rows[:, None, :, None], cols[:, None, None, :]]      # (N, C, H, W)
        return out.reshape(x.shape)


class _TTA(nn.Module):
    """A model wrapper whose output is the mean probability over the plain input and `n` warped copies."""

    def __init__(self, model, augment, n):
        super().__init__()
        self.model, self.augment, self.n = model, augment, n
        self.train(model.training)  # predict restores this mode on the wrapped model too

    def forward(self, x):
        probs = torch.softmax(self.model(x).float(), dim=1)               # (N, C)
        for _ in range(self.n):
            probs += torch.softmax(self.model(self._warp(x)).float(), dim=1)
        return probs / (self.n + 1)

    def _warp(self, x):
        # a layer such as RandomShift warps in training mode only, and predict puts everything in eval
        a = self.augment
        if not isinstance(a, nn.Module) or a.training:
            return a(x)
        a.train()
        try:
            return a(x)
        finally:
            a.eval()


def predict_tta(model, dl, n=4, augment=None):
    """Test-time augmentation: class probabilities averaged over each input and `n` warped copies.

    Use the augmentation the model was trained with: warps it never saw lower accuracy (flipped
    copies took a CNN trained without flips from 0.846 to 0.790 on Fashion-MNIST, whose shoes all
    face left).

    Args:
        model: a classifier giving logits or log-probabilities (softmax turns either into probabilities).
        dl: a loader or array, as for `predict`. augment: an `Augment` (default `Augment()`).

    Returns:
        numpy (N, C) probabilities, rows in the loader's order (`n=0` gives softmax of `predict`).

    Example:
        >>> net = nn.Sequential(nn.Linear(784, 10), nn.LogSoftmax(dim=1))
        >>> predict_tta(net, np.random.rand(5, 784).astype("float32"), n=2).shape
        (5, 10)
    """
    if not (isinstance(n, int) and not isinstance(n, bool) and n >= 0):
        raise ValueError(f"n must be a non-negative integer; got {n!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a trained nn.Module; got {type(model).__name__}")
    if augment is not None and (isinstance(augment, type) or not callable(augment)):
        raise TypeError(f"augment must be an augmentation object such as Augment(pad=2) or RandomShift(2); got "
                        + (f"the class {augment.__name__} (pass {augment.__name__}())" if isinstance(augment, type)
                           else repr(augment)))
    return predict(_TTA(model, augment if augment is not None else Augment(), n), dl)
