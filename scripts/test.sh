#!/usr/bin/env bash
# Set up, install the external test tools, lint, and run the test suite (GPU tests excluded).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh tests/core/test_science.py -x`.
# The exit code is pytest's (or the first failing step's).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/setup.sh
if [ -f scripts/install-test-tools.sh ]; then
    bash scripts/install-test-tools.sh
fi
# The console scripts (critbatch, critbatch-trainer, ...) and the installed tools, for the
# tests that run them as subprocesses.
export PATH="$ROOT/.venv/bin:$ROOT/.tools/bin:$PATH"

echo "test: ruff check ."
.venv/bin/ruff check .
# Two workers, whole files each (module fixtures build once): most tests wait on processes,
# servers and sockets, so two workers finish in about two thirds of the time on two cores.
# `-n 0` after it runs them in this process.
echo "test: pytest -m 'not gpu' -n 2"
exec .venv/bin/python -m pytest -q -m "not gpu" -n 2 --dist loadfile "$@"
