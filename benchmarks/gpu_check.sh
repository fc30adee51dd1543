#!/usr/bin/env bash
# Every GPU measurement in one command (< 7 minutes on one H100/H200): the GPU tests (scoring paths and
# the AMP training step), where a scoring actor's start-up goes, the post-process bound with realistic
# and worst-case candidate counts, and the end-to-end benchmark (model alone, bare DataLoader loop,
# score_pool with its per-phase timeline) at 40,000 images at the preset's batch, then score_pool at
# other batch sizes x batches in flight.
# (The GPU tests include score.compile with Inductor: ~1 minute of compile. Its throughput is measured
# apart, ~4 more minutes: the command under 'Not measured' in benchmarks/RESULTS.md.)
# Results go to $OUT (default: ./gpu_check_out). Usage: benchmarks/gpu_check.sh
# On the lent machine (../shared/device/README.md) the tests need pydantic too (ray.train imports it), which
# pack.sh does not pack: also run, from the project root,
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 -d .devwhl pydantic pydantic-core annotated-types typing-inspection typing-extensions
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
quiet() { grep -v -E "DEBUG|INFO|\[score\]" ; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/machine.txt"
timeout 210 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -25 | tee "$OUT/gpu_tests.txt"
timeout 90 python3 benchmarks/actor_startup.py --device cuda --size s --input 640 2>&1 | quiet | tee "$OUT/startup.txt"
timeout 60 python3 benchmarks/score_throughput.py --device cuda --size s --input 640 --unique 1024 \
  --candidates all --skip bare,ray --repeats 3 2>&1 | tee "$OUT/post_worst.txt"
timeout 240 python3 benchmarks/score_throughput.py --device cuda --size s --input 640 --unique 2000 \
  --n 40000 --candidates 20 --repeats 1 --ray-variants 64x3,256x2,256x3 2>&1 | quiet | tee "$OUT/score_e2e.txt"
