"""fit, predict and checkpoints under `torchrun` with 2 processes on the CPU (gloo).

The worker script is tests/dist_scripts/train.py: tiny data (209 training rows, 61 validation rows,
so the ranks' shards are uneven and rank 1 pads its last step) and a 20-16-3 MLP. One launch serves the agreement, equivalence,
validation, predict and checkpoint tests; a second one kills rank 1 mid-epoch and lets torchrun
restart the group. Each launch costs mostly the start of three Python processes (~10-20 s here).

Tolerance of the 1-process vs 2-process comparison: 2 ranks with batch 8 and 1 process with batch 16
take the same rows at every step, and the update is the same formula, but the gradient is summed in
a different order (two half-batch means averaged by an all-reduce instead of one mean), so the
weights agree to float32 rounding accumulated over 42 Adam steps: `atol=1e-6, rtol=1e-5` (measured
differences up to 6e-8 on weights of size ~0.5).
"""
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from netfit import accuracy, fit, predict
from netfit.checkpoint import load_checkpoint

SCRIPT = Path(__file__).parent / "dist_scripts" / "train.py"
TOL = dict(atol=1e-6, rtol=1e-5)  # see the module docstring

_spec = importlib.util.spec_from_file_location("dist_train", SCRIPT)
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)


def torchrun(args, cwd, timeout=120, launcher=()):
    """Run `torchrun --standalone --nproc-per-node=2 [launcher] args`; kill the whole group on timeout."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", *launcher, *args]
    # torchrun >= 2.5 keeps one store across restarts and a restarted group can read the killed
    # attempt's gloo addresses (pytorch/pytorch#135712): a fresh store per attempt avoids that
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own process group: a hang is killed with its workers
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish in {timeout} s:\n{out[-4000:]}")
    assert proc.returncode == 0, f"torchrun exited with {proc.returncode}:\n{out[-4000:]}"
    return out


def load_ranks(folder):
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(2)]


def without_time(records):
    return [{k: v for k, v in r.items() if k != "time"} for r in records]


def assert_state_close(a, b, **tol):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], **tol, msg=lambda m: f"{k}: {m}")


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """One 2-process launch with --extras, and the single-process checkpoint it resumes from."""
    tmp = tmp_path_factory.mktemp("dist")
    single = make_single_checkpoint(tmp / "single.ckpt")
    shutil.copy(single, tmp / "from_single.ckpt")
    out = torchrun([str(SCRIPT), "--out", str(tmp), "--ckpt", str(tmp / "dist.ckpt"), "--extras",
                    "--resume-from", str(tmp / "from_single.ckpt")], cwd=tmp)
    return tmp, load_ranks(tmp), out


def make_single_checkpoint(path):
    """One epoch of a single process with batch 16 and a fixed seed, checkpointed."""
    net = worker.make_model()
    fit(net, worker.make_data(16), 1, worker.make_opt(net), nn.NLLLoss(), [accuracy], verbose=False,
        checkpoint=path, seed=1234)
    return path


def test_ranks_end_bitwise_equal(launched):
    _, (r0, r1), _ = launched
    assert (r0["world"], r0["rank"], r1["rank"]) == (2, 0, 1)
    assert r0["info"]["world_size"] == 2 and r0["info"]["seed"] == r1["info"]["seed"]
    for key in ("weights", "bn_weights", "resumed_weights", "acc_weights"):  # bn: BatchNorm buffers too
        assert r0[key].keys() == r1[key].keys()
        for name in r0[key]:
            assert torch.equal(r0[key][name], r1[key][name]), f"{key}.{name} differs between ranks"
    assert without_time(r0["history"]) == without_time(r1["history"])  # all-reduced: the same numbers


def test_two_ranks_of_batch_b_match_one_process_of_batch_2b(launched):
    _, (r0, _), _ = launched
    net = worker.make_model()
    h = fit(net, worker.make_data(16), 3, worker.make_opt(net), nn.NLLLoss(), [accuracy], verbose=False,
            seed=r0["info"]["seed"])  # the seed rank 0 broadcast: the same permutation every epoch
    assert r0["info"]["batches_per_epoch"] == h.info["batches_per_epoch"] == 14  # 105 rows / 8, 209 / 16
    assert_state_close(r0["weights"], net.state_dict(), **TOL)
    for d, s in zip(r0["history"], h.records):
        for k in ("trn_loss", "val_loss", "accuracy"):
            assert d[k] == pytest.approx(s[k], abs=1e-5), k


def test_gradient_accumulation_across_ranks_matches_one_process(launched):
    _, (r0, _), _ = launched  # groups of 3 batches, the last group of 2 and its last step padded on rank 1
    net = worker.make_model()
    fit(net, worker.make_data(16), 2, worker.make_opt(net), nn.NLLLoss(), verbose=False, accumulate=3, seed=77)
    assert_state_close(r0["acc_weights"], net.state_dict(), **TOL)


def test_validation_figures_equal_a_single_process_evaluation(launched):
    _, (r0, r1), _ = launched
    net = worker.make_model()
    net.load_state_dict(r0["weights"])
    val = worker.make_data(8).val_dl
    preds = torch.from_numpy(predict(net, val))
    loss, acc = nn.NLLLoss()(preds, val.y).item(), accuracy(preds, val.y).item()
    for r in (r0, r1):
        assert r["history"][-1]["val_loss"] == pytest.approx(loss, abs=1e-6)
        assert r["history"][-1]["accuracy"] == pytest.approx(acc, abs=1e-6)


def test_predict_gathers_rows_in_original_order(launched):
    _, (r0, r1), _ = launched
    net = worker.make_model()
    net.load_state_dict(r0["weights"])
    val = worker.make_data(8).val_dl
    expected = predict(net, val)
    for r in (r0, r1):
        assert r["preds"].shape == (worker.N_VALID, worker.CLASSES)
        np.testing.assert_allclose(r["preds"], expected, atol=1e-6)
        np.testing.assert_allclose(r["preds_array"], expected, atol=1e-6)
        preds, targs = r["preds_targs"]
        np.testing.assert_array_equal(targs, val.y.numpy())
        np.testing.assert_allclose(preds, expected, atol=1e-6)


def test_every_rank_stops_when_one_cancels_and_reads_the_finished_checkpoint(launched):
    _, ranks, _ = launched
    assert [r["cancelled_epochs"] for r in ranks] == [1, 1]  # rank 1 used to wait in the next epoch's all-reduce
    assert [r["ckpt_epoch_after_fit"] for r in ranks] == [3, 3]  # no rank reads it before rank 0 wrote it


def test_lr_find_sweeps_once_for_all_ranks(launched):
    _, ranks, _ = launched
    a, b = ranks[0]["lr_find"], ranks[1]["lr_find"]
    np.testing.assert_array_equal(a["losses"], b["losses"])  # the mean over ranks: one sweep, one suggestion
    assert a["suggestion"] == b["suggestion"]
    assert 3 < len(a["losses"]) <= 40


def test_predict_of_fewer_rows_than_ranks(launched):
    _, ranks, _ = launched
    assert ranks[0]["preds_one_row"].shape == (1, 3)
    np.testing.assert_array_equal(ranks[0]["preds_one_row"], ranks[1]["preds_one_row"])
    np.testing.assert_allclose(ranks[0]["preds_one_row"], ranks[0]["preds"][:1], atol=1e-6)  # batch 1 vs 31: rounding


def test_checkpoints_cross_between_one_and_two_processes(launched):
    tmp, (r0, _), _ = launched
    # two processes -> one: the plain model's keys (no DDP `module.` prefix), and training goes on
    state = load_checkpoint(tmp / "dist.ckpt")
    assert state["epoch"] == 3 and state["seed"] == r0["info"]["seed"]
    assert_state_close(state["model"], r0["weights"], atol=0, rtol=0)
    net = worker.make_model()
    h = fit(net, worker.make_data(16), 4, worker.make_opt(net), nn.NLLLoss(), [accuracy], verbose=False,
            checkpoint=tmp / "dist.ckpt", resume=True)
    assert h.info["resumed_from"]["epoch"] == 3 and len(h) == 4
    assert without_time(h.records[:3]) == without_time(r0["history"])
    # one process -> two: the launch resumed the single process's epoch-1 checkpoint (seed 1234) with
    # batch 8 per rank; a single process resuming the same checkpoint with batch 16 ends alike
    shutil.copy(tmp / "single.ckpt", tmp / "single_again.ckpt")
    net = worker.make_model()
    h = fit(net, worker.make_data(16), 3, worker.make_opt(net), nn.NLLLoss(), [accuracy], verbose=False,
            checkpoint=tmp / "single_again.ckpt", resume=True)
    assert r0["resumed_info"]["resumed_from"]["epoch"] == 1 and r0["resumed_info"]["seed"] == 1234
    assert_state_close(r0["resumed_weights"], net.state_dict(), **TOL)
    assert [r["val_loss"] for r in r0["resumed_history"]] == pytest.approx(h["val_loss"], abs=1e-5)


def test_killed_rank_is_restarted_and_training_resumes(launched, tmp_path):
    _, (uninterrupted, _), _ = launched
    marker = tmp_path / "killed"
    torchrun([str(SCRIPT), "--out", str(tmp_path), "--ckpt", str(tmp_path / "ckpt"), "--checkpoint-every", "4",
              "--kill-at-step", "18", "--marker", str(marker)], cwd=tmp_path, launcher=["--max-restarts=1"])
    assert marker.exists()  # rank 1 did die once
    r0, r1 = load_ranks(tmp_path)
    resumed = r0["info"]["resumed_from"]
    assert resumed == r1["info"]["resumed_from"] and resumed["step"] == 16 and resumed["batch"] == 2  # mid-epoch 1
    assert len(r0["history"]) == 3
    for name in r0["weights"]:
        assert torch.equal(r0["weights"][name], r1["weights"][name])
        # resuming is exact: the same weights as the launch that was never interrupted
        assert torch.equal(r0["weights"][name], uninterrupted["weights"][name]), name


@pytest.mark.slow
def test_cli_trains_under_torchrun(tmp_path):
    if not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("dataset-fashion-mnist is not installed")
    out = torchrun(["-m", "netfit", "train", "--data", "fashion-mnist", "--model", "logreg", "--epochs", "1",
                    "--out", str(tmp_path / "run")], cwd=tmp_path, timeout=300)
    assert out.count("validation accuracy") == 1 and out.count("trn_loss") == 1  # rank 0 alone prints
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["fit_info"]["world_size"] == 2 and m["val_accuracy"] > 0.8 and m["test_accuracy"] > 0.8
    written = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"history.png", "metrics.json", "model.json", "model.safetensors", "predictions.png"} <= written
    assert not any(".tmp." in name for name in written)  # no half-written files from other ranks


def test_mistakes_under_torchrun_end_in_one_clear_error_on_every_rank(tmp_path):
    # different data per rank (an unseeded split), a 1-row BatchNorm batch on a rank, and a mid-epoch
    # checkpoint resumed under another number of processes: each rank raises the same error, no hang
    from netfit import Callback
    ckpt = tmp_path / "mid.ckpt"

    class StopAfter4(Callback):
        def after_batch(self, run):
            if run.batch == 4:
                raise KeyboardInterrupt
    net = worker.make_model()
    with pytest.raises(KeyboardInterrupt):  # one process, batch 8: the checkpoint of step 3 (24 rows in)
        fit(net, worker.make_data(8), 1, worker.make_opt(net), nn.NLLLoss(), verbose=False, checkpoint=ckpt,
            checkpoint_every=3, callbacks=[StopAfter4()], seed=5)
    shutil.copy(ckpt, tmp_path / "mid_copy.ckpt")
    torchrun([str(SCRIPT.parent / "mistakes.py"), "--out", str(tmp_path), "--ckpt", str(ckpt)], cwd=tmp_path)
    r0, r1 = (json.loads((tmp_path / f"mistakes{r}.json").read_text()) for r in range(2))
    assert r0["different_data"] == r1["different_data"] and r0["different_data"]["error"] == "FitError"
    assert "given different data" in r0["different_data"]["message"], r0
    assert "training inputs (a checksum" in r0["different_data"]["message"]
    assert r0["batchnorm_one_row"]["error"] == r1["batchnorm_one_row"]["error"] == "DataError"
    assert "the last batch of rank 0, 1 holds 1 row" in r0["batchnorm_one_row"]["message"], r0
    assert r0["resume_bs8"]["error"] == "FitError" and "no whole number of batches of 8 on 2 processes" in r0["resume_bs8"]["message"]
    assert r0["resume_bs4"]["ok"]["resumed_from"]["batch"] == 3 and r0["resume_bs4"]["ok"]["first_batch"] == 3
    assert r0["nan_inputs_alike"]["error"] == r1["nan_inputs_alike"]["error"] == "DataError", r0["nan_inputs_alike"]
    assert r0["stand_in_batchnorm"]["error"] == "DataError" and "rank 1 has a batch fewer" in r0["stand_in_batchnorm"][
        "message"], r0["stand_in_batchnorm"]
    assert r0["validation_on_one_rank"] == r1["validation_on_one_rank"], (r0, r1)
    assert "batches for a loader without arrays): rank 0 61, rank 1 -1" in r0["validation_on_one_rank"]["message"], r0
