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


def cnn(n_out=10, channels=(32, 64), side=28):
    """A small CNN for 28x28 greyscale images given as flat rows of 784 (or (N, 1, 28, 28)).

    Two conv-BN-ReLU-pool blocks, then a linear layer; ends in `LogSoftmax`.

    Example:
        >>> import torch
        >>> cnn()(torch.zeros(2, 784)).shape
        torch.Size([2, 10])
    """
    c1, c2 = channels
    return nn.Sequential(
        _Image(side),                                           # (N, 784) -> (N, 1, 28, 28)
        nn.Conv2d(1, c1, 3, padding=1, bias=False), nn.BatchNorm2d(c1), nn.ReLU(),
        nn.MaxPool2d(2),                                        # (N, c1, 14, 14)
        nn.Conv2d(c1, c2, 3, padding=1, bias=False), nn.BatchNorm2d(c2), nn.ReLU(),
        nn.MaxPool2d(2),                                        # (N, c2, 7, 7)
        nn.Flatten(), nn.Dropout(0.25),
        nn.Linear(c2 * (side // 4) ** 2, n_out), nn.LogSoftmax(dim=1),
    )


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
