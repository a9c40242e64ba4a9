"""Plots: images with titles, and training curves. Each function returns a matplotlib Figure and
never calls `plt.show()`, so it works the same in Jupyter, scripts and tests.

    fig = plots(x_valid[:8].reshape(-1, 28, 28), titles=preds.argmax(1)[:8])
    fig.savefig("preds.png")
"""
import functools
import math

import numpy as np

__all__ = ["plots", "show", "plot_history", "plot_confusion", "plot_top_losses", "confusion_matrix",
           "as_probs", "plot_lr_find"]


def _figure(figsize):
    # pyplot figures show inline in Jupyter; matplotlib picks the Agg backend when there is no display
    import matplotlib.pyplot as plt
    return plt.figure(figsize=figsize, FigureClass=_figure_class())


@functools.cache
def _figure_class():
    """A matplotlib Figure that Jupyter draws once. Jupyter's inline backend draws every open pyplot
    figure when a cell ends, and a Figure that is the cell's value is drawn as well: twice (fastai's
    `plots` returned None for this reason; these return the Figure, for `savefig` in scripts). Drawn
    once, either way, it leaves pyplot, which then has nothing left to draw."""
    from matplotlib.figure import Figure

    class NotebookFigure(Figure):  # made on first use (no matplotlib import with netfit); see __getattr__
        def _ipython_display_(self):
            import io

            import matplotlib.pyplot as plt
            from IPython.display import Image, display
            buf = io.BytesIO()
            self.savefig(buf, format="png", bbox_inches="tight")
            display(Image(buf.getvalue()))
            plt.close(self)
    NotebookFigure.__qualname__ = "NotebookFigure"  # pickled as netfit.plots.NotebookFigure
    return NotebookFigure


def __getattr__(name):
    if name == "NotebookFigure":  # unpickling a figure: the class, made as plots made it
        return _figure_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _image(im):
    im = im.detach().cpu().numpy() if hasattr(im, "detach") else np.asarray(im)
    if im.ndim == 1:  # a flattened square image, as MNIST rows are
        side = int(round(np.sqrt(im.size)))
        if side * side != im.size:
            raise ValueError(f"cannot draw a flat image of {im.size} pixels; reshape it to (H, W) first")
        im = im.reshape(side, side)
    if im.ndim == 3 and im.shape[0] in (1, 3) and im.shape[-1] not in (1, 3):
        im = np.moveaxis(im, 0, -1)  # (C, H, W) -> (H, W, C)
    if im.ndim == 3 and im.shape[-1] == 1:
        im = im[..., 0]
    if im.ndim not in (2, 3):
        raise ValueError(f"expected an image of shape (H, W), (H, W, C) or (C, H, W); got {im.shape}")
    return im


def show(img, title=None, ax=None, figsize=(3, 3)):
    """Draw one greyscale (or RGB) image; returns a new Figure, or `ax` when drawing into yours.

    Returning your axes, not their figure, as matplotlib's own drawing functions do, keeps Jupyter
    from drawing a figure of yours twice (once as the cell's value, once by pyplot).

    Example:
        >>> fig = show(np.eye(28), title="7")
    """
    given = ax is not None
    if ax is None:
        fig = _figure(figsize)
        ax = fig.add_subplot(1, 1, 1)
    ax.imshow(_image(img), cmap="gray")
    ax.axis("off")
    if title is not None:
        if hasattr(title, "item") and math.prod(getattr(title, "shape", ())) == 1:
            title = title.item()  # a label from preds[:8] reads "3", not "tensor(3)" or "[3]"
        ax.set_title(str(title))
    return ax if given else fig


def plots(ims, figsize=(12, 6), rows=2, titles=None, colors=None):
    """Draw images in a grid of `rows` rows with optional titles; returns the Figure.

    Args:
        ims: (N, H, W) array or tensor (or (N, H*W) square rows); one (H, W) image or one flat row
            is drawn alone.
        titles: N labels; `colors`: N matplotlib colours for them (e.g. red for wrong predictions).

    Example:
        >>> fig = plots(np.random.rand(8, 28, 28), titles=list(range(8)))
        >>> len(fig.axes)
        8
    """
    ndim = getattr(ims, "ndim", None)
    square = ndim == 2 and ims.shape[0] == ims.shape[1] and (titles is None or len(titles) != ims.shape[0])
    if ndim == 1 or (ndim == 2 and (math.isqrt(ims.shape[1]) ** 2 != ims.shape[1] or square)):
        # one flat row, or one (H, W) image: not H flat rows (a flat row's length is a square; a square
        # (H, H) array is one image, e.g. 64 x 64, unless H titles say it is H rows of 8 x 8)
        ims = [ims]
    ims = list(ims)
    if not ims:
        raise ValueError("plots needs at least one image; got none")
    if colors is not None and len(colors) != len(ims):
        raise ValueError(f"got {len(colors)} colors for {len(ims)} images; expected one per image")
    if isinstance(rows, bool) or not isinstance(rows, (int, np.integer)) or rows < 1:
        raise ValueError(f"rows must be a positive integer; got {rows!r}")
    if isinstance(titles, str):
        raise ValueError(f"titles must be one label per image (a list or array); got the string {titles!r}")
    if titles is not None and len(titles) != len(ims):
        raise ValueError(f"got {len(titles)} titles for {len(ims)} images; expected one per image")
    if titles is not None and _model_outputs(titles):
        raise ValueError(f"titles are rows of {len(titles[0])} numbers, a model's outputs (log-probabilities or "
                         "probabilities), one row per image; expected one label per image: pass preds.argmax(1)[:n] "
                         "(the predicted classes)")
    rows = max(1, min(int(rows), len(ims)))
    cols = int(np.ceil(len(ims) / rows))
    fig = _figure(figsize)
    for i, im in enumerate(ims):
        ax = fig.add_subplot(rows, cols, i + 1)
        title = None if titles is None else titles[i]
        show(im, title=title, ax=ax)
        if colors is not None and title is not None:
            ax.title.set_color(colors[i])
    fig.tight_layout()
    return fig


def _model_outputs(titles):
    """True when titles are rows of 3 or more class scores as `predict` gives them: log-probabilities
    (all <= 0) or probabilities (rows summing to 1). A (pred, actual, prob) row per image is not."""
    try:
        a = np.asarray(titles.detach().cpu() if hasattr(titles, "detach") else titles)
    except (ValueError, TypeError, RuntimeError):  # ragged or mixed titles: labels, not outputs
        return False
    if a.ndim != 2 or a.shape[1] < 3 or a.dtype.kind != "f" or not np.isfinite(a).all():
        return False
    return bool((a <= 0).all() or ((a >= 0).all() and np.allclose(a.sum(1), 1, atol=1e-3)))


def plot_history(history, figsize=(10, 4)):
    """Training and validation loss per epoch, and each metric, from a `History`, its list of epoch
    records, or a metrics.json as `netfit train` writes it (its "history"); returns the Figure.

    Example:
        >>> from netfit.history import History
        >>> fig = plot_history(History([{"epoch": 0, "trn_loss": 1.0, "val_loss": 0.9, "accuracy": 0.7},
        ...                             {"epoch": 1, "trn_loss": 0.6, "val_loss": 0.7, "accuracy": 0.8}]))
    """
    if isinstance(history, dict) and "history" in history:  # json.load(open("runs/x/metrics.json"))
        history = history["history"]
    if isinstance(history, (list, tuple)):
        from .history import History
        history = History(list(history))
    epochs = history["epoch"]
    skip = {"epoch", "trn_loss", "val_loss", "time", "lr"}
    def numeric(v):  # numbers, 0-d tensors and arrays (a callback's clip.norm); None is a gap
        if v is None:
            return True
        if isinstance(v, (str, bool, bytes)):
            return False
        try:
            float(v)
        except (TypeError, ValueError):
            return False
        return True
    # figures a callback added that are not numbers (a path, a note) have no curve
    metric_keys = [k for k in history.keys() if k not in skip and all(numeric(r.get(k)) for r in history.records)]
    fig = _figure(figsize)
    ax = fig.add_subplot(1, 2 if metric_keys else 1, 1)
    ax.plot(epochs, history["trn_loss"], "o-", label="train loss")
    if "val_loss" in history:
        ax.plot(epochs, history["val_loss"], "o-", label="validation loss")
    ax.set_xlabel("epoch"); ax.set_ylabel("loss"); ax.legend(); ax.grid(alpha=0.3)
    if metric_keys:
        ax2 = fig.add_subplot(1, 2, 2)
        for k in metric_keys:
            ax2.plot(epochs, [np.nan if v is None else float(v) for v in history[k]], "o-", label=k)
        ax2.set_xlabel("epoch"); ax2.set_ylabel("validation metric"); ax2.legend(); ax2.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _labels_of(preds, name="preds"):
    """Predicted labels (N,) from scores (N, C) or labels (N,)."""
    preds = preds.detach().cpu().numpy() if hasattr(preds, "detach") else np.asarray(preds)
    if preds.ndim == 2:
        return preds.argmax(1)
    if preds.ndim == 1 and preds.dtype.kind in "biu":
        return preds.astype(np.int64)
    raise ValueError(f"{name} must be scores of shape (N, C) or integer labels of shape (N,); "
                     f"got {preds.dtype} of shape {preds.shape}")


def _targets(targs, n):
    targs = targs.detach().cpu().numpy() if hasattr(targs, "detach") else np.asarray(targs)
    if targs.ndim != 1 or targs.dtype.kind not in "biu":
        raise ValueError(f"targs must be integer labels of shape (N,); got {targs.dtype} of shape {targs.shape}")
    if len(targs) != n:
        raise ValueError(f"got {n} predictions but {len(targs)} targets; expected one target per prediction")
    if len(targs) and targs.min() < 0:
        raise ValueError(f"targs must be class indices 0 or more; got min {targs.min()}")
    return targs.astype(np.int64)


def confusion_matrix(preds, targs, n_classes=None):
    """Counts (C, C): row = actual class, column = predicted class.

    Example:
        >>> confusion_matrix(np.array([0, 1, 1]), np.array([0, 1, 0])).tolist()
        [[1, 1], [0, 1]]
    """
    p = _labels_of(preds)
    t = _targets(targs, len(p))
    c = max(int(p.max(initial=-1)), int(t.max(initial=-1))) + 1 if n_classes is None else int(n_classes)
    if len(p) and max(p.max(), t.max()) >= c:
        raise ValueError(f"labels go up to {max(p.max(), t.max())} but n_classes is {c}")
    return np.bincount(t * c + p, minlength=c * c).reshape(c, c)  # (C, C)


def as_probs(preds):
    """Probabilities (N, C) from probabilities, log-probabilities or raw scores (logits).

    Rows that sum to 1 are probabilities; rows whose exp sums to 1 are log-probabilities (a net ending
    in `LogSoftmax`); anything else is taken as logits and softmaxed. The two cannot be confused: exp
    of a probability row sums to at least C.

    Example:
        >>> as_probs(np.log([[0.25, 0.75]])).round(2).tolist()
        [[0.25, 0.75]]
    """
    p = preds.detach().cpu().numpy() if hasattr(preds, "detach") else np.asarray(preds)
    if p.ndim != 2 or p.dtype.kind not in "biuf":
        raise ValueError(f"preds must be scores of shape (N, C); got {p.dtype} of shape {p.shape}")
    p = p.astype(np.float64)
    if np.allclose(p.sum(1), 1, atol=1e-3) and p.min(initial=0) >= 0:
        return p
    e = np.exp(p - p.max(1, keepdims=True))   # stable softmax; equals exp(p) for log-probabilities
    return e / e.sum(1, keepdims=True)


def plot_confusion(preds, targs, classes=None, normalize=False, figsize=None, title=None):
    """The confusion matrix as a heat map with counts, class names on both axes; returns the Figure.

    Args:
        preds: (N, C) scores, probabilities or log-probabilities, or (N,) predicted labels.
        targs: (N,) actual labels. classes: names in label order (e.g. `datasets.FASHION_CLASSES`).
        normalize: show each row as fractions of its actual class instead of counts.

    Example:
        >>> fig = plot_confusion(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), classes=["a", "b", "c"])
        >>> [t.get_text() for t in fig.axes[0].get_yticklabels()]
        ['a', 'b', 'c']
    """
    if isinstance(classes, dict):  # {label: name}, as a model's id2label (JSON keys are strings): names in order
        try:
            by_label = {int(k): v for k, v in classes.items()}
        except (TypeError, ValueError):
            by_label = {}
        if sorted(by_label) != list(range(len(classes))):
            raise ValueError(f"classes as a dict must map every label 0..{len(classes) - 1} to its name; got keys "
                             f"{list(classes)[:12]}")
        classes = [by_label[i] for i in range(len(classes))]
    n_classes = None if classes is None else len(classes)
    cm = confusion_matrix(preds, targs, n_classes)
    c = len(cm)
    names = [str(x) for x in (classes if classes is not None else range(c))]
    shown = cm / np.maximum(cm.sum(1, keepdims=True), 1) if normalize else cm
    side = 2.5 + 0.55 * c
    fig = _figure(figsize or (side + 1, side))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(shown, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(c), names, rotation=45, ha="right")
    ax.set_yticks(range(c), names)
    ax.set_xlabel("predicted"); ax.set_ylabel("actual")
    acc = np.trace(cm) / max(cm.sum(), 1)
    ax.set_title(title or f"accuracy {acc:.4f} on {cm.sum():,} rows")
    if c <= 30:  # beyond that the numbers are unreadable anyway
        cut = shown.max() / 2 if shown.size else 0
        for i in range(c):
            for j in range(c):
                text = f"{shown[i, j]:.2f}" if normalize else f"{shown[i, j]:d}"
                ax.text(j, i, text, ha="center", va="center", fontsize=8,
                        color="white" if shown[i, j] > cut else "black")
    fig.tight_layout()
    return fig


def plot_top_losses(ims, preds, targs, k=9, classes=None, figsize=None):
    """The `k` images the model got most wrong (highest loss), titled predicted / actual, probability.

    Args:
        ims: (N, H, W) images, or (N, H*W) square rows, in the same order as `preds`.
        preds: (N, C) probabilities or log-probabilities (detected: rows of exp(preds) sum to 1);
            raw logits are softmaxed. targs: (N,) actual labels. classes: names in label order.

    Each title reads `predicted / actual` and, below, the probability the model gave the actual class
    (two significant digits, so the worst show as e.g. 3e-05 rather than 0.00).

    Example:
        >>> logp = np.log(np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]))
        >>> fig = plot_top_losses(np.zeros((3, 4, 4)), logp, np.array([0, 0, 1]), k=2, classes=["cat", "dog"])
        >>> [ax.get_title() for ax in fig.axes]
        ['dog / cat\\n0.2', 'cat / dog\\n0.4']
    """
    probs = as_probs(preds)                                   # (N, C)
    t = _targets(targs, len(probs))
    if t.max(initial=0) >= probs.shape[1]:
        raise ValueError(f"targs go up to {t.max()} but preds have {probs.shape[1]} classes")
    ims = list(ims)
    if len(ims) != len(probs):
        raise ValueError(f"got {len(ims)} images for {len(probs)} predictions; expected one per prediction")
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer; got {k!r}")
    p_actual = probs[np.arange(len(t)), t]                   # (N,)
    losses = -np.log(np.clip(p_actual, 1e-12, None))
    top = np.argsort(-losses, kind="stable")[:k]
    names = [str(x) for x in (classes if classes is not None else range(probs.shape[1]))]
    pred = probs.argmax(1)
    titles = [f"{names[pred[i]]} / {names[t[i]]}\n{p_actual[i]:.2g}" for i in top]  # 2 digits: 3e-05, 0.41
    colors = ["red" if pred[i] != t[i] else "black" for i in top]
    rows = int(np.ceil(np.sqrt(len(top))))
    cols = int(np.ceil(len(top) / rows))
    fig = plots([ims[i] for i in top], figsize=figsize or (2.2 * cols, 2.5 * rows), rows=rows, titles=titles,
                colors=colors)
    fig.suptitle("predicted / actual, probability of actual", fontsize=10)
    fig.tight_layout()
    return fig


def plot_lr_find(result, figsize=(6, 4)):
    """The LR finder's loss (raw and smoothed) against the rate on a log axis, the suggestion marked.

    Args:
        result: what `netfit.lr_find` returned (`lrs`, `losses`, `smoothed`, `suggestion`).

    Example:
        >>> from types import SimpleNamespace as NS
        >>> lrs = np.geomspace(1e-6, 1, 50); loss = 2 - np.tanh(np.log10(lrs) + 3) + (lrs > 0.3) * 3
        >>> fig = plot_lr_find(NS(lrs=lrs, losses=loss, smoothed=loss, suggestion=1e-3))
    """
    lrs, smoothed = np.asarray(result.lrs), np.asarray(result.smoothed)
    fig = _figure(figsize)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(lrs, result.losses, alpha=0.3, label="loss per step")
    ax.plot(lrs, smoothed, label="smoothed")
    finite = smoothed[np.isfinite(smoothed)]
    if len(finite):  # the divergence at the end would squash the interesting part of the curve
        lo, first = finite.min(), finite[0]
        ax.set_ylim(lo - 0.1 * (first - lo + 1e-8), first + 0.5 * (first - lo + 1e-8))
    s = result.suggestion
    ax.axvline(s, color="red", linestyle="--", label=f"suggestion {s:.1e}")
    ax.set_xscale("log"); ax.set_xlabel("learning rate (log scale)"); ax.set_ylabel("training loss")
    ax.legend(); ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
