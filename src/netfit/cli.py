"""The command line: `netfit train` runs the lesson's pipeline and writes a run folder.

    netfit train --data fashion-mnist --model mlp --epochs 5 --out runs/fashion-mlp

The run folder gets `metrics.json` (per-epoch figures, final validation and test accuracy, seconds,
device, versions), `model.safetensors` + `model.json`, `predictions.png` (first validation images,
wrong predictions in red), `history.png` (training curves) and `ckpt`, the training state saved
after every epoch (and every N steps with `--checkpoint-every N`), which `--resume` continues from.

    netfit train --lr-find --schedule one-cycle --augment --early-stop 2   # + lr_find.png, rate picked for you

    netfit predict --model runs/fashion-mlp shoe.png test.csv    # one class name per image or CSV row
    netfit compare --data fashion-mnist --quick                 # a forest, logistic regressions and nets side by side

Errors print one line; `--debug` shows the traceback.
"""
import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

__all__ = ["main", "build_parser", "train", "predict"]

DEFAULT_LR = {"adam": 1e-3, "adamw": 1e-3, "sgd": 0.1}


def build_parser():
    p = argparse.ArgumentParser(prog="netfit", description="Train the nets of fastai's lesson 8 "
                                "(From forests to nets) on MNIST or Fashion-MNIST.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    t = sub.add_parser("train", help="train a net and write a run folder",
                       description="Load and normalise the data (training mean/std), train with fit, "
                       "print the per-epoch table, and write metrics, weights and plots to --out.")
    t.add_argument("--data", default=None, choices=["mnist", "fashion-mnist"],
                   help="dataset to train on (default: fashion-mnist, installed offline by Debian's "
                   "dataset-fashion-mnist; with --data-path, the dataset its name says)")
    t.add_argument("--data-path", default=None, help="a folder of IDX files or an mnist.pkl.gz to use "
                   "instead of the search (cache, system folder, download)")
    t.add_argument("--model", default="mlp", choices=["logreg", "mlp", "cnn"],
                   help="logreg: Linear(784,10)+LogSoftmax; mlp: 784-100-100-10; cnn: two conv blocks "
                   "(default: mlp)")
    t.add_argument("--epochs", type=int, default=5, help="passes over the training set (default: 5)")
    t.add_argument("--bs", type=int, default=64, help="batch size (default: 64)")
    t.add_argument("--opt", default="adam", choices=["adam", "adamw", "sgd"],
                   help="optimizer (default: adam); adamw decays weights decoupled from the gradient (--wd)")
    t.add_argument("--lr", type=float, default=None, help="learning rate (default: 1e-3 for adam/adamw, 0.1 for sgd); the peak "
                   "rate with --schedule")
    t.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default: 0.9)")
    t.add_argument("--wd", type=float, default=0.0, help="weight decay (default: 0)")
    t.add_argument("--seed", type=int, default=0, help="random seed for weights and shuffling (default: 0)")
    t.add_argument("--device", default=None, help="cpu, cuda, mps... (default: best available)")
    t.add_argument("--out", default=None, help="run folder to write (default: runs/<data>-<model>)")
    t.add_argument("--quiet", action="store_true", help="print nothing but errors")
    t.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                   help="also save <out>/ckpt every N optimizer steps (it is saved after every epoch anyway)")
    t.add_argument("--resume", action="store_true",
                   help="continue from <out>/ckpt; the training options must be those of the run that wrote "
                   "it (checked against <out>/args.json); --epochs may be larger")
    t.add_argument("--lr-find", action="store_true", help="sweep the learning rate first, save "
                   "<out>/lr_find.png, print the suggestion and train with it unless --lr is given")
    t.add_argument("--schedule", default="none", choices=["none", "one-cycle", "cosine"],
                   help="learning-rate schedule, set per step (default: none, a constant rate)")
    t.add_argument("--amp", action="store_true", help="mixed precision: bf16 autocast where supported, else fp16")
    t.add_argument("--clip", type=float, default=None, metavar="MAX_NORM",
                   help="clip the gradient norm to MAX_NORM before each step (default: no clipping)")
    t.add_argument("--accumulate", type=int, default=1, metavar="K",
                   help="step every K batches, as one batch of K*bs (default: 1)")
    t.add_argument("--early-stop", type=int, default=None, metavar="PATIENCE",
                   help="stop when val_loss has not improved for PATIENCE epochs, keeping the best weights")
    t.add_argument("--augment", action="store_true", help="random crops (pad 2), small rotations, and for "
                   "fashion-mnist left-right flips, on each training batch")
    pr = sub.add_parser("predict", help="print the predicted class of images or CSV rows",
                        description="Load a run folder written by `netfit train` and print the predicted "
                        "class of each image (greyscale, resized to 28x28) or of each CSV row (pixel values "
                        "in [0, 1] or 0-255, with or without a label column).")
    pr.add_argument("--model", required=True, help="run folder holding model.safetensors and model.json")
    pr.add_argument("inputs", nargs="+", metavar="FILE", help="image files (.png, .jpg...), .csv files, or folders of them")
    c = sub.add_parser("compare", help="train a random forest, logistic regressions and nets side by side",
                       description="Train scikit-learn's RandomForestClassifier and LogisticRegression and "
                       "netfit's logreg, mlp and cnn on the same split; print one table (validation and test "
                       "accuracy, train seconds, predict seconds per 1,000 rows, parameters, size) and write "
                       "compare.md, compare.json and PNGs (accuracy against train time, a confusion matrix per "
                       "model, the best model's top losses) to --out.")
    c.add_argument("--data", default="fashion-mnist", help="mnist, fashion-mnist, an mnist.pkl.gz (or a "
                   "folder of IDX files), or a CSV in Kaggle's digit-recognizer layout (label, pixel0..pixel783; "
                   "20%% of rows validate) (default: fashion-mnist)")
    c.add_argument("--models", default=None, help="comma-separated, from forest,sklearn-logreg,logreg,mlp,cnn "
                   "(default: all; cnn only for square images)")
    c.add_argument("--quick", action="store_true", help="subsample (10,000 train, 5,000 valid and test rows) and "
                   "train less (50 trees, 2-3 epochs): under two minutes on 2 cores; the output says so")
    c.add_argument("--out", default=None, help="folder to write (default: runs/compare-<data>[-quick])")
    c.add_argument("--n-estimators", type=int, default=None, metavar="N", help="forest trees (default: 100, "
                   "50 with --quick)")
    c.add_argument("--epochs", type=int, default=None, metavar="N", help="epochs for every net (default: logreg 5, "
                   "mlp 10, cnn 5; with --quick 2, 3, 2)")
    c.add_argument("--seed", type=int, default=0, help="seed for subsampling, splits, forest and nets (default: 0)")
    c.add_argument("--device", default=None, help="device for the nets: cpu, cuda, mps... (default: best available)")
    c.add_argument("--quiet", action="store_true", help="print nothing but errors")
    c.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
    for s in (t, pr):  # `--debug` after the command works too
        s.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
    return p


_RUN_OPTIONS = ("data", "data_path", "model", "bs", "opt", "lr", "lr_find", "momentum", "wd", "seed", "schedule",
                "amp", "clip", "accumulate", "augment")  # what a resumed run must share with the run that wrote the checkpoint


def _run_options(args):
    """`_RUN_OPTIONS` as args.json keeps them: --data-path as an absolute path (a resume may run elsewhere)."""
    options = {k: getattr(args, k) for k in _RUN_OPTIONS}
    if options["data_path"] is not None:
        options["data_path"] = str(Path(options["data_path"]).resolve())
    return options


def _data_named_by(path):
    """The dataset --data-path names (`datasets.named_by`); fashion-mnist without a path (or with one
    that does not exist: loading it says so)."""
    from .datasets import named_by
    if path is None or not Path(path).exists():
        return "fashion-mnist"
    name = named_by(path)
    if name is None:
        raise ValueError(f"--data-path {path}: its name does not say which dataset it holds; add --data mnist "
                         "or --data fashion-mnist (the class names depend on it)")
    return name


def _check_resume(args, out):
    """ValueError when --resume is given options other than those of the run that wrote out/ckpt."""
    saved = out / "args.json"
    if not args.resume or not saved.exists():
        return
    try:
        was = json.loads(saved.read_text())
    except ValueError as e:
        raise ValueError(f"--resume: cannot read {saved} ({e}), which says what the run was started with; run "
                         "without --resume to start afresh") from None
    now = _run_options(args)
    changed = [k for k in _RUN_OPTIONS if k in was and was[k] != now[k]]
    if changed:
        shown = lambda v: "(the default)" if v is None or v is False else repr(v)  # noqa: E731  (not 0.0)
        flags = ", ".join(f"--{k.replace('_', '-')} {shown(was[k])} (got {shown(now[k])})" for k in changed)
        raise ValueError(f"--resume: {out}/ckpt was written by a run with {flags}; resume with its options")


def _drop_empty_run_folder(args):
    """A run that failed before writing anything leaves none of the folders it made behind."""
    for d in getattr(args, "made_folders", []):
        if not d.is_dir() or any(d.iterdir()):
            return
        d.rmdir()


def train(args):
    """Run `netfit train` with parsed `args`; returns the metrics dict written to metrics.json."""
    import numpy as np
    import torch
    from torch import nn, optim
    from . import __version__, datasets, distributed
    from .data import ImageClassifierData, _device, default_device, mean_std
    from .export import save
    from .fit import fit
    from .predict import predict
    from .metrics import accuracy
    from .models import get_model
    from .plots import plot_history, plot_lr_find, plots
    from .augment import Augment
    from .callbacks import EarlyStopping, GradientClip
    from .fit import set_lrs
    from .schedule import cosine, lr_find, one_cycle

    main_rank = distributed.is_main()  # under torchrun every rank trains; rank 0 alone prints and writes
    say = (lambda *a: None) if args.quiet or not main_rank else print
    if args.epochs < 1:
        raise ValueError(f"--epochs must be at least 1; got {args.epochs}")
    if args.bs < 1:
        raise ValueError(f"--bs must be at least 1; got {args.bs}")
    if args.checkpoint_every is not None and args.checkpoint_every < 1:
        raise ValueError(f"--checkpoint-every must be at least 1; got {args.checkpoint_every}")
    if args.accumulate < 1:
        raise ValueError(f"--accumulate must be at least 1; got {args.accumulate}")
    if args.lr is not None and not 0 < args.lr < math.inf:
        raise ValueError(f"--lr must be a positive finite number; got {args.lr}")
    if args.wd < 0 or not math.isfinite(args.wd):
        raise ValueError(f"--wd must be 0 or more; got {args.wd}")
    if not 0 <= args.momentum < 1:
        raise ValueError(f"--momentum must be in [0, 1); got {args.momentum}")
    if args.clip is not None and not args.clip > 0:
        raise ValueError(f"--clip must be positive; got {args.clip}")
    if args.seed < 0:
        raise ValueError(f"--seed must be 0 or more; got {args.seed}")
    if args.early_stop is not None and args.early_stop < 0:
        raise ValueError(f"--early-stop must be at least 0; got {args.early_stop}")
    if args.data is None:
        args.data = _data_named_by(args.data_path)
    torch.manual_seed(args.seed)
    out = args.run_folder = Path(args.out or f"runs/{args.data}-{args.model}")
    args.run_started = time.time()  # a checkpoint older than this is an earlier run's, not one to resume
    device = (_device(args.device, fix="leave out --device") if args.device is not None  # not here: one sentence
              else default_device())
    if main_rank:
        _check_resume(args, out)
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} is a file; expected a folder for the run (it is created if missing)")
        try:
            # what this run creates, innermost first: removed again if it fails before writing anything
            args.made_folders = [d for d in (out, *out.parents) if not d.exists()]
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"--out {out}: cannot create the run folder ({e.strerror})") from None
        if not args.resume and (out / "metrics.json").exists():
            say(f"note: {out} holds an earlier run, which this one replaces (--resume continues it; --out "
                "another folder keeps it)")
    if device.type == "cuda" and device.index is None:  # under torchrun: this rank's GPU, cuda:LOCAL_RANK
        device = default_device()
    start = time.perf_counter()
    (x, y), (x_valid, y_valid), (x_test, y_test) = datasets.load(args.data, args.data_path)
    classes = list(datasets.FASHION_CLASSES) if args.data == "fashion-mnist" else [str(i) for i in range(10)]
    mean, std = mean_std(x)  # training statistics, used for every split (no temporary as large as x)
    for a in (x, x_valid, x_test):  # in place: the normalised data is the only copy kept
        a -= mean
        a /= std
    say(f"{args.data}: {len(x):,} train, {len(x_valid):,} valid, {len(x_test):,} test rows; "
        f"normalised with train mean {mean:.4f}, std {std:.4f}; device {device}")
    md = ImageClassifierData.from_arrays(str(out), (x, y), (x_valid, y_valid), bs=args.bs,
                                         test=x_test, classes=classes, device=device)
    net = get_model(args.model).to(device)
    lr = args.lr if args.lr is not None else DEFAULT_LR[args.opt]
    if args.opt == "adam":
        opt = optim.Adam(net.parameters(), lr=lr, weight_decay=args.wd)
    elif args.opt == "adamw":
        opt = optim.AdamW(net.parameters(), lr=lr, weight_decay=args.wd)
    else:
        opt = optim.SGD(net.parameters(), lr=lr, momentum=args.momentum, weight_decay=args.wd)
    extras = "".join(f", {text}" for on, text in (
        (args.schedule != "none", f"{args.schedule} schedule"), (args.amp, "mixed precision"),
        (args.augment, "augmentation"), (args.clip is not None, f"clip {args.clip}"),
        (args.accumulate > 1, f"accumulate {args.accumulate}"), (args.wd, f"wd {args.wd:g}"),
        (args.early_stop is not None, f"early stop after {args.early_stop} epochs without progress")) if on)
    say(f"model {args.model} ({sum(p.numel() for p in net.parameters()):,} parameters), {args.opt} lr "
        f"{'from lr_find' if args.lr_find and args.lr is None else format(lr, 'g')}, bs {args.bs}, {args.epochs} "
        f"epoch{'s' if args.epochs != 1 else ''}{extras}")
    lr_suggestion = None
    if args.lr_find:
        res = lr_find(net, md, nn.NLLLoss(), opt)
        lr_suggestion = res.suggestion
        if main_rank:
            plot_lr_find(res).savefig(out / "lr_find.png", dpi=80)
        lr = lr if args.lr is not None else lr_suggestion
        set_lrs(opt, lr)
        say(f"lr_find: suggested learning rate {lr_suggestion:.2e} (wrote {out / 'lr_find.png'}); training with {lr:g}")
    callbacks = ([Augment(flip=args.data == "fashion-mnist")] if args.augment else []) \
        + ([GradientClip(max_norm=args.clip)] if args.clip is not None else []) \
        + ([EarlyStopping(patience=args.early_stop)] if args.early_stop is not None else [])
    schedule = {"none": None, "one-cycle": one_cycle(lr), "cosine": cosine(lr)}[args.schedule]
    if args.resume and not (out / "ckpt").exists() and not (out / "ckpt.prev").exists():
        say(f"--resume: no checkpoint at {out / 'ckpt'}; starting from scratch")
    if main_rank:  # written only once training starts: a run that fails before does not overwrite it
        if not args.resume:  # an earlier run's checkpoints: a --resume after an interrupt must not continue them
            for old in (out / "ckpt", out / "ckpt.prev"):
                old.unlink(missing_ok=True)
        (out / "args.json").write_text(json.dumps(_run_options(args), indent=2))
    history = fit(net, md, args.epochs, opt, nn.NLLLoss(), [accuracy], callbacks, verbose=not args.quiet,
                  checkpoint=out / "ckpt", checkpoint_every=args.checkpoint_every, resume=args.resume,
                  schedule=schedule, amp=args.amp, accumulate=args.accumulate,
                  seed=args.seed)  # the shuffling too: 2 processes of --bs b order rows as 1 process of 2b
    train_seconds = sum(history["time"])
    stopped = history.info.get("early_stopping")
    if stopped and stopped.get("stopped_after") is not None:
        say(f"early stopping: no progress in {stopped['monitor']} for {args.early_stop} epochs after epoch "
            f"{stopped['best_epoch']}; stopped after epoch {stopped['stopped_after']} and restored epoch "
            f"{stopped['best_epoch']}'s weights ({stopped['monitor']} {stopped['best']:.4f})")
    val_preds = predict(net, md.val_dl)  # under torchrun: each rank a share, gathered in order on all
    test_acc = accuracy(predict(net, md.test_dl), y_test)
    val_acc = accuracy(val_preds, y_valid)
    if not main_rank:
        return {"val_accuracy": val_acc, "test_accuracy": test_acc}
    save(net, out, arch=args.model, classes=classes, mean=mean, std=std)

    labels = val_preds[:16].argmax(1)
    titles = [classes[p] if p == t else f"{classes[p]}\n(is {classes[t]})" for p, t in zip(labels, y_valid[:16])]
    colors = ["black" if p == t else "red" for p, t in zip(labels, y_valid[:16])]
    plots(x_valid[:16].reshape(-1, 28, 28), figsize=(12, 4.5), rows=2, titles=titles, colors=colors) \
        .savefig(out / "predictions.png", dpi=80)
    plot_history(history).savefig(out / "history.png", dpi=80)
    import matplotlib.pyplot as plt
    plt.close("all")

    metrics = {
        "data": args.data, "model": args.model, "epochs": args.epochs, "bs": args.bs, "opt": args.opt, "lr": lr,
        "lr_find_suggestion": lr_suggestion, "schedule": args.schedule, "amp": args.amp, "clip": args.clip,
        "accumulate": args.accumulate, "early_stop": args.early_stop, "augment": args.augment,
        "seed": args.seed, "history": history.records, "fit_info": history.info,
        "val_accuracy": val_acc, "test_accuracy": test_acc,
        "train_seconds": train_seconds, "total_seconds": time.perf_counter() - start,
        "device": str(device), "cpu": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
        "versions": {"netfit": __version__, "torch": torch.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    say(f"validation accuracy {val_acc:.4f}, test accuracy {test_acc:.4f}, {train_seconds:.1f} s training "
        f"(training step: {history.info['step']})")
    say(f"wrote {out}/: metrics.json, model.safetensors, model.json, predictions.png, history.png")
    return metrics


def predict(args):
    """Run `netfit predict`: print `<file>: <class>` per image, `<file> row <i>: <class>` per CSV row."""
    from .data import DataError
    from .export import load
    from .inputs import expand, read_inputs
    predictor = load(args.model)
    failed = []
    for path in expand(args.inputs):
        try:
            x, labels, names = read_inputs(path, predictor.meta["input_shape"], predictor.meta.get("pixels", True))
        except DataError as e:  # the other files are still predicted; the exit status says some were not
            print(f"netfit predict: error: {e}", file=sys.stderr)
            failed.append(path)
            continue
        preds = predictor.predict(x)
        classes = predictor.classes or [str(i) for i in range(int(preds.max()) + 1)]
        for name, p in zip(names, preds):
            print(f"{name}: {classes[p]}")
        if labels is not None:
            print(f"{path}: accuracy {(preds == labels).mean():.4f} on {len(labels)} labelled rows")
    return 1 if failed else 0


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    import warnings
    try:
        with warnings.catch_warnings():
            if not args.debug:  # one line per warning, as for errors, not Python's file:line and source line
                warnings.showwarning = lambda message, category, *rest: print(
                    f"netfit {args.command}: warning: {message}", file=sys.stderr)
            if args.command == "train":
                train(args)
            elif args.command == "predict":
                return predict(args)
            elif args.command == "compare":
                from .compare import compare_command
                compare_command(args)
        return 0
    except KeyboardInterrupt:
        _drop_empty_run_folder(args)
        ckpt = getattr(args, "run_folder", None)
        ckpt = ckpt / "ckpt" if ckpt is not None and (ckpt / "ckpt").exists() else None
        if ckpt is not None and not (args.resume or ckpt.stat().st_mtime >= args.run_started):
            ckpt = None  # interrupted before this run saved one: the file is an earlier run's
        print("netfit: interrupted" + (f"; the last checkpoint is {ckpt}: run the same command with --resume to "
                                       "continue from it" if ckpt else ""), file=sys.stderr)
        return 130
    except Exception as e:  # one line for people, the traceback with --debug
        _drop_empty_run_folder(args)
        if args.debug:
            raise
        print(f"netfit {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
