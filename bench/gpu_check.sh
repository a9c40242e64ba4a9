#!/usr/bin/env bash
# On a machine with an NVIDIA GPU and PyTorch already installed: the GPU tests, the GPU benchmark
# and the GPU time-to-accuracy run, in a few minutes; short tables are printed last.
#   bash bench/gpu_check.sh                 (from the repository root; results under $OUT or bench/results)
# Fashion-MNIST is read from $NETFIT_DATA/fashion-mnist/ (data/gpu/ here when present), else the
# system folder, else downloaded. data/ is git-ignored: a copy of the tree sent to a GPU machine
# without network must carry data/gpu/ (the four IDX files) along. Exits with pytest's status.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/results}"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src:${PYTHONPATH:-}"
[ -d data/gpu/fashion-mnist ] && export NETFIT_DATA="$PWD/data/gpu"
if ! python3 -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
  echo "gpu_check: no CUDA device here (torch.cuda.is_available() is False); nothing to check" >&2
  exit 1
fi
mkdir -p "$OUT"
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader
start=$(date +%s)
python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_graphs.py tests/test_graphs_callbacks.py 2>&1 \
    | tee "$OUT/gpu_tests.log" | tail -15
tests_rc=${PIPESTATUS[0]}
echo "tests: $(( $(date +%s) - start )) s (pytest exit status $tests_rc)"
python3 bench/time_to_accuracy.py --gpu-recipe --seeds "${TTA_SEEDS:-0}" ${TTA_GRID:+--grid "$TTA_GRID"} \
    --out "$OUT/time_to_accuracy_gpu.json" 2>&1 | tee "$OUT/time_to_accuracy_gpu.log" | tail -12
echo "tests + time to accuracy: $(( $(date +%s) - start )) s"
python3 bench/bench_fit.py --device cuda --contenders "${CONTENDERS:-netfit,dataloader,slicing}" \
    --models "${MODELS:-logreg,mlp}" --epochs "${EPOCHS:-3}" --repeats "${REPEATS:-1}" --out "$OUT/bench" 2>&1 \
    | tee "$OUT/bench_gpu.log" | tail -14
for f in "$OUT"/bench/*; do mv "$f" "$OUT/$(basename "$f" | tr -c 'A-Za-z0-9._\n-' '_')"; done  # plain names
rmdir "$OUT/bench" 2>/dev/null
echo "all: $(( $(date +%s) - start )) s"
exit "$tests_rc"  # the benchmarks report; the tests decide
