#!/usr/bin/env bash
# On a machine with an NVIDIA GPU and PyTorch already installed: the GPU-marked tests, then the GPU
# benchmark, in a few minutes; the benchmark's table is printed last.
#   bash bench/gpu_check.sh            (from the repository root)
set -uo pipefail
cd "$(dirname "$0")/.."
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())" || exit 1
python -m pip install -q --no-deps -e . 2>/dev/null || export PYTHONPATH="$PWD/src:${PYTHONPATH:-}"
python -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py
python bench/bench_fit.py --device cuda --contenders netfit,dataloader,slicing --models logreg,mlp --epochs 3
