#!/usr/bin/env bash
# Every GPU measurement of the scoring path in one command (< 5 minutes on one H100/H200):
#   the GPU tests, the post-process bound with realistic and worst-case candidate counts, and the
#   end-to-end benchmark (model alone, bare DataLoader loop, score_pool) at 40,000 images.
# Results go to $OUT (default: ./gpu_check_out). Usage: benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/machine.txt"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -25 | tee "$OUT/gpu_tests.txt"
timeout 60 python3 benchmarks/score_throughput.py --device cuda --size s --input 640 --unique 1024 \
  --candidates all --skip bare,ray --repeats 3 2>&1 | tee "$OUT/post_worst.txt"
timeout 300 python3 benchmarks/score_throughput.py --device cuda --size s --input 640 --unique 2000 \
  --n 40000 --candidates 20 --repeats 1 2>&1 | grep -v -E "DEBUG|INFO" | tee "$OUT/score_e2e.txt"
