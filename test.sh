#!/usr/bin/env bash
# Set up .venv and run the whole test suite (slow tests included; GPU tests skip without a GPU).
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
exec .venv/bin/python -m pytest -q -ra "$@"
