# syntax=docker/dockerfile:1.7
#
# explainstream consumer image (also runs every other `explainstream` command).
#
# CPU (default, portable AVX2 build):
#   docker build -t explainstream .
# NVIDIA GPU (CUDA); the wheel is built against the devel image and run on the matching
# runtime image, both Ubuntu 22.04 so python3.11 comes from apt:
#   docker build -t explainstream:cuda \
#     --build-arg BUILDER_IMAGE=nvidia/cuda:12.4.1-devel-ubuntu22.04 \
#     --build-arg RUNTIME_IMAGE=nvidia/cuda:12.4.1-runtime-ubuntu22.04 \
#     --build-arg CMAKE_ARGS="-DGGML_CUDA=on -DGGML_NATIVE=OFF -DCMAKE_CUDA_ARCHITECTURES=80;86;89;90" .
#   docker run --gpus all -e N_GPU_LAYERS=-1 explainstream:cuda
# The image holds no secrets: ADMIN_TOKEN and KAFKA_SASL_* come from the environment.

ARG BUILDER_IMAGE=python:3.11-slim
ARG RUNTIME_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------
FROM ${BUILDER_IMAGE} AS builder

ARG DEBIAN_FRONTEND=noninteractive
# DL3008 (pin apt versions): the same lines serve Debian (python:slim) and Ubuntu (CUDA)
# bases, whose package versions differ; the base image tag is the pin.
# hadolint ignore=DL3008
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends build-essential cmake ninja-build git; \
    if ! command -v python3.11 >/dev/null; then \
        apt-get install -y --no-install-recommends python3.11 python3.11-dev python3.11-venv; \
    fi; \
    rm -rf /var/lib/apt/lists/*
RUN python3.11 -m venv /opt/build && /opt/build/bin/pip install --no-cache-dir -U pip wheel

# llama.cpp is compiled here; GGML_NATIVE=OFF keeps the wheel runnable on other CPUs than
# the build host's. Pass CUDA (or other backend) flags through this build-arg.
ARG CMAKE_ARGS="-DGGML_NATIVE=OFF"
ENV CMAKE_ARGS=${CMAKE_ARGS} \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md* ./
COPY schemas ./schemas
COPY producer_sdk ./producer_sdk
COPY consumer ./consumer
# One wheel per distribution (explainstream, llama-cpp-python built from source, the
# bundled model, every dependency) so the runtime stage installs offline.
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/build/bin/pip wheel --wheel-dir /wheels ".[consumer,otel]"

# ---------------------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS runtime

ARG DEBIAN_FRONTEND=noninteractive
# libgomp1: llama.cpp's CPU backend uses OpenMP. DL3008: as in the builder stage.
# hadolint ignore=DL3008
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends libgomp1 ca-certificates; \
    if ! command -v python3.11 >/dev/null; then \
        apt-get install -y --no-install-recommends python3.11 python3.11-venv; \
    fi; \
    rm -rf /var/lib/apt/lists/*

RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python3.11 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --no-index --find-links /wheels \
        "explainstream[consumer,otel]" \
    && /opt/venv/bin/pip uninstall -y pip

RUN groupadd --system --gid 10001 explainstream \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/explainstream \
        --create-home --shell /usr/sbin/nologin explainstream

# Caches and temp files go to /tmp so the root filesystem can be mounted read-only.
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    XDG_CACHE_HOME=/tmp/.cache

USER 10001:10001
WORKDIR /home/explainstream

# HTTP_PORT: /health /ready /status /admin/*; METRICS_PORT: /metrics.
EXPOSE 8000 9090

# Generous start period: the model loads before the HTTP server starts.
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/health' % (os.environ.get('HTTP_PORT') or '8000'), timeout=4)"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["explainstream"]
CMD ["consume"]
