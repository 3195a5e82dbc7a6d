# syntax=docker/dockerfile:1.7
#
# critbatch's two images, one per final stage:
#
#   docker build --target operator -t critbatch-operator:0.1.0 .
#   docker build --target trainer  -t critbatch-trainer:0.1.0 .
#
# Inception FID weights are baked into the trainer only when a source is given, either a URL
# with its SHA-256:
#   --build-arg INCEPTION_WEIGHTS_URL=https://... --build-arg INCEPTION_WEIGHTS_SHA256=<hex>
# or a local folder that holds weights/inception.pth (it replaces the `inception` stage):
#   --build-context inception=path/to/folder
# Without a source the trainer reads the weights from a mounted file (spec.trainer.inception).
#
# Offline builds: a folder of wheels replaces the empty `wheelhouse` stage and pip reads only it:
#   --build-context wheelhouse=path/to/wheels \
#   --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/wheelhouse
# Other bases (Debian bookworm with python3, python3-venv and python3-pip; the trainer's also
# with torch in the system site packages): --build-arg PYTHON_IMAGE=... --build-arg
# PYTHON_TAG=... (TORCH_IMAGE, TORCH_TAG). scripts/images/ builds both images so with buildah
# from bases made with debootstrap (docs/images.md).
#
# Labels: --build-arg VERSION=... REVISION=$(git rev-parse HEAD) CREATED=$(date -u +%FT%TZ)
# SOURCE=<repository URL>.
#
# The default bases are pinned by tag and digest (docs/upgrading.md). Neither digest has been
# checked against its registry: none was reachable where this file was built and tested. They
# agree only with independent public projects that pin the same tags to the same digests.
# What was built and run here, on the Debian bases, is in docs/images.md.
ARG PYTHON_IMAGE=python
ARG PYTHON_TAG=3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91
# Official PyTorch CUDA runtime image (Python 3.11, torch 2.7.1, CUDA 12.6, cuDNN 9): no
# compiler, and torch/torchvision already match the project's `trainer` extra.
ARG TORCH_IMAGE=pytorch/pytorch
ARG TORCH_TAG=2.7.1-cuda12.6-cudnn9-runtime@sha256:2b59b1b91885677814f78be1f8df48a25d5dc952eb6580eaecfefca510f9afd3

# ---------------------------------------------------------------------------------------------
# Bases
FROM ${PYTHON_IMAGE}:${PYTHON_TAG} AS python-base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

FROM ${TORCH_IMAGE}:${TORCH_TAG} AS torch-base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Optional wheels for offline builds. Replaced whole by `--build-context wheelhouse=FOLDER`.
FROM scratch AS wheelhouse

# ---------------------------------------------------------------------------------------------
# Build stages: setuptools, wheels and downloads stay here, never in a final stage.

# The project's one wheel (critbatch, critbatch_operator, critbatch_trainer).
FROM python-base AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src/ src/
COPY operator/ operator/
COPY trainer/ trainer/
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
RUN --mount=type=bind,from=wheelhouse,target=/wheelhouse \
    python -m pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

# The operator's virtual environment.
FROM python-base AS operator-build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
RUN --mount=type=bind,from=wheel,source=/dist,target=/dist \
    --mount=type=bind,from=wheelhouse,target=/wheelhouse \
    python -m venv /opt/critbatch \
    && set -- /dist/critbatch-*.whl \
    && /opt/critbatch/bin/pip install --no-cache-dir "$1[operator]" \
    && /opt/critbatch/bin/pip uninstall --yes pip setuptools

# The trainer's virtual environment, on top of the base's torch (system site packages).
FROM torch-base AS trainer-build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
RUN --mount=type=bind,from=wheel,source=/dist,target=/dist \
    --mount=type=bind,from=wheelhouse,target=/wheelhouse \
    python -m venv --system-site-packages /opt/critbatch \
    && set -- /dist/critbatch-*.whl \
    && /opt/critbatch/bin/pip install --no-cache-dir "$1[trainer]" \
    && /opt/critbatch/bin/pip uninstall --yes pip setuptools

# Optional Inception weights. Replaced whole by `--build-context inception=FOLDER`.
FROM python-base AS inception
ARG INCEPTION_WEIGHTS_URL=""
ARG INCEPTION_WEIGHTS_SHA256=""
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN mkdir -p /weights \
    && if [ -n "$INCEPTION_WEIGHTS_URL" ]; then \
         if [ -z "$INCEPTION_WEIGHTS_SHA256" ]; then \
           echo "INCEPTION_WEIGHTS_SHA256 is required with INCEPTION_WEIGHTS_URL" >&2; exit 1; \
         fi; \
         python -c "import sys, urllib.request; urllib.request.urlretrieve(*sys.argv[1:])" \
           "$INCEPTION_WEIGHTS_URL" /weights/inception.pth \
         && echo "$INCEPTION_WEIGHTS_SHA256  /weights/inception.pth" | sha256sum --check --strict -; \
       fi

# ---------------------------------------------------------------------------------------------
# Final stage: critbatch-trainer (one trial of TTUR GAN training; runs as a Kubernetes Job).
FROM torch-base AS trainer
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=""
ARG TORCH_IMAGE
ARG TORCH_TAG
LABEL org.opencontainers.image.title="critbatch-trainer" \
      org.opencontainers.image.description="critbatch TTUR GAN trainer: one trial of a critical batch size sweep" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${TORCH_IMAGE}:${TORCH_TAG}"
RUN useradd --uid 65532 --user-group --no-create-home --home-dir /tmp \
        --shell /usr/sbin/nologin critbatch
COPY --from=trainer-build /opt/critbatch /opt/critbatch
COPY --from=inception /weights/ /opt/critbatch/weights/
# HOME and caches point at /tmp: pods run with a read-only root file system and an emptyDir there.
ENV PATH=/opt/critbatch/bin:$PATH \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    MPLCONFIGDIR=/tmp/.cache/matplotlib \
    TORCH_HOME=/tmp/.cache/torch \
    CRITBATCH_INCEPTION_WEIGHTS=/opt/critbatch/weights/inception.pth
WORKDIR /tmp
USER 65532:65532
EXPOSE 9100
# A batch Job: Kubernetes ignores HEALTHCHECK and the trainer's liveness is its exit code.
HEALTHCHECK NONE
ENTRYPOINT ["critbatch-trainer"]

# ---------------------------------------------------------------------------------------------
# Final stage: critbatch-operator (the kopf controller; the default target).
FROM python-base AS operator
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=""
ARG PYTHON_IMAGE
ARG PYTHON_TAG
LABEL org.opencontainers.image.title="critbatch-operator" \
      org.opencontainers.image.description="critbatch Kubernetes operator: runs CriticalBatchSweeps" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}:${PYTHON_TAG}"
RUN useradd --uid 65532 --user-group --no-create-home --home-dir /tmp \
        --shell /usr/sbin/nologin critbatch
COPY --from=operator-build /opt/critbatch /opt/critbatch
ENV PATH=/opt/critbatch/bin:$PATH \
    HOME=/tmp
WORKDIR /tmp
USER 65532:65532
EXPOSE 8080 8081
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8081/healthz', timeout=4)"]
ENTRYPOINT ["critbatch-operator"]
