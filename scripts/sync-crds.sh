#!/usr/bin/env bash
# Copy the CRDs of crds/ into the Helm chart, which must carry them unchanged (Helm installs a
# chart's crds/ before its templates). tests/deploy/test_chart.py fails while they differ.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
for crd in "$ROOT"/crds/*.yaml; do
    cp "$crd" "$ROOT/charts/critbatch/crds/$(basename "$crd")"
done
echo "sync-crds: charts/critbatch/crds/ now carries $(ls "$ROOT"/crds/*.yaml | wc -l) CRD file(s) of crds/"
