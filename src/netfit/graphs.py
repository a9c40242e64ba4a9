"""CUDA-graph training: `fit`'s whole training step captured once and replayed, on a GPU.

A small model's epoch on a GPU is bound by launches, not arithmetic: the lesson's logistic
regression runs ~15 kernels per step, each a few microseconds of work behind ~5-10 µs of Python and
driver overhead. `GraphedStep` records forward, loss, backward and the optimizer update into one
`torch.cuda.CUDAGraph` and replays it per batch; the batch is gathered into static buffers from the
data already on the GPU, and the loss sum and a non-finite flag are accumulated on the device, so
the host reads nothing inside an epoch except the NaN flag every 32 steps.

`graph_plan` says whether `fit` may take this path and, if not, why (`history.info["step"]`;
`step_plan` holds the part it shares with the CPU's written-out MLP step in analytic.py):
only the per-batch events that can run around a replay are allowed (`before_batch` and
`after_batch` for any callback; `before_step` for callbacks marked `graph_safe = True`, which touch
only host state and optimizer hyperparameters), and only a stock Adam, AdamW or SGD on its fused
kernel. The last partial batch, the warm-up steps before capture and any epoch resumed mid-way run
eagerly through the same model and optimizer.

Learning rates live in device tensors while an epoch is graphed (the captured kernels read them
there), so `set_lrs` and schedules keep working: a float written into a param group is copied into
its tensor before the next replay. A change of any other hyperparameter (momentum, betas, weight
decay) after capture means a recapture; a callback that changes one every step ends the graph and
the rest of the fit runs eagerly (e.g. `one_cycle` with `moms`; pass `moms=None` to keep the graph).
So does a change of which parameters train or of a layer's train/eval mode, and, from the next epoch,
a callback that replaces `run.opt` or `run.crit` or changes the loader's batch size (`rebind`,
`start_epoch`).

What callbacks see: `run.xb`, `run.yb`, `run.preds` and `run.loss` are the graph's buffers, reused
from batch to batch (clone them to keep one); `before_step` handlers (graph-safe ones only) run
before the step, so a `CancelBatch` there skips the forward pass too and that batch's loss is not
counted; during a graphed epoch `param_groups[i]["lr"]` is a 0-d device tensor.
"""
import contextlib

import numpy as np
import torch
from torch.nn.modules import module as _module
from torch.optim import optimizer as _optimizer

from .data import ArrayLoader

__all__ = ["GraphedStep", "graph_plan", "step_plan"]

_IN_STEP = ("after_loss", "after_backward", "before_step")  # events inside the step; a replay cannot call them
_HYPER = ("betas", "momentum", "weight_decay", "eps", "dampening", "nesterov", "amsgrad", "maximize")
_STATIC_ON_CPU = False  # tests set this: the same static-buffer path without capture, on the CPU
WARMUP = 3              # eager steps before capture (lazy state: optimizer moments, cuBLAS workspaces)
MAX_RECAPTURES = 3
_GLOBAL_MODULE_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                        "_global_backward_pre_hooks")


def step_plan(run, dl, callbacks):
    """None when `fit` may train outside its eager loop (through `_train_epoch_fast`), else why not.

    What any stepper there needs: one process, one batch per optimizer step, a bf16 or no autocast,
    NaN checks that may stop the fit, no mid-epoch checkpoints, an `ArrayLoader` over (x, y) tensors
    on the model's device, and no callback handling an event inside the step.

    Example:
        >>> from torch import nn
        >>> from netfit.fit import Run
        >>> from netfit.history import History
        >>> net = nn.Linear(2, 2); opt = torch.optim.SGD(net.parameters(), 0.1)
        >>> run = Run(net, None, opt, nn.CrossEntropyLoss(), [], 1, History(), torch.device("cpu"))
        >>> dl = ArrayLoader(torch.randn(8, 2), torch.arange(8) % 2, bs=4)
        >>> step_plan(run, dl, []), step_plan(run, [(dl.x, dl.y)], [])
        (None, 'the training data is a list, not an ArrayLoader over (x, y) tensors')
    """
    if run.world > 1:
        return "distributed (DDP) training"
    if run.accumulate > 1:
        return "gradient accumulation"
    if run.scaler is not None:
        return "float16 autocast with a gradient scaler (use bfloat16)"
    if run.on_nan != "raise":
        return f"on_nan={run.on_nan!r} (skipping a step needs a host check per step)"
    if run.checkpoint_every:
        return "checkpoint_every (mid-epoch saves)"
    if getattr(type(dl), "batches", None) is not ArrayLoader.batches:  # the loop does what batches does
        what = f"a {type(dl).__name__} with its own batches()" if isinstance(dl, ArrayLoader) else f"a {type(dl).__name__}"
        return f"the training data is {what}, not an ArrayLoader over (x, y) tensors"
    if dl.y is None:
        return "the training loader has no labels"
    if dl.x.device != run.device:
        return f"the training tensors are on {dl.x.device}, the model on {run.device}"
    for cb in callbacks:
        for event in _IN_STEP:
            if callable(getattr(cb, event, None)) and not (event == "before_step" and getattr(cb, "graph_safe", False)):
                return f"callback {type(cb).__name__} handles {event}, which a captured step cannot call"
    return None


def _has_hooks(model):
    """True when a hook would see the forward or backward pass (module, global or parameter hooks): a
    captured step would run it only while capturing, and the written-out CPU step never."""
    return (any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
                for m in model.modules())
            or any(getattr(_module, h, None) for h in _GLOBAL_MODULE_HOOKS)
            or any(p._backward_hooks or p._post_accumulate_grad_hooks for p in model.parameters()))


def _has_step_hooks(opt):
    """True when optimizer step hooks (its own or global ones) would run around `opt.step()`."""
    return bool(opt._optimizer_step_pre_hooks or opt._optimizer_step_post_hooks
                or _optimizer._global_optimizer_pre_hooks or _optimizer._global_optimizer_post_hooks)


def graph_plan(run, dl, callbacks, fast):
    """None when `fit` may graph the training step, else the reason it runs eagerly (a short phrase).

    Example:
        >>> from torch import nn
        >>> from netfit.fit import Run
        >>> from netfit.history import History
        >>> net = nn.Linear(2, 2); opt = torch.optim.SGD(net.parameters(), 0.1)
        >>> run = Run(net, None, opt, nn.CrossEntropyLoss(), [], 1, History(), torch.device("cpu"))
        >>> graph_plan(run, None, [], fast=True)
        'not on a CUDA GPU'
    """
    if not fast:
        return "fast=False"
    if run.device.type != "cuda" and not (_STATIC_ON_CPU and run.device.type == "cpu"):
        return "not on a CUDA GPU"
    why_not = step_plan(run, dl, callbacks)
    if why_not:
        return why_not
    groups = run.opt.param_groups
    if type(run.opt).__name__ not in ("Adam", "AdamW", "SGD") or not all(g.get("fused") for g in groups):
        return f"{type(run.opt).__name__} is not a stock Adam, AdamW or SGD on its fused kernel"
    if _has_hooks(run.model):  # the replays would not call them
        return "the model has hooks"
    if _has_step_hooks(run.opt):
        return "the optimizer has step hooks"
    return None


def _detached(preds):
    """Model outputs without their autograd graph (a tensor, or a tuple/list of them)."""
    if isinstance(preds, torch.Tensor):
        return preds.detach()
    if isinstance(preds, (tuple, list)):
        parts = [_detached(p) for p in preds]
        return type(preds)(*parts) if hasattr(preds, "_fields") else type(preds)(parts)  # namedtuples too
    return preds


class GraphedStep:
    """The training step over static buffers: eager for `WARMUP` steps, then captured and replayed.

    `load(order, i)` gathers full batch i into `x`/`y`; `step()` trains on them; `eager(xb, yb)`
    trains on any other batch (the short last one). `total` sums loss x rows and `bad` counts
    non-finite losses, both on the device. With `capture=False` (the CPU) every step is eager.

    Example (CPU, no capture):
        >>> from torch import nn
        >>> from netfit.data import ArrayLoader
        >>> dl = ArrayLoader(torch.randn(10, 3), torch.arange(10) % 2, bs=4)
        >>> net = nn.Linear(3, 2); opt = torch.optim.SGD(net.parameters(), 0.1, fused=True)
        >>> gs = GraphedStep(net, opt, nn.CrossEntropyLoss(), dl, None, capture=False)
        >>> gs.load(None, 0); gs.step(), gs.loss.shape
        (True, torch.Size([]))
    """
    ran = "graphed"   # what history.info["step"] says ran before the graph gave up
    check_every = 32  # steps between host reads of the non-finite flag (each one waits for the GPU)

    def __init__(self, model, opt, crit, dl, amp_dtype, capture=True, static=True):
        self.model, self.opt, self.crit, self.capture = model, opt, crit, capture
        self.dl, self.bs, device = dl, dl.bs, dl.x.device
        # the static batch buffers (a subclass that gathers new tensors each step needs none)
        self.x = torch.empty((dl.bs, *dl.x.shape[1:]), dtype=dl.x.dtype, device=device) if static else None
        self.y = torch.empty((dl.bs, *dl.y.shape[1:]), dtype=dl.y.dtype, device=device) if static else None
        self.total = torch.zeros((), dtype=torch.float64, device=device)  # sum of loss * rows this epoch
        self.bad = torch.zeros((), dtype=torch.int32, device=device)  # non-finite losses this epoch
        self.autocast = (torch.autocast(device.type, dtype=getattr(torch, amp_dtype), cache_enabled=False)
                         if amp_dtype else contextlib.nullcontext())
        self.params = [p for g in opt.param_groups for p in g["params"]]
        self.sizes = [len(g["params"]) for g in opt.param_groups]  # the groups the graph was built for
        self.lrs = [torch.tensor(float(g["lr"]), device=device) for g in opt.param_groups] if capture else None
        # per group: (the rate as the float last written, what float() reads back from its float32 tensor)
        self.lr_floats = [None] * len(self.lrs) if capture else None
        self.ptrs = None  # the weights' storage when captured
        self.graph, self.warm, self.recaptures, self.preds, self.loss = None, 0, 0, None, None
        self.outputs = None  # the captured graph's preds and loss, which each replay overwrites
        self.hyper, self.why_not = None, None

    # ---- one epoch's bookkeeping
    def start_epoch(self):
        self.total.zero_()
        self.bad.zero_()
        self.recaptures = 0  # "every step" is judged within an epoch
        if self.dl.bs != self.bs:  # a callback changed the loader's batch size: the buffers no longer fit
            self.why_not = f"the loader's batch size changed from {self.bs} to {self.dl.bs}"
        if _has_hooks(self.model):  # e.g. added by a callback's before_fit: a replay would not call them
            self.why_not = "the model has hooks"
        self._check_groups()
        if self.capture and not self.why_not:  # the captured kernels read the rates from these tensors
            for i, (g, t) in enumerate(zip(self.opt.param_groups, self.lrs)):
                self._write_rate(g, t, i)

    def _write_rate(self, group, t, i):
        """Put a group's float rate into its device tensor, and the tensor in the group; remember the float."""
        lr = float(group["lr"])
        t.fill_(lr)
        group["lr"] = t
        self.lr_floats[i] = (lr, float(np.float32(lr)) if t.dtype == torch.float32 else lr)

    def _check_groups(self):
        """Give up when a callback added a param group or moved parameters between groups, or gave a
        weight new storage (`w.data = w.data.renorm(...)`): the graph, its rate tensors and its optimizer
        state were made for the groups and the storage as they were, and would go on updating the old."""
        if self.why_not:
            return
        if [len(g["params"]) for g in self.opt.param_groups] != self.sizes:
            self.why_not = "a callback changed the optimizer's param groups"
        elif self.graph is not None and self.capture and [p.data_ptr() for p in self.params] != self.ptrs:
            self.why_not = "a callback gave a weight new storage"

    def end_epoch(self):
        """Put plain floats back in the param groups (what checkpoints, the history and users see)."""
        if self.capture:
            for i, (g, t) in enumerate(zip(self.opt.param_groups, self.lrs)):
                if g["lr"] is t:  # the float as written (0.01, not 0.0099999998), unless the tensor was changed in place
                    entry = self.lr_floats[i]
                    g["lr"] = entry[0] if entry is not None and float(t) == entry[1] else float(t)
        self._drop_grads()  # as after an eager epoch; the graph keeps its own gradient buffers

    def load(self, order, i):
        """Gather full batch i of this epoch's `order` (None: rows in order) into the static buffers."""
        bs = self.bs
        idx = order[i * bs:(i + 1) * bs] if order is not None else None
        if idx is None:
            self.x.copy_(self.dl.x[i * bs:(i + 1) * bs])
            self.y.copy_(self.dl.y[i * bs:(i + 1) * bs])
        else:
            torch.index_select(self.dl.x, 0, idx, out=self.x)
            torch.index_select(self.dl.y, 0, idx, out=self.y)

    def rebind(self, opt, crit):
        """A callback replaced `run.opt` or `run.crit`: the captured step used the old ones, so the
        rest of the fit runs eagerly, with the new ones."""
        self.opt, self.crit = opt, crit
        self.params = [p for g in opt.param_groups for p in g["params"]]
        self.why_not = "a callback replaced the optimizer or the loss"

    def loss_sum(self):
        """Sum of loss x rows over this epoch's steps (one host read)."""
        return self.total.item()

    def bad_steps(self):
        """Steps with a non-finite loss this epoch (one host read)."""
        return self.bad.item()

    # ---- the step
    def _forward_backward_step(self, xb, yb, rows):
        with self.autocast:
            preds = self.model(xb)
            loss = self.crit(preds, yb)
        loss.backward()
        self.opt.step()
        loss = loss.detach()
        self.total.add_(loss.double(), alpha=rows)
        self.bad.add_((~torch.isfinite(loss)).int())
        # detached: a kept autograd graph would tie the next step's gradient nodes to this step's stream
        return _detached(preds), loss

    def _sync_hyper(self):
        """Copy rates written as floats into the device tensors; True if another hyperparameter changed."""
        if self.capture and not self.why_not:  # after giving up, an optimizer a callback swapped in keeps float rates
            for i, (g, t) in enumerate(zip(self.opt.param_groups, self.lrs)):
                if g["lr"] is not t:
                    self._write_rate(g, t, i)
        # what the captured kernels bake in: hyperparameters, which parameters train, layer modes
        hyper = ([tuple(g.get(k) for k in _HYPER) for g in self.opt.param_groups],
                 [p.requires_grad for p in self.params], [m.training for m in self.model.modules()])
        changed = self.hyper is not None and hyper != self.hyper
        if changed and hyper[1] != self.hyper[1]:
            self.warm = 0  # newly trained parameters need eager steps to create their optimizer state
        self.hyper = hyper
        if changed and self.graph is not None:  # capture again
            self.graph, self.outputs, self.recaptures = None, None, self.recaptures + 1
        return changed

    def step(self, xb=None, yb=None):
        """Train on the static batch (`xb`/`yb`, if a callback replaced them, are copied in first).

        Returns True when it trained the batch; False when the graph cannot go on (the capture
        failed, a callback changed the batch's shape or dtype, or one keeps changing hyperparameters
        other than the rate): then `why_not` says why, nothing was trained, and the caller trains
        this batch and the rest eagerly.
        """
        for buf, new in ((self.x, xb), (self.y, yb)):
            if new is None or new is buf:
                continue
            if new.shape != buf.shape or new.dtype != buf.dtype or new.device != buf.device:
                self.why_not = (f"a callback changed the batch from {tuple(buf.shape)} {buf.dtype} to "
                                f"{tuple(new.shape)} {new.dtype} on {new.device}")
                return False
            if new.data_ptr() != buf.data_ptr():
                buf.copy_(new)
        self._check_groups()
        if self.why_not:
            return False
        self._sync_hyper()
        if self.recaptures > MAX_RECAPTURES:
            self.why_not = "a callback changes momentum or other hyperparameters every step"
            return False
        if self.graph is None and self.warm >= WARMUP:
            try:
                self._capture()
            except Exception as e:  # e.g. a model that reads a value back to the host
                self._drop_grads()
                self.why_not = f"capture failed ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
                return False
            return True
        if self.graph is None:  # warm-up, on a side stream as CUDA graph capture asks
            side = torch.cuda.Stream() if self.capture else None
            if side is not None:
                side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
                self._static_step()
            if side is not None:
                torch.cuda.current_stream().wait_stream(side)
            self.warm += 1
        elif self.capture:
            self.graph.replay()
            self.preds, self.loss = self.outputs
        else:
            self._static_step()
        return True

    def _drop_grads(self):
        for p in self.params:
            p.grad = None
        for g in self.opt.param_groups:  # parameters a callback added to the optimizer since
            for p in g["params"]:
                p.grad = None

    def _static_step(self):
        """The step, eagerly, over the static buffers (warm-up; on the CPU the stand-in for a replay)."""
        self._drop_grads()
        self.preds, self.loss = self._forward_backward_step(self.x, self.y, self.bs)

    def _capture(self):
        if not self.capture:
            self.graph = "no capture on the CPU"
            self._static_step()
            return
        self._drop_grads()  # backward inside the graph allocates the gradients it then reuses
        groups = self.opt.param_groups
        capturable = [g.get("capturable") for g in groups]
        for g in groups:
            if "capturable" in g:
                g["capturable"] = True  # Adam refuses capture otherwise; the fused kernel is the same
        graph, stream = torch.cuda.CUDAGraph(), torch.cuda.current_stream()
        try:
            with torch.cuda.graph(graph):
                self.preds, self.loss = self._forward_backward_step(self.x, self.y, self.bs)
        except BaseException:
            torch.cuda.set_stream(stream)  # a failed capture can leave its side stream current
            raise
        finally:
            for g, c in zip(groups, capturable):
                if c is not None:
                    g["capturable"] = c
        self.graph, self.outputs = graph, (self.preds, self.loss)
        self.ptrs = [p.data_ptr() for p in self.params]  # the storage the graph updates
        self.graph.replay()  # capture records the step without running it

    def eager(self, xb, yb):
        """One eager step on a batch outside the static buffers (the short last batch)."""
        self._sync_hyper()
        kept = [p.grad for p in self.params]  # the graph's gradient buffers: a replay writes into them
        for p in self.params:
            p.grad = None
        self.preds, self.loss = self._forward_backward_step(xb, yb, len(yb))
        self._drop_grads()  # as the eager loop's zero_grad after a step: a param group added since the capture too
        for p, g in zip(self.params, kept):
            p.grad = g
