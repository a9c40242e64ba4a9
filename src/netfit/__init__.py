"""netfit: fastai lesson 8 ("From forests to nets") made real on PyTorch.

    from netfit import datasets, ImageClassifierData, fit, predict, accuracy, plots, default_device
"""
from . import datasets
from .data import ArrayLoader, DataError, ImageClassifierData, default_device
from .fit import (EVENTS, Callback, CancelBatch, CancelEpoch, CancelFit, FitError, History, Run, fit,
                  predict, predict_with_targs, set_lrs)
from .metrics import accuracy, error_rate
from .plots import plot_history, plots, show

__version__ = "0.1.0"

__all__ = ["datasets", "ImageClassifierData", "ArrayLoader", "default_device", "fit", "predict",
           "predict_with_targs", "set_lrs", "History", "Run", "Callback", "EVENTS", "CancelFit",
           "CancelEpoch", "CancelBatch", "accuracy", "error_rate", "plots", "show", "plot_history",
           "DataError", "FitError", "__version__"]
