#!/usr/bin/env bash
# Set up netfit on a fresh Debian/Ubuntu machine and run the main job or the tests.
#   ./run.sh train [netfit train options]   # Fashion-MNIST, offline, from Debian's dataset-fashion-mnist
#   ./run.sh test  [pytest options]         # the test suite (add --runslow for the long tests)
set -euo pipefail
cd "$(dirname "$0")"
what=${1:-train}; shift || true

# the dataset and a Python that can make virtual environments, from the system's packages
if [ ! -d /usr/share/datasets/fashion-mnist ] || ! python3 -c "import venv, ensurepip" 2>/dev/null; then
  if command -v apt-get >/dev/null; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq || true
    $SUDO apt-get install -y -qq dataset-fashion-mnist python3-venv || echo "run.sh: apt-get could not install dataset-fashion-mnist; netfit will look in its cache or download" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first, pinned: a bare `torch` requirement would pull a multi-GB CUDA build on machines that
# have the CPU wheel at hand; the project's own range (torch>=2.4,<2.15) is then already satisfied
python -m pip install -q "torch==2.13.0"
case "$what" in
  train) python -m pip install -q -e . && netfit train "$@" ;;
  test)  python -m pip install -q -e ".[dev]" && python -m pytest "$@" ;;
  *) echo "usage: ./run.sh train|test [options]" >&2; exit 2 ;;
esac
