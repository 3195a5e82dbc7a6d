#!/usr/bin/env bash
# Set up the development environment: a virtualenv in .venv (created if missing) with critbatch
# installed editable, with its trainer, operator and test extras.
#
# Idempotent: when pyproject.toml has not changed since the last successful install and the
# packages import, it does nothing. PYTHON picks the interpreter that creates the venv.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
VENV="$ROOT/.venv"
STAMP="$VENV/.critbatch-installed"

log() { printf 'setup: %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
    log "creating the virtualenv .venv with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
fi

wanted="$("$VENV/bin/python" -c 'import hashlib, sys
print(hashlib.sha256(open("pyproject.toml", "rb").read()).hexdigest(), sys.version_info[:2])')"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$wanted" ] \
    && "$VENV/bin/python" -c 'import critbatch.cli, critbatch_trainer, critbatch_operator' \
        >/dev/null 2>&1; then
    exit 0
fi

log "installing critbatch with its trainer, operator and test extras into .venv (a few minutes the first time)"
rm -f "$STAMP"
# pip's and the build backend's chatter goes to a log that is shown only when pip fails.
pip_log="$(mktemp)"
trap 'rm -f "$pip_log"' EXIT
if ! "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        -e ".[trainer,operator,test]" >"$pip_log" 2>&1; then
    cat "$pip_log" >&2
    log "pip install failed"
    exit 1
fi
printf '%s\n' "$wanted" > "$STAMP"
log "done: $("$VENV/bin/critbatch" --version)"
