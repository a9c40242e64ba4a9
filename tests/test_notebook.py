"""notebooks/lesson8.ipynb runs top to bottom without an error, and is committed without outputs.

The normal run sets NETFIT_NOTEBOOK_QUICK=1 (a few thousand rows, one epoch); the full run is marked
slow (`pytest --runslow`)."""
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "lesson8.ipynb"


def _execute(monkeypatch, quick, timeout):
    # the kernel inherits this process's environment; "python3" resolves to this interpreter
    monkeypatch.setenv("NETFIT_NOTEBOOK_QUICK", "1" if quick else "0")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError naming the cell and the traceback
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    return nb


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert not dirty, f"cells {dirty} hold outputs; clear them before committing"


def test_notebook_runs_quick(monkeypatch):
    nb = _execute(monkeypatch, quick=True, timeout=300)
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert "(True, 1)" in str(first.outputs), "the first cell should report QUICK=True, EPOCHS=1"


@pytest.mark.slow
def test_notebook_runs_full(monkeypatch):
    _execute(monkeypatch, quick=False, timeout=1800)
