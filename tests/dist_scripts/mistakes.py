"""Mistakes under torchrun that must end in the same clear error on every rank, not a hang or a silent
wrong result; for tests/test_distributed.py (run with 2 processes).

    torchrun --standalone --nproc-per-node=2 tests/dist_scripts/mistakes.py --out OUT --ckpt CKPT

Each rank writes `OUT/mistakes{r}.json`: for each case, the error's type and message (or "ok" and what
the run did). `CKPT` is a mid-epoch checkpoint a single process wrote with batch 8 after 3 batches.
"""
import argparse
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
from torch import nn

from netfit import ImageClassifierData, fit

_spec = importlib.util.spec_from_file_location("dist_train", Path(__file__).with_name("train.py"))  # its data, models
_train = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_train)
make_data, make_model, make_opt = _train.make_data, _train.make_model, _train.make_opt


def outcome(run):
    try:
        return {"ok": run()}
    except Exception as e:  # the case's error, as this rank saw it
        return {"error": type(e).__name__, "message": str(e)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--ckpt", required=True)
    args = p.parse_args()
    rank = int(os.environ.get("RANK", "0"))
    results = {}

    def different_split():  # an unseeded random split: each rank draws its own
        rng = np.random.default_rng(rank)
        x = rng.normal(size=(100, 20)).astype(np.float32)
        y = rng.integers(0, 3, 100)
        md = ImageClassifierData.from_arrays(".", (x[:80], y[:80]), (x[80:], y[80:]), bs=8, device="cpu")
        net = make_model()
        fit(net, md, 1, make_opt(net), nn.NLLLoss(), verbose=False)
    results["different_data"] = outcome(different_split)

    def one_row_batchnorm():  # 130 rows: 65 a rank, batches of 64 and 1
        rng = np.random.default_rng(0)
        x = rng.normal(size=(150, 20)).astype(np.float32)
        y = rng.integers(0, 3, 150)
        md = ImageClassifierData.from_arrays(".", (x[:130], y[:130]), (x[130:], y[130:]), bs=64, device="cpu")
        net = make_model(batchnorm=True)
        fit(net, md, 1, make_opt(net), nn.NLLLoss(), verbose=False)
    results["batchnorm_one_row"] = outcome(one_row_batchnorm)

    def nan_inputs_alike():  # the same data with a NaN on every rank: the data check's error, not "different"
        rng = np.random.default_rng(0)
        x = rng.normal(size=(100, 20)).astype(np.float32)
        x[3, 4] = np.nan
        y = rng.integers(0, 3, 100)
        md = ImageClassifierData.from_arrays(".", (x[:80], y[:80]), (x[80:], y[80:]), bs=8, device="cpu")
        net = make_model()
        fit(net, md, 1, make_opt(net), nn.NLLLoss(), verbose=False)
    results["nan_inputs_alike"] = outcome(nan_inputs_alike)

    def stand_in_batchnorm():  # 129 rows, drop_last batches of 13: rank 0 takes 5, rank 1 4 and a stand-in
        from netfit import ArrayLoader
        rng = np.random.default_rng(0)
        x = rng.normal(size=(129, 20)).astype(np.float32)
        y = rng.integers(0, 3, 129)
        dl = ArrayLoader(x, y, bs=13, shuffle=True, drop_last=True)
        net = make_model(batchnorm=True)
        fit(net, (dl, None), 1, make_opt(net), nn.NLLLoss(), verbose=False)
    results["stand_in_batchnorm"] = outcome(stand_in_batchnorm)

    def validation_on_one_rank():  # rank 1 forgot its validation set: a FitError, not gloo's size mismatch
        md = make_data(8)
        net = make_model()
        fit(net, md if rank == 0 else (md.trn_dl, None), 1, make_opt(net), nn.NLLLoss(), verbose=False)
    results["validation_on_one_rank"] = outcome(validation_on_one_rank)

    def resume(bs):  # 3 batches of 8 in one process = 24 rows: 24 / (bs * 2) batches here
        def run():
            first = []

            class First:
                def before_batch(self, run):
                    first.append(run.batch)
            net = make_model()
            h = fit(net, make_data(bs), 1, make_opt(net), nn.NLLLoss(), verbose=False, checkpoint=args.ckpt,
                    resume=True, callbacks=[First()])
            return {"resumed_from": h.info["resumed_from"], "first_batch": first[0]}
        return run
    results["resume_bs8"] = outcome(resume(8))    # 24 rows are 1.5 steps of 2 x 8: refused
    results["resume_bs4"] = outcome(resume(4))    # 24 rows are 3 steps of 2 x 4
    with open(os.path.join(args.out, f"mistakes{rank}.json"), "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
