"""Benchmark: peak resident memory of `netfit train` on Fashion-MNIST, and its growth from epoch to epoch.

    python bench/memory.py                    # mlp, 10 epochs (about a minute on 2 cores)
    python bench/memory.py --model cnn --epochs 3

Issue 8's target: the peak resident set of `netfit train` stays within twice the float32 dataset
(70,000 x 784 x 4 B = 219.5 MB) above the framework's own baseline, and does not grow per epoch.
Three fresh processes, Linux only (peaks from the kernel's ru_maxrss, current RSS from /proc):

    baseline  `netfit train` on a tiny pickle of Fashion-MNIST rows (640 train, 100 valid, 100 test):
              the imports, the model, training, the plots and the files, with almost no data
    full      the same command on all 70,000 images
    growth    what `netfit train` does, through the library (load, normalise, from_arrays, fit), with a
              callback reading the process's RSS after every epoch

The report (markdown and JSON under bench/results/) gives both peaks, their difference against the
2 x 219.5 MB allowance, and the RSS after each epoch.
"""
import argparse
import datetime
import gzip
import json
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATASET_MB = 70_000 * 784 * 4 / 2**20  # the float32 images of all three splits


def rss_mb():
    """This process's resident set now, in MiB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_peak(cmd):
    """Run `cmd`; return its peak resident set in MiB (ru_maxrss of the child, in KiB on Linux)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited with {proc.returncode}:\n{out[-3000:]}")
    return usage.ru_maxrss / 1024, out


def tiny_pickle(path):
    """The lesson's mnist.pkl.gz layout with a few real Fashion-MNIST rows: the baseline's data."""
    from netfit import datasets
    (x, y), (xv, yv), (xt, yt) = datasets.load("fashion-mnist")
    with gzip.open(path, "wb") as f:
        pickle.dump(((x[:640], y[:640]), (xv[:100], yv[:100]), (xt[:100], yt[:100])), f)


def growth(args):
    """The growth worker: `netfit train`'s steps through the library, RSS read after every epoch."""
    import torch
    from torch import nn, optim

    from netfit import ImageClassifierData, accuracy, datasets, fit
    from netfit.data import mean_std
    from netfit.models import get_model

    class RSS:
        def __init__(self):
            self.after = []

        def after_epoch(self, run):
            self.after.append(round(rss_mb(), 1))

    start = rss_mb()
    (x, y), (xv, yv), _ = datasets.load("fashion-mnist")
    mean, std = mean_std(x)
    for a in (x, xv):
        a -= mean
        a /= std
    loaded = rss_mb()
    torch.manual_seed(0)
    md = ImageClassifierData.from_arrays(".", (x, y), (xv, yv), bs=64, device="cpu")
    net = get_model(args.model)
    rss = RSS()
    h = fit(net, md, args.epochs, optim.Adam(net.parameters(), 1e-3), nn.NLLLoss(), [accuracy],
            callbacks=[rss], verbose=False)
    print(json.dumps({"start": round(start, 1), "loaded": round(loaded, 1), "after_epoch": rss.after,
                      "accuracy": h[-1]["accuracy"]}))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mlp", choices=["logreg", "mlp", "cnn"])
    p.add_argument("--epochs", type=int, default=10, help="epochs of each run (default: 10)")
    p.add_argument("--out", default=str(HERE / "results"), help="folder for the results")
    p.add_argument("--growth-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--tiny-worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.growth_worker:
        return growth(args)
    if args.tiny_worker:
        return tiny_pickle(args.tiny_worker)
    with tempfile.TemporaryDirectory() as tmp:
        tiny = Path(tmp) / "tiny-mnist.pkl.gz"
        # in a child: a forked child's ru_maxrss starts from its parent's resident set, so the parent
        # must not import torch or hold data before the runs it measures
        subprocess.run([sys.executable, __file__, "--tiny-worker", str(tiny)], check=True)
        train = [sys.executable, "-m", "netfit", "train", "--data", "fashion-mnist", "--model", args.model,
                 "--epochs", str(args.epochs), "--device", "cpu"]
        base, _ = run_peak([*train, "--data-path", str(tiny), "--out", f"{tmp}/baseline"])
        full, full_out = run_peak([*train, "--out", f"{tmp}/full"])
        _, grown = run_peak([sys.executable, __file__, "--growth-worker", "--model", args.model,
                             "--epochs", str(args.epochs)])
    sys.path.insert(0, str(HERE))
    from bench_fit import machine_name, netfit_source
    g = json.loads(grown.strip().splitlines()[-1])
    per_epoch = g["after_epoch"]
    slope = (per_epoch[-1] - per_epoch[1]) / (len(per_epoch) - 2) if len(per_epoch) > 2 else float("nan")
    allowance = 2 * DATASET_MB
    result = {"machine": machine_name(), "netfit": netfit_source(), "date": datetime.date.today().isoformat(),
              "model": args.model, "epochs": args.epochs, "baseline_peak_mb": round(base, 1),
              "full_peak_mb": round(full, 1), "above_baseline_mb": round(full - base, 1),
              "allowance_mb": round(allowance, 1), "dataset_float32_mb": round(DATASET_MB, 1),
              "within_target": full - base <= allowance, "growth": g,
              "growth_mb_per_epoch_after_epoch_1": round(slope, 2),
              "full_run_last_line": full_out.strip().splitlines()[-2] if full_out.strip() else ""}
    md = (f"# netfit train memory: {result['machine']}, {result['date']}\n\n"
          f"netfit {result['netfit']}; model {args.model}, {args.epochs} epochs, bs 64, Adam, CPU.\n"
          f"Float32 Fashion-MNIST (70,000 x 784): {DATASET_MB:.1f} MiB; allowance 2x = {allowance:.1f} MiB.\n\n"
          f"| run | peak RSS, MiB |\n|---|---:|\n"
          f"| `netfit train`, tiny pickle (baseline) | {base:.1f} |\n"
          f"| `netfit train`, full Fashion-MNIST | {full:.1f} |\n"
          f"| difference (target <= {allowance:.1f}) | {full - base:.1f} |\n\n"
          f"RSS through the library: {g['start']} MiB after imports, {g['loaded']} MiB with the data loaded "
          f"and normalised; after each epoch: {', '.join(map(str, per_epoch))} MiB "
          f"({slope:+.2f} MiB per epoch after the first).\n")
    print(md)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"memory-{result['machine']}-{result['date']}"
    (out / f"{stem}.md").write_text(md)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {out / stem}.md and .json", file=sys.stderr)


if __name__ == "__main__":
    main()
