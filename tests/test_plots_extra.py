"""plot_confusion, plot_top_losses and the helpers under them: counts, class names, probability detection."""
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from netfit import plot_confusion, plot_top_losses
from netfit.datasets import FASHION_CLASSES
from netfit.plots import as_probs, confusion_matrix


@pytest.fixture(autouse=True)
def close_figures():
    yield
    import matplotlib.pyplot as plt
    plt.close("all")  # pyplot keeps every figure it made until closed


def test_confusion_matrix_counts_match_a_loop():
    rng = np.random.default_rng(0)
    t, p = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    ref = np.zeros((4, 4), int)
    for a, b in zip(t, p):
        ref[a, b] += 1
    np.testing.assert_array_equal(confusion_matrix(p, t), ref)
    scores = np.eye(4)[p] + 0.01  # (N, C) scores give the same matrix via argmax
    np.testing.assert_array_equal(confusion_matrix(scores, torch.from_numpy(t)), ref)


def test_plot_confusion_names_and_numbers():
    t = np.array([0, 0, 1, 9, 9, 9])
    p = np.array([0, 1, 1, 9, 9, 0])
    fig = plot_confusion(p, t, classes=FASHION_CLASSES)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert [x.get_text() for x in ax.get_xticklabels()] == list(FASHION_CLASSES)
    texts = [x.get_text() for x in ax.texts]
    assert len(texts) == 100 and texts[9 * 10 + 9] == "2" and texts[9 * 10 + 0] == "1"
    assert "accuracy 0.6667" in ax.get_title()
    norm = plot_confusion(p, t, classes=FASHION_CLASSES, normalize=True)
    assert norm.axes[0].texts[9 * 10 + 9].get_text() == "0.67"


def test_plot_confusion_errors():
    with pytest.raises(ValueError, match="got 3 predictions but 2 targets"):
        plot_confusion(np.array([0, 1, 1]), np.array([0, 1]))
    with pytest.raises(ValueError, match="labels go up to 5 but n_classes is 3"):
        plot_confusion(np.array([0, 5]), np.array([0, 1]), classes=["a", "b", "c"])
    with pytest.raises(ValueError, match="integer labels"):
        plot_confusion(np.array([0, 1]), np.array([0.0, 1.0]))


def test_as_probs_detects_probabilities_log_probabilities_and_logits():
    logits = torch.randn(50, 7) * 5
    probs = torch.softmax(logits, 1)
    want = probs.double().numpy()
    np.testing.assert_allclose(as_probs(probs), want, rtol=1e-5)                       # unchanged
    np.testing.assert_allclose(as_probs(torch.log_softmax(logits, 1)), want, rtol=1e-5)  # exp
    np.testing.assert_allclose(as_probs(logits), want, rtol=1e-5)                       # softmax
    extreme = torch.tensor([[1000.0, -1000.0, 0.0]])
    np.testing.assert_allclose(as_probs(extreme), torch.softmax(extreme.double(), 1).numpy())


def test_plot_top_losses_picks_the_most_wrong():
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.99, 0.01], [0.5, 0.5]])
    targs = np.array([0, 0, 1, 1])
    ims = np.arange(4)[:, None, None] * np.ones((4, 5, 5))
    for preds in (probs, np.log(probs)):  # probabilities and log-probabilities read the same
        fig = plot_top_losses(ims, preds, targs, k=2, classes=["cat", "dog"])
        assert [ax.get_title() for ax in fig.axes] == ["cat / dog\n0.01", "dog / cat\n0.3"]
        # the images shown are those rows' images
        assert [ax.images[0].get_array()[0, 0] for ax in fig.axes] == [2, 1]
    assert [ax.title.get_color() for ax in fig.axes] == ["red", "red"]
    fig = plot_top_losses(torch.rand(20, 784), torch.log_softmax(torch.randn(20, 10), 1), torch.arange(20) % 10,
                          classes=FASHION_CLASSES)
    assert len(fig.axes) == 9 and all(" / " in ax.get_title() for ax in fig.axes)


def test_plot_top_losses_errors():
    p = np.full((3, 2), 0.5)
    with pytest.raises(ValueError, match="got 2 images for 3 predictions"):
        plot_top_losses(np.zeros((2, 4, 4)), p, np.array([0, 1, 0]))
    with pytest.raises(ValueError, match="targs go up to 4 but preds have 2 classes"):
        plot_top_losses(np.zeros((3, 4, 4)), p, np.array([0, 4, 0]))
    with pytest.raises(ValueError, match="k must be a positive integer; got 0"):
        plot_top_losses(np.zeros((3, 4, 4)), p, np.array([0, 1, 0]), k=0)


def test_one_image_into_your_own_axes_and_argument_mistakes():
    import matplotlib.pyplot as plt
    from netfit import plots, show
    assert len(plots(np.random.rand(28, 28)).axes) == 1            # one (H, W) image, not 28 rows of 28
    fig, ax = plt.subplots(1, 2)
    assert show(np.eye(28), ax=ax[0], title=np.array([3])) is ax[0]  # not fig: Jupyter would draw it twice
    assert ax[0].get_title() == "3"
    with pytest.raises(ValueError, match="1 colors for 3 images"):
        plots(np.random.rand(3, 28, 28), titles=[1, 2, 3], colors=["red"])
    with pytest.raises(ValueError, match="rows must be a positive integer"):
        plots(np.random.rand(3, 28, 28), rows=0)
    plt.close("all")


def test_plot_history_takes_the_records_metrics_json_stores():
    from netfit import plot_history
    fig = plot_history([{"epoch": 0, "trn_loss": 1.0, "val_loss": 0.9, "accuracy": 0.7},
                        {"epoch": 1, "trn_loss": 0.6, "val_loss": 0.7, "accuracy": 0.8}])
    assert len(fig.axes) == 2


def test_plot_confusion_takes_a_dict_of_class_names():
    fig = plot_confusion(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), classes={1: "b", 0: "a", 2: "c"})
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["a", "b", "c"]  # names, not the keys
