"""Checkpoints: atomic, verified saves of a whole training state, and safe loading.

    save_checkpoint("runs/x/ckpt", state)      # temp file, fsync, rename; the previous one kept as .prev
    state = load_checkpoint("runs/x/ckpt")     # SHA-256 checked, then torch.load(weights_only=True)

A checkpoint file is a short header (`NETFIT-CKPT 1`, the SHA-256 of the body) and a body written
by `torch.save`. A truncated or bit-flipped file fails the hash; a body that would run code fails
`weights_only=True`. There is no fallback to unsafe loading. A kill at any moment during a save
leaves either the new file or the previous one in place, and `load_checkpoint` falls back to the
previous file when the latest one does not verify.
"""
import hashlib
import io
import os
import random
import warnings
from pathlib import Path

import numpy as np
import torch

__all__ = ["save_checkpoint", "load_checkpoint", "CheckpointError", "rng_state", "set_rng_state",
           "safe_torch_load"]

MAGIC = b"NETFIT-CKPT 1\n"


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupt or holds something that is not plain data."""


def rng_state():
    """The torch (CPU and CUDA), numpy and Python random states, as plain data a safe load accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos,
                                                         has_gauss, gauss],
             "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    """Restore what `rng_state` returned."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not every platform can open a folder
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(path, state):
    """Write `state` (a dict of tensors and plain data) to `path` atomically; keep the old one as `.prev`.

    Example:
        >>> import tempfile; p = Path(tempfile.mkdtemp()) / "ckpt"
        >>> save_checkpoint(p, {"step": 3, "w": torch.ones(2)}); load_checkpoint(p)["step"]
        3
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    body = buf.getvalue()
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(MAGIC + hashlib.sha256(body).hexdigest().encode() + b"\n" + body)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():  # between these two renames `.prev` holds a complete checkpoint
            os.replace(path, path.with_name(path.name + ".prev"))
        os.replace(tmp, path)
    finally:  # also on Ctrl-C mid-write: no half-written temporary file left beside the checkpoints
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def safe_torch_load(source, name):
    """`torch.load(..., weights_only=True)` with errors that name the file. Never unsafe."""
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        raise CheckpointError(f"{name}: refused to load ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                              "netfit loads only tensors and plain data (weights_only=True)") from None


def _read(path):
    data = Path(path).read_bytes()
    if not data.startswith(MAGIC):
        raise CheckpointError(f"{path}: not a netfit checkpoint (header {data[:14]!r})")
    header_end = data.find(b"\n", len(MAGIC))
    digest, body = data[len(MAGIC):header_end].decode(errors="replace"), data[header_end + 1:]
    if header_end < 0 or hashlib.sha256(body).hexdigest() != digest:
        raise CheckpointError(f"{path}: SHA-256 of the body does not match its header: truncated or corrupt")
    return safe_torch_load(io.BytesIO(body), str(path))


def load_checkpoint(path, fallback=True):
    """Load a checkpoint written by `save_checkpoint`, verifying it; fall back to `.prev` if needed.

    Raises `CheckpointError` naming the file(s) when nothing loadable is there.
    """
    path = Path(path)
    errors = []
    for cand in (path, path.with_name(path.name + ".prev")) if fallback else (path,):
        if not cand.is_file():
            errors.append(f"{cand}: no such file")
            continue
        try:
            state = _read(cand)
        except CheckpointError as e:
            errors.append(str(e))
            continue
        if cand != path and path.is_file():  # the latest one is there but refused: say so
            warnings.warn(f"{errors[0]}; loaded the previous checkpoint {cand} instead", RuntimeWarning, stacklevel=2)
        return state
    raise CheckpointError("no loadable checkpoint: " + "; ".join(errors))
