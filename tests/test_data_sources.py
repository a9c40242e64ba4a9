"""ImageClassifierData.from_csv (Kaggle digit-recognizer and generic layouts) and from_folder (Pillow)."""
import numpy as np
import pytest
import torch
from PIL import Image

from netfit import DataError, ImageClassifierData, accuracy, fit
from netfit.data import ArrayLoader
from netfit.models import logreg


@pytest.fixture(scope="module")
def digits(mnist_digits):
    (x, y), _ = mnist_digits
    return np.round(x[:600] * 255).astype(np.uint8), y[:600]  # the 8-bit pixels the files hold


def write_csv(path, header, rows):
    path.write_text(",".join(header) + "\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")


def test_from_csv_kaggle_digit_recognizer_layout(tmp_path, digits):
    x, y = digits
    pixels = [f"pixel{i}" for i in range(784)]
    write_csv(tmp_path / "train.csv", ["label"] + pixels, [[l, *r] for l, r in zip(y[:500], x[:500])])
    write_csv(tmp_path / "test.csv", pixels, x[500:])
    md = ImageClassifierData.from_csv(tmp_path, test_csv="test.csv", bs=50, valid_pct=0.2, seed=1, device="cpu")
    assert isinstance(md.trn_dl, ArrayLoader) and isinstance(md.val_dl, ArrayLoader)
    assert md.trn_dl.x.shape == (400, 784) and md.val_dl.x.shape == (100, 784) and md.test_dl.x.shape == (100, 784)
    assert md.c == 10 and md.classes == list(range(10))
    # every row arrives whole, scaled to [0, 1], with its own label
    rows = np.concatenate([md.trn_dl.x.numpy(), md.val_dl.x.numpy()])
    labels = np.concatenate([md.trn_y, md.val_y])
    order = np.lexsort(rows.T[::-1])
    expect = x[:500].astype(np.float32) / 255
    eorder = np.lexsort(expect.T[::-1])
    np.testing.assert_allclose(rows[order], expect[eorder], atol=1e-7)
    assert np.array_equal(labels[order], y[:500][eorder])
    np.testing.assert_allclose(md.test_dl.x.numpy(), x[500:] / 255, atol=1e-7)
    # the split is random but fixed by the seed
    again = ImageClassifierData.from_csv(tmp_path, bs=50, valid_pct=0.2, seed=1, device="cpu")
    assert np.array_equal(again.val_y, md.val_y)
    torch.manual_seed(0)  # unseeded, the weights and order depended on what ran before it in the process
    h = fit(logreg(), md, 2, metrics=[accuracy], verbose=False, seed=0)
    assert h[-1]["accuracy"] > 0.6


def test_from_csv_generic_label_column_and_names(tmp_path):
    rng = np.random.default_rng(0)
    rows = [[f"{v:.3f}" for v in rng.random(3)] + [["cat", "dog"][i % 2]] for i in range(30)]
    write_csv(tmp_path / "pets.csv", ["a", "b", "c", "species"], rows)
    md = ImageClassifierData.from_csv(tmp_path, "pets.csv", label="species", pixel_scale=1, valid_pct=0.1,
                                      device="cpu")
    assert md.classes == ["cat", "dog"] and md.trn_dl.x.shape == (27, 3)
    assert float(md.trn_dl.x.max()) < 1.0  # pixel_scale=1 keeps values as they are


def test_from_csv_refuses_non_numeric_columns_by_name(tmp_path):
    write_csv(tmp_path / "bad.csv", ["label", "pixel0", "note", "pixel1"], [[1, 0, "x", 3], [2, 5, "ok", 9]])
    with pytest.raises(DataError, match="'note' \\(line 2: 'x'\\)") as e:
        ImageClassifierData.from_csv(tmp_path, "bad.csv", device="cpu")
    assert "pixel0" not in str(e.value)
    write_csv(tmp_path / "nolabel.csv", ["pixel0", "pixel1"], [[1, 2]])
    with pytest.raises(DataError, match="no 'label' column"):
        ImageClassifierData.from_csv(tmp_path, "nolabel.csv", device="cpu")
    with pytest.raises(DataError, match="does not exist"):
        ImageClassifierData.from_csv(tmp_path, "missing.csv", device="cpu")


def save_digits(folder, x, y, classes=(0, 1, 2), per_class=8, size=28, fmt="png"):
    for c in classes:
        (folder / f"digit{c}").mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(x[y == c][:per_class]):
            Image.fromarray(img.reshape(28, 28)).resize((size, size)).save(folder / f"digit{c}" / f"{i}.{fmt}")


def test_from_folder_class_subfolders_with_valid_pct(tmp_path, digits):
    x, y = digits
    save_digits(tmp_path, x, y)
    md = ImageClassifierData.from_folder(tmp_path, size=28, valid_pct=0.25, bs=8, device="cpu")
    assert md.classes == ["digit0", "digit1", "digit2"]
    assert md.trn_dl.x.shape == (18, 784) and md.val_dl.x.shape == (6, 784)
    assert isinstance(md.trn_dl, ArrayLoader)
    # PNG is lossless: the pixels read back are the ones written, in [0, 1]
    rows = np.concatenate([md.trn_dl.x.numpy(), md.val_dl.x.numpy()]) * 255
    written = np.concatenate([x[y == c][:8] for c in (0, 1, 2)]).astype(np.float32)
    assert sorted(map(bytes, np.round(rows).astype(np.uint8))) == sorted(map(bytes, written.astype(np.uint8)))


def test_from_folder_train_valid_test_layout_resize_and_rgb(tmp_path, digits):
    x, y = digits
    save_digits(tmp_path / "train", x[:300], y[:300], size=40, fmt="jpg")
    save_digits(tmp_path / "valid", x[300:], y[300:], per_class=3, size=40, fmt="png")
    (tmp_path / "test").mkdir()
    for i in range(5):
        Image.fromarray(x[590 + i].reshape(28, 28)).save(tmp_path / "test" / f"{i}.jpeg")
    md = ImageClassifierData.from_folder(tmp_path, size=28, test="test", bs=8, device="cpu")
    assert md.trn_dl.x.shape == (24, 784) and md.val_dl.x.shape == (9, 784) and md.test_dl.x.shape == (5, 784)
    assert sorted(set(md.val_y.tolist())) == [0, 1, 2]
    rgb = ImageClassifierData.from_folder(tmp_path, size=(16, 20), mode="RGB", bs=8, device="cpu")
    assert rgb.trn_dl.x.shape == (24, 3, 16, 20)
    assert float(rgb.trn_dl.x.max()) <= 1.0 and float(rgb.trn_dl.x.max()) > 0.5
    (tmp_path / "train" / "digit0" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="broken.png"):
        ImageClassifierData.from_folder(tmp_path, device="cpu")
    with pytest.raises(DataError, match="mode"):
        ImageClassifierData.from_folder(tmp_path, mode="CMYK", device="cpu")


def test_from_csv_warns_when_the_columns_are_not_8_bit_pixels(tmp_path):
    (tmp_path / "t.csv").write_text("label,area,income\n0,1200.5,53000\n1,800,41000\n0,950,38000\n1,1010,60000\n")
    with pytest.warns(UserWarning, match="not 8-bit pixels.*pixel_scale=1"):
        ImageClassifierData.from_csv(tmp_path, "t.csv", device="cpu")
