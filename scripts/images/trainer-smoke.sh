#!/usr/bin/env bash
# Build the trainer image and run one short CPU trial in it as the operator's Job runs it:
# the Job that critbatch_operator writes for one trial of examples/digits.yaml (b = 32, seed 0,
# at most 300 steps), run by sandbox.py as user 65532 with a read-only root, emptyDirs on
# /scratch and /tmp, /dev/shm, and the termination message file. Prints the trial's result
# JSON, which the trainer writes to that file (docs/images.md records a run).
#
#   bash scripts/images/trainer-smoke.sh
#
# Needs root, buildah, debootstrap and .venv (scripts/setup.sh), which writes the Job.
# CRITBATCH_IMAGE_STORE and TORCH as for build.sh.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV_PYTHON="$ROOT/.venv/bin/python"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

start=$(date +%s)
image="$(bash "$ROOT/scripts/images/build.sh" trainer | tail -1)"
printf 'trainer-smoke: %s ready in %d s\n' "$image" $(( $(date +%s) - start )) >&2

"$VENV_PYTHON" - "$ROOT/examples/digits.yaml" >"$work/job.json" <<'PY'
import json
import socket
import sys

import yaml

from critbatch.spec import parse_sweep
from critbatch.vocabulary import TrialKey
from critbatch_operator.jobs import build_job

with open(sys.argv[1]) as f:
    manifest = yaml.safe_load(f)
spec = manifest["spec"]
del spec["batchSizeRange"]
spec.update(batchSizes=[32], seeds=1, metrics={"lingerSeconds": 0})
spec["target"]["maxSteps"] = 300
with socket.socket() as s:  # the trainer serves /metrics on the host's network here
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
json.dump(build_job(parse_sweep(manifest), TrialKey(32, 0), metrics_port=port), sys.stdout)
PY

touch "$work/termination-log"
start=$(date +%s)
rc=0
python3 "$ROOT/scripts/images/sandbox.py" --image "$image" --pod "$work/job.json" \
    --termination-log "$work/termination-log" || rc=$?
printf 'trainer-smoke: the trial exited %d after %d s; its result:\n' "$rc" \
    $(( $(date +%s) - start )) >&2
cat "$work/termination-log"
echo
exit "$rc"
