"""On-device batch augmentation (crop with padding, rotation, flip) and test-time augmentation."""
import numpy as np
import pytest
import torch
from torch import nn

from netfit import Augment, DataError, ImageClassifierData, RandomShift, fit, predict, predict_tta
from netfit.models import logreg


@pytest.fixture(scope="module")
def digits_md(mnist_digits):
    (x, y), (xv, yv) = mnist_digits
    return ImageClassifierData.from_arrays(".", (x[:2000], y[:2000]), (xv[:500], yv[:500]), bs=64, device="cpu")


def test_augment_in_fit_changes_pixels_keeps_labels_and_shapes(digits_md):
    seen = []

    class Before:
        def before_batch(self, run):
            seen.append((run.xb.clone(), run.yb.clone()))

    class After:
        def before_batch(self, run):
            x0, y0 = seen[-1]
            seen[-1] = (x0, y0, run.xb, run.yb)
    torch.manual_seed(0)
    fit(logreg(), digits_md, 1, callbacks=[Before(), Augment(pad=2, rotate=10), After()], verbose=False)
    assert len(seen) == len(digits_md.trn_dl)
    for x0, y0, x1, y1 in seen:
        assert x1.shape == x0.shape == (len(y0), 784) and x1.dtype == x0.dtype
        assert torch.equal(y1, y0)                                       # labels untouched
        changed = (x1 - x0).abs().amax(1) > 1e-3                         # (N,) per image
        assert changed.float().mean() > 0.9                              # nearly every image moved
        assert (x1.mean(1) - x0.mean(1)).abs().max() < 0.05              # ...but is still the same digit's ink
    assert digits_md.trn_dl.x.shape == (2000, 784)  # the stored data is never modified


def test_crop_with_padding_is_a_whole_pixel_shift():
    x = torch.zeros(64, 1, 28, 28)
    x[:, 0, 14, 14] = 1.0
    torch.manual_seed(0)
    out = Augment(pad=3, rotate=0)(x)                                    # (64, 1, 28, 28)
    flat = out.reshape(64, -1)
    assert torch.allclose(flat.max(1).values, torch.ones(64), atol=1e-5)  # the pixel moved whole, not blurred
    assert torch.allclose(flat.sum(1), torch.ones(64), atol=1e-4)
    rows, cols = flat.argmax(1) // 28 - 14, flat.argmax(1) % 28 - 14
    assert rows.abs().max() <= 3 and cols.abs().max() <= 3
    assert len(set(zip(rows.tolist(), cols.tolist()))) > 10              # many different offsets


def test_rotation_turns_images_about_the_centre():
    side = torch.arange(28) - 13.5
    disk = ((side[:, None] ** 2 + side[None, :] ** 2) < 8 ** 2).float()  # symmetric: a turn keeps it
    bar = torch.zeros(28, 28)
    bar[12:16, 4:24] = 1                                                  # a horizontal bar: a turn moves it
    torch.manual_seed(0)
    aug = Augment(pad=0, rotate=30)
    disks, bars = aug(disk.expand(16, 28, 28)), aug(bar.expand(16, 28, 28))  # (N, H, W) in, (N, H, W) out
    assert disks.shape == bars.shape == (16, 28, 28)
    assert (disks - disk).abs().mean() < 0.02
    assert ((bars - bar).abs().mean((1, 2)) > 0.01).float().mean() > 0.8


def test_flip_mirrors_half_and_rgb_shapes():
    x = torch.rand(200, 3, 8, 8)
    torch.manual_seed(0)
    out = Augment(pad=0, rotate=0, flip=True)(x)
    same = torch.isclose(out, x, atol=1e-5).flatten(1).all(1)
    mirrored = torch.isclose(out, x.flip(-1), atol=1e-5).flatten(1).all(1)
    assert torch.all(same | mirrored) and 60 < mirrored.sum() < 140
    assert Augment()(torch.rand(4, 3 * 32 * 32)).shape == (4, 3072)      # flat RGB rows
    with pytest.raises(DataError, match="shape=\\(C, H, W\\)"):
        Augment()(torch.rand(4, 10))
    assert Augment(shape=(1, 2, 5))(torch.rand(4, 10)).shape == (4, 10)


def test_predict_tta_shape_order_and_probabilities(digits_md):
    torch.manual_seed(0)
    net = logreg()
    fit(net, digits_md, 1, verbose=False)
    plain = predict(net, digits_md.val_dl)                                 # log-probabilities (500, 10)
    tta0 = predict_tta(net, digits_md.val_dl, n=0)
    np.testing.assert_allclose(tta0, np.exp(plain), rtol=1e-5, atol=1e-6)
    torch.manual_seed(0)
    tta = predict_tta(net, digits_md.val_dl, n=4, augment=Augment(pad=1, rotate=5))
    assert tta.shape == (500, 10) and np.allclose(tta.sum(1), 1, atol=1e-5)
    assert not np.allclose(tta, tta0, atol=1e-3)                          # the augmented copies count
    assert (tta.argmax(1) == plain.argmax(1)).mean() > 0.8                # same rows, same order
    still = predict_tta(net, digits_md.val_dl, n=3, augment=Augment(pad=0, rotate=0))  # identity warps
    np.testing.assert_allclose(still, tta0, rtol=1e-4, atol=1e-6)
    assert net.training  # predict_tta leaves the mode as it was


def test_random_shift_moves_each_image_by_whole_pixels_within_pad():
    from netfit import RandomShift
    torch.manual_seed(0)
    x = torch.rand(64, 2, 6, 7)
    out = RandomShift(2)(x)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="replicate")
    offsets = set()
    for k in range(len(x)):  # each image is exactly one crop of its padded self
        hits = [(dy, dx) for dy in range(5) for dx in range(5) if torch.equal(out[k], padded[k, :, dy:dy + 6, dx:dx + 7])]
        assert hits, k
        offsets.update(hits)
    assert len(offsets) > 10  # the offsets vary from image to image


def test_random_shift_keeps_shapes_and_is_the_identity_in_eval():
    from netfit import RandomShift
    layer = RandomShift(1)
    for x in (torch.rand(5, 784), torch.rand(5, 28, 28), torch.rand(5, 3, 8, 8)):
        assert layer.train()(x).shape == x.shape
        assert layer.eval()(x) is x
    with pytest.raises(ValueError, match="pad must be a non-negative integer"):
        RandomShift(-1)


def test_predict_tta_warps_with_a_training_time_layer_and_names_bad_arguments():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(784, 10), nn.LogSoftmax(dim=1))
    x = torch.rand(16, 784)
    plain = predict_tta(net, x, n=0)
    shifted = predict_tta(net, x, n=4, augment=RandomShift(2))  # eval mode used to make the shift a no-op
    assert np.abs(shifted - plain).max() > 1e-4
    with pytest.raises(TypeError, match="the class Augment \\(pass Augment\\(\\)\\)"):
        predict_tta(net, x, augment=Augment)
    with pytest.raises(TypeError, match="augmentation object"):
        predict_tta(net, x, augment="flip")
    with pytest.raises(TypeError, match="nn.Module"):
        predict_tta(None, x)
    with pytest.raises(ValueError, match="non-negative integer"):
        predict_tta(net, x, n=True)
