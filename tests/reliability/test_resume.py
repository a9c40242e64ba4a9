"""Kill and resume: a training process killed by SIGKILL at a random step, then resumed, ends bit-identical.

    python -m pytest -q tests/reliability/test_resume.py              # 3 kills, and `netfit train --resume`
    python -m pytest -q tests/reliability/test_resume.py --runslow    # 24 trials, half of them killed twice

A trial starts `_reliability_jobs.train` in a process of its own (an MLP with dropout, Adam, 3 epochs
of 32 batches = 96 optimizer steps, a checkpoint every 5 steps and after each epoch, deterministic
algorithms, one thread), waits until it has taken a random number of steps, waits a random 0-3 ms
more and kills it with SIGKILL, wherever it is (in a step, in validation, inside a checkpoint save).
A fresh process then runs the same script with `resume=True` to the end. Its final weights must
equal those of a run never interrupted bit for bit, and its History the same figures; it must have
lost no more than the steps since the last checkpoint.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import _reliability_jobs as J
from _reliability_jobs import kill_when, run_job
from netfit.checkpoint import CheckpointError, load_checkpoint

TOTAL_STEPS = J.EPOCHS * -(-J.N_TRAIN // J.BS)  # 3 epochs of 32 batches


@pytest.fixture(scope="module")
def reference(jobs, tmp_path_factory):
    """The weights and History of the same training, never interrupted."""
    folder = tmp_path_factory.mktemp("reference")
    counter = jobs.RawValue("q", 0)
    assert run_job(jobs, J.train, str(folder), counter, False) == 0
    assert counter.value == TOTAL_STEPS
    return torch.load(folder / "result.pt", weights_only=True)


def kill_and_resume(jobs, folder, rng, kills=1):
    """Kill training `kills` times at random steps, resume it to the end; a dict describing what happened."""
    killed_at, inside_save, resumed_steps = [], 0, []
    for k in range(kills):
        counter = jobs.RawValue("q", 0)
        p = jobs.Process(target=J.train, args=(str(folder), counter, k > 0))
        p.start()
        start = resumed_steps[-1] if resumed_steps else 0
        target = int(rng.integers(start + 1, TOTAL_STEPS - 8))
        assert kill_when(p, lambda: counter.value >= target, delay=rng.uniform(0, 0.003)), \
            f"training ended before the kill at step {target}"
        killed_at.append(counter.value)
        inside_save += any(folder.glob("ckpt.tmp.*"))  # a kill inside a save leaves its temporary file
        try:
            resumed_steps.append(load_checkpoint(folder / "ckpt")["step"])
        except CheckpointError:  # killed before the first checkpoint: the resumed run starts afresh
            resumed_steps.append(0)
        for tmp in folder.glob("ckpt.tmp.*"):
            tmp.unlink()
    assert run_job(jobs, J.train, str(folder), jobs.RawValue("q", 0), True) == 0
    result = torch.load(folder / "result.pt", weights_only=True)
    lost = [max(0, at - step) for at, step in zip(killed_at, resumed_steps)]
    return {"result": result, "killed_at": killed_at, "lost": lost, "inside_save": inside_save}


def identical(result, reference):
    return (result["weights"].keys() == reference["weights"].keys()
            and all(torch.equal(result["weights"][k], reference["weights"][k]) for k in reference["weights"])
            and result["history"] == reference["history"])


def run_trials(jobs, tmp_path, reference, n, seed, double_every=0):
    rng = np.random.default_rng(seed)
    trials = []
    for i in range(n):
        kills = 2 if double_every and i % double_every == 0 else 1
        t = kill_and_resume(jobs, tmp_path / f"trial{i}", rng, kills)
        t["same"] = identical(t["result"], reference)
        trials.append(t)
    summary = [f"killed at step {t['killed_at']}, lost {t['lost']}, same={t['same']}" for t in trials]
    assert all(t["same"] for t in trials), summary
    assert all(lost <= J.EVERY for t in trials for lost in t["lost"]), summary  # at most the steps since a save
    return trials


def note(trials):
    kills = sum(len(t["killed_at"]) for t in trials)
    steps = sorted(s for t in trials for s in t["killed_at"])
    return (f"{kills} SIGKILLs at steps {steps[0]}..{steps[-1]} of {TOTAL_STEPS}, "
            f"{sum(t['inside_save'] for t in trials)} inside a checkpoint save, "
            f"at most {max(l for t in trials for l in t['lost'])} steps lost")


def test_kill_and_resume_is_bit_identical(jobs, tmp_path, reference, figure):
    trials = run_trials(jobs, tmp_path, reference, n=3, seed=1)
    figure("kill-and-resume runs bit-identical (normal mode)", sum(t["same"] for t in trials), len(trials),
           note(trials))


@pytest.mark.slow
def test_kill_and_resume_long(jobs, tmp_path, reference, figure):
    trials = run_trials(jobs, tmp_path, reference, n=24, seed=2, double_every=2)
    figure("kill-and-resume runs bit-identical (long mode)", sum(t["same"] for t in trials), len(trials),
           note(trials))


# ---------------------------------------------------------------- the CLI: netfit train --resume

def cli_args(data, out, *extra):
    return ["train", "--data", "mnist", "--data-path", str(data), "--model", "mlp", "--epochs", "3", "--bs", "16",
            "--checkpoint-every", "4", "--seed", "3", "--quiet", "--out", str(out), *extra]


def netfit_process(args):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # as the job processes: one thread
    return subprocess.Popen([sys.executable, "-m", "netfit", *args], env=env, stderr=subprocess.PIPE, text=True)


def test_cli_train_resume_after_sigkill(jobs, tmp_path, figure, long_mode):
    """`netfit train` killed by SIGKILL mid-training, then `netfit train --resume` (in the long mode
    `python -m netfit train --resume` in a new interpreter): the same model as a run never interrupted."""
    from safetensors.torch import load_file
    data = J.tiny_pickle(tmp_path / "tiny.pkl.gz")
    assert run_job(jobs, J.cli, cli_args(data, tmp_path / "whole")) == 0  # 3 epochs of 38 batches: 114 steps

    out = tmp_path / "killed"
    p = jobs.Process(target=J.cli, args=(cli_args(data, out),))
    p.start()
    delay = float(np.random.default_rng(0).uniform(0.01, 0.05))
    assert kill_when(p, lambda: (out / "ckpt").exists(), delay), "netfit train ended before the kill"
    step = load_checkpoint(out / "ckpt")["step"]
    assert 0 < step < 114, f"the kill was meant to land mid-training; the checkpoint is at step {step}"
    assert not (out / "model.safetensors").exists()

    if long_mode:  # in a new interpreter, as typed at a shell (seconds more)
        resumed = netfit_process(cli_args(data, out, "--resume"))
        _, err = resumed.communicate(timeout=300)
        assert resumed.returncode == 0, err
    else:
        assert run_job(jobs, J.cli, cli_args(data, out, "--resume")) == 0
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(out / "model.safetensors")
    same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "whole", out))
    strip = lambda h: [{k: v for k, v in r.items() if k != "time"} for r in h]
    assert same and strip(ma["history"]) == strip(mb["history"])
    assert mb["fit_info"]["resumed_from"]["step"] == step
    figure("netfit train killed by SIGKILL, then --resume: model bit-identical", int(same), 1,
           f"killed after the checkpoint of step {step} of 114")
