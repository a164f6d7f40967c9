# syntax=docker/dockerfile:1
# The worker image: one model on one GPU. Built from the repository alone:
#   docker build -f compose/worker.Dockerfile -t janus-service-worker .
#
# BASE_IMAGE and TORCH_INDEX_URL go together: the CUDA runtime of the base must match
# the torch build (cu128 wheels with a CUDA 12.8 base). The host driver must support that
# CUDA version (12.8: driver >= 570, or >= 525 through CUDA minor-version compatibility).
# If the PyTorch index has no build of TORCH_VERSION for that CUDA, take the pair that
# pytorch.org lists for it (e.g. cu130 with nvidia/cuda:13.0.x-cudnn-runtime-ubuntu22.04).
# docker-compose.cpu.yml builds this same file with python:3.11-slim and CPU torch.
ARG BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04
FROM ${BASE_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/hf-cache

# Python 3.11: Ubuntu 22.04's own python3 is 3.10, so it comes from the deadsnakes PPA.
# Skipped when the base already has it (the CPU build's python:3.11-slim).
RUN if ! command -v python3.11 >/dev/null 2>&1; then \
        apt-get update \
        && apt-get install -y --no-install-recommends \
            ca-certificates gpg-agent software-properties-common \
        && add-apt-repository -y ppa:deadsnakes/ppa \
        && apt-get update \
        && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
        && apt-get purge -y software-properties-common gpg-agent \
        && apt-get autoremove -y \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch first, from the PyTorch index for this CUDA; the constraint below keeps any
# later requirement from swapping it for another build.
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
    && echo "torch==${TORCH_VERSION}" > /opt/venv/torch-constraint.txt

RUN groupadd --system --gid 10001 janus \
    && useradd --system --uid 10001 --gid janus --home-dir /app --no-create-home janus \
    && mkdir -p /app /var/lib/janus /hf-cache /models \
    && chown janus:janus /var/lib/janus /hf-cache /models

WORKDIR /app

# Dependencies with the `models` extra, in their own layer (torch is already there).
COPY pyproject.toml ./
COPY compose/requirements.py ./compose/
RUN python compose/requirements.py models > /tmp/requirements.txt \
    && pip install -c /opt/venv/torch-constraint.txt -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Then the code (editable: see api.Dockerfile).
COPY . .
RUN pip install --no-deps -e . \
    && chmod 0755 compose/entrypoint.sh \
    && python -c "import torch, transformers, service.workers.worker"

USER janus
# Worker metrics (janus-service worker --metrics-port 9100 in docker-compose.yml).
EXPOSE 9100
ENTRYPOINT ["/app/compose/entrypoint.sh"]
CMD ["janus-service", "worker", "--help"]
