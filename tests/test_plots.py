"""plots, show and plot_history return Figures and check their input."""
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from netfit import History, plot_history, plots, show


def test_plots_grid_titles_and_colors():
    fig = plots(np.random.rand(8, 28, 28), rows=2, titles=list("abcdefgh"), colors=["red"] * 8)
    assert isinstance(fig, Figure) and len(fig.axes) == 8
    assert [ax.get_title() for ax in fig.axes] == list("abcdefgh")


def test_plots_accepts_tensors_and_flat_rows():
    assert len(plots(torch.rand(3, 784)).axes) == 3
    assert len(plots(torch.rand(5, 1, 28, 28), rows=1).axes) == 5


def test_plots_draws_one_square_image_or_one_flat_row_alone():
    assert len(plots(np.random.rand(64, 64)).axes) == 1   # not 64 images of 8 x 8
    assert len(plots(np.random.rand(784)).axes) == 1      # x_valid[0], as show takes it
    assert len(plots(np.random.rand(8, 784)).axes) == 8   # flat rows are still rows


def test_plots_errors():
    with pytest.raises(ValueError, match="titles"):
        plots(np.zeros((3, 4, 4)), titles=[1, 2])
    with pytest.raises(ValueError, match="at least one"):
        plots(np.zeros((0, 4, 4)))
    with pytest.raises(ValueError, match="flat image"):
        show(np.zeros(10))


def test_show():
    fig = show(np.eye(28), title=7)
    assert isinstance(fig, Figure) and fig.axes[0].get_title() == "7"


def test_plot_history_reads_the_history():
    h = History([{"epoch": 0, "trn_loss": 1.0, "val_loss": 0.9, "accuracy": 0.7, "time": 1.0},
                 {"epoch": 1, "trn_loss": 0.6, "val_loss": 0.7, "accuracy": 0.8, "time": 1.0}])
    fig = plot_history(h)
    assert len(fig.axes) == 2
    assert list(fig.axes[0].lines[0].get_ydata()) == [1.0, 0.6]
    assert list(fig.axes[1].lines[0].get_ydata()) == [0.7, 0.8]


def test_jupyter_draws_a_returned_figure_once():
    """Jupyter's inline backend draws open pyplot figures when a cell ends, and a Figure that is the
    cell's value is drawn too: netfit's figures are drawn once either way."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("matplotlib_inline")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("%matplotlib inline\nimport numpy as np\nfrom netfit import plots, show"),
                nbformat.v4.new_code_cell("plots(np.random.rand(2, 28, 28), titles=[1, 2])"),
                nbformat.v4.new_code_cell("fig = plots(np.random.rand(2, 28, 28))"),
                nbformat.v4.new_code_cell("for i in range(2): show(np.random.rand(28, 28), i)")]
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    images = [sum("image/png" in o.get("data", {}) for o in c.outputs) for c in nb.cells[1:]]
    assert images == [1, 1, 2]


def test_plot_history_skips_figures_that_are_not_numbers_and_gaps_missing_ones():
    from netfit.history import History
    h = History([{"epoch": 0, "trn_loss": 1.0, "val_loss": 0.9, "accuracy": 0.7, "note": "warm-up", "f1": None,
                  "grad_norm": torch.tensor(2.0)},
                 {"epoch": 1, "trn_loss": 0.6, "val_loss": 0.7, "accuracy": 0.8, "note": None, "f1": 0.5,
                  "grad_norm": torch.tensor(1.5)}])
    labels = [line.get_label() for ax in plot_history(h).axes for line in ax.lines]
    assert "note" not in labels and {"accuracy", "f1", "grad_norm"} <= set(labels)


def test_the_epoch_table_widens_for_long_names_and_large_values():
    from netfit.history import _table_header, _table_row
    keys = ["epoch", "trn_loss", "top_k_accuracy", "time"]
    header = _table_header(keys)
    for loss in (1.5e9, 12345.678, -2345.5, np.float32(0.123456789)):
        row = _table_row({"epoch": 0, "trn_loss": loss, "top_k_accuracy": 0.9, "time": 1.2}, keys)
        assert len(header) == len(row) and header.index("top_k_accuracy") + 14 == row.index("0.9000") + 6
