# syntax=docker/dockerfile:1
#
# Two images from one file:
#   docker build -t dfcl-allocator:0.1.0 .                             # `serve` (default, last stage): no torch
#   docker build --target train -t dfcl-allocator-train:0.1.0 .        # `train`: torch CPU build, runs `python -m training`
#   docker build --target sink -t dfcl-allocator-sink:0.1.0 .          # `sink`: decision log → Parquet (pyarrow, redis)
#
# Both run as a numeric non-root user and write nothing outside /tmp, so they work with
# readOnlyRootFilesystem (k8s/) and `read_only: true` (docker-compose.yml).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------------------
# base: interpreter settings and the runtime user shared by every stage.
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN groupadd --system --gid 10001 allocator \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin allocator
WORKDIR /app

# ---------------------------------------------------------------------------------------------------------
# build-serve: a virtualenv with the project and its `serve` extra only (fastapi, onnxruntime, redis; no torch).
# Only service/ is copied, so the training package (which imports torch) is not even installed.
FROM base AS build-serve
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY service ./service
RUN pip install --no-cache-dir "./[serve]" \
    && python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"

# ---------------------------------------------------------------------------------------------------------
# train: the offline image for the Kubernetes training Job (k8s/training-job.yaml).
# torch comes from the CPU wheel index first (the PyPI default wheel pulls the multi-GB CUDA stack),
# then the rest of the `train` extra resolves against it.
FROM base AS train
ARG TORCH_VERSION=2.13.0
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md ./
COPY service ./service
COPY training ./training
COPY configs ./configs
RUN pip install --no-cache-dir "./[train]"
USER 10001:10001
ENV MPLCONFIGDIR=/tmp/matplotlib
ENTRYPOINT ["python", "-m", "training"]
CMD ["--help"]

# ---------------------------------------------------------------------------------------------------------
# sink: `python -m service.sink`, the decision-log sink (k8s/sink.yaml). The `sink` extra only: redis, pyarrow.
FROM base AS sink
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY service ./service
RUN pip install --no-cache-dir "./[sink]"
USER 10001:10001
ENTRYPOINT ["python", "-m", "service.sink"]
CMD ["--help"]

# ---------------------------------------------------------------------------------------------------------
# serve: the online service (default target). models/default is baked in; mount another artifact
# directory and point ALLOCATOR_MODEL_DIR at it to override (k8s mounts the model volume at /models).
FROM base AS serve
COPY --from=build-serve /opt/venv /opt/venv
COPY models/default /app/models/default
ENV ALLOCATOR_MODEL_DIR=/app/models/default
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
CMD ["python", "-m", "service", "--host", "0.0.0.0", "--port", "8000"]
