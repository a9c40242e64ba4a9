"""`netfit train` end to end on a small real dataset folder, its outputs, help and errors."""
import json
import subprocess
import sys

import pytest

from netfit.cli import main
from netfit.export import load


def test_train_writes_run_folder(tmp_path, fashion, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--data", "fashion-mnist", "--model", "logreg", "--epochs", "1", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "trn_loss" in text and "test accuracy" in text
    m = json.loads((out / "metrics.json").read_text())
    assert m["val_accuracy"] > 0.8 and m["test_accuracy"] > 0.8
    assert len(m["history"]) == 1 and m["device"] and m["versions"]["torch"]
    for f in ("model.safetensors", "model.json", "predictions.png", "history.png"):
        assert (out / f).stat().st_size > 0
    # the export reloads and predicts raw pixels as well as the trained net did
    (_, _), (xv, yv), _ = fashion
    p = load(out)
    assert (p.predict(xv[:2000]) == yv[:2000]).mean() > 0.8


def test_help_names_every_option():
    out = subprocess.run([sys.executable, "-m", "netfit", "train", "--help"], capture_output=True, text=True).stdout
    for opt in ("--data", "--model", "--epochs", "--bs", "--lr", "--opt", "--out", "--seed"):
        assert opt in out


def test_errors_are_one_line(tmp_path, capsys):
    rc = main(["train", "--data-path", str(tmp_path / "missing"), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err and "does not exist" in err
    assert not (tmp_path / "r").exists()  # a run that failed before writing anything leaves no empty folder
    rc = main(["train", "--epochs", "0", "--out", str(tmp_path / "r")])
    assert rc == 1 and "--epochs" in capsys.readouterr().err
