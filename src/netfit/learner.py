"""`Learner`: model, data, loss, optimizer and callbacks kept together, for `learn.fit(3)` habits.

    learn = Learner(mlp(), md, metrics=[accuracy])
    res = learn.lr_find(); learn.fit_one_cycle(3, res.suggestion)
    learn.predict(x_valid); learn.save("mlp.safetensors"); learn.export("runs/mlp", arch="mlp")

Every method calls the functions of the same name (`fit`, `fit_one_cycle`, `lr_find`, `predict`,
`netfit.export.save`): there is one training loop, and it is `fit`'s.
"""
from pathlib import Path

import torch

from .fit import fit, set_lrs
from .predict import predict
from .schedule import fit_one_cycle, lr_find

__all__ = ["Learner"]


class Learner:
    """Bundle a model and what trains it; the optimizer is made once and keeps its state across fits.

    Args:
        model: an `nn.Module`. data: an `ImageClassifierData` or `(trn_dl, val_dl)` pair.
        crit: the loss (default as in `fit`). opt: an optimizer over `model`'s parameters (default
            Adam). metrics: as for `fit`. callbacks: passed to every `fit` (add more per call).

    Attributes: `model`, `data`, `crit`, `opt`, `metrics`, `callbacks`, `history` (the last fit's).

    Example:
        >>> import numpy as np; from torch import nn; from netfit import ImageClassifierData, accuracy
        >>> x = np.random.rand(256, 4).astype("float32"); y = (x[:, 0] > 0.5).astype("int64")
        >>> md = ImageClassifierData.from_arrays(".", (x, y), (x, y), bs=32, device="cpu")
        >>> learn = Learner(nn.Linear(4, 2), md, metrics=[accuracy])
        >>> h = learn.fit(2, verbose=False); learn.predict(x[:3]).shape
        (3, 2)
    """

    def __init__(self, model, data, crit=None, opt=None, metrics=None, callbacks=None):
        self.model, self.data = model, data
        self.crit = crit  # None: fit picks NLLLoss or CrossEntropyLoss from the model's outputs
        self.opt = torch.optim.Adam(model.parameters()) if opt is None else opt
        self.metrics, self.callbacks, self.history = list(metrics or []), list(callbacks or []), None

    def _callbacks(self, kw):
        return self.callbacks + list(kw.pop("callbacks", None) or [])

    def fit(self, epochs, lr=None, **kw):
        """`fit(model, data, epochs, opt, crit, metrics, callbacks, **kw)`; returns (and keeps) the History.
        `lr` (one rate, or one per param group) is set in the optimizer first, as fastai's `learn.fit(epochs, lr)`."""
        if isinstance(epochs, float) and not epochs.is_integer() and isinstance(lr, int) and not isinstance(lr, bool):
            from .checks import FitError
            raise FitError(f"learn.fit(epochs, lr) got epochs={epochs!r}, lr={lr!r}: fastai 0.7 took learn.fit(lr, "
                           f"epochs); here it is learn.fit({lr}, {epochs!r})")
        if lr is not None:
            set_lrs(self.opt, lr)
        self.history = fit(self.model, self.data, epochs, self.opt, self.crit, self.metrics, self._callbacks(kw), **kw)
        return self.history

    def fit_one_cycle(self, epochs, max_lr=None, **kw):
        """`fit_one_cycle` with this learner's parts; `max_lr=None` peaks at the optimizer's own rates."""
        self.history = fit_one_cycle(self.model, self.data, epochs, max_lr, self.opt, self.crit, self.metrics,
                                     callbacks=self._callbacks(kw), **kw)
        return self.history

    def lr_find(self, **kw):
        """`lr_find` on this model and optimizer (both put back afterwards); returns an `LRFinderResult`.

        The learner's callbacks stay out of the sweep: a logger or early stop should not take it for
        training. Pass `callbacks=[Augment()]` to sweep on augmented batches.
        """
        return lr_find(self.model, self.data, self.crit, self.opt, **kw)

    def predict(self, x_or_dl=None):
        """The model's outputs as numpy (N, C) for a loader or array; default the validation loader."""
        if x_or_dl is None:
            x_or_dl = self.data.val_dl if hasattr(self.data, "val_dl") else self.data[1]
            if x_or_dl is None:
                from .data import DataError
                raise DataError("this Learner's data has no validation set to predict on; pass the inputs: "
                                "learn.predict(x) or learn.predict(md.test_dl)")
        return predict(self.model, x_or_dl)

    def save(self, path):
        """Write the model's weights (state dict) to `path` as safetensors; returns the path. Tied weights
        (one tensor under two names) are written once, as safetensors requires."""
        from safetensors.torch import save_model
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_model(self.model, str(path))
        return path

    def load(self, path):
        """Load weights written by `save` into the model, on its device; returns self."""
        from safetensors import SafetensorError
        from safetensors.torch import load_model
        from .export import ExportError
        p = next(self.model.parameters(), None)
        device = str(p.device) if p is not None else "cpu"
        try:
            load_model(self.model, str(path), device=device)  # tied weights: one saved tensor, both names
        except (SafetensorError, OSError) as e:
            raise ExportError(f"{path}: not a weights file Learner.save wrote ({e})") from None
        except RuntimeError as e:
            raise ExportError(f"{path}: the weights do not fit this model ({' '.join(str(e).split())[:300]}); load them "
                              "into the architecture they were saved from") from None
        return self

    def export(self, path, **kwargs):
        """`netfit.export.save(model, path, **kwargs)`: a folder `netfit.export.load` turns into a predictor.

        Pass `mean=` and `std=` (the raw training pixels' statistics) so the predictor normalises raw inputs."""
        from .export import save
        return save(self.model, path, **kwargs)
