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
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# torch/torchvision are pinned here, not in pyproject: this machine has these two on local disk, and
# PyPI's torchvision does not load beside the older local torch file. GPU clusters install their own.
.venv/bin/pip install -q --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/pip install -q --disable-pip-version-check -e ".[dev,cluster]"
echo "$want" > "$stamp"
