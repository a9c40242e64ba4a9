"""Augmentation on the device: one random affine warp per image, applied to a whole batch at once.

    fit(net, md, 5, callbacks=[Augment(pad=2, rotate=10)])      # training batches only
    probs = predict_tta(net, md.val_dl, n=4)                      # mean over the plain and 4 warped copies

A random crop of an image padded by `pad` pixels is the image shifted by a whole number of pixels in
[-pad, pad]; a translation and a rotation are shifts and turns of the sampling grid. `Augment`
folds them (and an optional horizontal flip) into one 2x3 matrix per image and warps the batch with a
single `affine_grid` + `grid_sample` call on the batch's device: no Python per sample. Pixels brought
in from outside the image repeat the border (`padding_mode="border"`), which for normalised digits
and clothes is the background. Flips are off by default: a mirrored 2 or 7 is not a digit.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import DataError
from .fit import Callback
from .predict import predict

__all__ = ["Augment", "predict_tta"]


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
        """x as (N, C, H, W)."""
        if x.ndim == 4:
            return x
        if x.ndim == 3:
            return x[:, None]
        if x.ndim != 2:
            raise DataError(f"Augment expects (N, D), (N, H, W) or (N, C, H, W) images; got shape {tuple(x.shape)}")
        if self.shape is not None:
            return x.reshape(len(x), *self.shape)
        d = x.shape[1]
        for c in (1, 3):
            side = math.isqrt(d // c)
            if c * side * side == d:
                return x.reshape(len(x), c, side, side)
        raise DataError(f"cannot tell the image shape of rows of {d} values; pass shape=(C, H, W)")

    def theta(self, n, h, w, device):
        """(n, 2, 3) random affine matrices mapping output to input coordinates in [-1, 1]."""
        angle = (torch.rand(n, device=device) * 2 - 1) * math.radians(self.rotate)
        cos, sin = angle.cos(), angle.sin()
        sx = torch.ones(n, device=device)
        if self.flip:
            sx = torch.where(torch.rand(n, device=device) < 0.5, -sx, sx)
        # one pixel is 2/w of the [-1, 1] range: whole-pixel shifts sample pixel centres exactly
        px = torch.randint(-self.pad, self.pad + 1, (n, 2), device=device).float() * torch.tensor(
            [2 / w, 2 / h], device=device)
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


class _TTA(nn.Module):
    """A model wrapper whose output is the mean probability over the plain input and `n` warped copies."""

    def __init__(self, model, augment, n):
        super().__init__()
        self.model, self.augment, self.n = model, augment, n
        self.train(model.training)  # predict restores this mode on the wrapped model too

    def forward(self, x):
        probs = torch.softmax(self.model(x).float(), dim=1)               # (N, C)
        for _ in range(self.n):
            probs += torch.softmax(self.model(self.augment(x)).float(), dim=1)
        return probs / (self.n + 1)


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
    if not (isinstance(n, int) and n >= 0):
        raise ValueError(f"n must be a non-negative integer; got {n!r}")
    return predict(_TTA(model, augment if augment is not None else Augment(), n), dl)
