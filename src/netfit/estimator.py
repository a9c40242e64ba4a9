"""NetClassifier: a net trained by netfit's `fit`, as a scikit-learn classifier.

    clf = make_pipeline(StandardScaler(), NetClassifier("mlp", epochs=5))
    cross_val_score(clf, x, y, cv=3)                         # or GridSearchCV, VotingClassifier...

It takes what scikit-learn estimators take (2-D float arrays, any hashable labels) and gives back what
they give (`classes_` in the original labels, `predict_proba` rows that sum to 1), so a net and a
random forest can sit in the same Pipeline, VotingClassifier or GridSearchCV. Needs scikit-learn.
"""
import copy
import inspect
import math

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted
from torch import nn

from .data import ArrayLoader, _device, as_tensors, default_device
from .fit import fit
from .predict import predict
from .models import MODELS

__all__ = ["NetClassifier", "OPTIMIZERS"]

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:  # older releases keep it as a method
    def _validate_data(est, *args, **kwargs):
        return est._validate_data(*args, **kwargs)


class NetClassifier(ClassifierMixin, BaseEstimator):
    """A PyTorch classifier trained with `netfit.fit`, usable wherever scikit-learn expects a classifier.

    Args:
        module: the net. A name in `netfit.models.MODELS` ("logreg", "mlp", "cnn"; default "mlp"), a
            callable returning an `nn.Module`, or an `nn.Module`. Names and callables are called with
            whichever of `n_in` (features), `n_out` (classes) and `side` (image side, for "cnn") they
            accept, plus `module_kwargs`. A Module instance is deep-copied and its layers'
            `reset_parameters()` called at each `fit`, so clones and refits start fresh and the
            instance you passed is never trained (parameters outside such layers keep their values).
        crit: the loss, an instance or class. Default: `NLLLoss` when the net ends in `LogSoftmax`,
            else `CrossEntropyLoss`. With `NLLLoss` the outputs are log-probabilities and
            `predict_proba` is their exp; with `CrossEntropyLoss` they are logits and it is their
            softmax. `NLLLoss` on a net whose outputs are not log-probabilities is an error at `fit`.
        opt: an optimizer class (or "adam", "adamw", "sgd", or a function such as
            `functools.partial(torch.optim.SGD, momentum=0.9)`), built as `opt(params, lr=lr)`.
        epochs, bs, lr: passes over the data, batch size, learning rate.
        device: where to train ("cpu", "cuda"...); default `netfit.default_device()`.
        verbose: print fit's per-epoch table.
        random_state: seeds the weights and the shuffling (int or RandomState); None draws a fresh seed
            from numpy's global RNG each fit, as scikit-learn does. The global torch RNG is left as it was.
        module_kwargs: extra keyword arguments for a module name or callable (e.g. `{"hidden": (50,)}`).

    Attributes after fit: `classes_` (the original labels, sorted), `n_features_in_`, `module_` (the
    trained net, on `device`), `crit_`, `history_` (fit's History), `outputs_` ("log_probs", "probs"
    or "logits": how `predict_proba` reads the net).

    Input is a 2-D array (N, features); for "cnn" give flat rows of side*side pixels. Labels may be
    strings or any integers; the net learns indices 0..C-1 and `predict` maps them back.

    scikit-learn's own estimator checks (`parametrize_with_checks`, tests/test_estimator.py) all pass
    with scikit-learn 1.9: `EXPECTED_FAILED_CHECKS` is empty. scikit-learn itself skips two where
    their dependency is missing: the array-API check (needs `SCIPY_ARRAY_API=1` and array-api-compat)
    and the pandas-input check (needs pandas). The checks train for a few epochs at lr 1e-2 so
    that `check_classifiers_train`'s accuracy bar (0.83 on blobs) is met honestly, without the
    `poor_score` tag.

    Example:
        >>> from sklearn.datasets import make_blobs
        >>> x, y = make_blobs(200, n_features=4, centers=3, random_state=0)
        >>> clf = NetClassifier("mlp", epochs=5, lr=1e-2, random_state=0, device="cpu").fit(x, ["a", "b", "c"] * 66 + ["a", "b"])
        >>> clf.classes_.tolist(), clf.predict_proba(x[:2]).sum(1).round(6).tolist()
        (['a', 'b', 'c'], [1.0, 1.0])
    """

    # check name -> why it is expected to fail (none today); tests/test_estimator.py passes it to sklearn
    EXPECTED_FAILED_CHECKS = {}

    def __init__(self, module=None, crit=None, opt=torch.optim.Adam, epochs=5, bs=64, lr=1e-3, device=None,
                 verbose=False, random_state=None, module_kwargs=None):
        self.module, self.crit, self.opt = module, crit, opt
        self.epochs, self.bs, self.lr, self.device = epochs, bs, lr, device
        self.verbose, self.random_state, self.module_kwargs = verbose, random_state, module_kwargs

    def fit(self, X, y):
        """Train a fresh net on X (N, features) and labels y (N,); returns self. A fit that fails leaves
        the estimator unfitted, not holding an earlier fit's net."""
        try:
            return self._fit(X, y)
        except BaseException:
            for name in ("n_features_in_", "feature_names_in_", "classes_", "module_", "crit_", "outputs_",
                         "history_"):
                if name in vars(self):
                    delattr(self, name)
            raise

    def _fit(self, X, y):
        X, y = _validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        X = np.require(X, np.float32, ["C", "W"])  # torch needs writable memory (X may be a read-only memmap)
        classes, y_idx = np.unique(y, return_inverse=True)  # labels -> indices 0..C-1; classes_ maps back
        self._check_params()
        device = _device(self.device) if self.device is not None else default_device()
        # as scikit-learn: an int or a RandomState seeds the fit; None draws a seed from numpy's global RNG,
        # so every fit starts afresh (np.random.seed makes a series of fits repeatable)
        seed = (int(self.random_state) if isinstance(self.random_state, (int, np.integer))
                else int(check_random_state(self.random_state).randint(2 ** 31 - 1)))
        # seed weights and shuffling; leave the caller's torch RNGs alone (torch.manual_seed would seed every
        # GPU's too, lazily, even for a fit on the CPU): only the generators this fit draws from
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.default_generator.manual_seed(seed)
            if device.type == "cuda":
                with torch.cuda.device(device):
                    torch.cuda.manual_seed(seed)
            module = self._build(X.shape[1], len(classes)).to(device)
            crit = self._crit(module)
            outputs = self._outputs_kind(module, crit)
            self._check_outputs(module, outputs, X[:64], len(classes), crit, device)
            opt_cls = OPTIMIZERS[self.opt.lower()] if isinstance(self.opt, str) else self.opt
            opt = opt_cls(module.parameters(), lr=float(self.lr))
            # loaders over the arrays as given: an sklearn estimator leaves scaling to a Pipeline. A
            # last batch of 1 row is dropped (a different row each epoch) when BatchNorm could not train on it:
            # a cross-validation fold may have any size
            x_t, y_t = as_tensors(X, y_idx.astype(np.int64), "X")
            norms = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())
            drop = norms and len(X) > 1 and len(X) % int(self.bs) == 1
            md = (ArrayLoader(x_t, y_t, int(self.bs), shuffle=True, drop_last=drop).to(device), None)
            # seed: the shuffles, and the CPU step on torch's thread count, so an int random_state repeats
            history = fit(module, md, int(self.epochs), opt, crit, verbose=bool(self.verbose), seed=seed)
        # set only once training succeeded, so a failed fit does not look fitted
        self.classes_, self.module_, self.crit_, self.outputs_, self.history_ = classes, module, crit, outputs, history
        return self

    def _check_params(self):
        for name in ("epochs", "bs"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < (0 if name == "epochs" else 1):
                raise ValueError(f"{name} must be an integer {'>= 0' if name == 'epochs' else '>= 1'}; got {v!r}")
        if isinstance(self.lr, (bool, np.bool_)) or not isinstance(self.lr, (int, float, np.number)) \
                or not self.lr >= 0 or not math.isfinite(self.lr):
            raise ValueError(f"lr must be a finite number >= 0; got {self.lr!r}")
        if isinstance(self.opt, str) and self.opt.lower() not in OPTIMIZERS:
            raise ValueError(f"opt {self.opt!r} is not known; expected an optimizer class or one of "
                             f"{', '.join(OPTIMIZERS)}")
        if not isinstance(self.opt, str) and (not callable(self.opt) or isinstance(self.opt, torch.optim.Optimizer)
                                              or (isinstance(self.opt, type)
                                                  and not issubclass(self.opt, torch.optim.Optimizer))):
            raise ValueError(f"opt must be a torch.optim.Optimizer class such as torch.optim.Adam (or a function "
                             f"making one, e.g. functools.partial(torch.optim.SGD, momentum=0.9)), or one of "
                             f"{', '.join(OPTIMIZERS)}; got {self.opt!r}")

    def _build(self, n_in, n_out):
        """A fresh module for n_in features and n_out classes."""
        module, kwargs = self.module, dict(self.module_kwargs or {})
        if module is None:
            module = "mlp"
        if isinstance(module, nn.Module):
            if kwargs:
                raise ValueError("module_kwargs apply to a module name or callable, not to an nn.Module instance")
            net = copy.deepcopy(module)
            for m in net.modules():
                if callable(getattr(m, "reset_parameters", None)):
                    m.reset_parameters()
            return net
        if isinstance(module, str):
            if module not in MODELS:
                raise ValueError(f"unknown module {module!r}; expected one of {', '.join(MODELS)}, "
                                 "a callable or an nn.Module")
            module = MODELS[module]
        if not callable(module):
            raise ValueError(f"module must be a name in {', '.join(MODELS)}, a callable returning an nn.Module, "
                             f"or an nn.Module; got {type(module).__name__}")
        side = math.isqrt(n_in)
        offered = {"n_in": n_in, "n_out": n_out, "side": side}
        try:
            params = inspect.signature(module).parameters
        except (TypeError, ValueError):
            params = {}
        if "side" in params and "side" not in kwargs and side * side != n_in:
            raise ValueError(f"{getattr(module, '__name__', module)} needs square images given as flat rows; "
                             f"got {n_in} features, which is not a square number")
        net = module(**{k: v for k, v in offered.items() if k in params and k not in kwargs}, **kwargs)
        if not isinstance(net, nn.Module):
            raise ValueError(f"module {module!r} returned {type(net).__name__}; expected a torch.nn.Module")
        return net

    def _crit(self, module):
        crit = self.crit
        if crit is None:
            last = list(module.modules())[-1]
            return nn.NLLLoss() if isinstance(last, nn.LogSoftmax) else nn.CrossEntropyLoss()
        if isinstance(crit, type):
            return crit()
        return copy.deepcopy(crit)  # a loss with state (weights) is not shared between clones

    @staticmethod
    def _outputs_kind(module, crit):
        """What the net's outputs are: the loss says so; for another loss, the net's last layer."""
        if isinstance(crit, nn.NLLLoss):
            return "log_probs"
        if isinstance(crit, nn.CrossEntropyLoss):
            return "logits"
        last = list(module.modules())[-1]
        return {nn.LogSoftmax: "log_probs", nn.Softmax: "probs"}.get(type(last), "logits")

    @staticmethod
    def _check_outputs(module, outputs, X, n_classes, crit, device):
        """Fail before training if the net's outputs do not fit the classes or the loss."""
        was = module.training
        module.eval()
        try:
            with torch.no_grad():
                out = module(torch.from_numpy(X).to(device))
        except RuntimeError as e:
            raise ValueError(f"the module fails on input of shape {X.shape}: {e}") from e
        finally:
            module.train(was)
        if out.ndim != 2 or out.shape[1] != n_classes:
            raise ValueError(f"the module gives outputs of shape {tuple(out.shape)} for {len(X)} rows; expected "
                             f"({len(X)}, {n_classes}), one score per class of y")
        if outputs == "logits" and isinstance(crit, nn.CrossEntropyLoss) and n_classes > 1 and len(out) > 1 \
                and bool((out >= 0).all()) and torch.allclose(out.double().sum(1), torch.ones(len(out), dtype=torch.double),
                                                              atol=1e-4):
            # probabilities (a Softmax at the end, wherever it is registered): cross-entropy would apply a second
            # softmax, and so would predict_proba
            raise ValueError("the module's outputs are probabilities (rows >= 0 summing to 1): end it in "
                             "nn.LogSoftmax(dim=1) (trained with NLLLoss), or drop the Softmax and let CrossEntropyLoss "
                             "take the raw scores; predict_proba gives probabilities either way")
        if outputs == "log_probs":
            sums = out.double().exp().sum(1)
            if not torch.allclose(sums, torch.ones_like(sums), atol=1e-3):
                raise ValueError(f"{type(crit).__name__} expects log-probabilities but the module's rows of exp(outputs) "
                                 f"sum to {sums.min().item():.4g}..{sums.max().item():.4g}, not 1; end the module in "
                                 "nn.LogSoftmax(dim=1), or use nn.CrossEntropyLoss for raw scores")

    def _outputs(self, X):
        check_is_fitted(self)
        X = _validate_data(self, X, dtype=np.float32, reset=False)
        X = np.require(X, np.float32, ["C", "W"])
        return predict(self.module_, X).astype(np.float64)  # (N, C)

    def predict_log_proba(self, X):
        """Log-probabilities (N, C), columns in the order of `classes_`."""
        out = self._outputs(X)
        if self.outputs_ == "log_probs":   # the net ends in LogSoftmax: its outputs are already log p
            log_p = out
        elif self.outputs_ == "probs":     # the net ends in Softmax
            log_p = np.log(np.clip(out, 1e-300, None))
        else:                              # logits: log-softmax them
            log_p = out - out.max(1, keepdims=True)
            log_p = log_p - np.log(np.exp(log_p).sum(1, keepdims=True))
        # the net computed in float32: renormalise in float64 so exp(rows) sum to 1 to rounding
        m = log_p.max(1, keepdims=True)
        return log_p - (m + np.log(np.exp(log_p - m).sum(1, keepdims=True)))

    def predict_proba(self, X):
        """Probabilities (N, C) that sum to 1 per row, columns in the order of `classes_`.

        exp of the outputs for a net ending in LogSoftmax (NLLLoss), softmax for logits (CrossEntropyLoss).
        """
        return np.exp(self.predict_log_proba(X))

    def predict(self, X):
        """Predicted labels (N,), in the original label values (`classes_`)."""
        out = self._outputs(X)  # checks fitted first
        return self.classes_[out.argmax(1)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.random_state is None
        return tags
