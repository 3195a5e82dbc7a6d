#!/usr/bin/env bash
# Set everything up, then run critbatch's main job on this machine.
# Extra arguments go to the critbatch command below (e.g. --json).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh

# The main job: one command line. For now, Proposition 3.4 on the paper's DCGAN example
# (Adam measured at b* = 32 on LSUN-Bedroom; RMSProp and AdaBelief at the paper's rates).
exec .venv/bin/critbatch estimate --reference optimizer=adam,lr=1e-4,beta1=0.5,beta2=0.999,batch=32 --params 3576704 --dataset-size 3033042 --target optimizer=rmsprop,lr=1e-4 --target optimizer=adabelief,lr=3e-4 "$@"
