"""1 process vs 2 processes under torchrun: seconds per epoch and validation accuracy of `fit`.

    python bench/bench_distributed.py                   # logreg and mlp, 3 epochs, ~4 min on 2 cores
    python bench/bench_distributed.py --models logreg --epochs 2

Fashion-MNIST as `netfit train` loads it (50,000 training rows, 10,000 validation rows, normalised
with the training mean and std), Adam lr 1e-3, NLL loss, shuffling seed 0. Three runs per model:

- 1 process, batch 64 and batch 128, with torch's default threads (all cores) and with 1 thread;
- `torchrun --standalone --nproc-per-node=2`, batch 64 per rank (128 per step), one thread per
  rank (torchrun's default OMP_NUM_THREADS=1), gloo on the CPU.

Seconds per epoch are the median over the epochs after the first (the first includes warm-up),
training plus validation, as `history["time"]` records them. The table is printed and written to
`<--out>/distributed-<machine>-<date>.md` (default bench/results/).
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def worker(args):
    import torch
    from torch import nn, optim

    from netfit import ImageClassifierData, accuracy, datasets, distributed, fit
    from netfit.models import get_model
    torch.manual_seed(0)
    (x, y), (xv, yv), _ = datasets.load("fashion-mnist", None)
    mean, std = float(x.mean()), float(x.std())
    md = ImageClassifierData.from_arrays(".", ((x - mean) / std, y), ((xv - mean) / std, yv), bs=args.bs, device="cpu")
    net = get_model(args.model)
    h = fit(net, md, args.epochs, optim.Adam(net.parameters(), 1e-3), nn.NLLLoss(), [accuracy], verbose=False, seed=0)
    if distributed.is_main():
        Path(args.result).write_text(json.dumps({"times": h["time"], "accuracy": h[-1]["accuracy"],
                                                 "world": h.info["world_size"], "threads": torch.get_num_threads()}))


def launch(model, bs, procs, threads, epochs, timeout):
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        cmd = [__file__, "--worker", "--model", model, "--bs", str(bs), "--epochs", str(epochs), "--result", str(result)]
        if procs > 1:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}", *cmd]
        else:
            cmd = [sys.executable, *cmd]
        env = {**os.environ, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
        if threads:  # None: torch's default (all cores) in 1 process, torchrun's 1 thread per rank
            env["OMP_NUM_THREADS"] = str(threads)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        return json.loads(result.read_text())


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--model", default="logreg", help=argparse.SUPPRESS)
    p.add_argument("--bs", type=int, default=64, help=argparse.SUPPRESS)
    p.add_argument("--models", default="logreg,mlp", help="comma-separated: logreg, mlp, cnn (default: logreg,mlp)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is not timed (default: 3)")
    p.add_argument("--timeout", type=int, default=900, help="seconds per run (default: 900)")
    p.add_argument("--out", default=str(HERE / "results"), help="folder for the results (default: bench/results)")
    args = p.parse_args()
    if args.worker:
        return worker(args)
    import torch
    rows = []
    for model in args.models.split(","):
        for procs, threads, bs in ((1, None, 64), (1, None, 128), (1, 1, 64), (1, 1, 128), (2, None, 64)):
            r = launch(model, bs, procs, threads, args.epochs, args.timeout)
            per_epoch = statistics.median(r["times"][1:] or r["times"])
            rows.append(f"| {model} | {procs} | {r['threads']} | {bs} | {bs * procs} | {per_epoch:.2f} | "
                        f"{r['accuracy']:.4f} |")
            print(rows[-1], flush=True)
    machine = f"{platform.system().lower()}-{platform.machine()}-{os.cpu_count()}cpu-torch{torch.__version__}"
    table = "\n".join([
        f"Fashion-MNIST, {args.epochs} epochs, Adam 1e-3, {machine}, {datetime.date.today()}",
        "",
        "| model | processes | threads each | batch per process | rows per step | s / epoch | val accuracy |",
        "|---|---|---|---|---|---|---|",
        *rows])
    out = Path(args.out) / f"distributed-{machine}-{datetime.date.today()}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(exist_ok=True)
    out.write_text(table + "\n")
    print("\n" + table + f"\n\nwrote {out}")


if __name__ == "__main__":
    main()
