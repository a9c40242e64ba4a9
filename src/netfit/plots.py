"""Plots: images with titles, and training curves. Each function returns a matplotlib Figure and
never calls `plt.show()`, so it works the same in Jupyter, scripts and tests.

    fig = plots(x_valid[:8].reshape(-1, 28, 28), titles=preds.argmax(1)[:8])
    fig.savefig("preds.png")
"""
import numpy as np

__all__ = ["plots", "show", "plot_history"]


def _figure(figsize):
    # pyplot figures show inline in Jupyter; matplotlib picks the Agg backend when there is no display
    import matplotlib.pyplot as plt
    return plt.figure(figsize=figsize)


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
    """Draw one greyscale (or RGB) image; returns the Figure.

    Example:
        >>> fig = show(np.eye(28), title="7")
    """
    if ax is None:
        fig = _figure(figsize)
        ax = fig.add_subplot(1, 1, 1)
    else:
        fig = ax.figure
    ax.imshow(_image(img), cmap="gray")
    ax.axis("off")
    if title is not None:
        ax.set_title(str(title))
    return fig


def plots(ims, figsize=(12, 6), rows=2, titles=None, colors=None):
    """Draw images in a grid of `rows` rows with optional titles; returns the Figure.

    Args:
        ims: (N, H, W) array or tensor (or (N, H*W) square rows).
        titles: N labels; `colors`: N matplotlib colours for them (e.g. red for wrong predictions).

    Example:
        >>> fig = plots(np.random.rand(8, 28, 28), titles=list(range(8)))
        >>> len(fig.axes)
        8
    """
    ims = list(ims)
    if not ims:
        raise ValueError("plots needs at least one image; got none")
    if titles is not None and len(titles) != len(ims):
        raise ValueError(f"got {len(titles)} titles for {len(ims)} images; expected one per image")
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


def plot_history(history, figsize=(10, 4)):
    """Training and validation loss per epoch, and each metric, from a `History`; returns the Figure.

    Example:
        >>> from netfit.fit import History
        >>> fig = plot_history(History([{"epoch": 0, "trn_loss": 1.0, "val_loss": 0.9, "accuracy": 0.7},
        ...                             {"epoch": 1, "trn_loss": 0.6, "val_loss": 0.7, "accuracy": 0.8}]))
    """
    epochs = history["epoch"]
    skip = {"epoch", "trn_loss", "val_loss", "time", "lr"}
    metric_keys = [k for k in history.keys if k not in skip]
    fig = _figure(figsize)
    ax = fig.add_subplot(1, 2 if metric_keys else 1, 1)
    ax.plot(epochs, history["trn_loss"], "o-", label="train loss")
    if "val_loss" in history.keys:
        ax.plot(epochs, history["val_loss"], "o-", label="validation loss")
    ax.set_xlabel("epoch"); ax.set_ylabel("loss"); ax.legend(); ax.grid(alpha=0.3)
    if metric_keys:
        ax2 = fig.add_subplot(1, 2, 2)
        for k in metric_keys:
            ax2.plot(epochs, history[k], "o-", label=k)
        ax2.set_xlabel("epoch"); ax2.set_ylabel("validation metric"); ax2.legend(); ax2.grid(alpha=0.3)
    fig.tight_layout()
    return fig
