"""How fast can one epoch of the lesson's logistic regression go on this CPU?

    python bench/experiments/cpu_step.py                  # everything, threads 1 and 2 (~5 min on 2 cores)
    python bench/experiments/cpu_step.py --threads 1 --epochs 5 --only a_eager_fused,d3_manual_compiled
    python bench/experiments/cpu_step.py --list           # variant names
    python bench/experiments/cpu_step.py --warm-cache     # keep inductor's FX graph cache on (compile times then
                                                          # depend on what earlier runs left in the cache)

Setup: Fashion-MNIST train images, first 50,000 rows for training and the next 10,000 for validation,
pixels in [0, 1] normalised with the training mean/std (one scalar each); Linear(784, 10) + LogSoftmax,
NLL loss, Adam lr 1e-3, batch size 64, shuffled every epoch with torch.randperm (782 steps, the last of
50000 % 64 = 16 rows). Every variant starts from the same weights (torch.manual_seed(0)) and sees the
same permutations (torch.manual_seed(1) before its first epoch), so accuracies should agree closely.

Per thread count: every variant is built and trained one warm-up epoch (each step timed; compile time =
the first call, and the 16-row last batch reported apart), validation accuracy is read after that first
epoch, then --epochs timed epochs of every variant run interleaved round-robin (order reversed every other
round), so that load from elsewhere hits all variants alike; median and min reported, with the mean CPU
use of other processes during the timed epochs ("foreign load", in cores). The timed span is the whole
epoch: randperm, batch gathers and 782 steps, as in netfit's loop. Compile times are cold: each compiled
variant gets an empty inductor cache dir of its own (removed at exit) unless --warm-cache. Afterwards a
perf_counter breakdown of (a) per phase and a torch.profiler table. Nothing here imports netfit.

Variants (letters follow the brief):
  a   eager as netfit does it: Module, NLLLoss, Adam(fused=True), p.grad = None
  a+  (a) plus netfit's per-step extras: loss.item() (finite check) and a running loss sum
  b   Adam(foreach=True); plain for-loop Adam (foreach=False)
  c   torch.compile: model+loss; opt.step (the documented compiled-optimizer pattern); both; the whole
      step(xb, yb) (graph-breaks at backward); whole step under compiled autograd; the 16-row last batch
      left to recompile, mark_dynamic'd, or run eagerly; mode="max-autotune-no-cudagraphs"
  d   hand-written gradient, no autograd: eager with torch._fused_adam_ (also under inference_mode),
      eager with manual Adam maths, the manual step compiled into one graph (static / dynamic=True /
      cpp_wrapper), and the same maths on transposed logits W @ xb.T (the fast layouts on this CPU),
      with and without the per-step loss value fit needs
  e   cheap cuts on the autograd step: pre-permuted epoch (one gather, then views; fresh vs preallocated
      buffer), torch.autograd.grad instead of .grad + zeroing, functional forward (F.linear +
      F.cross_entropy), Optimizer.step bypassed with a direct torch._fused_adam_ (own state, or
      opt.state's tensors), autograd-multithreading/mkldnn flags
"""
import argparse
import contextlib
import gzip
import json
import math
import os
import platform
import statistics
import time
import types
import warnings

import numpy as np

DATA = "/usr/share/datasets/fashion-mnist"
BS, LR, N_TRN, N_VAL = 64, 1e-3, 50_000, 10_000
B1, B2, EPS = 0.9, 0.999, 1e-8
SLOW_STEP = 0.02  # a warm-up step slower than this counts as (re)compilation

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--threads", default="1,2")
ap.add_argument("--epochs", type=int, default=5, help="timed epochs after the warm-up one")
ap.add_argument("--only", default="", help="comma-separated variant names (prefix match)")
ap.add_argument("--skip", default="", help="comma-separated variant names to leave out (prefix match)")
ap.add_argument("--list", action="store_true")
ap.add_argument("--warm-cache", action="store_true", help="leave inductor's FX graph cache on")
ap.add_argument("--no-profile", action="store_true", help="skip the per-step breakdown of (a)")
ap.add_argument("--json", default="", help="also write results to this file")
args = ap.parse_args()

CACHE_ROOT = None
if not args.warm_cache:  # honest cold compile times: no FX-graph, AOT-autograd or compiled-kernel (.so) cache hits
    import atexit
    import shutil
    import tempfile
    os.environ["TORCHINDUCTOR_FX_GRAPH_CACHE"] = "0"
    os.environ["TORCHINDUCTOR_AUTOGRAD_CACHE"] = "0"
    CACHE_ROOT = tempfile.mkdtemp(prefix="cpu_step_inductor_")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(CACHE_ROOT, "startup")
    atexit.register(shutil.rmtree, CACHE_ROOT, True)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

warnings.filterwarnings("ignore")
import logging  # noqa: E402
logging.getLogger("torch._dynamo").setLevel(logging.ERROR)
logging.getLogger("torch._inductor").setLevel(logging.ERROR)


# ------------------------------------------------------------------------------------------- data

def read_idx(name, offset):
    with gzip.open(f"{DATA}/{name}", "rb") as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


def load():
    imgs = read_idx("train-images-idx3-ubyte.gz", 16).reshape(-1, 784).astype(np.float32) / 255
    labels = read_idx("train-labels-idx1-ubyte.gz", 8).astype(np.int64)
    x, xv = imgs[:N_TRN], imgs[N_TRN:N_TRN + N_VAL]
    mean, std = x.mean(), x.std()
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return t((x - mean) / std), t(labels[:N_TRN]), t((xv - mean) / std), t(labels[N_TRN:N_TRN + N_VAL])


X, Y, XV, YV = load()
N_STEPS = math.ceil(N_TRN / BS)


def init_linear():
    torch.manual_seed(0)
    return nn.Linear(784, 10)


# ------------------------------------------------------------------------------------------- batches

def gathered(order):
    """netfit's way: one index_select per batch (x and y)."""
    for i in range(0, N_TRN, BS):
        j = order[i:i + BS]
        yield X.index_select(0, j), Y.index_select(0, j)


def prepermuted_fresh(order):
    """One gather of the whole epoch into a new 157 MB tensor, then batches are views (no copy).
    Pitfall: the fresh allocation page-faults its way in every epoch (~0.1 s here)."""
    xp, yp = X.index_select(0, order), Y.index_select(0, order)
    for i in range(0, N_TRN, BS):
        yield xp[i:i + BS], yp[i:i + BS]


_BUF = {}


def prepermuted(order):
    """The same, gathered into buffers allocated once (index_select(out=)): no page faults."""
    if not _BUF:
        _BUF["x"], _BUF["y"] = torch.empty_like(X), torch.empty_like(Y)
    xp, yp = _BUF["x"], _BUF["y"]
    torch.index_select(X, 0, order, out=xp)
    torch.index_select(Y, 0, order, out=yp)
    for i in range(0, N_TRN, BS):
        yield xp[i:i + BS], yp[i:i + BS]


def indices(order):
    """Only the index slices: the gather happens inside the (compiled) step."""
    for i in range(0, N_TRN, BS):
        yield (order[i:i + BS],)


# ------------------------------------------------------------------------------------------- variants
# A variant is a function returning a dict: step (trains on one batch: step(*batch)), batches (a function
# of the epoch's order yielding batches), predict (validation logits), and optionally ctx (a context
# manager factory entered around each epoch). Variants are built afresh per thread count after
# torch._dynamo.reset(); every function handed to torch.compile gets a code object of its own (`fresh`),
# so variants sharing source do not share dynamo cache entries while their epochs are interleaved.

VARIANTS = {}


def variant(name, desc, compiled=False):
    def deco(fn):
        VARIANTS[name] = (fn, desc, compiled)
        return fn
    return deco


def fresh(fn):
    """`fn` with a code object of its own (dynamo keeps its cache on the code object)."""
    fresh.n += 1
    code = fn.__code__.replace(co_name=f"{fn.__name__}_{fresh.n}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)


fresh.n = 0


def module_setup(**adam):
    net = nn.Sequential(init_linear(), nn.LogSoftmax(dim=1))
    crit = nn.NLLLoss()
    opt = torch.optim.Adam(net.parameters(), lr=LR, **adam)
    params = list(net.parameters())
    return net, crit, opt, params


def eager_module(batches=gathered, extras=False, **adam):
    net, crit, opt, params = module_setup(**adam)
    total = [0.0]

    def step(xb, yb):
        loss = crit(net(xb), yb)
        if extras:  # what netfit's loop adds on the CPU: a finite check (one float read) and the loss sum
            v = loss.item()
            if not math.isfinite(v):
                raise FloatingPointError(v)
            total[0] += v * len(yb)
        loss.backward()
        opt.step()
        for p in params:
            p.grad = None
    return dict(step=step, batches=batches, predict=net)


@variant("a_eager_fused", "(a) eager, Adam(fused=True), p.grad=None  [netfit today]")
def _a():
    return eager_module(fused=True)


@variant("a+_eager_fused_item", "(a) + loss.item() finite check + loss sum per step (netfit's extras)")
def _a_extras():
    return eager_module(fused=True, extras=True)


@variant("b1_eager_foreach", "(b) eager, Adam(foreach=True)")
def _b1():
    return eager_module(foreach=True)


@variant("b2_eager_forloop", "(b) eager, Adam(foreach=False) (single-tensor for-loop)")
def _b2():
    return eager_module(foreach=False)


# --- (c) torch.compile on the autograd step

def compiled_module(compile_fwd=False, compile_opt=False, whole=False, compiled_autograd=False,
                    partial="auto", opt_kind="foreach", mode=None):
    """partial: how the 16-row last batch is handled -- "auto" (default: recompile, dynamo then makes
    the batch dim dynamic), "dynamic" (torch._dynamo.mark_dynamic on the first batch: one dynamic graph),
    "eager" (last batch runs the uncompiled code)."""
    adam = {"fused": True} if opt_kind == "fused" else {"foreach": opt_kind == "foreach"}
    net, crit, opt, params = module_setup(**adam)
    kw = {"mode": mode} if mode else {}

    def fwd_loss(xb, yb):
        return crit(net(xb), yb)

    def opt_step():
        opt.step()

    def zero():
        for p in params:
            p.grad = None

    def eager_step(xb, yb):
        fwd_loss(xb, yb).backward()
        opt.step()
        zero()

    if whole:
        def step_body(xb, yb):
            loss = crit(net(xb), yb)
            loss.backward()
            opt.step()
            for p in params:
                p.grad = None
        cstep = torch.compile(fresh(step_body), **kw)
        if compiled_autograd:
            inner, ca_compiler = cstep, torch.compile(**kw)

            def cstep(xb, yb):  # noqa: F811
                with torch._dynamo.compiled_autograd._enable(ca_compiler):
                    inner(xb, yb)
    else:
        cfwd = torch.compile(fresh(fwd_loss), **kw) if compile_fwd else fwd_loss
        copt = torch.compile(fresh(opt_step), **kw) if compile_opt else opt_step

        def cstep(xb, yb):
            cfwd(xb, yb).backward()
            copt()
            zero()

    first = [True]

    def step(xb, yb):
        if partial == "dynamic" and first[0]:
            torch._dynamo.mark_dynamic(xb, 0)
            torch._dynamo.mark_dynamic(yb, 0)
            first[0] = False
        if partial == "eager" and len(yb) != BS:
            if compile_opt and not whole:  # opt.step never sees the batch size: it can stay compiled
                fwd_loss(xb, yb).backward()
                copt()
                zero()
            else:
                eager_step(xb, yb)
            return
        cstep(xb, yb)
    return dict(step=step, batches=gathered, predict=net)


@variant("c1_compile_fwd_loss", "(c) torch.compile(model+loss); eager backward (AOT-compiled) + fused Adam", True)
def _c1():
    return compiled_module(compile_fwd=True, opt_kind="fused")


@variant("c2_compile_opt_step", "(c) eager model; torch.compile(opt.step) with Adam(foreach=True)", True)
def _c2():
    return compiled_module(compile_opt=True)


@variant("c3_compile_fwd+opt", "(c) torch.compile(model+loss) and torch.compile(opt.step) separately", True)
def _c3():
    return compiled_module(compile_fwd=True, compile_opt=True)


@variant("c4_compile_whole_step", "(c) torch.compile(step): fwd+loss+backward+opt.step+zero (breaks at backward)", True)
def _c4():
    return compiled_module(whole=True)


@variant("c5_compile_whole_step_ca", "(c) (c4) under compiled autograd (backward traced too)", True)
def _c5():
    return compiled_module(whole=True, compiled_autograd=True)


@variant("c6_compile_fwd+opt_dynamic", "(c) (c3) with mark_dynamic on the first batch (one graph)", True)
def _c6():
    return compiled_module(compile_fwd=True, compile_opt=True, partial="dynamic")


@variant("c7_compile_fwd+opt_eagerlast", "(c) (c3) with the 16-row last batch run eagerly (no recompile)", True)
def _c7():
    return compiled_module(compile_fwd=True, compile_opt=True, partial="eager")


@variant("c8_compile_fwd+opt_maxautotune", "(c) (c7) with mode='max-autotune-no-cudagraphs'", True)
def _c8():
    return compiled_module(compile_fwd=True, compile_opt=True, partial="eager", mode="max-autotune-no-cudagraphs")


# --- (d) hand-written gradient, no autograd

class ManualState:
    def __init__(self):
        lin = init_linear()
        self.W, self.b = lin.weight.detach().clone(), lin.bias.detach().clone()
        self.params = [self.W, self.b]
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = torch.zeros((), dtype=torch.float32)  # one step counter, shared by both params
        self.steps = [self.t, self.t]
        self.eye = torch.eye(10)

    def predict(self, xv):
        return torch.addmm(self.b, xv, self.W.t())


def fused_adam(params, grads, m, v, steps, t):
    t.add_(1)  # Adam's fused path increments the counters itself before calling the kernel
    torch._fused_adam_(params, grads, m, v, [], steps, lr=LR, beta1=B1, beta2=B2, weight_decay=0.0, eps=EPS,
                       amsgrad=False, maximize=False)


def manual_grads(xb, yb, W, b, eye):
    """d(mean NLL of log_softmax(x W^T + b))/dW, /db."""
    p = torch.softmax(torch.addmm(b, xb, W.t()), 1)
    p.sub_(eye.index_select(0, yb)).div_(len(yb))  # (softmax - onehot) / bs
    return torch.mm(p.t(), xb), p.sum(0)


def manual_adam_(param, g, m, v, t):
    """torch.optim.Adam's single-tensor maths with a tensor step counter (no recompiles per step)."""
    m.lerp_(g, 1 - B1)
    v.mul_(B2).addcmul_(g, g, value=1 - B2)
    bc1 = 1 - B1 ** t
    bc2 = 1 - B2 ** t
    denom = (v.sqrt() / bc2.sqrt()).add_(EPS)
    param.sub_((LR / bc1) * m / denom)


def manual_eager(batches=gathered, inference=False):
    s = ManualState()

    def step(xb, yb):
        gW, gb = manual_grads(xb, yb, s.W, s.b, s.eye)
        fused_adam(s.params, [gW, gb], s.m, s.v, s.steps, s.t)
    return dict(step=step, batches=batches, predict=s.predict, ctx=torch.inference_mode if inference else None)


@variant("d1_manual_fusedadam", "(d) hand-written gradient + torch._fused_adam_ (eager)")
def _d1():
    return manual_eager()


@variant("d1i_manual_fusedadam_inference", "(d) (d1) run under torch.inference_mode() (no autograd dispatch)")
def _d1i():
    return manual_eager(inference=True)


@variant("d2_manual_manualadam", "(d) hand-written gradient + manual Adam maths (eager)")
def _d2():
    s = ManualState()

    def step(xb, yb):
        gW, gb = manual_grads(xb, yb, s.W, s.b, s.eye)
        s.t.add_(1)
        manual_adam_(s.W, gW, s.m[0], s.v[0], s.t)
        manual_adam_(s.b, gb, s.m[1], s.v[1], s.t)
    return dict(step=step, batches=gathered, predict=s.predict)


def manual_compiled(gather_inside=True, partial="eager", options=None, skip_guards=False):
    s = ManualState()
    W, b, (mW, mb), (vW, vb), t, eye = s.W, s.b, s.m, s.v, s.t, s.eye

    def body(xb, yb):
        p = torch.softmax(torch.addmm(b, xb, W.t()), 1)
        p = (p - eye.index_select(0, yb)) / xb.shape[0]
        gW, gb = p.t() @ xb, p.sum(0)
        t.add_(1)
        manual_adam_(W, gW, mW, vW, t)
        manual_adam_(b, gb, mb, vb, t)

    if gather_inside:
        def fn(j):
            body(X.index_select(0, j), Y.index_select(0, j))
        batches = indices
    else:
        fn, batches = body, prepermuted
    cfn = torch.compile(fresh(fn), fullgraph=True, dynamic=True if partial == "dynamic" else None, options=options)
    calls = [0]

    def step(*batch):
        if partial == "eager" and len(batch[0]) != BS:
            fn(*batch)  # the same maths, eager: no recompile for the 16-row batch
            return
        if skip_guards and calls[0] >= 2:  # guards must run on the compiling call (and one more)
            with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
                cfn(*batch)
            return
        calls[0] += 1
        cfn(*batch)
    return dict(step=step, batches=batches, predict=s.predict)


@variant("d3_manual_compiled", "(d) manual step (gather+fwd+grad+Adam) in one torch.compile graph, eager last batch", True)
def _d3():
    return manual_compiled()


@variant("d4_manual_compiled_dynamic", "(d) (d3) compiled with dynamic=True (one graph covers the 16-row batch)", True)
def _d4():
    return manual_compiled(partial="dynamic")


@variant("d5_manual_compiled_cppwrapper", "(d) (d3) with inductor cpp_wrapper=True (C++ launcher, less Python per call)", True)
def _d5():
    return manual_compiled(options={"cpp_wrapper": True})


def manual_T_grads(xb, yb, W, bcol, eye):
    """The same gradient computed on transposed logits zT = W @ xb.T + b (10, bs). MKL on this CPU runs
    (10x784)@(784x64) about 2x faster than (64x784)@(784x10), softmax over dim 0 of a (10, 64) tensor
    ~8x faster than over dim 1 of (64, 10), and the weight gradient pT @ xb then takes a contiguous pT."""
    pT = torch.softmax(torch.addmm(bcol, W, xb.t()), 0)
    pT.sub_(eye.index_select(1, yb)).div_(len(yb))  # columns of eye(10) are the one-hot vectors
    return torch.mm(pT, xb), pT.sum(1)


def manual_T_eager(batches=gathered, inference=False):
    s = ManualState()
    bcol = s.b.view(10, 1)  # a view: Adam's in-place update of b shows through

    def step(xb, yb):
        gW, gb = manual_T_grads(xb, yb, s.W, bcol, s.eye)
        fused_adam(s.params, [gW, gb], s.m, s.v, s.steps, s.t)
    return dict(step=step, batches=batches, predict=s.predict, ctx=torch.inference_mode if inference else None)


@variant("d7_manualT_fusedadam", "(d) (d1) on transposed logits W @ xb.T (the fast MKL/softmax layouts)")
def _d7():
    return manual_T_eager()


@variant("d7i_manualT_fusedadam_inference", "(d) (d7) under torch.inference_mode()  [the floor]")
def _d7i():
    return manual_T_eager(inference=True)


@variant("d7L_manualT_loss_item_inference", "(d) (d7i) + what fit needs per step: the loss value (log_softmax over "
         "dim 0 + nll_loss), loss.item() finite check, running loss sum")
def _d7L():
    s = ManualState()
    bcol = s.b.view(10, 1)
    total = [0.0]

    def step(xb, yb):
        logpT = torch.log_softmax(torch.addmm(bcol, s.W, xb.t()), 0)
        v = F.nll_loss(logpT.t(), yb).item()  # the batch's mean loss, one float read
        if not math.isfinite(v):
            raise FloatingPointError(v)
        total[0] += v * len(yb)
        pT = logpT.exp_()
        pT.sub_(s.eye.index_select(1, yb)).div_(len(yb))
        fused_adam(s.params, [torch.mm(pT, xb), pT.sum(1)], s.m, s.v, s.steps, s.t)
    return dict(step=step, batches=gathered, predict=s.predict, ctx=torch.inference_mode)


@variant("d8_manualT_compiled_cppwrapper", "(d) (d7) maths + manual Adam in one compiled graph, cpp_wrapper, eager last batch", True)
def _d8():
    s = ManualState()
    W, b, (mW, mb), (vW, vb), t, eye = s.W, s.b, s.m, s.v, s.t, s.eye
    bcol = b.view(10, 1)

    def fn(xb, yb):
        pT = torch.softmax(torch.addmm(bcol, W, xb.t()), 0)
        pT = (pT - eye.index_select(1, yb)) / xb.shape[0]
        gW, gb = pT @ xb, pT.sum(1)
        t.add_(1)
        manual_adam_(W, gW, mW, vW, t)
        manual_adam_(b, gb, mb, vb, t)
    cfn = torch.compile(fresh(fn), fullgraph=True, options={"cpp_wrapper": True})

    def step(xb, yb):
        (cfn if len(yb) == BS else fn)(xb, yb)
    return dict(step=step, batches=gathered, predict=s.predict)


# --- (e) cheap dispatch cuts on the eager autograd step

@variant("e1_eager_fused_prepermuted_fresh", "(e) (a) with one gather per epoch into a NEW tensor, batches as views")
def _e1():
    return eager_module(batches=prepermuted_fresh, fused=True)


@variant("e1b_eager_fused_prepermuted", "(e) (a) with one gather per epoch into a preallocated buffer (out=)")
def _e1b():
    return eager_module(batches=prepermuted, fused=True)


def lean_autograd(batches=gathered, functional=False):
    lin = init_linear()
    net = nn.Sequential(lin, nn.LogSoftmax(dim=1))
    crit = nn.NLLLoss()
    params = [lin.weight, lin.bias]
    plain = [p.detach() for p in params]  # same storage, not autograd leaves: no no_grad() needed for the update
    m = [torch.zeros_like(p) for p in plain]
    v = [torch.zeros_like(p) for p in plain]
    t = torch.zeros(())
    steps = [t, t]
    W, b = params

    if functional:
        def step(xb, yb):
            loss = F.cross_entropy(F.linear(xb, W, b), yb)  # == NLLLoss(LogSoftmax(.)), one call
            fused_adam(plain, list(torch.autograd.grad(loss, params)), m, v, steps, t)
    else:
        def step(xb, yb):
            loss = crit(net(xb), yb)
            fused_adam(plain, list(torch.autograd.grad(loss, params)), m, v, steps, t)
    return dict(step=step, batches=batches, predict=net)


@variant("e2_eager_autograd_grad", "(e) Module fwd; torch.autograd.grad (no .grad, no zeroing); fused Adam kernel called directly")
def _e2():
    return lean_autograd()


@variant("e3_lean_eager", "(e) (e2) with functional F.linear + F.cross_entropy")
def _e3():
    return lean_autograd(functional=True)


@variant("e3b_lean_eager_prepermuted", "(e) (e3) fed views of a pre-permuted epoch (preallocated)")
def _e3b():
    return lean_autograd(batches=prepermuted, functional=True)


@variant("e3T_lean_eager_transposed", "(e) (e3) with the Linear computed as addmm(b[:,None], W, xb.T), loss on its .T")
def _e3T():
    d = lean_autograd(functional=True)
    lin_W, lin_b = d["predict"][0].weight, d["predict"][0].bias
    plain = [p.detach() for p in (lin_W, lin_b)]
    m = [torch.zeros_like(p) for p in plain]
    v = [torch.zeros_like(p) for p in plain]
    t = torch.zeros(())
    steps = [t, t]
    params = [lin_W, lin_b]

    def step(xb, yb):
        zT = torch.addmm(lin_b.view(10, 1), lin_W, xb.t())
        loss = F.cross_entropy(zT.t(), yb)
        fused_adam(plain, list(torch.autograd.grad(loss, params)), m, v, steps, t)
    return dict(d, step=step)


@variant("e4_eager_fused_flags", "(e) (a) with autograd multithreading off and mkldnn off")
def _e4():
    return dict(eager_module(fused=True), ctx=flags)


@variant("e5_manual_inference_prepermuted", "(e) (d1i) fed views of a pre-permuted epoch (preallocated)")
def _e5():
    return manual_eager(batches=prepermuted, inference=True)


def opt_state_step(autograd_grad=False):
    """(a) with Optimizer.step's Python wrapper cut out but torch.optim.Adam kept as the owner of the
    state (state_dict, checkpoints and lr schedules keep working): one regular opt.step() creates the
    state, then each step calls the fused kernel on opt.state's own tensors, reading lr every step."""
    net, crit, opt, params = module_setup(fused=True)
    g = opt.param_groups[0]
    fast = {}

    def first_step():
        opt.step()  # builds exp_avg / exp_avg_sq / step for every parameter
        st = [opt.state[p] for p in params]
        fast["p"] = [p.detach() for p in params]  # aliases that autograd does not track: no no_grad() needed
        fast["m"] = [s["exp_avg"] for s in st]
        fast["v"] = [s["exp_avg_sq"] for s in st]
        fast["t"] = [s["step"] for s in st]

    def kernel(grads):
        torch._foreach_add_(fast["t"], 1)
        b1, b2 = g["betas"]
        torch._fused_adam_(fast["p"], grads, fast["m"], fast["v"], [], fast["t"], lr=g["lr"], beta1=b1, beta2=b2,
                           weight_decay=g["weight_decay"], eps=g["eps"], amsgrad=False, maximize=False)

    def step(xb, yb):
        loss = crit(net(xb), yb)
        if autograd_grad:
            grads = list(torch.autograd.grad(loss, params))
            if not fast:
                for p, gr in zip(params, grads):
                    p.grad = gr
                first_step()
                for p in params:
                    p.grad = None
                return
            kernel(grads)
            return
        loss.backward()
        if not fast:
            first_step()
        else:
            kernel([p.grad for p in params])
        for p in params:
            p.grad = None
    return dict(step=step, batches=gathered, predict=net)


@variant("e8_eager_optstate_kernel", "(e) (a) with opt.step() replaced by torch._fused_adam_ on opt.state's tensors")
def _e8():
    return opt_state_step()


# ------------------------------------------------------------------------------------------- harness

@contextlib.contextmanager
def flags():
    mk = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        with torch.autograd.set_multithreading_enabled(False):
            yield
    finally:
        torch.backends.mkldnn.enabled = mk


CLK = os.sysconf("SC_CLK_TCK")


def busy_s():
    """(CPU seconds used by the whole machine, by this process) so far: their difference is foreign load."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    t = os.times()
    return (sum(v) - v[3] - v[4]) / CLK, t.user + t.system


def accuracy(predict):
    with torch.no_grad():
        return (predict(XV).argmax(1) == YV).float().mean().item()


def graph_stats():
    from torch._dynamo.utils import counters
    return counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())


def epoch(v, timed_steps=None):
    order = torch.randperm(N_TRN)
    step = v["step"]
    if timed_steps is None:
        for b in v["batches"](order):
            step(*b)
    else:
        pc = time.perf_counter
        for b in v["batches"](order):
            s = pc()
            step(*b)
            timed_steps.append(pc() - s)


def run_threads(nt, names, rounds):
    """Build and warm every variant, then time `rounds` epochs of each, interleaved round-robin
    (order reversed every other round) so that load from elsewhere hits all variants alike."""
    torch.set_num_threads(nt)
    torch._dynamo.reset()
    built, results = {}, {}
    for name in names:
        fn, desc, compiled = VARIANTS[name]
        r = results[name] = {"variant": name, "desc": desc, "compiled": compiled, "threads": nt}
        try:
            if compiled and CACHE_ROOT:  # a cache of its own: each compiled variant pays the C++ compiles
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(CACHE_ROOT, f"{name}_{nt}")
                from torch._inductor.utils import clear_inductor_caches
                clear_inductor_caches()  # and nothing compiled earlier in this process is reused
            g0 = graph_stats()
            v = fn()
            ctx = v.get("ctx") or contextlib.nullcontext
            torch.manual_seed(1)
            times = []
            t0 = time.perf_counter()
            with ctx():
                epoch(v, times)
            r["warmup_epoch_s"] = time.perf_counter() - t0
            assert len(times) == N_STEPS, len(times)
            r["first_step_s"], r["last_step_s"] = times[0], times[-1]
            r["slow_steps"] = sum(t > SLOW_STEP for t in times)
            r["compile_s"] = sum(t for t in times if t > SLOW_STEP)
            r["acc_epoch1"] = accuracy(v["predict"])
            g1 = graph_stats()
            r["graphs"], r["graph_breaks"] = g1[0] - g0[0], g1[1] - g0[1]
            built[name] = (v, ctx)
            r["epoch_s"], r["foreign_load"] = [], []
        except Exception as e:  # a variant that does not compile is a result too
            r["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"
            print(f"[{nt}t] {name:38s} FAILED {r['error']}", flush=True)
            continue
        print(f"[{nt}t] {name:38s} warm-up {r['warmup_epoch_s']:6.2f} s (first step {r['first_step_s']*1e3:7.0f} ms, "
              f"16-row step {r['last_step_s']*1e3:6.0f} ms, {r['graphs']} graphs, {r['graph_breaks']} breaks)  "
              f"acc@1 {r['acc_epoch1']:.4f}", flush=True)
    order = list(built)
    for k in range(rounds):
        for name in (order if k % 2 == 0 else order[::-1]):
            v, ctx = built[name]
            b0, s0 = busy_s()
            t0 = time.perf_counter()
            with ctx():
                epoch(v)
            dt = time.perf_counter() - t0
            b1, s1 = busy_s()
            results[name]["epoch_s"].append(dt)
            results[name]["foreign_load"].append(max(0.0, (b1 - b0) - (s1 - s0)) / dt)
    for name in order:  # one more epoch each, every step timed: recompiles in steady state would show here
        v, ctx = built[name]
        times = []
        with ctx():
            epoch(v, times)
        r = results[name]
        r["max_step_after_warmup_ms"] = max(times) * 1e3
        r["acc_final"] = accuracy(v["predict"])
        ep = r["epoch_s"]
        r["median_s"], r["min_s"] = statistics.median(ep), min(ep)
        r["us_per_step"] = r["median_s"] / N_STEPS * 1e6
        r["foreign_load_median"] = statistics.median(r["foreign_load"])
    return list(results.values())


def breakdown_a():
    """perf_counter around each phase of (a), one epoch (after a warm-up epoch), µs per step."""
    net, crit, opt, params = module_setup(fused=True)
    torch.manual_seed(1)
    phases = ["slice order[i:i+64]", "index_select x, y", "forward (Linear+LogSoftmax)", "loss (NLLLoss)",
              "backward", "opt.step (fused)", "zero (p.grad=None)"]
    acc = dict.fromkeys(phases, 0.0)
    pc = time.perf_counter
    for _ in range(2):  # the second epoch is the one reported
        for k in phases:
            acc[k] = 0.0
        t_all = pc()
        order = torch.randperm(N_TRN)
        t_perm = pc() - t_all
        for i in range(0, N_TRN, BS):
            a = pc()
            j = order[i:i + BS]
            b_ = pc()
            xb, yb = X.index_select(0, j), Y.index_select(0, j)
            c = pc()
            out = net(xb)
            d = pc()
            loss = crit(out, yb)
            e = pc()
            loss.backward()
            f = pc()
            opt.step()
            g = pc()
            for p in params:
                p.grad = None
            h = pc()
            for k, (u, w) in zip(phases, ((a, b_), (b_, c), (c, d), (d, e), (e, f), (f, g), (g, h))):
                acc[k] += w - u
        total = pc() - t_all
    res = {"randperm (per epoch, /782)": t_perm / N_STEPS * 1e6}
    res.update({k: v / N_STEPS * 1e6 for k, v in acc.items()})
    res["(python loop + timers)"] = total / N_STEPS * 1e6 - sum(res.values())
    res["total"] = total / N_STEPS * 1e6
    return res


def profile_a(n_steps=200):
    """torch.profiler over n_steps of (a): ops by self CPU time (the profiler inflates every op)."""
    from torch.profiler import ProfilerActivity, profile
    net, crit, opt, params = module_setup(fused=True)
    batches = list(gathered(torch.randperm(N_TRN)))[:n_steps + 20]

    def one(xb, yb):
        loss = crit(net(xb), yb)
        loss.backward()
        opt.step()
        for p in params:
            p.grad = None
    for xb, yb in batches[:20]:
        one(xb, yb)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for xb, yb in batches[20:]:
            one(xb, yb)
    rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:16]
    return [(e.key, e.count / n_steps, e.self_cpu_time_total / n_steps) for e in rows]


def select(names):
    want = [w for w in args.only.split(",") if w]
    skip = [w for w in args.skip.split(",") if w]
    names = [n for n in names if not want or any(n.startswith(w) for w in want)]
    return [n for n in names if not any(n.startswith(w) for w in skip)]


def table(results):
    base = {r["threads"]: r for r in results if r["variant"] == "a_eager_fused" and "error" not in r}
    print("\n| variant | threads | s/epoch median | min | µs/step | speed-up vs (a) | compile s: first call / 16-row batch | graphs / breaks "
          "| val acc after epoch 1 | Δ vs (a), pt | foreign load |")
    print("|---|---:|---:|---:|---:|---:|---|---|---:|---:|---:|")
    for r in results:
        if "error" in r:
            print(f"| {r['variant']} | {r['threads']} | failed: {r['error']} | | | | | | | | |")
            continue
        b = base.get(r["threads"])
        ratio = f"{b['median_s'] / r['median_s']:.2f}x" if b else ""
        dacc = f"{(r['acc_epoch1'] - b['acc_epoch1']) * 100:+.2f}" if b else ""
        comp = f"{r['first_step_s']:.1f} / {r['last_step_s']:.2f}" if r["compiled"] else "-"
        gb = f"{r['graphs']} / {r['graph_breaks']}" if r["compiled"] else "-"
        print(f"| {r['variant']} | {r['threads']} | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['us_per_step']:.0f} | {ratio} | "
              f"{comp} | {gb} | {r['acc_epoch1']:.4f} | {dacc} | {r['foreign_load_median']:.2f} |")


def main():
    if args.list:
        for n, (_, d, _c) in VARIANTS.items():
            print(f"{n:40s} {d}")
        return
    threads = [int(t) for t in args.threads.split(",")]
    names = select(list(VARIANTS))
    print(f"torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}, "
          f"FX graph cache {'on' if args.warm_cache else 'off'}; {N_STEPS} steps/epoch; median of {args.epochs} "
          "interleaved timed epochs after 1 warm-up epoch", flush=True)
    t_start = time.perf_counter()
    if any(VARIANTS[n][2] for n in names):  # inductor's one-time import/initialisation, kept out of compile times
        t0 = time.perf_counter()
        torch.compile(lambda a: (a * 2).sum())(torch.ones(3))
        print(f"inductor one-time start-up (first compile in the process): {time.perf_counter() - t0:.1f} s", flush=True)
    results = []
    for nt in threads:
        results += run_threads(nt, names, args.epochs)
    table(results)
    if not args.no_profile and "a_eager_fused" in names:
        for nt in threads:
            torch.set_num_threads(nt)
            bd = breakdown_a()
            print(f"\nper-step breakdown of (a), {nt} thread(s), µs/step (perf_counter around each phase):")
            for k, v in bd.items():
                print(f"  {k:32s} {v:7.1f}")
            results.append({"breakdown_a": bd, "threads": nt})
        torch.set_num_threads(threads[0])
        prof = profile_a()
        print(f"\ntorch.profiler, (a), {threads[0]} thread(s), top ops by self CPU time (calls/step, µs/step; profiler-inflated):")
        for key, cnt, us in prof:
            print(f"  {key:48s} x{cnt:<4.0f} {us:7.1f}")
        results.append({"profile_a": prof, "threads": threads[0]})
    print(f"\nwhole run {time.perf_counter() - t_start:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
