"""Set-up shared by the reliability suite: processes to kill, the long mode, and the figures it reports.

    python -m pytest -q tests/reliability               # the fast mode, part of the normal run
    python -m pytest -q tests/reliability --runslow     # the long mode (N >= 20 kills and more examples)

At the end of a run the suite prints its figures ("kill-and-resume bit-identical 3/3", ...).
"""
import multiprocessing
import multiprocessing.forkserver
import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
FIGURES = []  # (what, passed, total, note) in the order the tests ran
sys.path.insert(0, str(HERE))  # tests and the forkserver import _reliability_jobs by that name


@pytest.fixture
def long_mode(request):
    """True under --runslow: tests then run their long mode (more kills, more examples)."""
    return request.config.getoption("--runslow")


@pytest.fixture
def figure():
    """`figure(what, passed, total, note="")` records one of the figures printed after the run."""
    def record(what, passed, total, note=""):
        FIGURES.append((what, passed, total, note))
    return record


@pytest.fixture(scope="session")
def jobs():
    """A multiprocessing context whose processes fork from a server that has imported torch and netfit.

    `jobs.Process(target=_reliability_jobs.train, ...)` is a separate process that starts in
    milliseconds; `p.kill()` sends it SIGKILL.
    """
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["_reliability_jobs"])
    # the server imports it by name, and Python 3.11's forkserver ignores the parent's sys.path
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE)] + ([old] if old else []))
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old
    return ctx


def pytest_terminal_summary(terminalreporter):
    if not FIGURES:
        return
    terminalreporter.section("reliability figures")
    for what, passed, total, note in FIGURES:
        terminalreporter.write_line(f"{what}: {passed}/{total}" + (f"  ({note})" if note else ""))
