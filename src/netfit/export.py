"""Export: trained weights as safetensors plus a small JSON, and `load` to get a predictor back.

    save(net, "runs/x", arch="mlp", classes=FASHION_CLASSES, mean=m, std=s)   # model.safetensors + model.json
    predictor = load("runs/x"); predictor.predict(x_raw)                        # labels for raw [0, 1] pixels

safetensors holds only tensors, so loading weights can never run code (unlike a pickle).
"""
import hashlib
import json
import os
import platform
from pathlib import Path

import numpy as np
import torch

__all__ = ["save", "load", "Predictor", "ExportError"]

WEIGHTS, META = "model.safetensors", "model.json"


class ExportError(ValueError):
    """An exported model folder is missing, corrupt or does not match its description."""


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save(model, folder, arch=None, arch_kwargs=None, classes=None, input_shape=None, mean=None, std=None,
         pixels=None):
    """Write `model.safetensors` and `model.json` into `folder`; returns the JSON's dict.

    Args:
        arch: a name in `netfit.models.MODELS` so `load` can rebuild the net (else only its repr is kept).
        classes: class names in label order.
        input_shape: one row's shape; default: the first Linear layer's in_features, else (784,). One
            forward pass of zeros checks that the model takes it.
        mean, std: the normalisation applied to raw inputs: numbers (the training pixels' mean and
            std), or one per feature (tabular data, e.g. `x.mean(0)`, `x.std(0)`).
        pixels: whether raw inputs are image pixels (then the predictor divides uint8 by 255 and
            refuses floats outside [0, 1]); default: True unless mean/std are per feature.

    Example:
        >>> import tempfile; from netfit.models import logreg
        >>> meta = save(logreg(), tempfile.mkdtemp(), arch="logreg", mean=0.13, std=0.31)
        >>> meta["arch"], len(meta["weights_sha256"])
        ('logreg', 64)
    """
    from safetensors.torch import save_file
    from . import __version__
    if mean is None or std is None:
        from .data import _warn
        _warn(f"saving {folder} without mean= and std=: netfit.load(...).predict will feed inputs to the model as "
              "given. Pass the training statistics (mean=x.mean(), std=x.std() of the raw [0, 1] training pixels) "
              "to have raw pixels normalised, or mean=0, std=1 if the model was trained on [0, 1] pixels as they are")
    input_shape = tuple(int(d) for d in (input_shape if input_shape is not None else _input_shape(model)))
    _check_takes(model, input_shape, folder)
    mean, std = (_stat(v, name, input_shape) for v, name in ((mean, "mean"), (std, "std")))
    pixels = bool(pixels) if pixels is not None else not isinstance(mean, list) and not isinstance(std, list)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = folder / (WEIGHTS + ".tmp")
    save_file(state, str(tmp))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # safetensors writes 0600; a shared run folder's weights read as its other files
    tmp.replace(folder / WEIGHTS)
    meta = {
        "arch": arch, "arch_kwargs": dict(arch_kwargs or {}), "repr": repr(model),
        "classes": [str(c) for c in classes] if classes is not None else None,
        "input_shape": list(input_shape), "mean": mean, "std": std, "pixels": pixels,
        "netfit_version": __version__, "torch_version": torch.__version__, "python": platform.python_version(),
        "weights_sha256": _sha256(folder / WEIGHTS),
    }
    (folder / META).write_text(json.dumps(meta, indent=2))
    return meta


def _input_shape(model):
    """One row's shape as the model says: (in_features,) when its first layer is a Linear, (side²,) for
    netfit's cnn(side=...), else (784,)."""
    from .models import _Image
    first = next((m for m in model.modules() if not list(m.children()) and list(m.parameters(recurse=False))), None)
    if isinstance(first, torch.nn.Linear):
        return (first.in_features,)
    image = next((m for m in model.modules() if isinstance(m, _Image)), None)
    return (image.side * image.side,) if image is not None else (784,)


def _check_takes(model, input_shape, folder):
    """ExportError unless `model` takes rows of `input_shape` (fit's one forward pass of zeros, in eval mode)."""
    from .checks import _forward_one
    from .data import DataError
    first = next((p for p in model.parameters() if p.is_floating_point()), None)
    device, dtype = (first.device, first.dtype) if first is not None else (torch.device("cpu"), torch.float32)
    try:
        _forward_one(model, torch.zeros((2, *input_shape), device=device, dtype=dtype), "input_shape")
    except DataError as e:
        raise ExportError(f"saving {folder}: the model cannot take rows of input_shape={input_shape} ({e}); pass "
                          "the shape of one training row, e.g. input_shape=x.shape[1:]") from None


def _stat(v, name, input_shape):
    """mean or std for model.json: None, a float, or a list of one float per feature."""
    if v is None:
        return None
    a = np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v, dtype=np.float64)
    n = int(np.prod(input_shape))
    if not np.isfinite(a).all() or (name == "std" and ((a < 0).any() or (a.size == 1 and a.reshape(-1)[0] == 0))):
        raise ExportError(f"{name} must be finite{' and positive' if name == 'std' else ''}; got {v!r}")
    if a.ndim == 0 or (a.size == 1 and n != 1):  # one number for every pixel, also as (0.13,) or x.mean((0, 2, 3))
        return float(a.reshape(-1)[0])
    if a.size != n:
        raise ExportError(f"{name} holds {a.size} values; expected one number, or one per feature ({n} for "
                          f"input_shape={input_shape})")
    if name == "std":  # a constant column has std 0: divide it by 1, as scikit-learn's StandardScaler does
        a = np.where(a > 0, a, 1.0)
    return a.reshape(-1).tolist()


class Predictor:
    """A model rebuilt from an export, with its normalisation. For an image model give it raw pixels
    in [0, 1] (uint8 images are divided by 255); for tabular data (per-feature mean and std, or
    `pixels=False` at export) the raw feature values."""

    def __init__(self, model, meta):
        self.model, self.meta = model.eval(), meta
        self.classes = meta.get("classes")

    def _prepare(self, x):
        a = np.asarray(x)
        pixels = self.meta.get("pixels", True)  # exports before the flag were all of images
        if a.dtype.kind not in "biuf":
            raise ExportError(f"inputs must be numbers{' (pixels in [0, 1])' if pixels else ''}; got dtype {a.dtype}")
        x = torch.as_tensor(a.astype(np.float32) / 255 if a.dtype == np.uint8 and pixels
                            else a.astype(np.float32, copy=False))
        if not torch.isfinite(x).all():
            raise ExportError(f"inputs hold {int((~torch.isfinite(x)).sum())} NaN or infinite values; expected "
                              + ("pixels in [0, 1]" if pixels else "finite numbers"))
        if pixels and self.meta.get("mean") is not None and len(x) and (x.min() < -0.01 or x.max() > 1.01):
            raise ExportError(f"inputs range from {x.min().item():g} to {x.max().item():g}; expected raw pixels in "
                              "[0, 1] (divide 0..255 pixels by 255; the model normalises them with its own mean "
                              "and std)")
        n_in = int(np.prod(self.meta["input_shape"]))
        if x.numel() == 0:
            raise ExportError(f"got no inputs (shape {tuple(x.shape)}); expected rows of {n_in} values, or images")
        shape = tuple(self.meta["input_shape"])
        # one row, or one image: (28, 28) for a CNN's (1, 28, 28), and for an MLP's flat (784,) too
        one_image = x.ndim == 2 and n_in != x.shape[-1] and (
            x.shape == shape[-2:] or (pixels and len(shape) == 1 and x.shape[0] == x.shape[1] and x.numel() == n_in))
        if x.ndim == 1 or one_image:
            x = x.reshape(1, -1)
        x = x.reshape(len(x), -1)
        if x.shape[1] != n_in:
            raise ExportError(f"the model expects {n_in} features per row; got {x.shape[1]}")
        if self.meta.get("mean") is not None:
            x = (x - torch.as_tensor(self.meta["mean"])) / torch.as_tensor(self.meta["std"])  # numbers or per feature
        return x.float()

    def predict_proba(self, x):
        """Class probabilities (N, C) for raw inputs (N, 784) or (N, 28, 28) in [0, 1]."""
        dtype = next((p.dtype for p in self.model.parameters() if p.is_floating_point()), torch.float32)
        with torch.no_grad():
            out = self.model(self._prepare(x).to(dtype))  # a float64 (or half) model gets its own dtype
        # models ending in LogSoftmax already give log-probabilities; softmax of those is exp
        return torch.softmax(out.float(), dim=1).numpy()

    def predict(self, x):
        """Predicted label indices (N,)."""
        return self.predict_proba(x).argmax(1)


def load(folder):
    """Rebuild a `Predictor` from a folder written by `save`, checking the weights' SHA-256.

    Example:
        >>> import tempfile; from netfit.models import logreg
        >>> d = tempfile.mkdtemp(); _ = save(logreg(), d, arch="logreg")
        >>> load(d).predict(np.zeros((2, 784))).shape
        (2,)
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from .models import get_model
    folder = Path(folder)
    if not (folder / META).is_file() or not (folder / WEIGHTS).is_file():
        raise ExportError(f"{folder}: expected {META} and {WEIGHTS} written by netfit.export.save")
    try:
        meta = json.loads((folder / META).read_text())
    except json.JSONDecodeError as e:
        raise ExportError(f"{folder / META}: not valid JSON ({e})") from None
    got = _sha256(folder / WEIGHTS)
    if got != meta.get("weights_sha256"):
        raise ExportError(f"{folder / WEIGHTS}: SHA-256 {got} differs from the recorded "
                          f"{meta.get('weights_sha256')}; the file is corrupt or was replaced")
    if not meta.get("arch"):
        raise ExportError(f"{folder / META}: no architecture name recorded; rebuild the module yourself "
                          f"and load the weights with safetensors.torch.load_file")
    try:
        model = get_model(meta["arch"], **meta.get("arch_kwargs", {}))
    except (ValueError, TypeError) as e:  # an unknown name or arguments it does not take
        raise ExportError(f"{folder / META}: cannot rebuild the model: {e}") from None
    try:
        model.load_state_dict(load_file(str(folder / WEIGHTS)))
    except (SafetensorError, RuntimeError) as e:
        raise ExportError(f"{folder / WEIGHTS}: does not fit architecture {meta['arch']!r}: {e}") from None
    return Predictor(model, meta)
