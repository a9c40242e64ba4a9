"""History and how a run is shown: the per-epoch records `fit` returns, the table it prints, and the
progress bar over the batches (a widget in Jupyter, one redrawn line on a terminal, nothing otherwise).

    h = fit(net, md, 3, metrics=[accuracy]); h["val_loss"]; h[-1]["accuracy"]; print(h)
"""
import json
import sys

import numpy as np

__all__ = ["History"]


class History:
    """Per-epoch records of a `fit` call: `history[i]` is a dict, `history["val_loss"]` a list.

    `history.info` says how the run was done (device, path, batches per epoch...).

    Example:
        >>> h = History(); h.append({"epoch": 0, "trn_loss": 0.5}); h["trn_loss"]
        [0.5]
    """

    def __init__(self, records=None, info=None):
        self.records, self.info = list(records or []), dict(info or {})

    def append(self, record):
        self.records.append(dict(record))

    def __len__(self):
        return len(self.records)

    def __iter__(self):
        return iter(self.records)

    def __getitem__(self, key):
        if isinstance(key, (int, slice, np.integer)):  # h[np.argmin(h["val_loss"])]: the best epoch's record
            return self.records[key]
        if self.records and key not in self:
            raise KeyError(f"no epoch figure {key!r}; the records hold {self.keys()}")
        return [r.get(key) for r in self.records]

    def __contains__(self, key):
        return any(key in r for r in self.records)

    def keys(self):
        """The figures the records hold, in first-seen order: ["epoch", "trn_loss", "val_loss", ...]."""
        seen = {}
        for r in self.records:
            seen.update(dict.fromkeys(r))
        return list(seen)

    def to_dict(self):
        return {"records": self.records, "info": self.info}

    def to_json(self, path=None):
        text = json.dumps(self.to_dict(), indent=2, default=str)
        if path is not None:
            with open(path, "w") as f:
                f.write(text)
        return text

    def __str__(self):
        """The per-epoch table, as `fit` prints it: `print(h)`."""
        keys = self.keys()
        return _table_header(keys) + "".join("\n" + _table_row(r, keys) for r in self.records)

    def __repr__(self):
        """One line: what a Python prompt, IPython or Jupyter shows for a line ending in `fit(...)`, which
        has just printed the table (`print(h)` prints it whole)."""
        last = self.records[-1] if self.records else {}
        figures = ", ".join(f"{k} {v:.4f}" for k, v in last.items()
                            if k not in ("epoch", "time", "lr") and isinstance(v, float))
        return (f"History({len(self.records)} epoch{'s' * (len(self.records) != 1)}"
                + (f"; last: {figures}" if figures else "") + ")")

    def _repr_pretty_(self, p, cycle):
        p.text(repr(self))


def _metric_name(m):
    return getattr(m, "__name__", None) or type(m).__name__


def _width(k):
    """A column's width: 9 characters, or the figure's name where longer (top_k_accuracy)."""
    return 5 if k == "epoch" else max(9, len(k))


def _table_header(keys):
    return "  ".join(f"{k:>{_width(k)}}" for k in keys if k != "lr")


def _table_row(r, keys):
    cells = []
    for k in keys:
        v, w = r.get(k), _width(k)
        if k == "lr":
            continue
        if k == "epoch":
            cells.append(f"{v:5d}")
        elif k == "time":
            cells.append(f"{f'{v:.2f}s':>{w}}")
        elif isinstance(v, (float, np.floating)):
            fixed = f"{float(v):.4f}"  # 4 decimals while they fit the column, else 3 significant digits
            cells.append(f"{fixed:>{w}}" if len(fixed) <= w else f"{float(v):{w}.3g}")
        else:
            cells.append(f"{str(v):>{w}}")
    return "  ".join(cells)


def _in_jupyter():
    """True inside a Jupyter kernel (also Colab's); not in a script that merely imported ipykernel."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


class _Progress:
    """tqdm's auto bar over the batches: a widget in Jupyter, one redrawn line on a terminal,
    nothing when output is not a terminal (or `verbose=False`). The table goes through `write`."""

    def __init__(self, verbose, total):
        self.verbose, self.bar = verbose, None
        if not verbose:
            return
        if _in_jupyter():  # a widget, if ipywidgets is there to draw it
            try:
                import ipywidgets  # noqa: F401  (tqdm's notebook bar needs it; without it, no bar)
                from tqdm.notebook import tqdm
            except ImportError:
                return
        elif sys.stderr.isatty():
            from tqdm import tqdm
        else:
            return
        self.bar = tqdm(total=total, leave=False, dynamic_ncols=True, mininterval=0.2)

    def start_epoch(self, total, desc):
        if self.bar is not None:
            self.bar.reset(total=total)
            self.bar.set_description(desc, refresh=False)

    def update(self, n):
        if self.bar is not None:
            self.bar.update(n)

    def write(self, line):
        if not self.verbose:
            return
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()

