#!/usr/bin/env bash
# Set everything up, then run critbatch's main job on this machine.
# Extra arguments go to the critbatch command below (e.g. --json).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh

# The main job: a whole sweep on the embedded digits data, on this machine (a few minutes on
# two CPU cores); the report lands in runs/digits-local/.
exec .venv/bin/critbatch run examples/digits-local.yaml "$@"
