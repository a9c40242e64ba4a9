"""Checks at fit's boundary: arguments, optimizer and data are tested before any training, so that a
mistake gets one sentence naming what was expected and what was given instead of an error deep in
torch (or, on CUDA, an opaque device-side assert). Also the default loss for a model.
"""
import contextlib
import math
import warnings
import weakref

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import DataError, _warn

__all__ = []


class FitError(TypeError):
    """`fit` was called with arguments it cannot use; the message says which and why."""


_ORDER = ("the order is fit(net, md, epochs, opt, crit, metrics), optimizer before loss; or name them: "
          "fit(net, md, 1, opt=..., crit=...)")


def _check_args(crit, metrics, callbacks, checkpoint_every, events=()):
    """FitError for a loss, metrics, callbacks or checkpoint interval `fit` cannot use; a warning for a
    callback method that looks like an event but is not one of `events` (so would never be called)."""
    if isinstance(crit, torch.optim.Optimizer):
        raise FitError(f"crit got an optimizer ({type(crit).__name__}): {_ORDER}")
    if crit is not None and (isinstance(crit, type) or not callable(crit)):
        given = f"the class {crit.__name__}" if isinstance(crit, type) else f"{type(crit).__name__} {crit!r}"
        raise FitError(f"crit must be a loss such as nn.NLLLoss() (an instance) or F.nll_loss; got {given}")
    if metrics is not None and (not isinstance(metrics, (list, tuple))
                                or not all(callable(m) and not isinstance(m, type) for m in metrics)):
        raise FitError(f"metrics must be a list of functions metric(preds, targs), e.g. [accuracy]; got {metrics!r}")
    if callbacks is not None and not isinstance(callbacks, (list, tuple)):
        raise FitError(f"callbacks must be a list of callback objects; got one {type(callbacks).__name__} "
                       "(pass [cb])")
    for cb in callbacks or []:
        if isinstance(cb, type):
            raise FitError(f"callbacks must be callback objects; got the class {cb.__name__} (pass {cb.__name__}())")
        if isinstance(cb, (torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)):
            raise FitError(f"callbacks got a PyTorch scheduler ({type(cb).__name__}), which fit cannot call by itself: "
                           f"wrap it, callbacks=[TorchScheduler(sched)] (stepped after each epoch), or use netfit's "
                           "per-step schedule=one_cycle(...)")
        _warn_unknown_events(cb, events)
    if getattr(crit, "reduction", "mean") not in ("mean", "sum"):
        raise FitError(f"crit must reduce the batch to one number (reduction='mean' or 'sum'); got "
                       f"reduction={crit.reduction!r}")
    every = checkpoint_every
    if every is not None and not (isinstance(every, (int, np.integer)) and not isinstance(every, bool) and every >= 1):
        raise FitError(f"checkpoint_every must be a positive number of optimizer steps; got {checkpoint_every!r}")


_FASTAI_EVENTS = {"on_train_begin": "before_fit", "on_train_end": "after_fit", "on_epoch_begin": "before_epoch",
                  "on_epoch_end": "after_epoch", "on_batch_begin": "before_batch", "on_batch_end": "after_batch",
                  "on_backward_begin": "after_loss", "on_backward_end": "after_backward", "on_step_end": "after_batch"}


def _warn_unknown_events(cb, events):
    """Warn about `cb`'s methods that look like a misspelled event (`after_epcoh`) or are fastai's
    event names (`on_epoch_end`): they would never be called. Other helper methods are left alone."""
    import difflib
    for name in dir(cb):
        if name in events or name.startswith("_") or not callable(getattr(cb, name, None)):
            continue
        near = _FASTAI_EVENTS.get(name) or next(iter(difflib.get_close_matches(name, events, n=1, cutoff=0.85)), None)
        if near:
            _warn(f"{type(cb).__name__}.{name} is not a training event and will never be called (did you mean "
                  f"{near}?); the events are {', '.join(events)}")


def _check_data(model, crit, loaders):
    """Fail before training, with a sentence, on data that the model or the loss cannot take.

    For loaders that hold their arrays (`ArrayLoader`): the inputs must be finite, one row must go
    through the model, and for NLLLoss/CrossEntropyLoss the labels must be integers in [0, C) for a
    model with C outputs (on CUDA an out-of-range label is otherwise an opaque device-side assert).
    Other iterables are left to torch, batch by batch.
    """
    for name, dl in loaders:
        x, y = getattr(dl, "x", None), getattr(dl, "y", None)
        if not isinstance(x, torch.Tensor):
            continue
        if len(x) == 0:
            raise DataError(f"the {name} holds no rows; expected at least one")
        # the sum is finite unless some value is NaN/inf (or the total overflows): ~30x cheaper than
        # testing every value, which the lesson's repeated fit calls would each pay
        if x.is_floating_point() and not torch.isfinite(x.sum()) and not torch.isfinite(x).all():
            raise DataError(f"the {name} inputs hold {(~torch.isfinite(x)).sum().item()} NaN or infinite "
                            "values; expected finite numbers")
        out = _forward_one(model, x[:1], f"the {name}")  # (1, C)
        if name == "training data":
            _check_model_output(crit, out)
            _check_outputs(model, crit, out if len(x) < 2 else _forward_one(model, x[:8], f"the {name}"))
            _check_last_batch(model, dl, x)
        _check_labels(crit, out, y, f"the {name}", "one row")
        _check_targets(crit, out, y[:1] if isinstance(y, torch.Tensor) else y, f"the {name}")


def _check_metrics(model, metrics, val_dl):
    """FitError before training for metrics that would fail, or give no number, after the first epoch:
    each is called on the model's outputs for a few validation rows (for a loader that holds its
    arrays), as `_validate` calls it: `metric(preds, targs)`. Two metrics of one name are refused too:
    the History keeps one figure per name."""
    from .history import _metric_name
    names = [_metric_name(m) for m in metrics]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise FitError(f"two metrics are named {twice[0]!r}, and the History keeps one figure per name: pass each "
                       "metric once, or give one another name (def top1(preds, targs): return accuracy(preds, targs))")
    x, y = getattr(val_dl, "x", None), getattr(val_dl, "y", None)
    if not metrics or not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or not len(x):
        return
    preds, targs = _forward_one(model, x[:8], "the validation data"), y[:8]
    for m, name in zip(metrics, names):
        got = None
        try:
            value = m(preds, targs)
            got = "it returned None" if value is None else None
            torch.as_tensor(value).detach().float().reshape(())
        except Exception as e:
            got = got or f"{type(e).__name__}: {e}"
        if got is None:
            continue
        sklearn = (getattr(m, "__module__", None) or "").startswith("sklearn")
        hint = (f"; scikit-learn's metrics take (y_true, y_pred) labels, and fit calls metric(preds, targs) with "
                f"the model's scores: wrap it, e.g. metrics=[lambda preds, targs: {name}(targs.cpu(), "
                "preds.argmax(1).cpu())]" if sklearn else "")
        shown = lambda t: (f"{tuple(t.shape)} {str(t.dtype)[6:]}" if isinstance(t, torch.Tensor)  # noqa: E731
                           else f"a {type(t).__name__}")
        raise FitError(f"metric {name} fails on the model's outputs for {len(targs)} validation rows (preds "
                       f"{shown(preds)}, targs {shown(targs)}): {got}; a metric takes (preds, targs) and returns one "
                       f"number{hint}")


def _check_first_batch(model, crit, preds, yb):
    """`_check_data`'s checks on the first training batch of a loader that does not hold its arrays
    (a torch DataLoader...): before the loss runs, so that on CUDA a bad label is a sentence, not a
    device-side assert. One host read, once per fit."""
    _check_model_output(crit, preds)
    _check_outputs(model, crit, preds.detach() if isinstance(preds, torch.Tensor) else preds)
    _check_labels(crit, preds, yb, "the training data", "its first batch")
    _check_targets(crit, preds, yb, "the training data")


def _check_model_output(crit, out):
    if not isinstance(out, torch.Tensor) and _class_loss(crit) is not None:
        raise FitError(f"the model returns a {type(out).__name__}, and {_class_loss(crit)} needs one tensor of "
                       "class scores (N, C) per batch (return only the scores from forward, or pass a crit "
                       f"that takes a {type(out).__name__})")


def _check_labels(crit, out, y, what, rows):
    """For NLL/cross-entropy: DataError unless `y` holds integer class indices in [0, C) for the C
    columns of the model's output `out` (computed for `rows` of `what`)."""
    kind = _class_loss(crit)
    if kind is None or not isinstance(y, torch.Tensor) or y.ndim != 1:
        return
    if y.is_floating_point() or y.is_complex():
        from .data import _describe
        raise DataError(f"{what} labels must be integer class indices for {kind}; got {_describe(y)} (use y.long())")
    if out.ndim != 2:
        raise DataError(f"{kind} needs the model to give class scores of shape (N, C); it gives "
                        f"{tuple(out.shape)} for {rows} of {what}")
    labels = y[y != getattr(crit, "ignore_index", -100)]
    if len(labels) and (labels.min().item() < 0 or labels.max().item() >= out.shape[1]):
        raise DataError(f"{what} labels must be class indices in [0, {out.shape[1]}) for a model with "
                        f"{out.shape[1]} outputs; got min {labels.min().item()}, max {labels.max().item()}")


_ELEMENTWISE = (nn.MSELoss, nn.L1Loss, nn.SmoothL1Loss, nn.HuberLoss, nn.BCELoss, nn.BCEWithLogitsLoss)
_ELEMENTWISE_F = (F.mse_loss, F.l1_loss, F.smooth_l1_loss, F.huber_loss, F.binary_cross_entropy,
                  F.binary_cross_entropy_with_logits)


def _check_targets(crit, out, y, what):
    """For losses that compare outputs and targets value by value (MSE, L1, BCE...): DataError unless
    the targets have the outputs' shape per row and a float dtype. torch only warns about another shape
    and broadcasts, e.g. (N, 1) outputs against (N,) targets to an (N, N) loss that trains wrongly."""
    if not (isinstance(crit, _ELEMENTWISE) or crit in _ELEMENTWISE_F) or not isinstance(out, torch.Tensor) \
            or not isinstance(y, torch.Tensor):
        return
    name = type(crit).__name__ if isinstance(crit, nn.Module) else f"F.{crit.__name__}"
    if (not y.is_floating_point() and ("BCE" in name or "binary" in name) and y.ndim == 1
            and tuple(out.shape[1:]) == (1,)):  # one class label per row, as ImageClassifierData keeps them
        raise DataError(f"{name} needs float targets shaped like the outputs, (1,) per row; {what} targets are one "
                        f"{str(y.dtype)[6:]} class label per row. For two classes, end the model in nn.Linear(..., 2) "
                        "and use nn.CrossEntropyLoss() (or nn.LogSoftmax(dim=1) and nn.NLLLoss()); to keep one output, "
                        "give fit your own loaders of float columns: fit(net, (ArrayLoader(x, y.reshape(-1, 1).astype("
                        "'float32'), bs=64, shuffle=True), ArrayLoader(x_valid, y_valid.reshape(-1, 1).astype('float32'), "
                        "bs=64)), ...)")
    if tuple(y.shape[1:]) != tuple(out.shape[1:]):
        fix = (f"y.reshape(len(y), {', '.join(map(str, out.shape[1:]))})" if out.shape[1:].numel() == y.shape[1:].numel()
               else "one target per output")
        raise DataError(f"{name} compares outputs and targets value by value, but the model gives "
                        f"{tuple(out.shape[1:])} per row and {what} targets are {tuple(y.shape[1:])} per row "
                        f"(torch would broadcast them and train on the wrong loss); use {fix}")
    if not y.is_floating_point():
        hint = ("; for class labels use nn.CrossEntropyLoss() on (N, C) outputs" if "BCE" in name
                or "binary" in name else "")
        raise DataError(f"{name} needs float targets; {what} targets are {str(y.dtype)[6:]} (use y.float()){hint}")


def _class_loss(crit):
    """"NLLLoss" or "CrossEntropyLoss" when `crit` is that loss (a module, a subclass, or the function
    F.nll_loss / F.cross_entropy), else None."""
    if isinstance(crit, nn.NLLLoss) or crit is F.nll_loss:
        return "NLLLoss"
    if isinstance(crit, nn.CrossEntropyLoss) or crit is F.cross_entropy:
        return "CrossEntropyLoss"
    return None


_ROW_SUM_TOL = 0.05  # exp(log-probabilities) from a half-precision model can sum to 1 +- a few 1e-3


def _check_outputs(model, crit, out):
    """FitError when NLL loss gets outputs that cannot be log-probabilities: any output above 0 (raw
    scores, probabilities), a final LogSoftmax over another dimension or any log-softmax over the batch
    (columns that sum to 1), a final LogSigmoid; these train to nonsense, silently. A warning when
    cross-entropy gets probabilities: it applies a softmax itself, so the model's Softmax is applied twice.
    `out`: the model's outputs for a few training rows, (n, C)."""
    kind = _class_loss(crit)
    if kind is None or not isinstance(out, torch.Tensor) or out.ndim != 2 or not out.is_floating_point():
        return
    out = out.float()
    last = [m for m in model.modules() if not list(m.children())][-1:] or [None]
    probabilities = bool(((out >= 0) & (out <= 1)).all()) and torch.allclose(out.sum(1), torch.ones_like(out[:, 0]),
                                                                              atol=1e-3) and out.shape[1] > 1
    if kind == "NLLLoss":
        sums = out.exp().sum(1)  # 1 per row for log-probabilities
        if isinstance(last[0], nn.LogSoftmax) and last[0].dim not in (None, 1, -1):
            hint = f"its last layer {last[0]} normalises another dimension: use nn.LogSoftmax(dim=1)"
        elif probabilities:
            hint = "they look like probabilities: end the model in nn.LogSoftmax(dim=1) instead of nn.Softmax"
        elif bool((out > 1e-3).any()):  # a log-probability is never above 0
            hint = "end the model in nn.LogSoftmax(dim=1), or train raw scores with nn.CrossEntropyLoss()"
        elif bool(((sums - 1).abs() <= _ROW_SUM_TOL).all()):
            return
        elif len(out) > 1 and bool(((out.exp().sum(0) - 1).abs() <= _ROW_SUM_TOL).all()):
            hint = ("the columns sum to 1 instead: the softmax runs over the batch (dim=0); take it over each "
                    "row's classes with nn.LogSoftmax(dim=1) or softmax(x, dim=1)")
        elif isinstance(last[0], nn.LogSigmoid):  # each output a log-probability of its own
            hint = (f"its last layer {last[0]} gives each class its own probability, not one distribution per row: "
                    "use nn.LogSoftmax(dim=1), or train raw scores with nn.CrossEntropyLoss()")
        else:  # nothing names the mistake, and the lesson's own hand-written LogReg (its softmax divides by
            return  # 1 + a column sum) is one: it trains, and the lesson runs it
        raise FitError(f"{kind} needs log-probabilities from the model (each row of exp(outputs) summing to 1), "
                       f"but the rows sum to {sums.min().item():.3g}..{sums.max().item():.3g}; {hint}")
    if probabilities:
        _warn(f"the model's outputs are probabilities (rows sum to 1) and {kind} applies a softmax itself, so the "
              "softmax is applied twice and training is slower and worse: drop the model's final nn.Softmax, or "
              "end it in nn.LogSoftmax(dim=1) and use nn.NLLLoss()")


def _check_last_batch(model, dl, x):
    """DataError when a training step would feed a BatchNorm layer one row: the last batch holds one
    (under torchrun: some rank's last batch, or the 1-row stand-in a rank with a batch fewer steps on),
    and the layer would then see one value per channel, which it cannot normalise in training (torch
    says so mid-epoch, deep in the model). BatchNorm2d on images sees H*W values per channel and is fine."""
    if not hasattr(dl, "n_batches"):
        return
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    dist = torch.distributed
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    counts = [dl.n_batches(r, world) for r in range(world)]
    ones = [] if getattr(dl, "drop_last", False) else [
        r for r in range(world) if counts[r] and dl.rows(counts[r] - 1, r, world) == 1]
    short = [r for r in range(world) if counts[r] < counts[0]]  # see fit's _in_lockstep
    if not ones and not short:
        return
    seen = []
    hooks = [m.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].numel() // max(inp[0].shape[1], 1)))
             for m in norms]
    try:
        _forward_one(model, x[:1], "the training data")
    finally:
        for h in hooks:
            h.remove()
    if 1 not in seen:
        return
    if world == 1:
        which = f"the last training batch holds 1 row ({len(dl.x)} rows in batches of {dl.bs})"
    else:
        which = (f"under {world} processes, each taking one in {world} of the {len(dl.x)} rows in batches of {dl.bs}, "
                 + (f"the last batch of rank {', '.join(map(str, ones))} holds 1 row" if ones else
                    f"rank {', '.join(map(str, short))} has a batch fewer and steps on a 1-row stand-in"))
    raise DataError(f"{which}, and the model's BatchNorm cannot train on a single value per channel: choose a batch "
                    "size (or row count) that leaves at least 2 rows in every batch")


def _forward_one(model, xb, what):
    """`model(xb)` in eval mode, without gradients or touching the CPU RNG; a DataError naming the
    shapes when the model cannot take `xb`."""
    was_training = model.training
    model.eval()
    running, finished = [], []  # layers entered and not yet returned (with their inputs); the last that returned
    hooks = []
    for m in model.modules():
        if not list(m.children()) and not isinstance(m, torch.jit.ScriptModule):  # TorchScript takes no hooks
            hooks += [m.register_forward_pre_hook(lambda m, inp: running.append((m, inp))),
                      m.register_forward_hook(lambda m, inp, out: finished.append((m, running.pop()[1], out)))]
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            return model(xb)
    except RuntimeError as e:
        # a layer still running failed; with none running, forward's own code failed after the last one returned
        last = running[-1] if running else (None, finished[-1][::2]) if finished else None
        raise _shape_error(model, xb, e, what, last) from e
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)


_NOTED = weakref.WeakSet()  # Softmax-like layers without dim that have had their note
_QUIET = [0]                # fit/predict calls inside one another that hold PyTorch's warning back


def _implicit_dim_note(model):
    """A context to run the model in (`fit`, `predict`): when a Softmax-like layer has no `dim` (the
    lesson's `nn.LogSoftmax()`), a note the first time netfit meets that layer says which dim PyTorch
    takes, and PyTorch's own deprecation warning, which comes again from each new call site (in `fit`,
    in the middle of the table), is held back. The note begins with PyTorch's words, so a filter
    written for PyTorch's warning covers it too; only the outermost call enters the filter (entering
    one resets Python's show-once memory of warnings)."""
    layers = [(n, m) for n, m in model.named_modules()
              if isinstance(m, (nn.Softmax, nn.LogSoftmax, nn.Softmin)) and m.dim is None]
    if not layers:
        return contextlib.nullcontext()
    new = [(n, m) for n, m in layers if m not in _NOTED]
    if new:
        name, layer = new[0]
        kind = type(layer).__name__
        function = ("log_softmax" if isinstance(layer, nn.LogSoftmax) else  # subclasses too
                    "softmin" if isinstance(layer, nn.Softmin) else "softmax")
        _warn(f"Implicit dimension choice for {function} has been deprecated (PyTorch's words): nn.{kind}() in layer "
              f"{name!r} has no dim. PyTorch takes "
              f"dim=1 for 2-D (N, C) and 4-D outputs, the classes, as the lesson means (dim=0 for 1-D and 3-D "
              f"ones); write nn.{kind}(dim=1) to say so. netfit says this once per layer, in place of "
              "PyTorch's warning at every new call site")
        _NOTED.update(m for _, m in layers)
    return _without_implicit_dim_warning()


@contextlib.contextmanager
def _without_implicit_dim_warning():
    if _QUIET[0]:
        yield
        return
    _QUIET[0] += 1
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Implicit dimension choice", category=UserWarning,
                                    module="torch")
            yield
    finally:
        _QUIET[0] -= 1


def _shape_error(model, xb, e, what, last=None):
    """The DataError for a first forward pass that failed on `xb` (out of memory is re-raised as is);
    `last`: (layer, inputs) of the last layer the batch reached."""
    if isinstance(e, torch.OutOfMemoryError):
        raise e
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if xb.is_floating_point() and dtypes and xb.dtype not in dtypes:
        return DataError(f"the model's parameters are {', '.join(sorted(str(d)[6:] for d in dtypes))} but {what} "
                         f"inputs are {str(xb.dtype)[6:]}; convert the model with net.float() (netfit's data is "
                         f"float32) ({str(e).splitlines()[0][:200]})")
    first = next((m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))), None)
    expects = (f"; its first layer {first} takes {first.in_features} features" if isinstance(first, nn.Linear)
               else f"; its first layer {first} takes {first.in_channels} channels" if first is not None else "")
    layer, inputs = last if last is not None else (None, ())
    got = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
    if layer is None and inputs:  # every layer entered returned: the failure is in forward's own code after one
        done, out = inputs
        shape = f"of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else f"(a {type(out).__name__})"
        expects = f"; the batch got through {done}, whose output {shape} the model's forward code then failed on"
    elif layer is not None and got is not None and (layer is not first or got.shape != xb.shape):
        # the data got in; a later layer (or the first one called again) failed
        expects = f"; the batch got through to {layer}, which failed on its input of shape {tuple(got.shape)}"
    elif isinstance(first, nn.Conv2d) and xb.ndim == 4 and xb.shape[-1] == first.in_channels != xb.shape[1]:
        expects += (f"; the images look channels-last (N, H, W, C): put channels first with "
                    "x.transpose(0, 3, 1, 2) (numpy) or x.permute(0, 3, 1, 2) (torch)")
    if isinstance(first, nn.Conv2d) and xb.ndim == 3 and first.in_channels == 1:  # each read as one unbatched image
        expects += "; the images have no channel axis: give them one with x[:, None], shape (N, 1, H, W)"
    return DataError(f"{what} rows have shape {tuple(xb.shape[1:])}, which the model cannot take{expects} "
                     f"({str(e).splitlines()[0][:200]})")


def _check_opt(model, opt):
    if isinstance(opt, nn.modules.loss._Loss) or opt in _ELEMENTWISE_F or opt in (F.nll_loss, F.cross_entropy):
        raise FitError(f"opt got a loss ({getattr(opt, '__name__', type(opt).__name__)}): {_ORDER}")
    if not isinstance(opt, torch.optim.Optimizer):
        raise FitError(f"opt must be a torch.optim.Optimizer such as optim.Adam(net.parameters()); got "
                       + (f"the class {opt.__name__}" if isinstance(opt, type) else type(opt).__name__))
    for i, g in enumerate(opt.param_groups):
        lr = g.get("lr")
        if isinstance(lr, (int, float)) and not (math.isfinite(lr) and lr >= 0):
            raise FitError(f"the optimizer's learning rate must be a finite number >= 0; got lr={lr!r}"
                           + (f" in param group {i}" if len(opt.param_groups) > 1 else ""))
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    trainable = [p for p in model.parameters() if p.requires_grad]
    if trainable and not any(id(p) in held for p in trainable):
        raise FitError("the optimizer holds none of the model's parameters; build it from this model, "
                       "e.g. optim.Adam(net.parameters())")


def _default_crit(model, trn_dl):
    """NLLLoss for a model that returns log-probabilities, else CrossEntropyLoss (which adds the log-softmax).

    A model ending in `LogSoftmax` returns log-probabilities; so does any model whose outputs on two
    training rows have a log-sum-exp of 0 per row, like a hand-written logistic regression.
    """
    if isinstance(list(model.modules())[-1], nn.LogSoftmax):
        return nn.NLLLoss()
    x = getattr(trn_dl, "x", None)
    if isinstance(x, torch.Tensor) and len(x):
        out = _forward_one(model, x[:2], "the training data")
        if isinstance(out, torch.Tensor) and out.ndim == 2 and torch.allclose(out.float().logsumexp(1), torch.zeros((), device=out.device), atol=1e-4):
            return nn.NLLLoss()
    return nn.CrossEntropyLoss()

