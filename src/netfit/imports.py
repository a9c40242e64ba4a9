"""The names the lesson's cells get from fastai 0.7's star imports (`fastai.imports`,
`fastai.torch_imports`, `fastai.io`), so that `from netfit import *` gives them too.

    from netfit import *
    ((x, y), (x_valid, y_valid), _) = pickle.load(gzip.open(path + FILENAME, "rb"), encoding="latin-1")
    plt.imshow(x[0].reshape(28, 28), cmap="gray"); math.sqrt(len(x[0])); Variable(T(x[:2]))

As fastai does, these are the modules under their usual short names; `from netfit.imports import *`
gives just them. `plt` is imported on first use: pyplot takes a noticeable time to load, and
`import netfit` alone does not need it.
"""
import gzip
import math
import os
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn, optim
from torch.autograd import Variable  # a no-op wrapper since PyTorch 0.4: Variable(t) is t

from .datasets import get_data

__all__ = ["gzip", "math", "os", "pickle", "Path", "np", "torch", "F", "nn", "optim", "Variable", "plt",
           "get_data"]


def __getattr__(name):
    if name == "plt":
        import matplotlib.pyplot as plt
        return plt
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
