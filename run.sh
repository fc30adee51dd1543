#!/usr/bin/env bash
# The main job on embedded defaults (local Ray, generated synthetic pool, local storage, CPU).
# Extra arguments are Hydra overrides, e.g. ./run.sh strategy=random loop.rounds=4
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
exec .venv/bin/python jobs/loop.py "$@"
