"""Time to accuracy: train netfit's small CNN on Fashion-MNIST and report training seconds and test accuracy.

    python bench/time_to_accuracy.py                       # CPU: channels 24,48, 3 epochs, bs 128
    python bench/time_to_accuracy.py --device cuda --amp   # on a GPU (not run here: no GPU)

The recipe: data normalised with the training statistics and held as one tensor on the device,
`netfit.models.cnn` (two conv-BN-ReLU-pool blocks), AdamW with a one-cycle schedule, bs 128.
Issue 8's targets: test accuracy >= 0.91 within 60 s on the 2-core CPU, >= 0.93 within 3 s on an H100.
"""
import argparse
import json
import platform
import time

import torch
from torch import nn, optim

from netfit import (Augment, ImageClassifierData, accuracy, datasets, fit, one_cycle, predict, predict_tta,
                    seed_everything)
from netfit.models import cnn


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--channels", default="24,48", help="channels of the two conv blocks (default 24,48)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--bs", type=int, default=128)
    p.add_argument("--lr", type=float, default=4e-3, help="one-cycle peak rate")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true", help="bf16/fp16 autocast")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoothing", type=float, default=0.0, help="label smoothing (CrossEntropyLoss on log-probs)")
    p.add_argument("--tta", type=int, default=0, help="test-time augmentation: this many flipped/shifted copies averaged (the model is trained without them, so expect a loss; kept to show it)")
    args = p.parse_args()
    (x, y), (xv, yv), (xt, yt) = datasets.fashion_mnist()
    mean, std = x.mean(), x.std()
    for a in (x, xv, xt):
        a -= mean
        a /= std
    md = ImageClassifierData.from_arrays(".", (x, y), (xv, yv), bs=args.bs, test=xt, device=args.device)
    seed_everything(args.seed)
    net = cnn(channels=tuple(int(c) for c in args.channels.split(","))).to(args.device)
    opt = optim.AdamW(net.parameters(), args.lr, weight_decay=1e-4)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    # CrossEntropyLoss on log-probabilities equals NLLLoss (log_softmax of log-probs changes nothing)
    # and adds label smoothing
    crit = nn.CrossEntropyLoss(label_smoothing=args.smoothing) if args.smoothing else nn.NLLLoss()
    h = fit(net, md, args.epochs, opt, crit, [accuracy], schedule=one_cycle(args.lr), amp=args.amp, verbose=False)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start  # includes the per-epoch validation passes
    result = {"train_seconds": round(seconds, 2), "val_accuracy": round(h[-1]["accuracy"], 4),
              "test_accuracy": round(accuracy(predict(net, md.test_dl), yt), 4), **vars(args),
              "test_accuracy_tta": (round(accuracy(predict_tta(net, md.test_dl, n=args.tta,
                                                               augment=Augment(pad=1, rotate=0, flip=True)), yt), 4)
                                    if args.tta else None),
              "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
              "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
              "torch": torch.__version__}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
