"""Shared test set-up: the `--runslow` flag, the shared data folder, and a quiet matplotlib."""
import os
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")  # tests draw figures without a display

import torch  # noqa: E402

# One intra-op thread: the tests' models are tiny, and on a busy 2-core machine two spinning
# threads per process made steps 20-50x slower; tests that launch processes stay within the cores.
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist"
FASHION_SYSTEM = Path("/usr/share/datasets/fashion-mnist")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    import torch
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def mnist_digits():
    """The real MNIST test digits as lesson-style splits: 8,000 to train, 2,000 to validate."""
    from netfit.datasets import read_idx
    if not (SHARED_MNIST / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"{SHARED_MNIST} not found")
    x = read_idx(SHARED_MNIST / "t10k-images-idx3-ubyte.gz").reshape(10000, -1).astype("float32") / 255
    y = read_idx(SHARED_MNIST / "t10k-labels-idx1-ubyte.gz").astype("int64")
    return (x[:8000], y[:8000]), (x[8000:], y[8000:])


@pytest.fixture(scope="session")
def fashion():
    """Full Fashion-MNIST from the system folder (Debian's dataset-fashion-mnist)."""
    from netfit import datasets
    if not FASHION_SYSTEM.is_dir():
        pytest.skip("dataset-fashion-mnist is not installed")
    return datasets.fashion_mnist(system_dirs=[FASHION_SYSTEM], cache=os.devnull + "/none", download=False)


@pytest.fixture
def stop_at():
    """`stop_at(k)`: a callback that ends fit (CancelFit) once the optimizer has taken k steps."""
    from netfit import CancelFit

    class StopAt:
        def __init__(self, step):
            self.step = step

        def after_batch(self, run):
            if run.step == self.step:
                raise CancelFit()
    return StopAt
