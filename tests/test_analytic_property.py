"""Property test: for random MLPs, optimizers and loaders, the written-out CPU step (analytic.py)
trains exactly like autograd's eager loop. In float64, so that any difference is a bug, not rounding
(float32 twins are in test_analytic.py)."""
import importlib

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn, optim

from netfit import fit, one_cycle
from netfit.data import ArrayLoader

fit_module = importlib.import_module("netfit.fit")


@st.composite
def configs(draw):
    depth = draw(st.integers(0, 2))
    bs = draw(st.integers(1, 24))
    return dict(
        widths=[draw(st.integers(1, 16)) for _ in range(depth)],
        bias=[draw(st.booleans()) for _ in range(depth + 1)],
        images=draw(st.booleans()), classes=draw(st.integers(2, 7)),
        head=draw(st.sampled_from(["nll", "logsoftmax+ce", "logits+ce"])),
        bs=bs, n=draw(st.integers(2, 120)), drop_last=draw(st.booleans()), shuffle=draw(st.booleans()),
        seed=draw(st.one_of(st.none(), st.integers(0, 99))), epochs=draw(st.integers(1, 2)),
        opt=draw(st.sampled_from(["Adam", "AdamW", "SGD", "SGD-nesterov", "RMSprop"])),
        lr=draw(st.sampled_from([1e-3, 1e-2])), wd=draw(st.sampled_from([0.0, 1e-2])),
        two_groups=draw(st.booleans()), schedule=draw(st.booleans()),
    )


def run(c, written):
    torch.manual_seed(0)
    n_in = 12
    layers = [nn.Flatten()] if c["images"] else []
    for w, b in zip(c["widths"] + [c["classes"]], c["bias"]):
        layers += [nn.Linear(n_in, w, bias=b), nn.ReLU()]
        n_in = w
    layers = layers[:-1] + ([nn.LogSoftmax(dim=1)] if c["head"] != "logits+ce" else [])
    net = nn.Sequential(*layers).double()
    x = torch.randn(c["n"], *((1, 3, 4) if c["images"] else (12,)), dtype=torch.float64)
    y = torch.randint(0, c["classes"], (c["n"],))
    dl = ArrayLoader(x, y, bs=c["bs"], shuffle=c["shuffle"], drop_last=c["drop_last"])
    ps = list(net.parameters())
    groups = [{"params": ps[:1]}, {"params": ps[1:], "lr": c["lr"] / 2}] if c["two_groups"] and len(ps) > 1 else ps
    make = {"Adam": lambda: optim.Adam(groups, c["lr"], weight_decay=c["wd"]),
            "AdamW": lambda: optim.AdamW(groups, c["lr"], weight_decay=c["wd"]),
            "SGD": lambda: optim.SGD(groups, c["lr"], momentum=0.9, weight_decay=c["wd"]),
            "SGD-nesterov": lambda: optim.SGD(groups, c["lr"], momentum=0.8, nesterov=True),
            "RMSprop": lambda: optim.RMSprop(groups, c["lr"], weight_decay=c["wd"])}
    opt = make[c["opt"]]()
    crit = nn.NLLLoss() if c["head"] == "nll" else F.cross_entropy
    with pytest.MonkeyPatch.context() as m:
        if not written:
            m.setattr(fit_module, "mlp_plan", lambda *a: (None, "test: autograd"))
        h = fit(net, (dl, None), c["epochs"], opt, crit, verbose=False, seed=c["seed"],
                schedule=one_cycle(c["lr"]) if c["schedule"] else None)
    return net, opt, h


@settings(max_examples=60, deadline=None)
@given(configs())
def test_random_mlps_train_like_autograd_in_float64(c):
    (na, oa, ha), (nb, ob, hb) = run(c, False), run(c, True)
    assert hb.info["step"].startswith("MLP gradient written out"), hb.info["step"]
    for p, q in zip(na.parameters(), nb.parameters()):
        torch.testing.assert_close(p, q, atol=1e-10, rtol=1e-9)
    for sa, sb in zip(oa.state.values(), ob.state.values()):
        for k in sa:
            torch.testing.assert_close(sa[k], sb[k], atol=1e-10, rtol=1e-9)
    assert [r["trn_loss"] for r in ha.records] == pytest.approx([r["trn_loss"] for r in hb.records], rel=1e-6, nan_ok=True)
