"""Compare: a random forest, logistic regressions and the lesson's nets, trained on the same split.

    table, figures = compare(["forest", "mlp", "cnn"], "fashion-mnist")          # from Python
    netfit compare --data fashion-mnist --quick --out runs/compare               # from the shell

The lesson's argument in one table: a random forest needs no normalisation and is hard to get wrong,
nets need care (normalised inputs, a learning rate) but use the images' structure and go further.
Every model sees the same training rows and is scored on the same validation (and test) rows:

- `forest`: scikit-learn's RandomForestClassifier on the raw pixels, all cores;
- `sklearn-logreg`: scikit-learn's LogisticRegression (lbfgs), the classical baseline;
- `logreg`, `mlp`, `cnn`: netfit.models trained by `fit` with Adam and a one-cycle schedule, inputs
  normalised with the training set's mean and standard deviation (as the lesson does; tabular data,
  rows that are not square images, is standardised per column instead).

`data` is a dataset name ("fashion-mnist", "mnist"), a CSV in Kaggle's digit-recognizer layout (a
`label` column, then `pixel0..pixel783`; a validation part is split off), or an `(x, y)` pair with
`valid=(x_valid, y_valid)`. `quick=True` subsamples and trains less, and says so everywhere.
"""
import json
import math
import pickle
import platform
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from .data import ImageClassifierData, _device, default_device, mean_std
from .fit import fit
from .predict import predict
from .metrics import accuracy
from .models import cnn, logreg, mlp
from .plots import plot_confusion, plot_top_losses
from .schedule import one_cycle
from .splits import load_split, subsample

__all__ = ["compare", "Comparison", "Budget", "FULL", "QUICK", "MODELS", "plot_accuracy_vs_time",
           "markdown_table", "compare_command"]

MODELS = ("forest", "sklearn-logreg", "logreg", "mlp", "cnn")
NETS = ("logreg", "mlp", "cnn")


@dataclass(frozen=True)
class Budget:
    """How much data and training each model gets."""
    n_train: int = None            # training rows kept (None: all); a seeded random subset
    n_valid: int = None            # validation rows kept (None: all)
    n_test: int = None             # test rows kept (None: all)
    n_estimators: int = 100        # forest trees (Xiao et al.'s reference forest has 100)
    max_iter: int = 100            # lbfgs iterations for scikit-learn's LogisticRegression
    epochs: dict = field(default_factory=lambda: {"logreg": 5, "mlp": 10, "cnn": 5})
    bs: int = 64                   # net batch size
    cnn_channels: tuple = (32, 64) # channels of the cnn's two conv blocks
    lr: float = 3e-3               # peak Adam rate of the one-cycle schedule (warm up, then anneal)


FULL = Budget()
QUICK = Budget(n_train=10_000, n_valid=5_000, n_test=5_000, n_estimators=50, max_iter=50,
               epochs={"logreg": 2, "mlp": 3, "cnn": 2}, cnn_channels=(16, 32))  # a 2.3x cheaper cnn


class Comparison(NamedTuple):
    """What `compare` returns; unpacks as `table, figures = compare(...)`."""
    table: object      # list of dict records, or a pandas DataFrame when pandas is installed
    figures: dict      # name -> matplotlib Figure


# --------------------------------------------------------------------------------------------- models

def _images(n_features):
    """Whether rows of `n_features` are flat square images (8x8 or larger), not tabular features."""
    return math.isqrt(n_features) ** 2 == n_features and n_features >= 64


def _model_list(models, n_features):
    if models is None:
        names = [m for m in MODELS if m != "cnn" or _images(n_features)]
    else:
        names = [m.strip() for m in models.split(",")] if isinstance(models, str) else list(models)
    unknown = [m for m in names if m not in MODELS]
    if unknown or not names:
        raise ValueError(f"unknown model {', '.join(map(repr, unknown)) or '(none given)'}; expected some of "
                         f"{', '.join(MODELS)}")
    if "cnn" in names and not (math.isqrt(n_features) ** 2 == n_features and n_features >= 16):
        raise ValueError(f"cnn needs square images of at least 4x4 as flat rows (its two 2x2 pools halve the side "
                         f"twice); the data has {n_features} features (leave cnn out for tabular data)")
    names = list(dict.fromkeys(names))
    needs = [m for m in names if m not in NETS]
    if needs:
        try:
            import sklearn  # noqa: F401
        except ImportError:
            raise ImportError(f"{' and '.join(needs)} need scikit-learn (pip install scikit-learn); or compare "
                              f"the nets alone with models='{','.join(m for m in names if m in NETS) or 'mlp'}'") from None
    return names


def _build_net(name, n_in, n_out, budget):
    if name == "logreg":
        return logreg(n_in, n_out)
    if name == "mlp":
        return mlp(n_in, n_out=n_out)
    return cnn(n_out, channels=budget.cnn_channels, side=math.isqrt(n_in))


def _full_proba(model, proba, n_classes):
    """Put a scikit-learn model's columns (its classes_) in place among all classes: (N, C)."""
    out = np.zeros((len(proba), n_classes))
    out[:, model.classes_] = proba
    return out


class _EpochLine:
    """A callback printing one progress line per epoch."""

    def __init__(self, say, tag):
        self.say, self.tag = say, tag

    def after_epoch(self, run):
        r = run.record
        self.say(f"{self.tag} epoch {run.epoch + 1}/{run.epochs}  trn_loss {r.get('trn_loss', float('nan')):.4f}  "
                 f"val_acc {r.get('accuracy', float('nan')):.4f}  {r.get('time', 0):.1f} s")


def _train_sklearn(name, model, x, y, xv, xt, n_classes):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        model.fit(x, y)
        train_s = time.perf_counter() - start
    converged = not any("converge" in str(w.message).lower() for w in caught)
    start = time.perf_counter()
    pv = _full_proba(model, model.predict_proba(xv), n_classes)
    pred_s = time.perf_counter() - start
    pt = _full_proba(model, model.predict_proba(xt), n_classes) if xt is not None else None
    if name == "forest":
        params = int(sum(est.tree_.node_count for est in model.estimators_))
    else:
        params = int(model.coef_.size + model.intercept_.size)
    size = len(pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL))
    return pv, pt, train_s, pred_s, params, size, converged, None


def _train_net(name, x, y, xv, yv, xt, n_classes, epochs, budget, device, seed, say, tag):
    """x, xv, xt already normalised with the training statistics."""
    torch.manual_seed(seed)
    with warnings.catch_warnings():  # compare scaled the splits itself; per-column scaling may leave the validation
        warnings.filterwarnings("ignore", message="(x_valid|the test set) .* is scaled differently")  # rows' overall std apart
        md = ImageClassifierData.from_arrays(name, (x, y), (xv, yv), bs=budget.bs, classes=list(range(n_classes)),
                                             device=device)
    net = _build_net(name, x.shape[1], n_classes, budget).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=budget.lr)
    start = time.perf_counter()
    history = fit(net, md, epochs, opt, nn.NLLLoss(), [accuracy], callbacks=[_EpochLine(say, tag)], verbose=False,
                  schedule=one_cycle(budget.lr))
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    pv = np.exp(predict(net, xv))                          # (N, C): the nets end in LogSoftmax
    pred_s = time.perf_counter() - start
    pt = np.exp(predict(net, xt)) if xt is not None else None
    params = sum(p.numel() for p in net.parameters())
    size = sum(t.numel() * t.element_size() for t in net.state_dict().values())
    return pv, pt, train_s, pred_s, params, size, True, history


def _forest_kwargs(budget, forest_kwargs, seed):
    return {"n_estimators": budget.n_estimators, "n_jobs": -1, "random_state": seed, **(forest_kwargs or {})}


def _settings(name, budget, epochs, forest_kwargs, converged, device, images=True):
    scaled = "normalised" if images else "standardised per feature"
    if name == "forest":
        kw = _forest_kwargs(budget, forest_kwargs, 0)
        extra = ", ".join(f"{k}={v}" for k, v in kw.items() if k not in ("n_estimators", "random_state", "n_jobs"))
        return f"{kw['n_estimators']} trees, raw {'pixels' if images else 'features'}" + (f", {extra}" if extra else "")
    if name == "sklearn-logreg":
        return f"lbfgs, max_iter {budget.max_iter}" + ("" if converged else " (not converged)") + f", {scaled}"
    arch = f"channels {budget.cnn_channels[0]},{budget.cnn_channels[1]}, " if name == "cnn" else ""
    return f"{arch}{epochs} epochs, Adam one-cycle lr {budget.lr:g}, bs {budget.bs}, {scaled}, {device}"


# ----------------------------------------------------------------------------------------- reporting

def plot_accuracy_vs_time(records, figsize=(7, 4.5)):
    """Accuracy (test where there is one, else validation) against train seconds, one labelled point per
    model, log time axis; returns the Figure.

    Example:
        >>> fig = plot_accuracy_vs_time([{"model": "forest", "val_accuracy": 0.87, "train_seconds": 90.0},
        ...                              {"model": "mlp", "val_accuracy": 0.88, "train_seconds": 30.0}])
    """
    from .plots import _figure
    key = "test_accuracy" if all(r.get("test_accuracy") is not None for r in records) else "val_accuracy"
    fig = _figure(figsize)
    ax = fig.add_subplot(1, 1, 1)
    for r in records:
        ax.scatter(r["train_seconds"], r[key], s=60)
        ax.annotate(r["model"], (r["train_seconds"], r[key]), textcoords="offset points", xytext=(6, 4))
    ax.set_xscale("log")
    ax.margins(x=0.2, y=0.1)  # room for the labels of the outermost points
    ax.set_xlabel("train seconds (log scale)")
    ax.set_ylabel(key.replace("_", " "))
    ax.grid(alpha=0.3)
    ax.set_title("accuracy against training time")
    fig.tight_layout()
    return fig


def _size(n_bytes):
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes} B"


def markdown_table(records):
    """The records as a markdown table (test column only when there is a test split)."""
    has_test = any(r.get("test_accuracy") is not None for r in records)
    head = ["model", "val acc"] + (["test acc"] if has_test else []) + \
           ["train s", "predict s / 1k rows", "params", "size", "settings"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in records:
        cells = [r["model"], f"{r['val_accuracy']:.4f}"]
        if has_test:
            cells.append(f"{r['test_accuracy']:.4f}" if r.get("test_accuracy") is not None else "")
        cells += [f"{r['train_seconds']:.1f}", f"{r['predict_seconds_per_1k']:.4f}", f"{r['params']:,}",
                  _size(r["size_bytes"]), r["settings"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- compare

def compare(models=None, data="fashion-mnist", valid=None, test=None, *, quick=False, classes=None, out=None,
            forest_kwargs=None, epochs=None, verbose=True, seed=0, device=None, budget=None, valid_frac=0.2):
    """Train each model on the same training rows and score it on the same validation (and test) rows.

    Args:
        models: names from `MODELS` ("forest", "sklearn-logreg", "logreg", "mlp", "cnn"), as a list or
            a comma-separated string; default all of them (cnn only when rows are square images).
        data: "fashion-mnist" or "mnist", a Kaggle digit-recognizer CSV path, or an `(x, y)` pair.
        valid, test: `(x, y)` pairs (or CSV paths) for array or CSV data; without `valid`,
            `valid_frac` of the training rows validate. Named datasets bring their own splits.
        quick: subsample and train less (`QUICK`), said in every output; else `FULL` (or `budget`).
        classes: class names in label order (default: the dataset's, e.g. Fashion-MNIST's garments).
        out: a folder to write compare.md, compare.json and the PNGs into.
        forest_kwargs: extra RandomForestClassifier arguments (e.g. `{"n_estimators": 300}`).
        epochs: epochs for every net (an int) or per net (`{"mlp": 10}`); default from the budget.
        verbose: print a line before and after each model, one per epoch for nets, and the table.
        seed: seeds the subsample, the split, the forest and the nets' weights and shuffling.

    Returns:
        `Comparison(table, figures)`: `table` is a list of records (a pandas DataFrame if pandas is
        installed) with `model`, `val_accuracy`, `test_accuracy` (when there is a test split),
        `train_seconds`, `predict_seconds_per_1k` (validation rows), `params` (weights and biases; for
        the forest, tree nodes), `size_bytes` (pickle for scikit-learn models, tensor bytes for nets),
        `settings`; `figures` maps "accuracy_vs_time", "confusion_<model>" (validation rows) and
        "top_losses_<best model>" to matplotlib Figures.

    Example:
        >>> from sklearn.datasets import load_digits
        >>> d = load_digits()
        >>> table, figs = compare(["forest", "logreg"], (d.data, d.target), quick=True, verbose=False)
        >>> len(table), sorted(figs)
        (2, ['accuracy_vs_time', 'confusion_forest', 'confusion_logreg', 'top_losses_forest'])
    """
    say = (lambda *a: print(*a, flush=True)) if verbose else (lambda *a: None)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed (--seed) must be an integer >= 0; got {seed!r}")
    budget = budget or (QUICK if quick else FULL)
    splits, names, source = load_split(data, valid, test, classes=classes, valid_frac=valid_frac, seed=seed)
    n_features = splits["train"][0].shape[1]
    chosen = _model_list(models, n_features)
    epochs_for = _epochs(epochs, budget)
    if len(names) < 2:
        raise ValueError(f"the training labels hold {len(names)} class; a comparison of classifiers needs at least 2")
    n_trees = _forest_kwargs(budget, forest_kwargs, seed)["n_estimators"]
    if "forest" in chosen and not (isinstance(n_trees, int) and n_trees >= 1):
        raise ValueError(f"the forest needs at least 1 tree; got n_estimators={n_trees!r}")
    if out is not None:  # before any training: an unwritable folder should not cost a full run
        try:
            Path(out).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"out={out}: cannot create the folder ({e.strerror})") from None
    sizes_before = {k: len(v[0]) for k, v in splits.items()}
    limits = {"train": budget.n_train, "valid": budget.n_valid, "test": budget.n_test}
    splits = {k: subsample(*v, limits[k], seed + i) for i, (k, v) in enumerate(splits.items())}
    n_classes = len(names)
    device = _device(device) if device is not None else default_device()  # a device not here: said before any training
    note = _quick_note(quick, budget, sizes_before, splits, epochs_for, chosen, forest_kwargs)
    rows = ", ".join(f"{len(v[0]):,} {k}" for k, v in splits.items())
    say(f"netfit compare on {source}: {rows} rows, {n_features} features, {n_classes} classes; "
        f"models {', '.join(chosen)}")
    if note:
        say(note)

    (x, y), (xv, yv) = splits["train"], splits["valid"]
    xt, yt = splits.get("test", (None, None))
    images = _images(n_features)
    if images:  # as the lesson: one mean and std over all the training pixels, applied to every split
        mean, std = mean_std(x)
        std = std or 1.0
    else:  # tabular columns have their own units: standardise each (scikit-learn's StandardScaler)
        mean, std = x.mean(0), x.std(0)
        std = np.where(std > 0, std, 1.0)
    xn, xvn, xtn = ((a - mean) / std if a is not None else None for a in (x, xv, xt))
    records, probs, histories = [], {}, {}
    for i, name in enumerate(chosen):
        tag = f"[{i + 1}/{len(chosen)}] {name}:"
        if name in NETS:
            say(f"{tag} training for {epochs_for[name]} epoch{'s' * (epochs_for[name] != 1)} on {len(x):,} rows...")
            result = _train_net(name, xn, y, xvn, yv, xtn, n_classes, epochs_for[name], budget, device, seed, say,
                                tag)
        elif name == "forest":  # raw values: a forest needs no normalisation
            from sklearn.ensemble import RandomForestClassifier
            model = RandomForestClassifier(**_forest_kwargs(budget, forest_kwargs, seed))
            say(f"{tag} training {model.n_estimators} trees (n_jobs={model.n_jobs}) on {len(x):,} rows...")
            result = _train_sklearn(name, model, x, y, xv, xt, n_classes)
        else:
            from sklearn.linear_model import LogisticRegression
            model = LogisticRegression(max_iter=budget.max_iter)
            say(f"{tag} training LogisticRegression (lbfgs, max_iter {budget.max_iter}) on {len(x):,} rows...")
            result = _train_sklearn(name, model, xn, y, xvn, xtn, n_classes)
        pv, pt, train_s, pred_s, params, size, converged, history = result
        rec = {"model": name, "val_accuracy": accuracy(pv, yv)}
        if pt is not None:
            rec["test_accuracy"] = accuracy(pt, yt)
        rec.update(train_seconds=train_s, predict_seconds_per_1k=pred_s / len(xv) * 1000, params=int(params),
                   size_bytes=int(size), settings=_settings(name, budget, epochs_for.get(name), forest_kwargs,
                                                            converged, device, images))
        records.append(rec)
        probs[name] = pv
        if history is not None:
            histories[name] = history.records
        say(f"{tag} val_acc {rec['val_accuracy']:.4f}"
            + (f", test_acc {rec['test_accuracy']:.4f}" if "test_accuracy" in rec else "")
            + f" in {train_s:.1f} s")

    figures = _figures(records, probs, xv, yv, names, n_features)
    table_md = markdown_table(records)
    say("\n" + table_md + ("\n\n" + note if note else ""))
    if out is not None:
        info = {"source": source, "rows": {k: len(v[0]) for k, v in splits.items()}, "rows_available": sizes_before,
                "features": n_features, "classes": names, "quick": bool(quick), "note": note, "seed": seed,
                "budget": asdict(budget), "epochs": epochs_for, "forest_kwargs": forest_kwargs or {},
                "device": str(device), "torch_threads": torch.get_num_threads(),
                "cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
                "torch": torch.__version__}
        _write(Path(out), records, figures, table_md, note, info, histories, say)
    try:
        import pandas as pd
        table = pd.DataFrame(records)
    except ImportError:
        table = records
    return Comparison(table, figures)


def _epochs(epochs, budget):
    e = dict(budget.epochs)
    if isinstance(epochs, dict):
        unknown = set(epochs) - set(NETS)
        if unknown:
            raise ValueError(f"epochs given for {sorted(unknown)}; expected some of {', '.join(NETS)}")
        e.update(epochs)
    elif epochs is not None:
        e = dict.fromkeys(NETS, epochs)
    for k, v in e.items():
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            where = f" for {k}" if isinstance(epochs, dict) else ""
            raise ValueError(f"epochs{where} must be an integer >= 1; got {v!r}")
    return {k: int(v) for k, v in e.items()}


def _quick_note(quick, budget, before, splits, epochs_for, chosen, forest_kwargs):
    if not quick:
        return ""
    kept = ", ".join(f"{len(v[0]):,} of {before[k]:,} {k}" for k, v in splits.items())
    parts = [f"{epochs_for[m]} epoch{'s' * (epochs_for[m] != 1)} {m}" for m in chosen if m in NETS]
    if "cnn" in chosen and budget.cnn_channels != FULL.cnn_channels:
        parts.append(f"cnn channels {budget.cnn_channels[0]},{budget.cnn_channels[1]}")
    if "forest" in chosen:
        parts.append(f"{_forest_kwargs(budget, forest_kwargs, 0)['n_estimators']} trees")
    if "sklearn-logreg" in chosen:
        parts.append(f"{budget.max_iter} lbfgs iterations")
    return (f"QUICK MODE: {kept} rows; {', '.join(parts)}. A smoke test: accuracies are below what the "
            "full run (without --quick) reaches.")


def _figures(records, probs, xv, yv, names, n_features):
    import matplotlib.pyplot as plt
    figs = {"accuracy_vs_time": plot_accuracy_vs_time(records)}
    for r in records:
        figs[f"confusion_{r['model']}"] = plot_confusion(probs[r["model"]], yv, classes=names,
                                                         title=f"{r['model']}: validation accuracy "
                                                               f"{r['val_accuracy']:.4f}")
    best = max(records, key=lambda r: r["val_accuracy"])["model"]
    if _images(n_features):
        figs[f"top_losses_{best}"] = plot_top_losses(xv, probs[best], yv, k=9, classes=names)
    for f in figs.values():
        plt.close(f)  # returned, saved, shown on demand; not kept open by pyplot across many calls
    return figs


def _write(out, records, figures, table_md, note, info, histories, say):
    out.mkdir(parents=True, exist_ok=True)
    for name, fig in figures.items():
        fig.savefig(out / f"{name}.png", dpi=80)
    text = [f"# netfit compare: {info['source']}", ""]
    if note:
        text += [f"**{note}**", ""]
    text += [f"Rows: {', '.join(f'{v:,} {k}' for k, v in info['rows'].items())}; {info['features']} features, "
             f"{len(info['classes'])} classes; device {info['device']}, {info['torch_threads']} torch threads.", "",
             table_md, "",
             "val/test acc: accuracy on the validation/test rows; predict s / 1k rows: seconds to predict "
             "1,000 validation rows; params: weights and biases (forest: tree nodes); size: pickled "
             "scikit-learn model or the net's tensors.", ""]
    text += [f"![{name}]({name}.png)" for name in figures]
    (out / "compare.md").write_text("\n".join(text) + "\n")
    (out / "compare.json").write_text(json.dumps({"records": records, "info": info, "histories": histories},
                                                 indent=2, default=str))
    say(f"wrote {out}/: compare.md, compare.json, {', '.join(f'{n}.png' for n in figures)}")


def compare_command(args):
    """Run `netfit compare` with parsed CLI `args`; returns the Comparison."""
    budget = QUICK if args.quick else FULL
    forest_kwargs = {"n_estimators": args.n_estimators} if args.n_estimators is not None else None
    stem = Path(args.data).name.split(".")[0] if Path(args.data).exists() else args.data  # mnist.pkl.gz -> mnist
    out = args.out or f"runs/compare-{stem}" + ("-quick" if args.quick else "")
    return compare(args.models, args.data, quick=args.quick, out=out, forest_kwargs=forest_kwargs,
                   epochs=args.epochs, verbose=not args.quiet, seed=args.seed, device=args.device, budget=budget)
