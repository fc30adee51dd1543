#!/usr/bin/env bash
# The embedded demo (experiment=demo: local Ray, generated synthetic pool, local storage, YOLOX-nano on CPU).
# Extra arguments are Hydra overrides, e.g. ./run.sh strategy=random loop.rounds=4
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
exec .venv/bin/python jobs/loop.py experiment=demo "$@"
