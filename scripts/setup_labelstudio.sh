#!/usr/bin/env bash
# A Label Studio server for the live tests (tests/test_labelstudio_live.py) in its own venv, .lsvenv/:
# its Django and pinned packages are not the project's. Idempotent: skipped when the pins are installed.
# First use: about 2 minutes and 1.0 GB (from PyPI through uv).
set -euo pipefail
cd "$(dirname "$0")/.."
# sentry-sdk 3 (pulled by default) makes 1.23.2 crash at start: "Unknown option 'send_default_pii'".
PINS=("label-studio==1.23.2" "sentry-sdk<3")
stamp=.lsvenv/.installed
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "${PINS[*]}" ]; then
  exit 0
fi
[ -x .venv/bin/uv ] || scripts/setup.sh
echo "setup: installing Label Studio into .lsvenv (about 2 minutes on first use) ..."
started=$SECONDS
base=$(.venv/bin/python -c 'import sys; print(sys._base_executable)')
[ -x .lsvenv/bin/python ] || .venv/bin/uv venv -q --python "$base" .lsvenv
.venv/bin/uv pip install -q --python .lsvenv/bin/python "${PINS[@]}"
echo "${PINS[*]}" > "$stamp"
echo "setup: Label Studio installed in $((SECONDS - started)) s"
