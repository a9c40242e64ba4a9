"""ArrayLoader and ImageClassifierData: order, coverage, shuffling, devices and input checks."""
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from netfit import DataError, ImageClassifierData, default_device
from netfit.data import ArrayLoader, mean_std


def arrays(n=100, d=4, c=10, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, d), dtype=np.float32), (np.arange(n) % c).astype(np.int64)


@given(n=st.integers(1, 300), bs=st.integers(1, 70), shuffle=st.booleans())
@settings(max_examples=60, deadline=None)
def test_every_row_exactly_once_per_epoch(n, bs, shuffle):
    x = torch.arange(n, dtype=torch.float32).reshape(n, 1)
    dl = ArrayLoader(x, torch.arange(n), bs=bs, shuffle=shuffle)
    seen = [yb for _, yb in dl]
    assert len(seen) == len(dl) == -(-n // bs)
    assert all(len(b) == bs for b in seen[:-1]) and 1 <= len(seen[-1]) <= bs
    rows = torch.cat(seen)
    assert sorted(rows.tolist()) == list(range(n))
    xs = torch.cat([xb for xb, _ in dl])  # x and y stay paired
    assert xs.shape == (n, 1)
    if not shuffle:
        assert rows.tolist() == list(range(n))


def test_shuffle_differs_each_epoch_and_is_seeded():
    x, y = arrays(1000)
    dl = ArrayLoader(torch.from_numpy(x), torch.from_numpy(y), bs=100, shuffle=True)
    torch.manual_seed(1)
    a = torch.cat([yb for _, yb in dl]); b = torch.cat([yb for _, yb in dl])
    torch.manual_seed(1)
    a2 = torch.cat([yb for _, yb in dl])
    assert not torch.equal(a, b)
    assert torch.equal(a, a2)


def test_drop_last():
    dl = ArrayLoader(torch.zeros(10, 2), torch.zeros(10, dtype=torch.long), bs=4, drop_last=True)
    assert len(dl) == 2 and [len(yb) for _, yb in dl] == [4, 4]


def test_from_arrays_attributes():
    x, y = arrays(100)
    md = ImageClassifierData.from_arrays("data/x", (x, y), (x[:30], y[:30]), bs=32, test=x[:7], device="cpu")
    assert md.c == 10 and md.classes == list(range(10))
    assert len(md.trn_dl) == 4 and len(md.val_dl) == 1 and len(md.test_dl) == 1
    assert len(md.trn_ds) == 100 and len(md.val_ds) == 30 and len(md.test_ds) == 7
    np.testing.assert_array_equal(md.trn_y, y)
    np.testing.assert_array_equal(md.val_y, y[:30])
    xb, yb = md.trn_ds[3]
    assert xb.shape == (4,) and yb.item() == y[3]
    # the validation loader keeps order, with a partial last batch
    xs = torch.cat([xb for xb, _ in md.val_dl])
    np.testing.assert_array_equal(xs.numpy(), x[:30])
    assert torch.cat([xb for xb in md.test_dl]).shape == (7, 4)
    assert "trn=100" in repr(md)


def test_arrays_are_not_copied_per_batch():
    x, y = arrays(64)
    md = ImageClassifierData.from_arrays(".", (x, y), (x, y), bs=16, device="cpu")
    xb, _ = next(iter(md.val_dl))
    assert xb.data_ptr() == md.val_dl.x.data_ptr()  # in-order batches are views of the one tensor
    assert md.trn_dl.x.data_ptr() == torch.from_numpy(x).data_ptr()  # float32 numpy is shared, not copied


def test_to_device_moves_once():
    x, y = arrays(64)
    md = ImageClassifierData.from_arrays(".", (x, y), (x, y), bs=16, device="cpu")
    ptr = md.trn_dl.x.data_ptr()
    md.to("cpu")
    assert md.trn_dl.x.data_ptr() == ptr


def test_default_device_is_a_device():
    d = default_device()
    assert isinstance(d, torch.device)
    assert d.type == ("cuda" if torch.cuda.is_available() else d.type)


def test_classes_names_and_count():
    x, y = arrays(20, c=3)
    md = ImageClassifierData.from_arrays(".", (x, y), (x, y), classes=["a", "b", "c", "d"], device="cpu")
    assert md.c == 4 and md.classes == ["a", "b", "c", "d"]
    with pytest.raises(DataError, match="only 2 classes"):
        ImageClassifierData.from_arrays(".", (x, y), (x, y), classes=["a", "b"], device="cpu")


@pytest.mark.parametrize("make, match", [
    (lambda x, y: ((x, y[:-1]), (x, y)), "rows but y has"),
    (lambda x, y: ((x, y.astype("float32")), (x, y)), "integer class labels"),
    (lambda x, y: ((x, y - 5), (x, y)), "min -5"),
    (lambda x, y: ((x[:0], y[:0]), (x, y)), "empty"),
    (lambda x, y: ((x[:, 0], y), (x, y)), "expected \\(N, features\\)"),
    (lambda x, y: ((np.where(x > 0.5, np.nan, x), y), (x, y)), "NaN"),
    (lambda x, y: ((x, y), (x[:, :3], y)), "x_valid rows have shape"),
    (lambda x, y: ((x, np.stack([y, y], 1)), (x, y)), "one label per row"),
    (lambda x, y: ((x.astype(str), y), (x, y)), "numeric"),
    (lambda x, y: (x, (x, y)), "pair"),
])
def test_bad_inputs_get_clear_errors(make, match):
    x, y = arrays(40)
    trn, val = make(x, y)
    with pytest.raises(DataError, match=match):
        ImageClassifierData.from_arrays(".", trn, val, device="cpu")


@pytest.mark.parametrize("bs", [0, -3, 2.5, True])
def test_bad_batch_size(bs):
    x, y = arrays(10)
    with pytest.raises(DataError, match="batch size"):
        ImageClassifierData.from_arrays(".", (x, y), (x, y), bs=bs, device="cpu")


def test_tensors_accepted_too():
    x, y = arrays(50)
    md = ImageClassifierData.from_arrays(".", (torch.from_numpy(x).double(), torch.from_numpy(y).int()),
                                         (x, y), bs=10, device="cpu")
    xb, yb = next(iter(md.trn_dl))
    assert xb.dtype == torch.float32 and yb.dtype == torch.int64


def test_default_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_device() == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert default_device() == torch.device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert default_device() == torch.device("cpu")


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5), (1000, 784), (40, 1, 28, 28)])
def test_mean_std_matches_numpy_in_float64(shape):
    x = np.random.default_rng(0).normal(3.0, 0.5, size=shape).astype(np.float32)
    mean, std = mean_std(x, chunk_values=1000)  # several chunks for the larger shapes
    assert mean == pytest.approx(x.mean(dtype=np.float64), rel=1e-12)
    assert std == pytest.approx(x.std(dtype=np.float64), rel=1e-6)  # float32 centring before the square
    assert mean_std(torch.from_numpy(x)) == pytest.approx((mean, std), rel=1e-9)


def test_mean_std_of_empty_is_an_error():
    with pytest.raises(DataError, match="empty"):
        mean_std(np.zeros((0, 784), np.float32))


def test_labels_as_a_column_are_read_as_one_per_row():
    x, y = arrays(40)  # scikit-learn and Keras take y of shape (N, 1) as well
    md = ImageClassifierData.from_arrays(".", (x, y.reshape(-1, 1)), (x, y[:, None]), device="cpu")
    assert md.trn_dl.y.shape == (40,) and md.val_dl.y.shape == (40,)


@pytest.mark.parametrize("y, hint", [
    (np.linspace(0, 1, 40), "for regression targets, build the loaders yourself"),
    (np.array(["cat", "dog"] * 20), "np.unique(y, return_inverse=True)"),
    (np.eye(2, dtype=np.int64)[np.arange(40) % 2], "use y.argmax(1)"),
    (np.eye(3, dtype=np.float32)[np.arange(40) % 3], "one-hot rows: use y.argmax(1)"),  # Keras's to_categorical
])
def test_labels_that_are_not_class_indices_get_a_way_forward(y, hint):
    x, _ = arrays(40)
    with pytest.raises(DataError, match=re.escape(hint)):
        ImageClassifierData.from_arrays(".", (x, y), (x, np.arange(40) % 2), device="cpu")


@pytest.mark.parametrize("test, n", [
    (lambda x, y: x[:7], 7),                # the inputs
    (lambda x, y: (x[:7],), 7),             # a 1-tuple: its inputs, not a batch of one 3-d "row"
    (lambda x, y: (x[:7], y[:7]), 7),       # an (x, y) pair: the labels are not used
    (lambda x, y: [x[0], x[1]], 2),         # a list of two rows is two rows, not an (x, y) pair
])
def test_the_test_set_in_each_form_it_comes(test, n):
    x, y = arrays(d=4)
    md = ImageClassifierData.from_arrays(".", (x, y), (x[:30], y[:30]), test=test(x, y), device="cpu")
    assert md.test_dl.x.shape[0] == n and md.test_dl.x.dim() in (2, 3)
    if md.test_dl.x.dim() == 2:
        assert md.test_dl.x.shape[1] == 4


def test_a_test_set_of_other_rows_is_refused_and_one_not_normalised_warned():
    x, y = arrays(d=4)
    with pytest.raises(DataError, match=re.escape("the test set rows have shape (5,) but x rows have (4,)")):
        ImageClassifierData.from_arrays(".", (x, y), (x[:30], y[:30]), test=np.zeros((3, 5), np.float32))
    with pytest.warns(UserWarning, match="the test set .* is scaled differently from x"):
        ImageClassifierData.from_arrays(".", (x, y), (x[:30], y[:30]), test=x[:20] * 50 + 100, device="cpu")


def test_read_only_labels_are_taken_without_a_warning():
    import warnings
    x, y = arrays()
    y.flags.writeable = False  # as pandas 3 gives them
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        md = ImageClassifierData.from_arrays(".", (x, y), (x[:30], y[:30]), device="cpu")
    assert md.trn_dl.y.dtype == torch.int64
