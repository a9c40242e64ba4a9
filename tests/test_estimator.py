"""NetClassifier as a scikit-learn estimator: probabilities, labels, clones, pipelines and sklearn's checks."""
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import make_blobs
from sklearn.ensemble import RandomForestClassifier, VotingClassifier
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks
from torch import nn

from netfit import DataError, NetClassifier


def blobs(n=300, centers=3, seed=0):
    x, y = make_blobs(n, n_features=4, centers=centers, cluster_std=1.0, random_state=seed)
    return x.astype("float32"), y


def quick(**kw):
    kw = {"epochs": 4, "bs": 32, "lr": 1e-2, "random_state": 0, "device": "cpu", **kw}
    return NetClassifier(**kw)


# sklearn's own suite: every check of a classifier, on a net that learns blobs in a few steps
@parametrize_with_checks([quick(module="mlp", module_kwargs={"hidden": (16,)})],
                         expected_failed_checks=lambda est: NetClassifier.EXPECTED_FAILED_CHECKS)
def test_sklearn_checks(estimator, check):
    check(estimator)


def test_logsoftmax_nll_probabilities_are_exp_of_log_probs():
    x, y = blobs()
    clf = quick(module="mlp", crit=nn.NLLLoss()).fit(x, y)
    assert clf.outputs_ == "log_probs"
    log_p = torch.from_numpy(x[:50])
    with torch.no_grad():
        log_p = clf.module_.eval()(log_p).double().numpy()
    proba = clf.predict_proba(x[:50])
    np.testing.assert_allclose(proba.sum(1), 1, atol=1e-12)
    np.testing.assert_allclose(proba, np.exp(log_p), rtol=1e-5, atol=1e-7)  # exp, not a second softmax/log
    np.testing.assert_allclose(clf.predict_log_proba(x[:50]), log_p, atol=1e-5)


def test_logits_cross_entropy_probabilities_are_softmax():
    x, y = blobs()
    net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    clf = quick(module=net, crit=nn.CrossEntropyLoss()).fit(x, y)
    assert clf.outputs_ == "logits"
    with torch.no_grad():
        logits = clf.module_.eval()(torch.from_numpy(x[:50])).double()
    proba = clf.predict_proba(x[:50])
    np.testing.assert_allclose(proba.sum(1), 1, atol=1e-12)
    np.testing.assert_allclose(proba, torch.softmax(logits, 1).numpy(), rtol=1e-5, atol=1e-7)
    assert (clf.predict(x) == y).mean() > 0.9


def test_nll_on_raw_scores_is_an_error():
    x, y = blobs()
    net = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(ValueError, match="LogSoftmax"):
        quick(module=net, crit=nn.NLLLoss()).fit(x, y)


def test_string_and_noncontiguous_labels():
    x, y = blobs()
    for labels in (np.array(["cat", "dog", "emu"]), np.array([3, 17, -5])):
        yy = labels[y]
        clf = quick().fit(x, yy)
        assert clf.classes_.tolist() == sorted(labels.tolist())
        pred = clf.predict(x)
        assert set(pred) <= set(labels.tolist()) and (pred == yy).mean() > 0.9
        # columns of predict_proba follow classes_
        assert (clf.classes_[clf.predict_proba(x).argmax(1)] == pred).all()


def test_module_instance_is_copied_and_reinitialised():
    x, y = blobs()
    net = nn.Sequential(nn.Linear(4, 3), nn.LogSoftmax(dim=1))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    a = quick(module=net).fit(x, y)
    b = clone(a).fit(x, y)
    assert a.module_ is not net and b.module_ is not a.module_
    for k, v in net.state_dict().items():  # the user's instance is never trained
        torch.testing.assert_close(v, before[k])
    for k, v in a.module_.state_dict().items():  # same seed, same start: clones agree
        torch.testing.assert_close(v, b.module_.state_dict()[k])


def test_random_state_reproducible_and_leaves_global_rng():
    x, y = blobs()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    p1 = quick(random_state=7).fit(x, y).predict_proba(x)
    assert torch.equal(torch.get_rng_state(), state)
    p2 = quick(random_state=7).fit(x, y).predict_proba(x)
    np.testing.assert_array_equal(p1, p2)


def test_random_state_none_starts_each_fit_afresh_as_scikit_learn_does():
    x, y = blobs()  # a VotingClassifier of three NetClassifier() used to hold three identical nets
    a, b = quick(random_state=None).fit(x, y), quick(random_state=None).fit(x, y)
    assert not np.array_equal(a.predict_proba(x), b.predict_proba(x))
    np.random.seed(5)  # None draws from numpy's global RNG: seeding it repeats the series
    c = quick(random_state=None).fit(x, y).predict_proba(x)
    np.random.seed(5)
    np.testing.assert_array_equal(quick(random_state=None).fit(x, y).predict_proba(x), c)


def test_a_device_that_is_not_here_is_named():
    x, y = blobs()
    with pytest.raises(DataError, match="'gpu' is not a torch device"):
        quick(device="gpu").fit(x, y)
    if not torch.cuda.is_available():
        with pytest.raises(DataError, match="no CUDA GPU"):
            quick(device="cuda").fit(x, y)


def test_errors_name_the_problem():
    x, y = blobs()
    clf = quick()
    with pytest.raises(NotFittedError):
        clf.predict(x)
    clf.fit(x, y)
    with pytest.raises(ValueError, match="X has 3 features, but NetClassifier is expecting 4"):
        clf.predict(x[:, :3])
    with pytest.raises(ValueError, match="unknown module 'resnet'"):
        quick(module="resnet").fit(x, y)
    with pytest.raises(ValueError, match="3 features, which is not a square"):
        quick(module="cnn").fit(x[:, :3], y)
    with pytest.raises(ValueError, match=r"fails on input of shape \(64, 4\): mat1 and mat2"):
        quick(module=nn.Sequential(nn.Linear(5, 3), nn.LogSoftmax(1))).fit(x, y)
    with pytest.raises(ValueError, match=r"outputs of shape \(64, 5\).*\(64, 3\)"):
        quick(module=nn.Sequential(nn.Linear(4, 5), nn.LogSoftmax(1))).fit(x, y)
    with pytest.raises(ValueError, match="epochs must be"):
        quick(epochs=-1).fit(x, y)
    with pytest.raises(ValueError, match="opt 'lbfgs'"):
        quick(opt="lbfgs").fit(x, y)


def test_cnn_by_name_on_flat_images():
    rng = np.random.default_rng(0)
    x = rng.random((64, 64), dtype=np.float32)  # 8x8 images as flat rows
    y = (x[:, :32].mean(1) > x[:, 32:].mean(1)).astype(int)
    clf = quick(module="cnn", module_kwargs={"channels": (4, 8)}, epochs=1).fit(x, y)
    assert clf.predict_proba(x).shape == (64, 2)


def test_pipeline_cross_val_grid_search_and_voting_with_a_forest():
    x, y = blobs(240)
    pipe = make_pipeline(StandardScaler(), quick())
    scores = cross_val_score(pipe, x, y, cv=3)
    assert scores.shape == (3,) and scores.mean() > 0.9
    grid = GridSearchCV(pipe, {"netclassifier__lr": [1e-3, 1e-2], "netclassifier__epochs": [1, 3]}, cv=2).fit(x, y)
    assert grid.best_params_["netclassifier__lr"] in (1e-3, 1e-2) and grid.best_score_ > 0.8
    vote = VotingClassifier([("net", pipe), ("forest", RandomForestClassifier(20, random_state=0))],
                            voting="soft").fit(x, y)
    assert vote.predict_proba(x).shape == (240, 3) and vote.score(x, y) > 0.9


def test_a_net_ending_in_softmax_is_refused_instead_of_softmaxed_twice():
    x, y = blobs()
    net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3), nn.Softmax(dim=1))
    with pytest.raises(ValueError, match="outputs are probabilities.*nn.LogSoftmax"):
        quick(module=net).fit(x, y)

    class Wrapped(nn.Module):  # the Softmax inside a child: found by the outputs, not the layer list
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x)
    with pytest.raises(ValueError, match="outputs are probabilities"):
        quick(module=Wrapped()).fit(x, y)


def test_batchnorm_fits_a_fold_whose_size_leaves_one_row_in_the_last_batch():
    x, y = blobs(65)
    net = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    assert quick(module=net).fit(x, y).score(x, y) > 0.5  # 65 rows in batches of 32: 32, 32 (and 1, dropped)


def test_a_partial_optimizer_and_a_numpy_learning_rate():
    import functools
    x, y = blobs()
    clf = quick(opt=functools.partial(torch.optim.SGD, momentum=0.9), lr=np.float32(0.05)).fit(x, y)
    assert clf.score(x, y) > 0.9
    with pytest.raises(ValueError, match="opt must be"):
        quick(opt=torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)).fit(x, y)


def test_a_failed_fit_leaves_the_estimator_unfitted():
    x, y = blobs()
    clf = quick(module=nn.Sequential(nn.Linear(4, 3), nn.Softmax(dim=1)))
    with pytest.raises(ValueError):
        clf.fit(x, y)
    with pytest.raises(NotFittedError):
        clf.predict(x)
    clf = quick().fit(x, y)  # a good fit, then a failing refit: the earlier net is not served
    with pytest.raises(ValueError):
        clf.set_params(lr=-1).fit(np.hstack([x, x]), y)
    with pytest.raises(NotFittedError):
        clf.predict(x)


def test_a_softmax_a_custom_forward_uses_inside_is_not_taken_for_the_last_layer():
    class Gated(nn.Module):
        def __init__(self):
            super().__init__()
            self.head, self.gate = nn.Linear(4, 3), nn.Softmax(dim=1)  # registered last, applied first

        def forward(self, x):
            return self.head(x * self.gate(x) * 4)
    x, y = blobs()
    assert quick(module=Gated(), epochs=8).fit(x, y).score(x, y) > 0.8


def test_random_state_repeats_bit_for_bit_on_two_threads():
    x, y = blobs()
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # conftest runs the suite on one
    try:
        p1, p2 = (quick(random_state=3, epochs=3).fit(x, y).predict_proba(x) for _ in range(2))
    finally:
        torch.set_num_threads(before)
    np.testing.assert_array_equal(p1, p2)
