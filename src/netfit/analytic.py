"""The CPU training step of a plain MLP with its gradient written out: no autograd, no optimizer wrapper.

On a CPU the lesson's small models spend most of a step on overhead, not arithmetic: autograd
records and replays a node per op, and `Optimizer.step`'s Python wrapper (hooks, profiler record,
grouping tensors by device) costs ~100 µs around a fused Adam kernel of ~50 µs. For an
`nn.Sequential` of Linear layers with ReLU between them (an optional `Flatten` first), or one
`nn.Linear`, ending in `LogSoftmax` with `NLLLoss`, or in the last Linear (or LogSoftmax) with
`CrossEntropyLoss`, the gradient of the mean loss is short:

    z_k = W_k @ h_{k-1} + b_k,   h_k = relu(z_k),   p = softmax(z_L)     # activations (features, N)
    dz_L = (p - onehot(y)) / N
    dW_k = dz_k @ h_{k-1}.T,   db_k = dz_k.sum(1),   dz_{k-1} = (W_k.T @ dz_k) * (h_{k-1} > 0)

`MLPStep` computes that on detached aliases of the weights (no autograd recording) in the transposed
layout (features x batch: MKL is faster on this shape for the thin last layer, and softmax runs along
the long axis), then updates the weights with the fused kernel a stock Adam, AdamW or SGD runs
inside `opt.step()`, called directly with the optimizer's own state; any other optimizer (or one
with step hooks) gets the gradients in `p.grad` and runs its own `opt.step()`. Weights match the
autograd step to float rounding (tests/test_analytic.py).

On a CPU with more than one thread, `ThreadTrial` times the step on one thread against torch's count
every 0.5 to 8 s and runs it on the faster: on shared cores a parallel op waits for its slowest thread
(`fit`'s eager CPU loop uses it too, for every other model's forward and backward).

`mlp_plan` says whether a model, loss and loader qualify and, if not, why (`history.info["step"]`).
`fit` takes this path on the CPU when `graphs.step_plan` allows a step outside its eager loop (no
callback handling `after_loss`/`after_backward`/`before_step`, no accumulation...); a callback that
changes the batch's shape or freezes a layer hands the rest of the fit to the eager loop.
"""
import collections
import math
import operator
from time import perf_counter

import torch
import torch.nn.functional as F
from torch import nn

from .graphs import GraphedStep, _has_hooks, _has_step_hooks

__all__ = ["MLPStep", "ThreadTrial", "mlp_plan"]

_KERNELS = {torch.optim.Adam: torch._fused_adam_, torch.optim.AdamW: torch._fused_adamw_, torch.optim.SGD: torch._fused_sgd_}

_requires_grad = operator.attrgetter("requires_grad")

def _layers(model):
    """(flatten, linears, ends_in_log_softmax), or a string saying why `model` is not such an MLP."""
    if type(model) is not nn.Sequential and type(model) is not nn.Linear:
        return f"the model is a {type(model).__name__}, not an nn.Sequential"
    mods = list(model) if type(model) is nn.Sequential else [model]
    flatten = bool(mods) and type(mods[0]) is nn.Flatten
    if flatten and (mods[0].start_dim, mods[0].end_dim) != (1, -1):
        return "the model's Flatten does not flatten every dim after the first"
    body = mods[1:] if flatten else mods
    log_softmax = bool(body) and type(body[-1]) is nn.LogSoftmax
    if log_softmax:
        if body[-1].dim not in (None, 1, -1):
            return f"the model's LogSoftmax runs over dim {body[-1].dim}, not over the classes"
        body = body[:-1]
    linears, relus = body[0::2], body[1::2]
    if (not body or len(body) % 2 == 0 or any(type(m) is not nn.Linear for m in linears)
            or any(type(m) is not nn.ReLU for m in relus)):
        return "the model is not Linear layers with ReLU between them"
    return flatten, linears, log_softmax


def mlp_plan(model, crit, opt, dl, amp_dtype):
    """`((flatten, linears, log_probs), None)` when `MLPStep` can train `model`, else `(None, why not)`.

    Example:
        >>> from netfit.data import ArrayLoader
        >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2), nn.LogSoftmax(dim=1))
        >>> dl = ArrayLoader(torch.randn(8, 4), torch.arange(8) % 2, bs=4)
        >>> opt = torch.optim.Adam(net.parameters())
        >>> plan, why = mlp_plan(net, nn.NLLLoss(), opt, dl, None)
        >>> len(plan[1]), why
        (2, None)
        >>> mlp_plan(nn.Sequential(nn.Linear(4, 2), nn.Tanh()), nn.CrossEntropyLoss(), opt, dl, None)[1]
        'the model is not Linear layers with ReLU between them'
    """
    layers = _layers(model)
    if isinstance(layers, str):
        return None, layers
    if amp_dtype:
        return None, f"{amp_dtype} autocast"
    flatten, linears, log_softmax = layers
    if _has_hooks(model):
        return None, "the model has hooks"
    if type(crit) is nn.NLLLoss or crit is F.nll_loss:
        if not log_softmax:
            return None, "NLLLoss on a model that does not end in LogSoftmax"
    elif not (type(crit) is nn.CrossEntropyLoss or crit is F.cross_entropy):
        return None, f"the loss is {getattr(crit, '__name__', type(crit).__name__)}, not NLLLoss or CrossEntropyLoss"
    if isinstance(crit, nn.Module) and (crit.weight is not None or crit.reduction != "mean" or crit.ignore_index != -100
                                        or getattr(crit, "label_smoothing", 0.0)):
        return None, "the loss has class weights, label smoothing, an ignore_index or a reduction other than mean"
    params = [p for m in linears for p in m.parameters()]
    dtype = params[0].dtype
    if any(p.dtype != dtype or p.dtype not in (torch.float32, torch.float64) or p.device.type != "cpu"
           or not p.is_contiguous() or p.is_sparse for p in params):
        return None, "the model's weights are not contiguous float tensors on the CPU"
    mine = {id(p) for p in params}
    if len(mine) != len(params):
        return None, "layers of the model share weights"
    if any(id(p) not in mine for g in opt.param_groups for p in g["params"]):
        return None, "the optimizer holds tensors that are not the model's Linear weights"
    if not all(p.requires_grad for g in opt.param_groups for p in g["params"]):
        return None, "some of the optimizer's parameters are frozen (requires_grad=False)"
    if dl.x.dtype != dtype or dl.y.dtype != torch.int64 or dl.y.dim() != 1 or (dl.x.dim() != 2 and not flatten):
        return None, f"the data is {dl.x.dtype} of {dl.x.dim()} dims with {dl.y.dtype} labels"
    if len(dl.y) and dl.y.min() < 0:
        return None, "some labels are negative (the loss's ignore_index)"
    return (flatten, linears, log_softmax), None


class ThreadTrial:
    """The intra-op thread count of a CPU training step (`MLPStep`'s, or the forward and backward of
    `fit`'s eager loop): torch's (`torch.get_num_threads()`) or one, whichever the latest trial timed
    faster. `enabled=False` (what `fit` passes on a GPU, under DDP, with `fast=False` or a `seed`) leaves it alone.

    A trial runs steps on one thread for `trial_s` seconds (at least `warm` steps), then as many on
    torch's count, stopping as soon as those take longer; the steps after it run on the faster until the
    next trial, `every_s` seconds later, twice as long (up to `longest_s`) each time a trial agrees with
    the one before. The first `warm` steps of a fit, and of an epoch that interrupted a trial, are not
    timed (cold caches). A trial lasts longer than the scheduler's time slice on purpose: a few steps
    can miss the moment a busy neighbour takes the core back.

    A parallel op waits for its slowest thread. On a machine whose cores are shared (a cloud VM's vCPUs)
    a busy neighbour makes every parallel op of a small step wait, while a second thread gains little on
    such ops: on this project's 2-vCPU machine the logreg epoch took 0.105 s on two threads and 0.110 s
    on one when the machine was quiet, 0.171 s and 0.111 s when it was not (the MLP: 0.31 / 0.38 s, then
    0.54 / 0.39 s). Only the step's own ops run on the chosen count (`with trial:` around them): callbacks
    and validation run on torch's. One thread and two round differently (~1e-8), so with
    `torch.use_deterministic_algorithms(True)` (`fit(deterministic=True)`), or one thread already, the
    count is left alone.

    Example:
        >>> trial = ThreadTrial()
        >>> trial.next()                           # a step begins
        >>> with trial:                            # its ops
        ...     y = torch.ones(3).sum()
    """
    warm, trial_s, every_s, longest_s = 8, 0.025, 0.5, 8.0

    def __init__(self, enabled=True):
        self.enabled, self.used = enabled, collections.Counter()  # steps counted by the thread count they ran on
        self.phase, self.k, self.t0 = "warm", 0, 0.0  # warm, one, torch (a trial's halves) or run; k: its steps
        self.t1 = self.k1 = 0  # the one-thread half: seconds and steps
        self.gap = self.every_s
        self.n = 0  # torch's count, once a trial has run
        self.faster_on_one = self.on_one = False
        self.restore = None  # torch's count while a `with` block runs on one thread

    def start_epoch(self):
        if self.phase in ("one", "torch"):  # no trial spans the validation between epochs
            self.phase, self.k = "warm", 0

    def next(self):
        """A step begins: on one thread or not."""
        n = torch.get_num_threads()
        if not self.enabled or n == 1 or torch.are_deterministic_algorithms_enabled():
            self.on_one = False
            return
        phase, k, now = self.phase, self.k, perf_counter()
        if phase == "warm" and k >= self.warm:
            phase, k, self.t0 = "one", 0, now
        elif phase == "one" and k >= self.warm and now - self.t0 >= self.trial_s:
            phase, self.t1, self.k1, k, self.t0 = "torch", now - self.t0, k, 0, now
        elif phase == "torch":
            slower = now - self.t0 > self.t1  # these k steps took longer than the k1 on one thread
            if slower or k >= self.k1:
                self.gap = min(2 * self.gap, self.longest_s) if slower == self.faster_on_one else self.every_s
                phase, self.faster_on_one, k, self.t0 = "run", slower, 0, now
        elif phase == "run" and now - self.t0 >= self.gap:
            phase, k, self.t0 = "one", 0, now
        self.phase, self.k, self.n = phase, k + 1, n
        self.on_one = phase == "one" or (phase == "run" and self.faster_on_one)

    def count(self):
        """Inside a step's `with trial:`: count the thread count it runs on (once a trial has run; a
        callback may set the count too)."""
        if self.n:
            self.used[torch.get_num_threads()] += 1

    def summary(self):
        """What `history.info["step"]` adds: how many steps ran on one thread, and on what else."""
        used = self.used
        if not used:
            return ""
        return "".join([f"; {used[1]} of {used.total()} steps on one thread"] + [
            f", {k} on {n}" for n, k in sorted(used.items()) if n != 1] + [" (ThreadTrial)"])

    def __enter__(self):
        if self.on_one and self.restore is None:
            self.restore = torch.get_num_threads()  # first: an interrupt after it still finds what to restore
            torch.set_num_threads(1)

    def __exit__(self, *exc):
        if self.restore is not None:
            torch.set_num_threads(self.restore)
            self.restore = None


class MLPStep(GraphedStep):
    """`GraphedStep`'s interface (`load`, `step`, `eager`, the epoch's loss sum) with the gradient of
    `mlp_plan`'s MLPs written out and the optimizer's fused kernel called directly.

    Example:
        >>> from netfit.data import ArrayLoader
        >>> net = nn.Sequential(nn.Linear(4, 2), nn.LogSoftmax(dim=1))
        >>> opt = torch.optim.Adam(net.parameters(), fused=True)
        >>> dl = ArrayLoader(torch.randn(8, 4), torch.arange(8) % 2, bs=4)
        >>> gs = MLPStep(net, opt, nn.NLLLoss(), dl, mlp_plan(net, nn.NLLLoss(), opt, dl, None)[0])
        >>> gs.start_epoch(); gs.load(None, 0); gs.step(), gs.preds.shape
        (True, torch.Size([4, 2]))
    """
    ran = "gradient written out"
    check_every = 1  # a host read of the loss costs ~1 µs here: check every step, before the update

    def __init__(self, model, opt, crit, dl, plan, trial=None):
        super().__init__(model, opt, crit, dl, None, capture=False, static=False)
        self.flatten, self.linears, self.log_probs = plan
        self.row_shape, self.dtype = dl.x.shape[1:], dl.x.dtype
        self.kernel = _KERNELS.get(type(opt))
        self.sum, self.nonfinite, self.weights, self.minus_ones = 0.0, 0, None, None
        self.direct_steps = self.opt_steps = 0
        self.order = self.kernel_cache = None
        self.params = []  # the optimizer's parameters as the current step found them
        self.trial = ThreadTrial() if trial is None else trial

    def start_epoch(self):
        self.sum, self.nonfinite = 0.0, 0
        self.bs = self.dl.bs  # a callback may change the loader's batch size: nothing here is sized by it
        self.order = None  # `load` cuts this epoch's order afresh (a loader may reuse one tensor for it)
        self.trial.start_epoch()
        if _has_hooks(self.model):  # e.g. added by a callback's before_fit
            self.why_not = "the model has hooks"

    def end_epoch(self):
        self._drop_grads()

    def rebind(self, opt, crit):
        """A callback replaced `run.opt` or `run.crit`: go on with them, here if they qualify."""
        self.opt, self.crit, self.kernel = opt, crit, _KERNELS.get(type(opt))
        why_not = mlp_plan(self.model, crit, opt, self.dl, None)[1]
        if why_not:
            self.why_not = f"a callback replaced the optimizer or the loss: {why_not}"

    def describe(self):
        """What `history.info["step"]` says: the optimizer's fused kernel called directly or `opt.step()`
        (what most steps did; before any step, what they will do if nothing changes)."""
        if self.direct_steps or self.opt_steps:
            direct = self.direct_steps >= self.opt_steps
        else:
            direct = self.kernel is not None and all(g.get("fused") for g in self.opt.param_groups)
        how = "its fused kernel called directly" if direct else "opt.step()"
        return f"MLP gradient written out (CPU), {type(self.opt).__name__} through {how}{self.trial.summary()}"

    def loss_sum(self):  # every step here, hand-over steps included, adds to these in Python
        return self.sum

    def bad_steps(self):
        return self.nonfinite

    def _opt_params(self):
        """The optimizer's parameters now (a callback may add a group, or replace a tensor in one)."""
        return [p for g in self.opt.param_groups for p in g["params"]]

    def _drop_grads(self):
        for p in self._opt_params():
            p.grad = None

    def _detached(self):
        """[(W, b)] of each Linear as detached aliases (the same storage, no autograd recording; b as a
        column, or None), made again when a parameter or its storage was replaced since the last step
        (e.g. a max-norm callback's `w.data = w.data.renorm(...)`)."""
        ws = self.weights
        if ws is not None:
            for lin, (w, b), (p0, q0) in zip(self.linears, ws, self.weight_params):
                p, q = lin._parameters["weight"], lin._parameters["bias"]
                if (p is not p0 or q is not q0 or p.data_ptr() != w.data_ptr() or p.shape != w.shape
                        or (q is not None and q.data_ptr() != b.data_ptr())):
                    ws = None
                    break
        if ws is None:
            ws = self.weights = [(lin.weight.detach(), None if lin.bias is None else lin.bias.detach()[:, None])  # b (out, 1)
                                 for lin in self.linears]
            self.weight_params = [(lin.weight, lin.bias) for lin in self.linears]
            ps = [p for lin in reversed(self.linears) for p in (lin.weight, lin.bias) if p is not None]
            self.slots = {id(p): j for j, p in enumerate(ps)}  # where `_train` puts each parameter's gradient
        return ws

    def load(self, order, i):
        """Batch i of this epoch into `x`/`y` as new tensors, as the eager loop gives them (a callback
        may keep `run.xb`: unlike a CUDA graph, nothing here needs the same buffer every step)."""
        bs, dl = self.bs, self.dl
        self.trial.next()
        if order is None:
            self.x, self.y = dl.x[i * bs:(i + 1) * bs], dl.y[i * bs:(i + 1) * bs]
            return
        if order is not self.order:  # once an epoch: its index cut into batches
            self.order, self.batch_idx = order, order.split(bs)
        idx = self.batch_idx[i]
        with self.trial:  # the gather is a parallel op too
            self.x, self.y = dl.x.index_select(0, idx), dl.y.index_select(0, idx)

    def step(self, xb=None, yb=None):
        """Train on a batch (default: the one `load` gathered); False (and `why_not`) when the batch or
        the model no longer fits this path, with nothing trained."""
        with self.trial:
            return self._step(xb, yb)

    def _step(self, xb, yb):
        xb = self.x if xb is None else xb
        yb = self.y if yb is None else yb
        if (xb is not self.x or yb is not self.y) and (
                xb.dtype != self.dtype or xb.shape[1:] != self.row_shape or xb.device.type != "cpu"
                or yb.dtype != torch.int64 or yb.dim() != 1 or len(yb) != len(xb) or (len(yb) and yb.min() < 0)):
            self.why_not = (f"a callback changed the batch to {tuple(xb.shape)} {xb.dtype} with {tuple(yb.shape)} "
                            f"{yb.dtype} labels")
            return False
        self.params = self._opt_params()  # what this step trains (`_update` uses them too)
        if not all(map(_requires_grad, self.params)):
            self.why_not = "a callback froze some of the optimizer's parameters"
            return False
        self._train(xb, yb)
        return True

    def eager(self, xb, yb):
        """The short last batch through this step too; once it gave up (`why_not`), autograd's step,
        which like the eager loop checks the loss before the update."""
        if not self.why_not and self.step(xb, yb):
            return
        self._drop_grads()
        preds = self.model(xb)
        loss = self.crit(preds, yb)
        self.preds, self.loss = preds.detach(), loss.detach()
        value = loss.item()
        if not math.isfinite(value):
            self.nonfinite += 1
            return
        self.sum += value * yb.shape[0]
        loss.backward()
        self.trial.count()  # autograd's steps after a hand-over, on torch's count
        self.opt.step()
        self._drop_grads()

    def _train(self, xb, yb):
        n, ws, last = yb.shape[0], self._detached(), len(self.linears) - 1  # shape[0]: Tensor.__len__ is Python
        h = xb.reshape(n, -1).t() if self.flatten else xb.t()    # (features, N): a view
        acts = [h]
        for k, (w, b) in enumerate(ws):
            z = torch.addmm(b, w, h) if b is not None else w.mm(h)  # (out, N)
            if k < last:
                h = torch.relu(z)
                acts.append(h)
        logp = torch.log_softmax(z, 0)                           # (C, N)
        rows = yb.view(1, n)                                     # each column's class, (1, N)
        loss = logp.gather(0, rows).sum().div_(-n)               # mean NLL
        self.preds, self.loss = (logp if self.log_probs else z).t().contiguous(), loss  # as the model returns it, (N, C)
        value = loss.item()
        if not math.isfinite(value):
            self.nonfinite += 1  # the loop raises NonFiniteLossError before any update
            return
        self.sum += value * n
        if self.minus_ones is None or self.minus_ones.shape[1] != n:
            self.minus_ones = torch.full((1, n), -1.0, dtype=logp.dtype)
        g = logp.exp().scatter_add_(0, rows, self.minus_ones).div_(n)  # dL/dz = (softmax - onehot) / N, (C, N)
        grads = []                                               # in `self.slots` order: last layer first
        for k in range(last, -1, -1):
            (w, b), h = ws[k], acts[k]
            grads.append(g.mm(h.t()))                            # (out, in)
            if b is not None:
                grads.append(g.sum(1))                           # (out,)
            if k:
                g = torch.ops.aten.threshold_backward(w.t().mm(g), h, 0)  # (in, N), zero where relu was 0
        self.trial.count()  # before `_update`, whose `opt.step()` path goes back to torch's count
        self._update(grads)

    def _update(self, grads):
        """Apply `grads` (one per parameter, in `self.slots` order) as `opt.step()` would."""
        groups = self._kernel_groups()
        if groups is None:
            slots = self.slots
            for p in self.params:
                j = slots.get(id(p))  # None for a tensor that is not a Linear's: its forward never used it
                p.grad = None if j is None else grads[j]
            self.trial.__exit__()  # the optimizer's own code and its hooks run on torch's thread count
            self.opt.step()
            self._drop_grads()
            self.opt_steps += 1
            return
        self.direct_steps += 1
        for group, params, at, bufs in groups:
            if self.kernel is torch._fused_sgd_:
                momentum = group["momentum"]
                self.kernel(params, [grads[j] for j in at], bufs if momentum else [],
                            weight_decay=group["weight_decay"], momentum=momentum, lr=group["lr"],
                            dampening=group["dampening"], nesterov=group["nesterov"], maximize=group["maximize"],
                            is_first_step=False)
                continue
            exp_avgs, exp_avg_sqs, steps = bufs
            beta1, beta2 = group["betas"]
            torch._foreach_add_(steps, 1)  # as torch.optim.adam._fused_adam does first
            self.kernel(params, [grads[j] for j in at], exp_avgs, exp_avg_sqs, [], steps, lr=group["lr"],
                        beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"],
                        amsgrad=False, maximize=group["maximize"])

    def _kernel_groups(self):
        """What the fused kernel takes for each non-empty param group: `(group, params, grad slots, state)`,
        the parameters as detached aliases (in-place updates need no `torch.no_grad()`) and `state` the
        optimizer's buffers. None when this step must go through `opt.step()`: another optimizer, hooks,
        options the kernel lacks, or a parameter without state yet (its first step creates it). Kept from
        step to step until the groups, the state or a parameter's storage is replaced; the hyperparameters
        are read from the groups at every step (a schedule changes them)."""
        opt = self.opt
        own_step = vars(opt).get("step")  # a wrapper on the instance: only torch's LR-scheduler tracker is known
        if (self.kernel is None or (own_step is not None and not getattr(own_step, "_wrapped_by_lr_sched", False))
                or _has_step_hooks(opt)):
            return None
        if own_step is not None:
            opt._opt_called = True  # all that wrapper does besides calling step (lr_scheduler's order check)
        sgd, adamw = self.kernel is torch._fused_sgd_, self.kernel is torch._fused_adamw_
        for group in opt.param_groups:
            if group["params"] and (
                    not group.get("fused") or group.get("differentiable") or group.get("capturable")
                    or isinstance(group["lr"], torch.Tensor)
                    or (not sgd and (group["amsgrad"] or isinstance(group["betas"][0], torch.Tensor)
                                     or isinstance(group["betas"][1], torch.Tensor)
                                     or group.get("decoupled_weight_decay", adamw) != adamw))):
                return None
        cache, groups = self.kernel_cache, opt.param_groups
        params, sizes = self.params, [len(g["params"]) for g in groups]
        if (cache is None or cache[0] is not groups or cache[1] is not opt.state or cache[2] is not self.weights
                or cache[3] != sizes or not all(map(operator.is_, cache[4], params))
                or not all(map(operator.is_, map(opt.state.get, params), cache[5]))):
            cache = self.kernel_cache = self._kernel_args(params, sizes)
            if cache is None:
                return None
        # read at every step: a callback may replace a group's dict, or a state tensor within its dict
        live, out = [g for g in groups if g["params"]], []
        for group, (aliases, at, states) in zip(live, cache[6]):
            if sgd:
                bufs = [s.get("momentum_buffer") for s in states] if group["momentum"] else []
                if None in bufs:
                    self.kernel_cache = None  # momentum turned on: `opt.step()` makes the buffers, then a new cache
                    return None
            elif all("step" in s for s in states):
                bufs = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], [s["step"] for s in states]
            else:
                return None
            out.append((group, aliases, at, bufs))
        return out

    def _kernel_args(self, params, sizes):
        """`_kernel_groups`' cache: what it was made from (the groups, the state, the weights, the groups'
        sizes, the parameters and their state dicts) and, per non-empty group, the parameters' detached
        aliases, where their gradients are and their state dicts; None while a parameter has no state yet."""
        opt = self.opt
        if any(id(p) not in self.slots for p in params):
            return None
        states = [opt.state.get(p) for p in params]
        if not all(isinstance(s, dict) for s in states) and self.kernel is not torch._fused_sgd_:
            return None
        groups = [([p.detach() for p in g["params"]], [self.slots[id(p)] for p in g["params"]],
                   [opt.state.get(p) or {} for p in g["params"]]) for g in opt.param_groups if g["params"]]
        return opt.param_groups, opt.state, self.weights, sizes, params, states, groups
