"""Benchmark: netfit's `fit` against plain PyTorch loops and three training libraries.

    pip install -e '.[bench]'                       # lightning, keras, skorch, scikit-learn
    python bench/bench_fit.py                       # logreg and mlp, 4 timed epochs, 2 repeats
    python bench/bench_fit.py --models logreg,mlp,cnn --contenders netfit,dataloader --device cuda
    python bench/bench_fit.py --quick               # smoke test: 10,000 rows, 1 timed epoch
    python bench/bench_fit.py --threads 1           # steadier on a busy machine (see bench/README.md)
    python bench/bench_fit.py --defaults            # each library as it runs out of the box (bars, loggers on)

The task is the lesson's: Fashion-MNIST (50,000 training rows, 10,000 validation rows, pixels
normalised with the training mean and std), batch size 64, Adam at lr 1e-3, NLL loss on a net that
ends in LogSoftmax. Contenders, each trained in a subprocess of its own so that one's imports and
thread pools cannot slow another (the parent runs `bench_fit.py --contender NAME`):

    netfit      fit(net, md, epochs, opt, crit, metrics=[accuracy], verbose=False)
    dataloader  a plain loop over DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)
    slicing     the same loop over batches gathered from the tensors with a shuffled index
    lightning   lightning.Trainer on the same DataLoader (no logger, checkpoints or progress bar)
    keras       Keras 3 on the torch backend: model.fit(x, y, batch_size=64, verbose=0)
    skorch      NeuralNetClassifier(train_split=None, batch_size=64, optimizer=Adam)

Each run trains one warm-up epoch and then `--epochs` timed ones. Only the training pass is timed
(from the start of an epoch to the end of its last step; on CUDA after a synchronise); the figure
reported is the median over timed epochs of all repeats, with the fastest epoch beside it. Validation
accuracy is read after the last epoch; repeat r seeds the weights and the shuffling with r, and the
table gives the median accuracy over repeats with its range (one seed's accuracy moves by about a
point between contenders that shuffle differently). Repeats run the contenders in alternating order (forward, then reversed) so that a noisy
neighbour or a warming CPU does not always hit the same one. Results are printed as a markdown table
and written to bench/results/<machine>-<date>.md and .json.

By default every contender runs with its output and bookkeeping off (netfit verbose=False, Lightning
without logger, checkpoints, progress bar or model summary, Keras verbose=0, skorch verbose=0): the
strictest comparison, of training loops alone. `--defaults` runs each as its documentation's first
example does, with what it does by default left on: netfit's progress bar and epoch table, Lightning's
progress bar, logger, checkpoint and model summary (into a temporary folder), Keras's progress bar,
skorch's epoch table. The plain loops print nothing either way. Output goes to a pipe, not a terminal,
for every contender alike.
"""
import argparse
import datetime
import importlib.util
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BS, LR = 64, 1e-3
CONTENDERS = ("netfit", "dataloader", "slicing", "lightning", "keras", "skorch")
PACKAGES = {"lightning": "lightning", "keras": "keras", "skorch": "skorch"}  # contender -> import name
MODELS = ("logreg", "mlp", "cnn")
RESULT_TAG = "BENCH_RESULT "  # the child prints its result as one JSON line after this tag
QUICK_ROWS = 10_000           # training rows used by --quick
SEED = 0                      # set per run by the parent: repeat r uses seed r (weights and shuffling)
DEFAULTS = False              # set by --defaults: each library's output and bookkeeping as it ships
DEFAULTS_NOTE = (" DEFAULTS: each library with its default output and bookkeeping on (progress bars, loggers, "
                 "checkpoints, epoch tables), output to a pipe.")


# ---------------------------------------------------------------- the child: one contender, one model

def load_data(n_train=None):
    """Fashion-MNIST as float32 (N, 784) / int64 (N,) numpy arrays, normalised with the training stats."""
    from netfit import datasets
    (x, y), (xv, yv), _ = datasets.fashion_mnist()
    if n_train is not None:
        x, y = x[:n_train], y[:n_train]
    mean, std = x.mean(), x.std()  # one scalar each, as the lesson does
    return (x - mean) / std, y, (xv - mean) / std, yv


class EpochClock:
    """Seconds per training epoch: `start()` at the start of an epoch, `stop()` after its last step."""

    def __init__(self, device):
        import torch
        self.sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        self.times, self.t0 = [], None

    def start(self):
        self.sync()  # work queued by the previous epoch's validation must not count here
        self.t0 = time.perf_counter()

    def stop(self):
        self.sync()
        self.times.append(time.perf_counter() - self.t0)


def torch_model(name, device):
    import torch
    from netfit import models
    torch.manual_seed(SEED)  # the initial weights, and the global generator the shuffles draw from
    return models.get_model(name).to(device)


def run_netfit(model, data, epochs, device):
    import torch
    from torch import nn
    from netfit import ImageClassifierData, accuracy, fit
    x, y, xv, yv = data
    clock = EpochClock(device)

    class Clock:  # a callback: after_batch compares one int per step, then stops the clock once
        def before_epoch(self, run):
            clock.start()

        def after_batch(self, run):
            if run.batch == run.n_batches - 1:
                clock.stop()

    net = torch_model(model, device)
    md = ImageClassifierData.from_arrays("data/fashion", (x, y), (xv, yv), bs=BS, device=device)
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    history = fit(net, md, epochs, opt, nn.NLLLoss(), metrics=[accuracy], callbacks=[Clock()], verbose=DEFAULTS)
    return clock.times, history[-1]["accuracy"], history.info


def _plain_epoch(net, opt, crit, batches, device):
    net.train()
    for xb, yb in batches:
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        loss = crit(net(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()


def _plain_accuracy(net, batches, device):
    import torch
    net.eval()
    correct = n = 0
    with torch.no_grad():
        for xb, yb in batches:
            xb, yb = xb.to(device), yb.to(device)
            correct += (net(xb).argmax(1) == yb).sum().item()
            n += len(yb)
    return correct / n


def run_dataloader(model, data, epochs, device):
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    x, y, xv, yv = (torch.from_numpy(a) for a in data)
    trn = DataLoader(TensorDataset(x, y), batch_size=BS, shuffle=True)  # per-row __getitem__ + collate
    val = DataLoader(TensorDataset(xv, yv), batch_size=BS)
    net, clock = torch_model(model, device), EpochClock(device)
    opt, crit = torch.optim.Adam(net.parameters(), lr=LR), torch.nn.NLLLoss()
    for _ in range(epochs):
        clock.start()
        _plain_epoch(net, opt, crit, trn, device)
        clock.stop()
        acc = _plain_accuracy(net, val, device)
    return clock.times, acc, {}


def run_slicing(model, data, epochs, device):
    import torch
    x, y, xv, yv = (torch.from_numpy(a).to(device) for a in data)  # moved once, like netfit

    def shuffled():
        idx = torch.randperm(len(x), device=device)
        for i in range(0, len(x), BS):
            j = idx[i:i + BS]
            yield x[j], y[j]  # one gather per batch

    val = [(xv[i:i + BS], yv[i:i + BS]) for i in range(0, len(xv), BS)]
    net, clock = torch_model(model, device), EpochClock(device)
    opt, crit = torch.optim.Adam(net.parameters(), lr=LR), torch.nn.NLLLoss()
    for _ in range(epochs):
        clock.start()
        _plain_epoch(net, opt, crit, shuffled(), device)
        clock.stop()
        acc = _plain_accuracy(net, val, device)
    return clock.times, acc, {}


def run_lightning(model, data, epochs, device):
    import lightning as L
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    x, y, xv, yv = (torch.from_numpy(a) for a in data)
    trn = DataLoader(TensorDataset(x, y), batch_size=BS, shuffle=True)
    val = DataLoader(TensorDataset(xv, yv), batch_size=BS)
    clock = EpochClock(device)

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net, self.crit, self.correct, self.n = torch_model(model, "cpu"), torch.nn.NLLLoss(), 0, 0

        def training_step(self, batch, batch_idx):
            xb, yb = batch
            return self.crit(self.net(xb), yb)

        def on_validation_epoch_start(self):
            self.correct = self.n = 0

        def validation_step(self, batch, batch_idx):
            xb, yb = batch
            self.correct += (self.net(xb).argmax(1) == yb).sum().item()
            self.n += len(yb)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=LR)

    class Clock(L.Callback):  # validation runs before on_train_epoch_end, so stop after the last step
        def on_train_epoch_start(self, trainer, module):
            clock.start()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if batch_idx == trainer.num_training_batches - 1:
                clock.stop()

    quiet = {} if DEFAULTS else dict(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                     enable_model_summary=False, num_sanity_val_steps=0)
    root = tempfile.mkdtemp(prefix="bench-lightning-")  # its logs and checkpoints under --defaults
    trainer = L.Trainer(accelerator="gpu" if device.startswith("cuda") else "cpu", devices=1,
                        max_epochs=epochs, default_root_dir=root, callbacks=[Clock()], **quiet)
    module = Module()
    trainer.fit(module, trn, val)
    shutil.rmtree(root, ignore_errors=True)
    return clock.times, module.correct / module.n, {}


def keras_model(name):
    import keras
    from keras import layers
    keras.utils.set_random_seed(SEED)
    head = [layers.Dense(10, activation="softmax")]
    if name == "logreg":
        body = []
    elif name == "mlp":
        body = [layers.Dense(100, activation="relu"), layers.Dense(100, activation="relu")]
    else:  # netfit.models.cnn; BN momentum 0.9 = torch's 0.1, eps as torch's
        block = lambda c: [layers.Conv2D(c, 3, padding="same", use_bias=False),
                           layers.BatchNormalization(momentum=0.9, epsilon=1e-5), layers.ReLU(),
                           layers.MaxPooling2D(2)]
        body = [layers.Reshape((28, 28, 1)), *block(32), *block(64), layers.Flatten(), layers.Dropout(0.25)]
    return keras.Sequential([keras.Input((784,)), *body, *head])


def run_keras(model, data, epochs, device):
    os.environ["KERAS_BACKEND"] = "torch"
    os.environ["KERAS_TORCH_DEVICE"] = device  # else Keras takes CUDA whenever it exists
    import keras
    x, y, xv, yv = data
    clock = EpochClock(device)

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            clock.start()

        def on_train_batch_end(self, batch, logs=None):
            if batch == self.params["steps"] - 1:
                clock.stop()

    net = keras_model(model)
    # no compiled metrics: they would add work to every training step that the other contenders skip
    net.compile(optimizer=keras.optimizers.Adam(LR), loss="sparse_categorical_crossentropy")
    net.fit(x, y, batch_size=BS, epochs=epochs, shuffle=True, verbose="auto" if DEFAULTS else 0, callbacks=[Clock()])
    acc = float((net.predict(xv, batch_size=1024, verbose=0).argmax(1) == yv).mean())
    return clock.times, acc, {"backend": keras.backend.backend()}


def run_skorch(model, data, epochs, device):
    import torch
    from skorch import NeuralNetClassifier
    from skorch.callbacks import Callback
    x, y, xv, yv = data
    clock = EpochClock(device)

    class Clock(Callback):  # with train_split=None nothing runs between the last step and epoch end
        def on_epoch_begin(self, net, **kwargs):
            clock.start()

        def on_epoch_end(self, net, **kwargs):
            clock.stop()

    # skorch's classifier takes the log of the output when the criterion is NLLLoss (it expects
    # probabilities); CrossEntropyLoss on log-probabilities gives the same loss, as log_softmax of
    # log_softmax is log_softmax.
    net = NeuralNetClassifier(torch_model(model, device), criterion=torch.nn.CrossEntropyLoss,
                              optimizer=torch.optim.Adam, lr=LR, batch_size=BS, max_epochs=epochs,
                              train_split=None, iterator_train__shuffle=True, device=device, verbose=int(DEFAULTS),
                              callbacks=[Clock()])
    net.fit(x, y)
    return clock.times, float((net.predict(xv) == yv).mean()), {}


# each runner trains for `epochs` epochs and returns (seconds per training epoch, final val accuracy, info)
RUNNERS = {"netfit": run_netfit, "dataloader": run_dataloader, "slicing": run_slicing,
           "lightning": run_lightning, "keras": run_keras, "skorch": run_skorch}


def child(args):
    """Train one contender on one model and print its result after RESULT_TAG."""
    import torch
    global SEED, DEFAULTS
    SEED, DEFAULTS = args.seed, args.defaults
    if args.threads:
        torch.set_num_threads(args.threads)
    result = {"contender": args.contender, "model": args.models, "seed": args.seed}
    package = PACKAGES.get(args.contender)
    try:
        data = load_data(QUICK_ROWS if args.quick else None)
        times, acc, info = RUNNERS[args.contender](args.models, data, args.epochs + 1, args.device)
        result.update(status="ok", warmup_s=times[0], epoch_s=times[1:], val_acc=float(acc), info=info,
                      threads=torch.get_num_threads())  # read after training: a library may change it
        if package:
            result["version"] = sys.modules[package].__version__
    except ModuleNotFoundError as e:
        if package is None or e.name.split(".")[0] != package:
            raise
        result["status"] = "not installed"
    print(RESULT_TAG + json.dumps(result), flush=True)


# ---------------------------------------------------------------- the parent: run, tabulate, save

def machine_name():
    """platform, CPU count, torch version and GPU name, as one file-name-safe string."""
    import torch
    parts = [platform.system().lower(), platform.machine(), f"{os.cpu_count()}cpu", f"torch{torch.__version__}"]
    if torch.cuda.is_available():
        parts.append(torch.cuda.get_device_name(0))
    return re.sub(r"[^A-Za-z0-9.+_-]+", "_", "-".join(parts))


def netfit_source():
    """netfit's version and a digest of its source files: the tree may hold uncommitted changes."""
    import hashlib
    import netfit
    digest = hashlib.sha1()
    for f in sorted(Path(netfit.__file__).parent.glob("*.py")):
        digest.update(f.name.encode() + f.read_bytes())
    return f"{netfit.__version__} (source sha1 {digest.hexdigest()[:12]})"


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_child(contender, model, args, seed=0):
    if contender in PACKAGES and importlib.util.find_spec(PACKAGES[contender]) is None:
        return {"contender": contender, "model": model, "status": "not installed"}
    cmd = [sys.executable, __file__, "--contender", contender, "--models", model, "--epochs", str(args.epochs),
           "--device", args.device, "--threads", str(args.threads), "--seed", str(seed)]
    cmd += (["--quick"] if args.quick else []) + (["--defaults"] if args.defaults else [])
    env = dict(os.environ, KERAS_BACKEND="torch", PYTHONWARNINGS="ignore")
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"contender": contender, "model": model, "status": f"timed out after {args.timeout} s"}
    for line in p.stdout.splitlines()[::-1]:
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    last = (p.stderr.strip().splitlines() or ["no output"])[-1]
    return {"contender": contender, "model": model, "status": f"failed (exit {p.returncode}): {last}"}


def summarise(runs, contenders, models):
    """One row per (contender, model): median and fastest s/epoch over all timed epochs of all repeats,
    median final accuracy. On a busy machine the fastest epoch is the one least disturbed."""
    rows = []
    for model in models:
        for c in contenders:
            mine = [r for r in runs if r["contender"] == c and r["model"] == model]
            ok = [r for r in mine if r["status"] == "ok"]
            row = {"contender": c, "model": model, "status": ok and "ok" or mine[-1]["status"]}
            if ok:
                times = [t for r in ok for t in r["epoch_s"]]
                row.update(s_per_epoch=statistics.median(times), min_s_per_epoch=min(times),
                           val_acc=statistics.median(r["val_acc"] for r in ok),
                           val_acc_range=[min(r["val_acc"] for r in ok), max(r["val_acc"] for r in ok)],
                           version=ok[0].get("version"), threads=ok[0]["threads"])
            rows.append(row)
    for row in rows:
        base = next((r for r in rows if r["contender"] == "netfit" and r["model"] == row["model"]
                     and r["status"] == "ok"), None)
        if base is not None and row["status"] == "ok":
            row["ratio"] = row["s_per_epoch"] / base["s_per_epoch"]
    return rows


def table(rows):
    lines = ["| contender | model | s/epoch | val accuracy (median; min-max over seeds) | ratio (time / netfit) "
             "| fastest epoch, s |", "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['contender']} | {r['model']} | {r['status']} | | | |")
            continue
        ratio = f"{r['ratio']:.2f}x" if "ratio" in r else "n/a"
        lo, hi = r["val_acc_range"]
        acc = f"{r['val_acc']:.4f}" + (f" ({lo:.4f}-{hi:.4f})" if hi > lo else "")
        lines.append(f"| {r['contender']} | {r['model']} | {r['s_per_epoch']:.3f} | {acc} | {ratio} "
                     f"| {r['min_s_per_epoch']:.3f} |")
    return "\n".join(lines)


def parent(args):
    models, contenders = args.models.split(","), args.contenders.split(",")
    runs = []
    for rep in range(args.repeats):
        order = contenders if rep % 2 == 0 else contenders[::-1]
        for model in models:
            for c in order:
                t0 = time.perf_counter()
                r = run_child(c, model, args, seed=rep)
                r["repeat"] = rep
                runs.append(r)
                figure = f"{statistics.median(r['epoch_s']):.3f} s/epoch" if r["status"] == "ok" else r["status"]
                print(f"[repeat {rep}] {c:<10} {model:<6} {figure}  ({time.perf_counter() - t0:.0f} s wall)",
                      file=sys.stderr, flush=True)
    write_report(runs, args)


def write_report(runs, args):
    """Print the markdown table and save it, with the settings and every run, under args.out."""
    import torch
    models, contenders = args.models.split(","), args.contenders.split(",")
    rows = summarise(runs, contenders, models)
    name, date = machine_name(), datetime.date.today().isoformat()
    n_train = QUICK_ROWS if args.quick else 50_000
    settings = {"machine": name, "netfit": netfit_source(), "cpu": cpu_model(), "date": date, "device": args.device,
                "torch": torch.__version__, "python": platform.python_version(), "n_train": n_train,
                "bs": BS, "lr": LR, "timed_epochs": args.epochs, "warmup_epochs": 1, "repeats": args.repeats,
                "threads_option": args.threads, "defaults": args.defaults}
    netfit_info = next((r["info"] for r in runs if r["contender"] == "netfit" and r["status"] == "ok"), None)
    if netfit_info:
        settings["netfit_info"] = netfit_info
    versions = ", ".join(f"{r['contender']} {r['version']}" for r in rows if r.get("version") and r["model"] == models[0])
    md = (f"# netfit fit benchmark: {name}, {date}\n\n"
          f"netfit {settings['netfit']}; CPU {settings['cpu']}; device {args.device}; torch {torch.__version__}"
          f"{'; ' + versions if versions else ''}; torch threads per run {rows[0].get('threads', '?')}.\n"
          f"Fashion-MNIST, {n_train} training rows, bs {BS}, Adam lr {LR}; seconds per training epoch are the "
          f"median of {args.epochs} timed epochs x {args.repeats} repeats after 1 warm-up epoch (validation "
          f"not timed); accuracy on the 10,000 validation rows after the last epoch. Wall-clock times: on a "
          f"shared machine other load adds noise."
          f"{f' QUICK: {QUICK_ROWS:,} training rows, a smoke test; its ratios can be far off.' if args.quick else ''}"
          f"{DEFAULTS_NOTE if args.defaults else ' Output and bookkeeping off in every contender.'}"
          f"{chr(10) + 'netfit History.info: ' + json.dumps(netfit_info) if netfit_info else ''}\n\n{table(rows)}\n")
    print("\n" + md)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{name}-{date}{'-quick' if args.quick else ''}{'-defaults' if args.defaults else ''}"  # not Path.with_suffix: the name holds dots
    (out / f"{stem}.md").write_text(md)
    (out / f"{stem}.json").write_text(json.dumps({"settings": settings, "rows": rows, "runs": runs}, indent=2))
    print(f"wrote {out / stem}.md and .json", file=sys.stderr)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=None, help="timed epochs per run, after 1 warm-up (default 4)")
    p.add_argument("--models", default="logreg,mlp", help=f"comma-separated, from {','.join(MODELS)}")
    p.add_argument("--contenders", default=",".join(CONTENDERS), help="comma-separated subset of the default")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--repeats", type=int, default=None, help="runs per contender and model (default 2)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads in each run (default 0: torch's own choice, one per core)")
    p.add_argument("--quick", action="store_true", help=f"{QUICK_ROWS} rows, 1 timed epoch, 1 repeat")
    p.add_argument("--timeout", type=float, default=1800, help="seconds allowed per run")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"), help="folder for the results")
    p.add_argument("--defaults", action="store_true",
                   help="each library with its default output and bookkeeping on (progress bars, loggers, checkpoints)")
    p.add_argument("--contender", choices=CONTENDERS, help=argparse.SUPPRESS)  # set by the parent
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)       # set by the parent: the repeat
    args = p.parse_args(argv)
    if args.epochs is None:
        args.epochs = 1 if args.quick else 4
    if args.repeats is None:
        args.repeats = 1 if args.quick else 2
    for name, given, known in (("models", args.models, MODELS), ("contenders", args.contenders, CONTENDERS)):
        bad = [g for g in given.split(",") if g not in known]
        if bad:
            p.error(f"unknown {name} {', '.join(bad)}; expected names from {', '.join(known)}")
    if args.epochs < 1 or args.repeats < 1:
        p.error(f"--epochs and --repeats must be at least 1; got {args.epochs} and {args.repeats}")
    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            p.error("--device cuda given but torch.cuda.is_available() is False")
    child(args) if args.contender else parent(args)


if __name__ == "__main__":
    main()
