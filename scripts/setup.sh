#!/usr/bin/env bash
# Create .venv at the project root and install the project into it (idempotent: skipped when
# pyproject.toml and this script are unchanged since the last successful install).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
stamp=.venv/.installed
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "setup: installing the project into .venv (about 2 minutes on first use) ..."
started=$SECONDS
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# torch/torchvision are pinned here, not in pyproject: this machine has these two on local disk, and
# PyPI's torchvision does not load beside the older local torch file. GPU clusters install their own.
# pip finds them on that disk (uv would download a CUDA build); byte-compiled on every core after,
# not one file at a time by pip (11 s instead of 29 s on 2 cores).
.venv/bin/pip install -q --disable-pip-version-check --no-compile "torch==2.14.1" "torchvision==0.29.1" "uv==0.13.9"
# (torch ships a test file in Python 3.12 syntax: it fails to compile here, as it does under pip.)
.venv/bin/python -m compileall -q -j 0 .venv/lib/python3*/site-packages/torch .venv/lib/python3*/site-packages/torchvision \
  > /dev/null || true
# The rest with uv: parallel downloads, 31 s instead of pip's ~130 s with a cold cache (it keeps the
# torch above: installed packages that satisfy the project are not replaced).
.venv/bin/uv pip install -q --compile-bytecode --python .venv/bin/python -e ".[dev,cluster,mlflow]"
echo "$want" > "$stamp"
echo "setup: done in $((SECONDS - started)) s"
