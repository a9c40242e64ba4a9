"""Models: the nets the lesson and the CLI use, built from plain `torch.nn` modules.

    net = get_model("mlp")      # 784-100-100-10 with ReLU, ending in LogSoftmax (pair it with NLLLoss)
"""
from torch import nn

__all__ = ["logreg", "mlp", "cnn", "get_model", "MODELS"]


def logreg(n_in=28 * 28, n_out=10):
    """The lesson's one-layer net: `Linear(784, 10)` then `LogSoftmax`.

    Example:
        >>> logreg()
        Sequential(
          (0): Linear(in_features=784, out_features=10, bias=True)
          (1): LogSoftmax(dim=1)
        )
    """
    return nn.Sequential(nn.Linear(n_in, n_out), nn.LogSoftmax(dim=1))


def mlp(n_in=28 * 28, hidden=(100, 100), n_out=10):
    """The lesson's 784-100-100-10 net with ReLU between layers and `LogSoftmax` at the end.

    Example:
        >>> sum(p.numel() for p in mlp().parameters())
        89610
    """
    layers, width = [], n_in
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    return nn.Sequential(*layers, nn.Linear(width, n_out), nn.LogSoftmax(dim=1))


def cnn(n_out=10, channels=(32, 64), side=28, dropout=0.25):
    """A small CNN for 28x28 greyscale images given as flat rows of 784 (or (N, 1, 28, 28)).

    One conv-BN-ReLU-maxpool block per entry of `channels` (each halves the side), then dropout and
    a linear layer; ends in `LogSoftmax`. `channels=(64, 128, 256)` is the bigger net the GPU
    time-to-accuracy run uses.

    Example:
        >>> import torch
        >>> cnn()(torch.zeros(2, 784)).shape, cnn(channels=(8, 16, 32))(torch.zeros(2, 784)).shape
        (torch.Size([2, 10]), torch.Size([2, 10]))
    """
    layers, c_in, s = [_Image(side)], 1, side                   # (N, 784) -> (N, 1, 28, 28)
    for c in channels:
        layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                   nn.MaxPool2d(2)]                             # (N, c, s/2, s/2)
        c_in, s = c, s // 2
    return nn.Sequential(*layers, nn.Flatten(), nn.Dropout(dropout),
                         nn.Linear(c_in * s * s, n_out), nn.LogSoftmax(dim=1))


class _Image(nn.Module):
    """Reshape flat rows (N, side*side) or (N, side, side) to (N, 1, side, side); leave 4-d input alone."""

    def __init__(self, side):
        super().__init__()
        self.side = side

    def forward(self, x):
        return x if x.ndim == 4 else x.reshape(len(x), 1, self.side, self.side)


MODELS = {"logreg": logreg, "mlp": mlp, "cnn": cnn}


def get_model(name, **kwargs):
    """Build a model by name: one of `MODELS` ("logreg", "mlp", "cnn")."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
    return MODELS[name](**kwargs)
