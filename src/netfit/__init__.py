"""netfit: fastai lesson 8 ("From forests to nets") made real on PyTorch.

    from netfit import datasets, ImageClassifierData, fit, predict, accuracy, plots, default_device
"""
import importlib.util

from . import datasets, models, scratch
from .core import T, V, to_np
from .checkpoint import CheckpointError
from .compare import compare
from .data import ArrayLoader, DataError, ImageClassifierData, default_device
from .export import ExportError, Predictor, load
from .checks import FitError
from .fit import EVENTS, Callback, CancelBatch, CancelEpoch, CancelFit, NonFiniteLossError, Run, fit, set_lrs
from .history import History
from .metrics import accuracy, error_rate
from .predict import predict, predict_with_targs
from .plots import plot_confusion, plot_history, plot_lr_find, plot_top_losses, plots, show
from .augment import Augment, RandomShift, predict_tta
from .callbacks import CSVLogger, EarlyStopping, GradientClip, SaveBest, TensorBoard, TorchScheduler
from .learner import Learner
from .schedule import LRFinderResult, Schedule, cosine, fit_one_cycle, lr_find, one_cycle, param_groups, step_decay
from .seed import seed_everything
from .datasets import get_data
from .imports import F, Path, Variable, gzip, math, nn, np, optim, os, pickle, torch

__version__ = "0.1.0"


def __getattr__(name):
    # NetClassifier needs scikit-learn, an optional dependency: imported on first use, not with netfit
    if name == "NetClassifier":
        from .estimator import NetClassifier
        return NetClassifier
    if name == "plt":  # the lesson's `plt`, for `from netfit import *`: pyplot is loaded on first use
        from .imports import plt
        return plt
    raise AttributeError(f"module 'netfit' has no attribute {name!r}")

__all__ = ["datasets", "models", "scratch", "T", "V", "to_np", "ImageClassifierData", "ArrayLoader", "default_device", "fit", "predict",
           "predict_with_targs", "set_lrs", "History", "Run", "Callback", "EVENTS", "CancelFit",
           "CancelEpoch", "CancelBatch", "accuracy", "error_rate", "plots", "show", "plot_history",
           "plot_confusion", "plot_top_losses", "compare",
           "DataError", "FitError", "NonFiniteLossError", "CheckpointError", "load", "Predictor", "ExportError",
           "lr_find", "LRFinderResult", "plot_lr_find", "Schedule", "one_cycle", "cosine", "step_decay",
           "fit_one_cycle", "param_groups", "EarlyStopping", "SaveBest", "GradientClip", "CSVLogger",
           "TensorBoard", "TorchScheduler", "Augment", "RandomShift", "predict_tta", "Learner", "seed_everything",
           "get_data", "__version__",
           # what fastai 0.7's star imports gave the lesson's cells (netfit/imports.py)
           "gzip", "math", "os", "pickle", "Path", "np", "torch", "F", "nn", "optim", "Variable", "plt"]
if importlib.util.find_spec("sklearn") is not None:  # `from netfit import *` must work without it
    __all__.append("NetClassifier")
