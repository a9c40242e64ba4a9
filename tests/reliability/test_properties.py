"""Property tests (hypothesis) for the data loaders and for predict.

    python -m pytest -q tests/reliability/test_properties.py              # 150 + 30 examples
    python -m pytest -q tests/reliability/test_properties.py --runslow    # 2,000 + 400 examples

Loaders: for any number of rows, batch size, shuffling, drop_last, starting batch and number of
ranks, `ArrayLoader.batches(order, start, rank, world)` gives every row exactly once per epoch over
the union of the ranks (at most once with drop_last, losing fewer than world * bs rows), x and y
stay paired, `n_batches` counts what comes out, a start at batch s gives the tail of the full
epoch, and the ranks' batches i together hold a single process's batch i at batch size world * bs.

predict: for any model (an MLP with dropout and batch norm, so that eval mode matters), rows and
batch size, the outputs have shape (N, C), come in row order (from a shuffling loader too), equal
a direct forward pass in eval mode, leave the model's mode and the global RNG as they were, and do
not depend on the batch size.
"""
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from torch import nn

from netfit import predict, predict_with_targs
from netfit.data import ArrayLoader


def loader_examples(long_mode):
    return settings(max_examples=2000 if long_mode else 150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def rows_of(batches):
    return [yb.tolist() for xb, yb in batches]


def test_every_row_once_per_epoch_over_all_ranks(long_mode, figure):
    examples = []

    @loader_examples(long_mode)
    @given(n=st.integers(1, 300), bs=st.integers(1, 70), shuffle=st.booleans(), drop_last=st.booleans(),
           world=st.integers(1, 8), seed=st.integers(0, 2**31 - 1), data=st.data())
    def check(n, bs, shuffle, drop_last, world, seed, data):
        x = torch.arange(n, dtype=torch.float32)[:, None] * torch.ones(1, 3)  # row i holds i: x and y stay paired
        dl = ArrayLoader(x, torch.arange(n), bs=bs, shuffle=shuffle, drop_last=drop_last)
        order = dl.order(seed)  # what every rank draws from the shared seed
        assert (order is None) == (not shuffle)
        if shuffle:
            assert sorted(order.tolist()) == list(range(n))
        per_rank = []
        for rank in range(world):
            batches = list(dl.batches(order, 0, rank, world))
            assert len(batches) == dl.n_batches(rank, world)
            assert all(len(yb) == bs for _, yb in batches[:-1]) and all(1 <= len(yb) <= bs for _, yb in batches)
            if drop_last:
                assert all(len(yb) == bs for _, yb in batches)
            for xb, yb in batches:
                assert torch.equal(xb[:, 0], yb.float()) and torch.equal(xb[:, 2], yb.float())
            start = data.draw(st.integers(0, len(batches)), label="start")
            assert rows_of(dl.batches(order, start, rank, world)) == rows_of(batches)[start:]
            per_rank.append(rows_of(batches))
        rows = [r for batches in per_rank for b in batches for r in b]
        assert len(rows) == len(set(rows))  # never twice
        if drop_last:
            assert n - len(rows) < world * bs
        else:
            assert sorted(rows) == list(range(n))  # every row once
            single = rows_of(ArrayLoader(x, torch.arange(n), bs=bs * world).batches(order))
            for i, batch in enumerate(single):  # the ranks' batches i make a single process's batch i
                assert sorted(batch) == sorted(r for b in per_rank if i < len(b) for r in b[i])
        examples.append((n, bs, world))
    check()
    figure("loader property examples (each row once per epoch over the ranks)", len(examples), len(examples),
           f"n up to {max(e[0] for e in examples)}, bs up to {max(e[1] for e in examples)}, "
           f"world up to {max(e[2] for e in examples)}")


def test_plain_iteration_covers_every_row_each_epoch(long_mode):
    @loader_examples(long_mode)
    @given(n=st.integers(1, 300), bs=st.integers(1, 70), epochs=st.integers(1, 3))
    def check(n, bs, epochs):
        dl = ArrayLoader(torch.zeros(n, 2), torch.arange(n), bs=bs, shuffle=True)
        for _ in range(epochs):
            assert sorted(r for b in rows_of(dl) for r in b) == list(range(n))
    check()


def make_net(d, c, seed):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(d, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, c),
                        nn.LogSoftmax(dim=1))
    net.train()
    with torch.no_grad():  # a batch norm whose running statistics are not the identity's
        net(torch.randn(64, d) * 3 + 1)
    return net


def test_predict_order_shape_and_eval_mode(long_mode, figure):
    examples = []

    @settings(max_examples=400 if long_mode else 30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(n=st.integers(1, 200), d=st.integers(1, 12), c=st.integers(2, 7), bs=st.integers(1, 128),
           shuffle=st.booleans(), labelled=st.booleans(), training=st.booleans(), seed=st.integers(0, 10_000))
    def check(n, d, c, bs, shuffle, labelled, training, seed):
        net = make_net(d, c, seed)
        net.train(training)
        gen = torch.Generator().manual_seed(seed)
        x, y = torch.randn(n, d, generator=gen), torch.randint(0, c, (n,), generator=gen)
        net.eval()
        with torch.no_grad():
            direct = net(x).numpy()  # (n, c): the whole array at once, in eval mode
        net.train(training)
        rng_before = torch.get_rng_state()
        dl = ArrayLoader(x, y if labelled else None, bs=bs, shuffle=shuffle)
        preds = predict(net, dl)
        assert preds.shape == (n, c) and preds.dtype == np.float32
        np.testing.assert_allclose(preds, direct, rtol=1e-5, atol=1e-5)  # in row order, eval mode
        assert net.training == training  # the mode is restored
        assert torch.equal(torch.get_rng_state(), rng_before)  # no dropout mask, no permutation drawn
        np.testing.assert_allclose(predict(net, x.numpy()), preds, rtol=1e-5, atol=1e-5)  # a bare array too
        if labelled:
            p, t = predict_with_targs(net, dl)
            assert np.array_equal(p, preds) and np.array_equal(t, y.numpy())
        examples.append(n)
    check()
    figure("predict property examples (order, shape (N, C), eval mode, any batch size)", len(examples), len(examples))


@pytest.mark.parametrize("bs", [1, 7, 1000])
def test_predict_does_not_depend_on_batch_size(bs):
    net = make_net(5, 4, 0)
    x = torch.randn(123, 5)
    whole = predict(net, ArrayLoader(x, bs=123))
    np.testing.assert_allclose(predict(net, ArrayLoader(x, bs=bs)), whole, rtol=1e-5, atol=1e-6)
