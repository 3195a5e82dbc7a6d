#!/usr/bin/env bash
# Build critbatch's `operator` or `trainer` image with buildah, without a Docker engine or a
# public image registry: the bases are made here from Debian's packages (debootstrap), and pip
# inside the build reads only a wheelhouse that this machine's pip fills (docs/images.md).
#
#   bash scripts/images/build.sh operator|trainer
#
# Needs root, buildah and debootstrap. The last line printed is the image's name. Environment:
#   CRITBATCH_IMAGE_STORE  buildah's storage (vfs driver) and the wheelhouse
#                          (default: ~/.cache/critbatch-images); its bases are reused
#   TORCH                  the trainer base's torch requirement (default torch==2.13.0: a
#                          release with a CPU-only build, far smaller than the CUDA one)
#   DEBIAN_MIRROR          debootstrap's mirror (default: debootstrap's own)
#   PYTHON                 the interpreter whose pip fills the wheelhouse (default python3)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TARGET="${1:?usage: build.sh operator|trainer}"
STORE="${CRITBATCH_IMAGE_STORE:-${XDG_CACHE_HOME:-$HOME/.cache}/critbatch-images}"
TORCH="${TORCH:-torch==2.13.0}"
PYTHON="${PYTHON:-python3}"
SUITE=bookworm   # the Debian release of the official python:3.11-slim-bookworm base
BASES=localhost/critbatch-base
PYTHON_BASE="$BASES:python-$SUITE"
TORCH_BASE="$BASES:torch-$SUITE"
VERSION="$("$PYTHON" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$ROOT/pyproject.toml")"
IMAGE="localhost/critbatch-$TARGET:$VERSION"

case "$TARGET" in operator|trainer) ;; *) echo "build.sh: unknown target $TARGET" >&2; exit 2 ;; esac

log() { printf 'images: %s\n' "$*" >&2; }
bah() { buildah --root "$STORE/storage" --runroot "$STORE/run" --storage-driver vfs "$@"; }
have_image() { bah images --quiet "$1" >/dev/null 2>&1; }
seconds() { date +%s; }

mkdir -p "$STORE"

# The python base: Debian's minimal system with its python3, venv and pip, like the official
# slim image (which builds its own Python on the same release).
if ! have_image "$PYTHON_BASE"; then
    log "debootstrap $SUITE into $PYTHON_BASE"
    start=$(seconds)
    ctr="$(bah from scratch)"
    rootfs="$(bah mount "$ctr")"
    # shellcheck disable=SC2086 # an empty DEBIAN_MIRROR is no argument
    debootstrap --variant=minbase \
        --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
        "$SUITE" "$rootfs" ${DEBIAN_MIRROR:-} >"$STORE/debootstrap.log" 2>&1 \
        || { tail -20 "$STORE/debootstrap.log" >&2; exit 1; }
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
        "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/usr/share/doc/* \
        "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
    bah config --env LANG=C.UTF-8 \
        --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --cmd python3 "$ctr"
    bah commit --quiet --rm "$ctr" "$PYTHON_BASE" >/dev/null
    log "python base in $(( $(seconds) - start )) s"
fi

# The wheelhouse: every wheel the build installs, fetched by this machine's pip (its index,
# configuration and cache) for the base's Python, C library and architecture.
WHEELHOUSE="$STORE/wheelhouse"
mkdir -p "$WHEELHOUSE"
start=$(seconds)
ctr="$(bah from --pull-never "$PYTHON_BASE")"
probe="$(chroot "$(bah mount "$ctr")" python3 -c '
import os, platform, sys
print(f"{sys.version_info[0]}.{sys.version_info[1]}", os.confstr("CS_GNU_LIBC_VERSION").split()[1],
      platform.machine())')"
bah rm "$ctr" >/dev/null
read -r pyver glibc arch <<<"$probe"
platforms=(--platform "linux_$arch")
for (( minor = ${glibc#*.}; minor >= 5; minor-- )); do
    platforms+=(--platform "manylinux_2_${minor}_$arch")
done
platforms+=(--platform "manylinux2014_$arch" --platform "manylinux2010_$arch" --platform "manylinux1_$arch")
requirements="$STORE/requirements-$TARGET.txt"
"$PYTHON" - "$ROOT/pyproject.toml" "$TARGET" >"$requirements" <<'PY'
import sys
import tomllib

with open(sys.argv[1], "rb") as f:
    project = tomllib.load(f)
print("\n".join(project["build-system"]["requires"] + project["project"]["dependencies"]
                + project["project"]["optional-dependencies"][sys.argv[2]]))
PY
[[ "$TARGET" == trainer ]] && echo "$TORCH" >>"$requirements"
log "wheelhouse for Python $pyver, glibc $glibc, $arch"
# pip's notes about find-links folders that do not exist are noise: keep only the rest.
"$PYTHON" -m pip download --quiet --disable-pip-version-check --dest "$WHEELHOUSE" \
    --only-binary=:all: --python-version "$pyver" --implementation cp \
    --abi "cp${pyver/./}" --abi abi3 --abi none "${platforms[@]}" --requirement "$requirements" \
    2> >(grep -v "is ignored: it is neither" >&2)
log "wheelhouse in $(( $(seconds) - start )) s: $(find "$WHEELHOUSE" -name '*.whl' | wc -l) wheels"

# The torch base: the python base with torch in its system site packages, as in the official
# PyTorch image.
if [[ "$TARGET" == trainer ]] && ! have_image "$TORCH_BASE"; then
    log "$TORCH into $TORCH_BASE"
    start=$(seconds)
    ctr="$(bah from --pull-never "$PYTHON_BASE")"
    bah run --isolation chroot --volume "$WHEELHOUSE:/wheelhouse:ro" "$ctr" -- \
        python3 -m pip install --quiet --no-cache-dir --disable-pip-version-check \
        --root-user-action=ignore --break-system-packages --no-index --find-links /wheelhouse \
        "$TORCH"
    bah commit --quiet --rm "$ctr" "$TORCH_BASE" >/dev/null
    log "torch base in $(( $(seconds) - start )) s"
fi

log "build $IMAGE"
start=$(seconds)
# The docker format keeps HEALTHCHECK, which OCI image configs cannot hold.
bah build --isolation chroot --format docker --target "$TARGET" --tag "$IMAGE" \
    --build-arg PYTHON_IMAGE="$BASES" --build-arg PYTHON_TAG="python-$SUITE" \
    --build-arg TORCH_IMAGE="$BASES" --build-arg TORCH_TAG="torch-$SUITE" \
    --build-context wheelhouse="$WHEELHOUSE" \
    --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/wheelhouse \
    --build-arg VERSION="$VERSION" --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    --file "$ROOT/Dockerfile" "$ROOT" >"$STORE/build-$TARGET.log" 2>&1 \
    || { tail -40 "$STORE/build-$TARGET.log" >&2; exit 1; }
log "built in $(( $(seconds) - start )) s: $(bah images --format '{{.Size}}' "$IMAGE")"
echo "$IMAGE"
