"""Bad input gets one clear sentence from netfit's own exception, before any computation.

    python -m pytest -q tests/reliability/test_bad_inputs.py

Each case below must raise netfit's own exception (DataError, ExportError: ValueError; FitError:
TypeError) whose message holds what was expected and what was given, and, for `fit`, before any
training: the weights are unchanged, the optimizer has no state, no callback event has fired.

 #  case                                         where                      raises
 1  x and y of different lengths                 from_arrays                DataError
 2  empty x                                      from_arrays                DataError
 3  x of one dimension                           from_arrays                DataError
 4  x a scalar                                   from_arrays                DataError
 5  y of two dimensions                          from_arrays                DataError
 6  float labels                                 from_arrays                DataError
 7  negative labels                              from_arrays                DataError
 8  NaN labels                                   from_arrays                DataError
 9  NaN in x                                     from_arrays                DataError
10  Inf in x                                     from_arrays                DataError
11  strings as x                                 from_arrays                DataError
12  ragged lists as x                            from_arrays                DataError
13  ragged lists as y                            from_arrays                DataError
14  strings as labels                            from_arrays                DataError
15  a complex tensor as x                        from_arrays                DataError
16  a float tensor as y                          from_arrays                DataError
17  x None                                       from_arrays                DataError
18  a split that is not an (x, y) pair           from_arrays                DataError
19  validation rows of another shape             from_arrays                DataError
20  labels beyond the named classes              from_arrays                DataError
21  batch size 0                                 from_arrays                DataError
22  batch size 2.5                               from_arrays                DataError
23  batch size 0                                 ArrayLoader                DataError
24  augmentation asked for                       from_arrays                DataError
25  epochs negative                              fit                        FitError
26  epochs a float                               fit                        FitError
27  epochs and n_epochs disagree                 fit                        FitError
28  model not an nn.Module                       fit                        FitError
29  optimizer holding another model's params     fit                        FitError
30  optimizer class instead of an optimizer      fit                        FitError
31  loss class instead of a loss                 fit                        FitError
32  loss given as a string                       fit                        FitError
33  metrics not a list                           fit                        FitError
34  callbacks not a list                         fit                        FitError
35  accumulate 0                                 fit                        FitError
36  on_nan neither raise nor warn                fit                        FitError
37  resume without a checkpoint path             fit                        FitError
38  checkpoint_every 0                           fit                        FitError
39  data neither loaders nor a pair              fit                        FitError
40  feature count not the model's                fit                        DataError
41  labels >= the model's number of outputs      fit                        DataError
42  validation labels >= the number of outputs   fit                        DataError
43  float labels in a bare ArrayLoader           fit                        DataError
44  NaN inputs in a bare ArrayLoader             fit                        DataError
45  model output not (N, C) for NLLLoss          fit                        DataError
46  feature count not the model's                predict                    DataError
47  image side not the CNN's                     predict                    DataError
48  empty array                                  predict                    DataError
49  array of one dimension                       predict                    DataError
50  NaN in the array                             predict                    DataError
51  model not an nn.Module                       predict                    FitError
52  a loader without labels                      predict_with_targs         DataError
53  feature count not the model's                Predictor.predict          ExportError
54  NLL loss on raw scores (no LogSoftmax)       fit                        FitError
55  NLL loss on probabilities (Softmax)          fit                        FitError
56  LogSoftmax over the batch (dim=0)            fit                        FitError
57  a float64 model on float32 data              fit                        DataError
58  BatchNorm with a 1-row last batch            fit                        DataError
59  a callback class instead of an instance      fit                        FitError
60  a negative learning rate                     fit                        FitError
61  a checkpoint path that is a folder           fit                        FitError
62  labels of a single class                     from_arrays                DataError
63  targets of another length                    accuracy                   DataError
64  fractions as predicted labels                accuracy                   DataError
65  the whole ImageClassifierData                predict                    DataError
66  None (md.test_dl without a test set)         predict                    DataError
67  NaN in the inputs                            Predictor.predict          ExportError
68  0..255 floats for a normalising export       Predictor.predict          ExportError
69  an (x, y) pair of arrays as data             fit                        FitError
70  a model with every parameter frozen          fit                        FitError
71  a loss that does not reduce the batch        fit                        FitError
72  a model that returns a tuple                 fit                        FitError
73  a hand-written log-softmax over the batch    fit                        FitError
74  NLL loss on LogSigmoid outputs               fit                        FitError
75  loss and optimizer swapped                   fit                        FitError
76  a metric that returns None                   fit                        FitError
77  one metric twice                             fit                        FitError

Then: a loss that becomes NaN stops training with an error naming epoch and step and leaves the
last good checkpoint as it was (`on_nan="warn"` warns and goes on), and the CLI prints such errors
on one line without a traceback, which `--debug` shows.
"""
import math

import numpy as np
import pytest
import torch
from torch import nn, optim
from torch.nn import functional as F

import _reliability_jobs as J
from netfit import (ArrayLoader, Callback, DataError, ExportError, FitError, ImageClassifierData, NonFiniteLossError,
                    accuracy, fit, predict, predict_with_targs)
from netfit.checkpoint import load_checkpoint
from netfit.cli import main
from netfit.export import Predictor
from netfit.models import cnn, logreg

X, Y = J.blobs(100, 4, 3)  # float32 (100, 4), labels 0..2


def md_of(x=X, y=Y, xv=X[:20], yv=Y[:20], **kw):
    return ImageClassifierData.from_arrays(".", (x, y), (xv, yv), device="cpu", **kw)


def with_nan(a, value=float("nan")):
    a = a.copy()
    a.flat[7] = value
    return a


def with_lr(opt, lr):
    """`opt` with a rate set after construction (where torch's own check no longer sees it)."""
    opt.param_groups[0]["lr"] = lr
    return opt


def net4(n_out=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, n_out), nn.LogSoftmax(dim=1))


class Spy(Callback):
    """Records every event: a bad input must be refused before the first one."""

    def __init__(self):
        self.events = []

    def __getattr__(self, name):
        if name.startswith(("before_", "after_")):
            return lambda run: self.events.append(name)
        raise AttributeError(name)


def trains(data=None, make_net=net4, opt=None, **kw):
    """A `fit` call; `make_net` builds the model, `opt(model)` its optimizer (default Adam over it)."""
    def call(ctx):
        model = ctx["net"]
        o = opt(model) if opt is not None else optim.Adam(model.parameters())
        kw.setdefault("callbacks", [ctx["spy"]])
        fit(model, md_of() if data is None else data(), kw.pop("epochs", 1), o, verbose=False, **kw)
    call.make_net = make_net
    return call


def loaders(x, y, xv=None, yv=None):
    """A bare (trn_dl, val_dl) pair of ArrayLoaders, which skip from_arrays' checks."""
    as_t = lambda a: torch.as_tensor(a)
    return lambda: (ArrayLoader(as_t(x), as_t(y), bs=16, shuffle=True),
                    ArrayLoader(as_t(X[:20] if xv is None else xv), as_t(Y[:20] if yv is None else yv), bs=16))


class TwoOutputs(nn.Module):
    """Returns (log-probabilities, features): a tuple where fit's losses need one tensor."""

    def __init__(self):
        super().__init__()
        self.net = net4()

    def forward(self, x):
        return self.net(x), x


class Lambda(nn.Module):
    """`fn(body(x))`: a hand-written forward, as the lesson's LogReg has."""

    def __init__(self, body, fn):
        super().__init__()
        self.body, self.fn = body, fn

    def forward(self, x):
        return self.fn(self.body(x))


def output_1d():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 1), nn.Flatten(0))


# (name, call, exception, fragments the message must hold: what was expected and what was given)
CASES = [
    ("x and y of different lengths", lambda c: md_of(y=Y[:90]),
     DataError, ["100 rows", "90 labels", "expected the same"]),
    ("empty x", lambda c: md_of(x=X[:0], y=Y[:0]), DataError, ["empty", "(0, 4)", "expected at least one row"]),
    ("x of one dimension", lambda c: md_of(x=X[:, 0]), DataError, ["shape (100,)", "expected (N, features)"]),
    ("x a scalar", lambda c: md_of(x=np.float32(1)), DataError, ["shape ()", "expected (N, features)"]),
    ("y of two dimensions", lambda c: md_of(y=np.eye(3, dtype=np.int64)[Y]), DataError,
     ["shape (100, 3)", "expected one label per row", "one-hot", "argmax(1)"]),
    ("float labels", lambda c: md_of(y=Y.astype("float32")), DataError, ["integer class labels", "float32", "astype"]),
    ("negative labels", lambda c: md_of(y=Y - 1), DataError, ["class labels 0 or more", "min -1"]),
    ("NaN labels", lambda c: md_of(y=with_nan(Y.astype("float64"))), DataError, ["integer class labels", "1 NaN"]),
    ("NaN in x", lambda c: md_of(x=with_nan(X)), DataError, ["1 NaN or infinite", "expected finite"]),
    ("Inf in x", lambda c: md_of(x=with_nan(X, np.inf)), DataError, ["1 NaN or infinite", "expected finite"]),
    ("strings as x", lambda c: md_of(x=X.astype(str)), DataError, ["must be numeric", "dtype <U"]),
    ("ragged lists as x", lambda c: md_of(x=[[1.0, 2.0], [3.0]], y=[0, 1]), DataError,
     ["expected rows of equal length", "inhomogeneous"]),
    ("ragged lists as y", lambda c: md_of(x=X[:2], y=[[0, 1], [1]]),
     DataError, ["expected one label per row", "inhomogeneous"]),
    ("strings as labels", lambda c: md_of(x=X[:3], y=["a", "b", "c"]),
     DataError, ["integer class labels", "<U1 of shape (3,)"]),
    ("a complex tensor as x", lambda c: md_of(x=torch.ones(100, 4, dtype=torch.complex64)), DataError,
     ["must be real numbers", "complex64"]),
    ("a float tensor as y", lambda c: md_of(y=torch.as_tensor(Y).float()),
     DataError, ["integer class labels", "float", "y.long()"]),
    ("x None", lambda c: md_of(x=None), DataError, ["x is None", "expected an array"]),
    ("a split that is not an (x, y) pair",
     lambda c: ImageClassifierData.from_arrays(".", X, (X, Y), device="cpu"), DataError,
     ["(x, y) pair", "got ndarray"]),
    ("validation rows of another shape", lambda c: md_of(xv=X[:20, :3]),
     DataError, ["(3,)", "(4,)", "expected the same"]),
    ("labels beyond the named classes", lambda c: md_of(classes=["a", "b"]),
     DataError, ["labels go up to 2", "only 2 classes"]),
    ("batch size 0", lambda c: md_of(bs=0), DataError, ["positive integer", "got 0"]),
    ("batch size 2.5", lambda c: md_of(bs=2.5), DataError, ["positive integer", "got 2.5"]),
    ("batch size 0 (ArrayLoader)", lambda c: ArrayLoader(torch.zeros(3, 2), bs=0),
     DataError, ["positive integer", "got 0"]),
    ("augmentation asked for", lambda c: md_of(tfms=("flip", None)), DataError, ["tfms", "not supported", "tfms=None"]),
    ("epochs negative", trains(epochs=-1), FitError, ["non-negative integer", "got -1"]),
    ("epochs a float", trains(epochs=2.5), FitError, ["non-negative integer", "got 2.5"]),
    ("epochs and n_epochs disagree", trains(n_epochs=2), FitError, ["epochs=1 and n_epochs=2", "pass one"]),
    ("model not an nn.Module", trains(make_net=lambda: (lambda x: x), opt=lambda m: optim.Adam(net4().parameters())),
     FitError, ["torch.nn.Module", "got function"]),
    ("optimizer holding another model's params", trains(opt=lambda m: optim.SGD(net4().parameters(), 0.1)), FitError,
     ["holds none of the model's parameters", "Adam(net.parameters())"]),
    ("optimizer class instead of an optimizer", trains(opt=lambda m: optim.Adam), FitError,
     ["torch.optim.Optimizer", "the class Adam"]),
    ("loss class instead of a loss", trains(crit=nn.NLLLoss), FitError,
     ["nn.NLLLoss() (an instance)", "the class NLLLoss"]),
    ("loss given as a string", trains(crit="nll"), FitError, ["a loss such as", "str 'nll'"]),
    ("metrics not a list", trains(metrics=accuracy), FitError, ["a list of functions", "function accuracy"]),
    ("callbacks not a list", trains(callbacks=Callback()), FitError, ["a list of callback objects", "one Callback"]),
    ("accumulate 0", trains(accumulate=0), FitError, ["positive integer", "got 0"]),
    ("on_nan neither raise nor warn", trains(on_nan="ignore"), FitError, ["'raise' or 'warn'", "'ignore'"]),
    ("resume without a checkpoint path", trains(resume=True), FitError,
     ["resume=True needs checkpoint='path/to/ckpt'", "got checkpoint=None"]),
    ("checkpoint_every 0", trains(checkpoint="ckpt", checkpoint_every=0), FitError, ["positive number", "got 0"]),
    ("data neither loaders nor a pair", trains(data=lambda: "mnist"), FitError, ["trn_dl/val_dl", "got str"]),
    ("feature count not the model's (fit)", trains(data=lambda: md_of(x=np.hstack([X, X]), xv=np.hstack([X, X])[:20])),
     DataError, ["rows have shape (8,)", "takes 4 features"]),
    ("labels >= the model's number of outputs", trains(data=lambda: md_of(y=np.where(Y == 2, 4, Y))), DataError,
     ["class indices in [0, 3)", "3 outputs", "max 4"]),
    ("validation labels >= the number of outputs", trains(data=lambda: md_of(yv=np.full(20, 3))), DataError,
     ["validation data labels", "[0, 3)", "max 3"]),
    ("float labels in a bare ArrayLoader", trains(data=loaders(X, Y.astype("float32"))), DataError,
     ["integer class indices for NLLLoss", "float", "y.long()"]),
    ("NaN inputs in a bare ArrayLoader", trains(data=loaders(with_nan(X), Y)), DataError,
     ["training data inputs hold 1 NaN", "expected finite"]),
    ("model output not (N, C) for NLLLoss", trains(make_net=output_1d, crit=nn.NLLLoss()), DataError,
     ["class scores of shape (N, C)", "gives (1,)"]),
    ("feature count not the model's (predict)", lambda c: predict(net4(), np.zeros((5, 6), "float32")), DataError,
     ["input rows have shape (6,)", "takes 4 features"]),
    ("image side not the CNN's", lambda c: predict(cnn(), np.zeros((2, 100), "float32")), DataError,
     ["input rows have shape (100,)", "cannot take", "takes 1 channels"]),
    ("empty array (predict)", lambda c: predict(net4(), np.zeros((0, 4), "float32")),
     DataError, ["empty", "at least one row"]),
    ("array of one dimension (predict)", lambda c: predict(net4(), np.zeros(4, "float32")), DataError,
     ["shape (4,)", "expected (N, features)"]),
    ("NaN in the array (predict)", lambda c: predict(net4(), with_nan(X)),
     DataError, ["NaN or infinite", "expected finite"]),
    ("model not an nn.Module (predict)", lambda c: predict(X, X), FitError, ["torch.nn.Module", "got ndarray"]),
    ("a loader without labels", lambda c: predict_with_targs(net4(), ArrayLoader(torch.zeros(3, 4))), DataError,
     ["inputs only", "needs (x, y) batches"]),
    ("feature count not the model's (Predictor)",
     lambda c: Predictor(logreg(), {"input_shape": [784]}).predict(np.zeros((2, 100))),
     ExportError, ["expects 784 features", "got 100"]),
    ("NLL loss on raw scores (no LogSoftmax)", trains(make_net=lambda: net4()[:3], crit=nn.NLLLoss()), FitError,
     ["NLLLoss needs log-probabilities", "rows sum to", "nn.LogSoftmax(dim=1)", "nn.CrossEntropyLoss()"]),
    ("NLL loss on probabilities (Softmax)", trains(make_net=lambda: nn.Sequential(*net4()[:3], nn.Softmax(dim=1)),
                                                   crit=nn.NLLLoss()), FitError,
     ["NLLLoss needs log-probabilities", "look like probabilities", "instead of nn.Softmax"]),
    ("LogSoftmax over the batch (dim=0)", trains(make_net=lambda: nn.Sequential(*net4()[:3], nn.LogSoftmax(dim=0)),
                                                 crit=nn.NLLLoss()), FitError,
     ["needs log-probabilities", "LogSoftmax(dim=0)", "use nn.LogSoftmax(dim=1)"]),
    ("a float64 model on float32 data", trains(make_net=lambda: net4().double()), DataError,
     ["parameters are float64", "inputs are float32", "net.float()"]),
    ("BatchNorm with a 1-row last batch",
     trains(make_net=lambda: nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)),
            data=lambda: md_of(x=X[:65], y=Y[:65], bs=64)), DataError,
     ["last training batch holds 1 row", "65 rows in batches of 64", "BatchNorm"]),
    ("a callback class instead of an instance", trains(callbacks=[Callback]), FitError,
     ["callback objects", "got the class Callback", "pass Callback()"]),
    ("a negative learning rate", trains(opt=lambda m: with_lr(optim.SGD(m.parameters(), lr=0.1), -0.1)), FitError,
     ["learning rate must be a finite number >= 0", "got lr=-0.1"]),
    ("a checkpoint path that is a folder", trains(checkpoint="."), FitError,
     ["checkpoint='.' is a folder", "expected a file path"]),
    ("labels of a single class", lambda c: md_of(y=Y * 0, yv=Y[:20] * 0), DataError,
     ["a single class (0)", "at least 2"]),
    ("targets of another length", lambda c: accuracy(np.eye(3)[Y % 3], Y[:10]), DataError,
     ["targs must be one label per row", "shape (100,)", "got shape (10,)"]),
    ("fractions as predicted labels", lambda c: accuracy(np.array([.9, .2, .7]), np.array([1, 0, 1])), DataError,
     ["hold fractions, not labels", "(N, C) class scores"]),
    ("the whole ImageClassifierData (predict)", lambda c: predict(net4(), md_of()), DataError,
     ["whole ImageClassifierData", "md.val_dl"]),
    ("None (predict)", lambda c: predict(net4(), md_of().test_dl), DataError,
     ["got None", "no test set"]),
    ("NaN in the inputs (Predictor)",
     lambda c: Predictor(logreg(), {"input_shape": [784], "mean": 0.1, "std": 0.3}).predict(with_nan(np.zeros((2, 784)))),
     ExportError, ["1 NaN or infinite", "pixels in [0, 1]"]),
    ("0..255 floats for a normalising export",
     lambda c: Predictor(logreg(), {"input_shape": [784], "mean": 0.1, "std": 0.3}).predict(np.full((2, 784), 200.0)),
     ExportError, ["range from 200 to 200", "raw pixels in [0, 1]", "divide 0..255 pixels by 255"]),
    ("an (x, y) pair of arrays as data", trains(data=lambda: (X, Y)), FitError,
     ["(x, y) pair of arrays", "ImageClassifierData.from_arrays"]),
    ("a model with every parameter frozen", trains(make_net=lambda: net4().requires_grad_(False)), FitError,
     ["no parameters to train", "requires_grad=False"]),
    ("a loss that does not reduce the batch", trains(crit=nn.NLLLoss(reduction="none")), FitError,
     ["reduce the batch to one number", "reduction='none'"]),
    ("a model that returns a tuple", trains(make_net=lambda: TwoOutputs(), crit=nn.NLLLoss()), FitError,
     ["returns a tuple", "NLLLoss needs one tensor of class scores"]),
    ("a hand-written log-softmax over the batch", trains(make_net=lambda: Lambda(net4()[:3], lambda z: F.log_softmax(z, 0)),
                                                        crit=nn.NLLLoss()), FitError,
     ["needs log-probabilities", "columns sum to 1", "over the batch (dim=0)", "dim=1"]),
    ("NLL loss on LogSigmoid outputs", trains(make_net=lambda: nn.Sequential(*net4()[:3], nn.LogSigmoid()),
                                              crit=nn.NLLLoss()), FitError,
     ["needs log-probabilities", "rows sum to", "nn.LogSoftmax(dim=1)"]),
    ("loss and optimizer swapped", lambda c: fit(c["net"], md_of(), 1, nn.NLLLoss(), optim.Adam(c["net"].parameters()),
                                                verbose=False, callbacks=[c["spy"]]), FitError,
     ["crit got an optimizer (Adam)", "fit(net, md, epochs, opt, crit, metrics)"]),
    ("a metric that returns None", trains(metrics=[lambda preds, targs: None]), FitError,
     ["metric <lambda> fails", "preds (8, 3) float32, targs (8,) int64", "returned None", "returns one number"]),
    ("one metric twice", trains(metrics=[accuracy, accuracy]), FitError,
     ["two metrics are named 'accuracy'", "one figure per name"]),
]


@pytest.mark.parametrize("name, call, error, fragments", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_netfits_own_clear_error(name, call, error, fragments):
    ctx = {"net": getattr(call, "make_net", net4)(), "spy": Spy()}
    is_module = isinstance(ctx["net"], nn.Module)
    before = {k: v.clone() for k, v in ctx["net"].state_dict().items()} if is_module else {}
    with pytest.raises(error) as e:
        call(ctx)
    assert type(e.value).__module__.startswith("netfit."), f"{type(e.value)} is not netfit's own"
    assert isinstance(e.value, (ValueError, TypeError))
    message = str(e.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert ctx["spy"].events == [], f"training began: {ctx['spy'].events}"  # refused before any event
    assert not is_module or all(torch.equal(before[k], v) for k, v in ctx["net"].state_dict().items())


def test_the_table_lists_every_case(figure):
    table = [line for line in __doc__.splitlines() if line[:3].strip().isdigit()]
    assert len(table) == len(CASES) >= 30
    assert len({c[0] for c in CASES}) == len(CASES)
    figure("bad-input cases answered with netfit's own clear error before any computation", len(CASES), len(CASES),
           "listed in tests/reliability/test_bad_inputs.py")


# ---------------------------------------------------------------- a loss that becomes NaN

class NanAt(Callback):
    """Replaces the inputs of the batch before optimizer step `step` with NaN, so that its loss is NaN;
    keeps the checkpoint file as it was then: the last good one."""

    def __init__(self, step):
        self.step, self.last_good, self.done = step, None, False

    def before_batch(self, run):
        if run.step == self.step and not self.done:  # once: a skipped step leaves run.step where it was
            self.done = True
            run.xb = torch.full_like(run.xb, float("nan"))
            if run.checkpoint and run.checkpoint.exists():
                self.last_good = run.checkpoint.read_bytes()


@pytest.mark.parametrize("nan_step", [5, 7, 13])  # 7 batches per epoch: epoch 0 batch 5, epoch 1 batch 0 and 6
def test_nan_loss_stops_with_epoch_and_step_and_keeps_the_last_checkpoint(tmp_path, nan_step):
    md, net = md_of(bs=16), net4()  # 100 training rows: 7 batches per epoch
    spy = NanAt(nan_step)
    with pytest.raises(NonFiniteLossError) as e:
        fit(net, md, 3, optim.Adam(net.parameters()), callbacks=[spy], verbose=False, checkpoint=tmp_path / "ckpt",
            checkpoint_every=2)
    epoch, batch = divmod(nan_step, 7)
    assert f"training loss became nan at epoch {epoch}, batch {batch} (optimizer step {nan_step})" in str(e.value)
    assert str(tmp_path / "ckpt") in str(e.value)
    assert (tmp_path / "ckpt").read_bytes() == spy.last_good  # the last good checkpoint, byte for byte
    state = load_checkpoint(tmp_path / "ckpt")
    assert state["step"] == nan_step - nan_step % 2 or state["batch"] == 0
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_nan_loss_warns_and_goes_on(tmp_path):
    md, net = md_of(bs=16), net4()
    with pytest.warns(RuntimeWarning, match=r"non-finite training loss nan at epoch 1, batch 3 \(optimizer step 10\)"):
        h = fit(net, md, 3, optim.Adam(net.parameters(), 0.01), metrics=[accuracy], callbacks=[NanAt(10)],
                verbose=False, on_nan="warn")
    assert len(h) == 3 and all(math.isfinite(r["trn_loss"]) for r in h)
    assert all(torch.isfinite(p).all() for p in net.parameters()) and h[-1]["trn_loss"] < h[0]["trn_loss"]


# ---------------------------------------------------------------- the CLI: one line, --debug shows the traceback

def test_cli_errors_are_one_line_and_debug_shows_them(tmp_path, capsys):
    data = J.tiny_pickle(tmp_path / "tiny.pkl.gz")
    base = ["train", "--data-path", str(data), "--model", "logreg", "--epochs", "1", "--quiet",
            "--out", str(tmp_path / "r")]
    cases = [(["--checkpoint-every", "0"], "--checkpoint-every must be at least 1; got 0"),
             (["--bs", "0"], "--bs must be at least 1; got 0"),
             (["--model", "mlp", "--opt", "sgd", "--lr", "1e30"], "training loss became"),
             (["--data-path", str(tmp_path / "nowhere")], "does not exist")]
    for extra, message in cases:
        assert main(base + extra) == 1
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    with pytest.raises(NonFiniteLossError, match="epoch 0"):
        main(["--debug"] + base + ["--model", "mlp", "--opt", "sgd", "--lr", "1e30"])
