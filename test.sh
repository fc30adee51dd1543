#!/usr/bin/env bash
# Set up .venv and run the whole test suite (slow tests included; GPU tests skip without a GPU).
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
scripts/setup_labelstudio.sh  # a real Label Studio server for tests/test_labelstudio_live.py, in .lsvenv/
# Two test processes, a test module each at a time (a module's fixtures are built once): alone, the suite
# leaves a third of 2 cores idle while Ray processes start; with two it ran in 420 s instead of 588 s.
# A `-n 0` given to this script runs it in one process.
exec .venv/bin/python -m pytest -q -ra -n 2 --dist loadscope "$@"
