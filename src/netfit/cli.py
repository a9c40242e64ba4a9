"""The command line: `netfit train` runs the lesson's pipeline and writes a run folder.

    netfit train --data fashion-mnist --model mlp --epochs 5 --out runs/fashion-mlp

The run folder gets `metrics.json` (per-epoch figures, final validation and test accuracy, seconds,
device, versions), `model.safetensors` + `model.json`, `predictions.png` (first validation images,
wrong predictions in red) and `history.png` (training curves). Errors print one line; `--debug`
shows the traceback.
"""
import argparse
import json
import platform
import sys
import time
from pathlib import Path

__all__ = ["main", "build_parser", "train"]

DEFAULT_LR = {"adam": 1e-3, "sgd": 0.1}


def build_parser():
    p = argparse.ArgumentParser(prog="netfit", description="Train the nets of fastai's lesson 8 "
                                "(From forests to nets) on MNIST or Fashion-MNIST.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    t = sub.add_parser("train", help="train a net and write a run folder",
                       description="Load and normalise the data (training mean/std), train with fit, "
                       "print the per-epoch table, and write metrics, weights and plots to --out.")
    t.add_argument("--data", default="fashion-mnist", choices=["mnist", "fashion-mnist"],
                   help="dataset to train on (default: fashion-mnist, installed offline by Debian's "
                   "dataset-fashion-mnist)")
    t.add_argument("--data-path", default=None, help="a folder of IDX files or an mnist.pkl.gz to use "
                   "instead of the search (cache, system folder, download)")
    t.add_argument("--model", default="mlp", choices=["logreg", "mlp", "cnn"],
                   help="logreg: Linear(784,10)+LogSoftmax; mlp: 784-100-100-10; cnn: two conv blocks "
                   "(default: mlp)")
    t.add_argument("--epochs", type=int, default=5, help="passes over the training set (default: 5)")
    t.add_argument("--bs", type=int, default=64, help="batch size (default: 64)")
    t.add_argument("--opt", default="adam", choices=["adam", "sgd"], help="optimizer (default: adam)")
    t.add_argument("--lr", type=float, default=None, help="learning rate (default: 1e-3 for adam, 0.1 for sgd)")
    t.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default: 0.9)")
    t.add_argument("--wd", type=float, default=0.0, help="weight decay (default: 0)")
    t.add_argument("--seed", type=int, default=0, help="random seed for weights and shuffling (default: 0)")
    t.add_argument("--device", default=None, help="cpu, cuda, mps... (default: best available)")
    t.add_argument("--out", default=None, help="run folder to write (default: runs/<data>-<model>)")
    t.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return p


def train(args):
    """Run `netfit train` with parsed `args`; returns the metrics dict written to metrics.json."""
    import numpy as np
    import torch
    from torch import nn, optim
    from . import __version__, datasets
    from .data import ImageClassifierData, default_device
    from .export import save
    from .fit import fit, predict
    from .metrics import accuracy
    from .models import get_model
    from .plots import plot_history, plots

    say = (lambda *a: None) if args.quiet else print
    if args.epochs < 1:
        raise ValueError(f"--epochs must be at least 1; got {args.epochs}")
    if args.bs < 1:
        raise ValueError(f"--bs must be at least 1; got {args.bs}")
    torch.manual_seed(args.seed)
    out = Path(args.out or f"runs/{args.data}-{args.model}")
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device) if args.device else default_device()
    start = time.perf_counter()
    (x, y), (x_valid, y_valid), (x_test, y_test) = datasets.load(args.data, args.data_path)
    classes = list(datasets.FASHION_CLASSES) if args.data == "fashion-mnist" else [str(i) for i in range(10)]
    mean, std = float(x.mean()), float(x.std())  # training statistics, used for every split
    norm = lambda a: (a - mean) / std
    say(f"{args.data}: {len(x):,} train, {len(x_valid):,} valid, {len(x_test):,} test rows; "
        f"normalised with train mean {mean:.4f}, std {std:.4f}; device {device}")
    md = ImageClassifierData.from_arrays(str(out), (norm(x), y), (norm(x_valid), y_valid), bs=args.bs,
                                         test=norm(x_test), classes=classes, device=device)
    net = get_model(args.model).to(device)
    lr = args.lr if args.lr is not None else DEFAULT_LR[args.opt]
    if args.opt == "adam":
        opt = optim.Adam(net.parameters(), lr=lr, weight_decay=args.wd)
    else:
        opt = optim.SGD(net.parameters(), lr=lr, momentum=args.momentum, weight_decay=args.wd)
    say(f"model {args.model} ({sum(p.numel() for p in net.parameters()):,} parameters), {args.opt} lr {lr:g}, "
        f"bs {args.bs}, {args.epochs} epochs")
    history = fit(net, md, args.epochs, opt, nn.NLLLoss(), [accuracy], verbose=not args.quiet)
    train_seconds = sum(history["time"])
    val_preds = predict(net, md.val_dl)
    test_acc = accuracy(predict(net, md.test_dl), y_test)
    val_acc = accuracy(val_preds, y_valid)
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
        "seed": args.seed, "history": history.records, "fit_info": history.info,
        "val_accuracy": val_acc, "test_accuracy": test_acc,
        "train_seconds": train_seconds, "total_seconds": time.perf_counter() - start,
        "device": str(device), "cpu": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
        "versions": {"netfit": __version__, "torch": torch.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    say(f"validation accuracy {val_acc:.4f}, test accuracy {test_acc:.4f}, {train_seconds:.1f} s training")
    say(f"wrote {out}/: metrics.json, model.safetensors, model.json, predictions.png, history.png")
    return metrics


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "train":
            train(args)
        return 0
    except KeyboardInterrupt:
        print("netfit: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one line for people, the traceback with --debug
        if args.debug:
            raise
        print(f"netfit {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
