"""`compare` and `netfit compare`: records, figures, files, CSV input and its errors, on small real data."""
import json

import numpy as np
import pytest
from matplotlib.figure import Figure

from netfit.cli import main
from netfit.compare import QUICK, Budget, compare, markdown_table
from netfit.data import DataError
from netfit.datasets import FASHION_CLASSES
from netfit.sources import read_table as read_csv
from netfit.splits import load_split

TINY = Budget(n_estimators=10, max_iter=20, epochs={"logreg": 1, "mlp": 1, "cnn": 1}, cnn_channels=(4, 8))
KEYS = {"model", "val_accuracy", "test_accuracy", "train_seconds", "predict_seconds_per_1k", "params",
        "size_bytes", "settings"}


@pytest.fixture(scope="module")
def small(fashion):
    """1,500 / 500 / 500 Fashion-MNIST rows."""
    (x, y), (xv, yv), (xt, yt) = fashion
    return (x[:1500], y[:1500]), (xv[:500], yv[:500]), (xt[:500], yt[:500])


def records(table):
    return table.to_dict("records") if hasattr(table, "to_dict") else table


def write_kaggle_csv(path, x, y, extra=None):
    """Kaggle digit-recognizer layout: label, pixel0..pixelN, integer pixels 0-255."""
    cols = ["label"] + [f"pixel{i}" for i in range(x.shape[1])] + ([extra[0]] if extra else [])
    lines = [",".join(cols)]
    for i, (row, label) in enumerate(zip(np.round(x * 255).astype(int), y)):
        cells = [str(label)] + [str(v) for v in row] + ([extra[1](i)] if extra else [])
        lines.append(",".join(cells))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_compare_all_models_on_the_same_split(small, tmp_path, capsys):
    trn, val, tst = small
    table, figs = compare(None, trn, val, tst, classes=FASHION_CLASSES, budget=TINY, out=tmp_path, seed=0)
    rec = records(table)
    assert [r["model"] for r in rec] == ["forest", "sklearn-logreg", "logreg", "mlp", "cnn"]
    for r in rec:
        assert set(r) == KEYS
        assert 0.5 < r["val_accuracy"] <= 1 and 0.5 < r["test_accuracy"] <= 1, r
        assert r["train_seconds"] > 0 and r["predict_seconds_per_1k"] > 0 and r["size_bytes"] > 0
    by = {r["model"]: r for r in rec}
    assert by["logreg"]["params"] == by["sklearn-logreg"]["params"] == 7850
    assert by["mlp"]["params"] == 89610
    assert by["forest"]["params"] > 10 and "10 trees" in by["forest"]["settings"]
    # a progress line per model and per net epoch, then the table
    out = capsys.readouterr().out
    assert "[1/5] forest: training 10 trees" in out and "[4/5] mlp: epoch 1/1" in out and "| model |" in out
    # figures: accuracy against time, a confusion matrix per model, the best model's top losses
    assert "accuracy_vs_time" in figs and all(f"confusion_{m}" in figs for m in by)
    assert all(isinstance(f, Figure) for f in figs.values())
    assert any(k.startswith("top_losses_") for k in figs)
    ticks = [t.get_text() for t in figs["confusion_mlp"].axes[0].get_yticklabels()]
    assert ticks == list(FASHION_CLASSES)  # class names, not digits
    # files
    saved = json.loads((tmp_path / "compare.json").read_text())
    assert [r["model"] for r in saved["records"]] == list(by) and saved["info"]["quick"] is False
    assert saved["info"]["rows"] == {"train": 1500, "valid": 500, "test": 500}
    assert set(saved["histories"]) == {"logreg", "mlp", "cnn"}
    md = (tmp_path / "compare.md").read_text()
    assert "| forest |" in md and "QUICK" not in md
    for name in figs:
        assert (tmp_path / f"{name}.png").stat().st_size > 0


def test_quick_says_so_and_uses_the_quick_budget(small, capsys):
    trn, val, _ = small
    table, _ = compare("logreg,forest", trn, val, quick=True, epochs=1, forest_kwargs={"n_estimators": 5})
    rec = records(table)
    assert [r["model"] for r in rec] == ["logreg", "forest"]
    assert "test_accuracy" not in rec[0]  # no test split given
    out = capsys.readouterr().out
    assert out.count("QUICK MODE") == 2 and "1 epoch logreg" in out and "5 trees" in out
    assert "500 of 500 valid" in out and QUICK.n_train > 1500


def test_string_and_noncontiguous_labels_become_classes(small):
    (x, y), _, _ = small
    names = np.array(["ant", "bee", "cow", "dog", "eel", "fox", "gnu", "hen", "ibis", "jay"])
    splits, classes, _ = load_split((x, names[y]), valid_frac=0.25)
    assert classes == sorted(names.tolist()) and len(splits["valid"][0]) == 375
    _, classes, _ = load_split((x, y * 3 + 7))
    assert classes == [str(v) for v in range(7, 35, 3)]
    table, figs = compare(["logreg"], (x, names[y]), budget=TINY, verbose=False)
    ticks = [t.get_text() for t in figs["confusion_logreg"].axes[0].get_xticklabels()]
    assert ticks == sorted(names.tolist()) and records(table)[0]["val_accuracy"] > 0.5


def test_csv_in_kaggle_layout_loads_and_splits(small, tmp_path):
    (x, y), _, _ = small
    path = write_kaggle_csv(tmp_path / "train.csv", x[:200], y[:200])
    xx, yy, cols = read_csv(path)
    assert xx.shape == (200, 784) and xx.dtype == np.float32 and cols[0] == "pixel0" and cols[-1] == "pixel783"
    np.testing.assert_array_equal(yy, y[:200])
    assert xx.max() == 255
    splits, classes, source = load_split(str(path), seed=0)
    assert len(splits["train"][0]) == 160 and len(splits["valid"][0]) == 40 and "test" not in splits
    assert source == str(path)


def test_csv_errors_name_the_column(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("label,pixel0,colour,pixel1,size\n1,0,red,3,L\n0,5,blue,0,\n")
    with pytest.raises(DataError, match=r"non-numeric columns 'colour' \(line 2: 'red'\); 'size'"):
        read_csv(bad)
    with pytest.raises(DataError, match="'colour'"):
        compare(["forest"], str(bad), verbose=False)
    nolabel = tmp_path / "nolabel.csv"
    nolabel.write_text("pixel0,pixel1\n1,2\n")
    with pytest.raises(DataError, match="no 'label' column"):
        read_csv(nolabel)
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("label,pixel0,pixel1\n1,2,3\n0,1\n")
    with pytest.raises(DataError, match="line 3 has 2 fields but the header has 3"):
        read_csv(ragged)
    for body, message in (("1,0.5,nan\n0,1,2\n", "column 'b' holds nan in data row 1"),
                          ("1,0.5,1e400\n0,1,2\n", "column 'b' holds inf in data row 1"),
                          ("a1,0.5,1\n,1,2\n", "the 'label' column is empty in data row 2")):
        missing = tmp_path / "missing.csv"
        missing.write_text("label,a,b\n" + body)
        with pytest.raises(DataError, match=message):  # before a forest trains on them
            read_csv(missing)
    named = tmp_path / "named.csv"
    named.write_text("label,a,b\ncat,1,2\ndog,3,4\ncat,5,6\n")
    x, y, _ = read_csv(named)
    assert y.tolist() == ["cat", "dog", "cat"] and x.tolist() == [[1, 2], [3, 4], [5, 6]]


def test_argument_errors(small):
    trn, val, _ = small
    with pytest.raises(ValueError, match="unknown model 'svm'"):
        compare(["svm"], trn, val, verbose=False)
    with pytest.raises(ValueError, match="cnn needs square images.*10 features"):
        compare(["cnn"], (trn[0][:, :10], trn[1]), verbose=False)
    with pytest.raises(ValueError, match="epochs must be an integer >= 1; got 0"):
        compare(["mlp"], trn, val, epochs=0, verbose=False)
    with pytest.raises(ValueError, match="epochs for mlp must be an integer >= 1; got 2.5"):
        compare(["mlp"], trn, val, epochs={"mlp": 2.5}, verbose=False)
    with pytest.raises(ValueError, match=r"epochs given for \['svm'\]"):
        compare(["mlp"], trn, val, epochs={"svm": 2}, verbose=False)
    with pytest.raises(DataError, match="neither a dataset"):
        compare(["mlp"], "fashion", verbose=False)
    with pytest.raises(DataError, match="valid has 10 features but train has 784"):
        compare(["mlp"], trn, (val[0][:, :10], val[1]), verbose=False)
    # without a square image size, the default model list leaves the cnn out
    table, _ = compare(None, (trn[0][:300, :10], trn[1][:300]), budget=TINY, verbose=False)
    assert "cnn" not in [r["model"] for r in records(table)]


def test_markdown_table_without_test_column():
    md = markdown_table([{"model": "mlp", "val_accuracy": 0.9, "train_seconds": 1.0, "predict_seconds_per_1k": 0.01,
                          "params": 10, "size_bytes": 2_500_000, "settings": "x"}])
    assert "test acc" not in md and "| mlp | 0.9000 | 1.0 | 0.0100 | 10 | 2.5 MB | x |" in md


def test_cli_compare_quick_on_a_csv(small, tmp_path, capsys):
    (x, y), _, _ = small
    path = write_kaggle_csv(tmp_path / "digits.csv", x[:600], y[:600])
    out = tmp_path / "run"
    rc = main(["compare", "--data", str(path), "--quick", "--models", "forest,logreg,cnn", "--n-estimators", "8",
               "--epochs", "1", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "QUICK MODE" in text and "[3/3] cnn: epoch 1/1" in text and "8 trees" in text
    saved = json.loads((out / "compare.json").read_text())
    assert saved["info"]["quick"] is True and saved["info"]["rows"] == {"train": 480, "valid": 120}
    assert [r["model"] for r in saved["records"]] == ["forest", "logreg", "cnn"]
    assert "QUICK MODE" in (out / "compare.md").read_text()
    for f in ("accuracy_vs_time.png", "confusion_forest.png", "confusion_cnn.png"):
        assert (out / f).stat().st_size > 0


def test_cli_compare_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("label,pixel0,shade\n1,0,dark\n")
    rc = main(["compare", "--data", str(bad), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err and "'shade'" in err
    rc = main(["compare", "--models", "forest,boost", "--out", str(tmp_path / "r")])
    assert rc == 1 and "unknown model 'boost'" in capsys.readouterr().err


def test_tabular_data_is_standardised_per_column_and_gets_no_cnn(tmp_path):
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    x, y = load_breast_cancer(return_X_y=True)  # 30 columns in their own units (areas ~1000, ratios ~0.1)
    x = x.astype(np.float32)
    table = records(compare(["sklearn-logreg"], (x, y), quick=True, verbose=False, seed=0).table)
    (xt, yt), (xv, yv) = load_split((x, y), None, None, seed=0)[0].values()
    scaler = StandardScaler().fit(xt)
    want = LogisticRegression(max_iter=QUICK.max_iter).fit(scaler.transform(xt), yt).score(scaler.transform(xv), yv)
    assert table[0]["val_accuracy"] == pytest.approx(want, abs=1e-9)  # what StandardScaler + sklearn gives
    assert "standardised per feature" in table[0]["settings"]
    iris_like = np.random.default_rng(0).random((200, 4), dtype=np.float32)  # 4 = 2x2: a square, not an image
    table = records(compare(None, (iris_like, np.arange(200) % 3), quick=True, verbose=False).table)
    assert "cnn" not in [r["model"] for r in table]


def test_mistakes_are_refused_before_any_training(small, tmp_path):
    x, y = small[0]
    with pytest.raises(ValueError, match="at least 1 tree"):
        compare(["logreg", "forest"], (x, y), quick=True, verbose=False, forest_kwargs={"n_estimators": 0})
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="cannot create the folder"):
        compare(["logreg"], (x, y), quick=True, verbose=False, out=tmp_path / "file" / "run")
    with pytest.raises(ValueError, match="seed .* >= 0"):
        compare(["logreg"], (x, y), quick=True, verbose=False, seed=-1)
    with pytest.raises(ValueError, match="1 class"):
        compare(["logreg"], (x, np.zeros(len(y), int)), quick=True, verbose=False)
    import torch
    if not torch.cuda.is_available():
        with pytest.raises(DataError, match="CUDA is not available"):
            compare(["forest", "logreg"], (x, y), quick=True, verbose=False, device="cuda")


def test_bool_labels_are_classes_0_and_1():
    x = np.random.default_rng(0).random((60, 4))
    splits, classes, _ = load_split((x, x[:, 0] > 0.5))
    assert classes == ["0", "1"] and set(splits["train"][1].tolist()) == {0, 1}
