"""A script that calls `fit` unchanged, for tests/test_distributed.py to run under torchrun (or alone).

    torchrun --standalone --nproc-per-node=2 tests/dist_scripts/train.py --out OUT --ckpt OUT/ckpt

Each rank writes `OUT/rank{r}.pt`: its weights, optimizer state, History, predictions and the
world it ran in. `--kill-at-step N --marker F` makes rank 1 SIGKILL itself after optimizer step N
the first time (when F does not exist yet), to test torchrun's restarts. `--extras` adds a BatchNorm
model, predictions of a bare array and of one row, `--resume-from CKPT`: a resumed run from a checkpoint
that a single process wrote, a run with `accumulate=3`, and one that rank 0 alone cancels. The data and models are tiny so that a launch costs little more than
starting Python twice.
"""
import argparse
import os
import signal

import numpy as np
import torch
from torch import nn, optim

# 209 = 2 * 13 * 8 + 1: with batch 8, rank 0 takes 14 batches (the last of 1 row) and rank 1 13, so
# rank 1 takes a weight-0 stand-in batch at the end of every epoch; 61 validation rows split 31 / 30
N_TRAIN, N_VALID, FEATURES, CLASSES = 209, 61, 20, 3


def make_data(bs):
    """Three classes from a random linear teacher; x float32 (N, 20), y int64 (N,)."""
    from netfit import ImageClassifierData
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N_TRAIN + N_VALID, FEATURES)).astype(np.float32)
    y = (x @ rng.normal(size=(FEATURES, CLASSES))).argmax(1).astype(np.int64)
    return ImageClassifierData.from_arrays(".", (x[:N_TRAIN], y[:N_TRAIN]), (x[N_TRAIN:], y[N_TRAIN:]), bs=bs,
                                           device="cpu")


def make_model(batchnorm=False):
    """An MLP 20-16-3 with log-softmax output, the same initial weights every call."""
    torch.manual_seed(0)
    norm = [nn.BatchNorm1d(16)] if batchnorm else []
    return nn.Sequential(nn.Linear(FEATURES, 16), *norm, nn.ReLU(), nn.Linear(16, CLASSES), nn.LogSoftmax(dim=1))


def make_opt(net):
    return optim.Adam(net.parameters(), lr=0.01)


class KillRank1:
    """SIGKILL rank 1 right after optimizer step `step`, only if `marker` does not exist yet."""

    def __init__(self, step, marker):
        self.at, self.marker = step, marker

    def after_batch(self, run):
        if run.rank == 1 and run.step == self.at and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)


class CancelOnRank0:
    """CancelFit after the first epoch on rank 0 only: every rank must stop there (not wait for rank 0)."""

    def after_epoch(self, run):
        from netfit import CancelFit
        if run.rank == 0:
            raise CancelFit()


def main():
    from netfit import accuracy, distributed, fit, predict, predict_with_targs
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--bs", type=int, default=8)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--kill-at-step", type=int, default=None)
    p.add_argument("--marker", default=None)
    p.add_argument("--extras", action="store_true")
    p.add_argument("--resume-from", default=None)
    args = p.parse_args()

    md = make_data(args.bs)
    net = make_model()
    callbacks = [KillRank1(args.kill_at_step, args.marker)] if args.kill_at_step else []
    h = fit(net, md, args.epochs, make_opt(net), nn.NLLLoss(), [accuracy], callbacks, verbose=False,
            checkpoint=args.ckpt, checkpoint_every=args.checkpoint_every, resume=True)
    r = distributed.rank()
    from netfit.checkpoint import load_checkpoint
    result = {"world": distributed.world(), "rank": r, "weights": net.state_dict(), "history": h.records,
              "info": h.info, "ckpt_epoch_after_fit": load_checkpoint(args.ckpt)["epoch"]}  # read at once, any rank
    if args.extras:
        result["preds"] = predict(net, md.val_dl)  # gathered from both ranks, in validation order
        result["preds_targs"] = predict_with_targs(net, md.val_dl)
        result["preds_array"] = predict(net, md.val_dl.x.numpy())
        bn = make_model(batchnorm=True)  # batch 6: last batches of 3 and 2 rows (BatchNorm needs 2 or more)
        fit(bn, make_data(6), 2, make_opt(bn), nn.NLLLoss(), verbose=False)
        result["bn_weights"] = bn.state_dict()
        acc = make_model()
        fit(acc, md, 2, make_opt(acc), nn.NLLLoss(), verbose=False, accumulate=3, seed=77)
        result["acc_weights"] = acc.state_dict()
        resumed = make_model()
        hr = fit(resumed, md, args.epochs, make_opt(resumed), nn.NLLLoss(), [accuracy], verbose=False,
                 checkpoint=args.resume_from, resume=True)
        result["resumed_weights"], result["resumed_history"] = resumed.state_dict(), hr.records
        result["resumed_info"] = hr.info
        cancel = make_model()
        hc = fit(cancel, md, 3, make_opt(cancel), nn.NLLLoss(), callbacks=[CancelOnRank0()], verbose=False)
        result["cancelled_epochs"] = len(hc.records)
        result["preds_one_row"] = predict(net, md.val_dl.x[:1].numpy())  # rank 1's share is empty
        from netfit import lr_find
        sweep = lr_find(make_model(), md, nn.NLLLoss(), num_it=40, end_lr=100)
        result["lr_find"] = {"losses": sweep.losses, "suggestion": sweep.suggestion}
    torch.save(result, os.path.join(args.out, f"rank{r}.pt"))


if __name__ == "__main__":
    main()
