"""Writes notebooks/lesson8.ipynb (without outputs) from the cells below.

    python notebooks/make_lesson8.py

The notebook tells fastai's Intro to ML lesson 8 with netfit. Edit the cells here and rerun, so the
committed notebook stays free of outputs; `tests/test_notebook.py` executes it top to bottom.
"""
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

CELLS = [
    ("md", """# Lesson 8: from forests to nets

Until now the course fitted random forests to tables. This lesson fits a neural network to images
of handwritten digits, and then takes the network apart: the model, its softmax, its loss and the
optimiser are each written by hand (`netfit.scratch`) and checked against PyTorch's own.

Set `NETFIT_NOTEBOOK_QUICK=1` in the environment before starting Jupyter for a fast run on a few
thousand rows (that is what the tests do)."""),
    ("code", """import os

QUICK = os.environ.get("NETFIT_NOTEBOOK_QUICK") == "1"        # a fast pass: fewer rows, one epoch
DOWNLOAD = os.environ.get("NETFIT_NOTEBOOK_DOWNLOAD") == "1"  # fetch MNIST if it is not on disk
EPOCHS = 1 if QUICK else 3

%matplotlib inline
import copy
import inspect

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn, optim

import netfit
from netfit import ImageClassifierData, accuracy, datasets, fit, plot_history, plots, predict, scratch, set_lrs

torch.manual_seed(42)
QUICK, EPOCHS"""),
    ("md", """## The data

MNIST is 70,000 greyscale digits of 28x28 pixels. `datasets.mnist()` gives them the way the lesson's
`mnist.pkl.gz` did: 50,000 to train, 10,000 to validate, 10,000 to test, each image flattened into a
row of 784 numbers between 0 and 1.

When MNIST is not on this machine we use Fashion-MNIST instead: the same shapes and sizes, but
photographs of ten kinds of clothing, and a harder problem. It needs no network when the
`dataset-fashion-mnist` package is installed."""),
    ("code", """try:
    ((x, y), (x_valid, y_valid), _) = datasets.mnist(download=DOWNLOAD)
    name, classes = "mnist", [str(i) for i in range(10)]
except datasets.DatasetError:
    ((x, y), (x_valid, y_valid), _) = datasets.fashion_mnist()
    name, classes = "fashion-mnist", list(datasets.FASHION_CLASSES)
if QUICK:
    x, y, x_valid, y_valid = x[:3000], y[:3000], x_valid[:1000], y_valid[:1000]
name, x.shape, y.shape, x_valid.shape, x.dtype, y.dtype"""),
    ("md", """### Normalising

Networks train best when their inputs have mean 0 and standard deviation 1, so we subtract the mean
and divide by the standard deviation. Both numbers come from the **training** set, and the very same
two numbers are applied to the validation set.

Why not give the validation set its own mean and standard deviation? The model learns what a pixel
value of, say, 1.5 means after *our* transformation. Transforming the validation images differently
would shift every pixel the model sees, and at prediction time there may be a single image with no
statistics of its own at all. So the validation set comes out close to, but not exactly, mean 0 and
standard deviation 1, and that is as it should be."""),
    ("code", """mean, std = x.mean(), x.std()
x = (x - mean) / std
x_valid = (x_valid - mean) / std        # the training statistics, not x_valid's own
print(f"train mean {x.mean():.3f} std {x.std():.3f}; valid mean {x_valid.mean():.3f} std {x_valid.std():.3f}")"""),
    ("md", """Each row is an image again once reshaped to 28x28:"""),
    ("code", """plots(x_valid[:8].reshape(-1, 28, 28), titles=[classes[i] for i in y_valid[:8]], figsize=(12, 3), rows=1);"""),
    ("md", """## A one-layer network

`ImageClassifierData.from_arrays` wraps the arrays into batches of 64: `md.trn_dl` is shuffled every
epoch, `md.val_dl` is read in order.

The simplest network has one linear layer: 784 inputs times a 784x10 weight matrix, plus a bias,
gives 10 numbers per image, one per class. `LogSoftmax` turns them into log-probabilities, and the
negative log-likelihood loss (`NLLLoss`) is small when the correct class gets a high probability."""),
    ("code", """md = ImageClassifierData.from_arrays("data/" + name, (x, y), (x_valid, y_valid), bs=64, classes=classes)
net = nn.Sequential(nn.Linear(28 * 28, 10), nn.LogSoftmax(dim=1)).to(md.device)
[p.shape for p in net.parameters()], sum(p.numel() for p in net.parameters())"""),
    ("md", """`fit` runs the training loop: for each batch it computes the predictions and the loss, the
gradient of the loss with respect to every weight, and a step of the optimiser (Adam here). After
each epoch it reports the losses and the accuracy on the validation set."""),
    ("code", """h_net = fit(net, md, EPOCHS, optim.Adam(net.parameters()), nn.NLLLoss(), [accuracy])"""),
    ("md", """`h_net.info` says how the epochs ran: the device, the optimizer kernel, and the training step. On
a CUDA GPU `fit` records the whole step (forward, loss, backward, Adam's update) once as a CUDA
graph and replays it for every batch, which makes this small model's epoch about 30 times faster
than a plain `DataLoader` loop; elsewhere, and when something rules the graph out, it says why."""),
    ("code", """{k: h_net.info[k] for k in ("device", "optimizer", "step")}"""),
    ("md", """## Predictions

`predict` runs the model over the validation set and returns one row of 10 log-probabilities per
image. The predicted class is the column with the largest value (`argmax`), and the accuracy is the
fraction of rows where it equals the label."""),
    ("code", """preds = predict(net, md.val_dl)          # (n_valid, 10) log-probabilities
pred_labels = preds.argmax(axis=1)       # (n_valid,) the most likely class of each image
print(preds.shape, pred_labels[:10], y_valid[:10])
(pred_labels == y_valid).mean(), accuracy(preds, y_valid)"""),
    ("code", """colors = ["green" if p == t else "red" for p, t in zip(pred_labels[:8], y_valid[:8])]
plots(x_valid[:8].reshape(-1, 28, 28), titles=[classes[p] for p in pred_labels[:8]], colors=colors,
      figsize=(12, 3), rows=1);"""),
    ("md", """Some of its mistakes, titled *prediction (truth)*:"""),
    ("code", """wrong = np.flatnonzero(pred_labels != y_valid)[:8]
plots(x_valid[wrong].reshape(-1, 28, 28), titles=[f"{classes[pred_labels[i]]} ({classes[y_valid[i]]})" for i in wrong],
      figsize=(12, 3), rows=1);"""),
    ("md", """## Logistic regression from scratch

A linear layer followed by softmax is logistic regression with ten classes. `scratch.LogReg` writes it
out: two tensors of weights made by `get_weights` (random normal numbers divided by the number of
inputs), a matrix product, a bias that broadcasts over the rows, and its own `log_softmax`.
Because the weights are `nn.Parameter`s inside an `nn.Module`, `net2.parameters()` finds them and
`fit` trains this net exactly as it trained the one above."""),
    ("code", """print(inspect.getsource(scratch.LogReg.__init__))
print(inspect.getsource(scratch.LogReg.forward))"""),
    ("code", """net2 = scratch.LogReg().to(md.device)
h_logreg = fit(net2, md, EPOCHS, optim.Adam(net2.parameters()), nn.NLLLoss(), [accuracy])
print(f"nn.Sequential {h_net[-1]['accuracy']:.4f}  scratch.LogReg {h_logreg[-1]['accuracy']:.4f}")"""),
    ("md", """## Softmax and cross-entropy by hand

Softmax exponentiates each score and divides by the row's total, so every row becomes positive
numbers that sum to 1. The lesson's notebook wrote `torch.exp(x) / (1 + torch.exp(x).sum(dim=0))`,
which sums down the batch (dim 0) instead of across the classes, so its rows do not sum to 1:"""),
    ("code", """z = torch.tensor([[2.0, 1.0, 0.1], [1.0, 3.0, -1.0]])     # 2 images, 3 classes
lesson_softmax = torch.exp(z) / (1 + torch.exp(z).sum(dim=0))
print("lesson's rows sum to", lesson_softmax.sum(dim=1))
print(scratch.softmax(z))
torch.testing.assert_close(scratch.softmax(z), torch.softmax(z, dim=-1))"""),
    ("md", """The plain formula also breaks on large scores: `exp(10000)` is infinite, and infinity over infinity
is NaN. Subtracting each row's maximum first changes nothing mathematically (it divides top and
bottom by the same number) but keeps every exponent at or below 0. `scratch.softmax` and
`scratch.log_softmax` do that:"""),
    ("code", """big = torch.tensor([[1e4, 0.0, -1e4]])
print("naive  ", big.exp() / big.exp().sum())
print("shifted", scratch.softmax(big), scratch.log_softmax(big))
torch.testing.assert_close(scratch.log_softmax(big), torch.log_softmax(big, dim=-1))"""),
    ("md", """The loss: for each image take the log-probability given to the right class, negate it, and
average over the batch. That is `nll_loss`; applied to `log_softmax` of raw scores it is the
cross-entropy. For two classes it reduces to the lesson's `binary_loss`. We check values and
gradients against PyTorch's `F.cross_entropy`:"""),
    ("code", """t = torch.tensor([0, 1])
z1, z2 = z.clone().requires_grad_(), z.clone().requires_grad_()
ours, theirs = scratch.cross_entropy(z1, t), F.cross_entropy(z2, t)
ours.backward(); theirs.backward()
torch.testing.assert_close(ours, theirs); torch.testing.assert_close(z1.grad, z2.grad)
ours, scratch.nll_loss(scratch.log_softmax(z), t), theirs"""),
    ("code", """acts = np.array([1, 0, 0, 1])
probs = np.array([0.9, 0.1, 0.2, 0.8])
# p is clipped away from 0 and 1, so a confidently wrong 0 or 1 costs a lot but not infinity
scratch.binary_loss(acts, probs), scratch.binary_loss(acts, 1 - acts)"""),
    ("md", """## The training loop by hand

`fit` hides the loop; `scratch.train_loop` spells it out. For each batch: predictions, loss,
`loss.backward()` to fill every weight's `.grad`, then a step downhill and a reset of the gradients
(`backward` adds to `.grad` rather than overwriting it):

```python
loss = crit(model(xb), yb)
loss.backward()
for w in params:
    w.data -= w.grad * lr
    w.grad.zero_()
```

That is stochastic gradient descent, with a learning rate `lr`."""),
    ("code", """net3 = scratch.LogReg().to(md.device)
h_loop = scratch.train_loop(net3, md, epochs=EPOCHS, lr=1e-2)
h_loop"""),
    ("md", """The lesson wrote the same loop out with an optimizer, fastai 0.7's `V` and `to_np`, and an
iterator over the loader whose length it asks for; netfit has all three, so the cell runs as typed:"""),
    ("code", """from netfit import V, to_np

net4 = scratch.LogReg().to(md.device)
loss = nn.NLLLoss()
optimizer = optim.SGD(net4.parameters(), lr=1e-2)

def score(x, y):
    y_pred = to_np(net4(V(x)))
    return np.sum(y_pred.argmax(axis=1) == to_np(y)) / len(y_pred)

for epoch in range(1):
    losses = []
    dl = iter(md.trn_dl)
    for t in range(len(dl)):
        xt, yt = next(dl)
        y_pred = net4(V(xt))
        l = loss(y_pred, V(yt))
        losses.append(l.item())
        optimizer.zero_grad()
        l.backward()
        optimizer.step()
    val_dl = iter(md.val_dl)
    val_scores = [score(*next(val_dl)) for i in range(len(val_dl))]
    print(f"mean training loss {np.mean(losses):.4f}, validation accuracy {np.mean(val_scores):.4f}")"""),
    ("md", """## A deeper network: 784-100-100-10

Stacking linear layers with a non-linearity (ReLU, `max(0, x)`) between them lets the network learn
more than a linear boundary. We train it with SGD with momentum (each step keeps 90% of the previous
one) and weight decay (a small pull of every weight towards 0), as in the lesson.

`scratch.SGD` is the same optimiser written out; from the same starting weights it takes the same
steps as `torch.optim.SGD`. Both fits pass `fast=False`: by default `fit` would train the stock SGD
through its fused kernel, whose rounding differs in the last bit, and at lr 0.1 with momentum such
differences grow over the epochs into a different run."""),
    ("code", """def mlp():
    return nn.Sequential(nn.Linear(28 * 28, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(),
                         nn.Linear(100, 10), nn.LogSoftmax(dim=1)).to(md.device)

net4 = mlp()
net5 = copy.deepcopy(net4)
opt = optim.SGD(net4.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
torch.manual_seed(0)
h_mlp = fit(net4, md, EPOCHS, opt, nn.NLLLoss(), [accuracy], fast=False)
torch.manual_seed(0)   # the same shuffles for the twin run
h_twin = fit(net5, md, EPOCHS, scratch.SGD(net5.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3),
             nn.NLLLoss(), [accuracy], verbose=False, fast=False)
print("torch.optim.SGD", np.round(h_mlp["accuracy"], 4), "\\nscratch.SGD    ", np.round(h_twin["accuracy"], 4))"""),
    ("md", """Once the loss stops falling, a smaller learning rate lets the weights settle into the bottom of
the valley instead of bouncing across it. `set_lrs` changes the rate of an existing optimiser:"""),
    ("code", """set_lrs(opt, 1e-2)
h_mlp2 = fit(net4, md, max(1, EPOCHS // 2), opt, nn.NLLLoss(), [accuracy])
plot_history(h_mlp);"""),
    ("md", """## Aside: broadcasting and matrix products

Arithmetic between arrays of different shapes *broadcasts*: the smaller one is repeated along the
missing or length-1 axes, without being copied. A scalar is added to every element; a vector of
length 3 is added to every row of a 3x3 matrix; a column (shape (3, 1)) to every column."""),
    ("code", """a = np.array([10, 6, -4])
m = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
c = np.array([10, 20, 30])
print(a > 0, a + 1)
print(m + c)              # c as a row, shape (3,) -> (1, 3): added to each row
print(m + c[:, None])     # c as a column, shape (3, 1): added to each column
np.broadcast_to(c, m.shape)"""),
    ("md", """A matrix times a vector is broadcasting followed by a sum: multiply each row element-wise by the
vector, then add up each row. A matrix product does that for every column of the second matrix,
which is how a linear layer turns a batch of images (N, 784) into scores (N, 10)."""),
    ("code", """print(m @ c, (m * c).sum(axis=1))
xb = torch.from_numpy(x_valid[:5]).to(md.device)   # (5, 784)
scores = xb @ net2.l1_w + net2.l1_b                 # (5, 784) @ (784, 10) -> (5, 10), bias (10,) per row
torch.testing.assert_close(scratch.log_softmax(scores), net2(xb))
scores.shape"""),
]


def build():
    nb = new_notebook()
    nb.cells = [new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in CELLS]
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i:02d}"  # stable ids: regenerating gives the same file
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


if __name__ == "__main__":
    out = Path(__file__).with_name("lesson8.ipynb")
    nbformat.write(build(), out)
    print(f"wrote {out}")
