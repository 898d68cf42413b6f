# syntax=docker/dockerfile:1.7
#
# electra-serve images (BuildKit required: `RUN --mount` keeps wheels and uv out of the layers).
#
#   docker build -t electra-serve:0.1.0-cpu .                                   # CPU server (default)
#   docker build --build-arg DEVICE=gpu -t electra-serve:0.1.0-gpu .            # GPU server
#   docker build --target export -t electra-serve-export:0.1.0 .                # exporter (torch, CPU)
#
# Stages: `wheel` builds the project once; `export` installs the export extra with CPU-only torch and
# writes the demo model repository to /models; `cpu` and `gpu` install only the serving extras (no
# torch, no transformers) and copy /models from `export`. deploy/README.md has the details.

# Base images and versions are pinned so that a rebuild gives the same image; bump them together.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# onnxruntime-gpu up to 1.26 is built for CUDA 12 + cuDNN 9 (1.27+ need CUDA 13 and a >= 580 driver).
# CUDA 12 runs on the drivers most clusters have; for CUDA 13 build with
#   --build-arg CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04 --build-arg ORT_GPU_VERSION=1.31.1
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.9.26
ARG PYTHON_VERSION=3.11
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG ORT_VERSION=1.32.0
ARG ORT_GPU_VERSION=1.26.0
# Which server stage the default target is: cpu or gpu (`--target cpu|gpu` works as well).
ARG DEVICE=cpu

FROM ${UV_IMAGE} AS uv

# ---------------------------------------------------------------------------------------------
# wheel: the project as one wheel, so no later stage carries the source tree.
FROM ${PYTHON_IMAGE} AS wheel
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY server ./server
COPY export ./export
COPY proto ./proto
COPY finetune ./finetune
COPY evaluation ./evaluation
RUN pip wheel --no-deps --wheel-dir /wheels .

# ---------------------------------------------------------------------------------------------
# export: torch + transformers + optimum, for `electra-export`. Also the k8s initContainer image.
FROM ${PYTHON_IMAGE} AS export
ARG TORCH_VERSION
ARG TORCH_INDEX_URL
ARG ORT_VERSION
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 \
    HOME=/tmp HF_HOME=/tmp/huggingface
# torch first, from the CPU index: the export extra would otherwise pull the multi-GB CUDA build.
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install "electra-serve[export] @ file://$(ls /wheels/electra_serve-*.whl)" "onnxruntime==${ORT_VERSION}"
# The demo repository (four small models fine-tuned offline on synthetic sets, a few minutes) that the servers ship.
RUN electra-export --demo --output /models
RUN groupadd --system --gid 10001 electra \
    && useradd --system --uid 10001 --gid electra --home-dir /tmp --shell /usr/sbin/nologin electra
USER 10001:10001
ENTRYPOINT ["electra-export"]
CMD ["--help"]

# ---------------------------------------------------------------------------------------------
# cpu: the server on onnxruntime (CPU). No torch here.
FROM ${PYTHON_IMAGE} AS cpu
ARG ORT_VERSION
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:${PATH}
RUN python -m venv /opt/venv
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install "electra-serve[cpu] @ file://$(ls /wheels/electra_serve-*.whl)" "onnxruntime==${ORT_VERSION}"
RUN groupadd --system --gid 10001 electra \
    && useradd --system --uid 10001 --gid electra --home-dir /tmp --shell /usr/sbin/nologin electra
COPY --from=export /models /models
# Bytecode was compiled at install time; the root filesystem is read-only in k8s, so don't try again.
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp \
    ELECTRA_HOST=0.0.0.0 ELECTRA_MODEL_REPOSITORY=/models
USER 10001:10001
EXPOSE 8000 8001
# Ready = every model loaded and warm; 503 while draining. urlopen raises on any non-2xx.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:' + os.environ.get('ELECTRA_HTTP_PORT', '8000') + '/health/ready', timeout=2)"]
# Exec form: electra-serve is PID 1 and gets SIGTERM itself, which starts its drain.
STOPSIGNAL SIGTERM
ENTRYPOINT ["electra-serve"]

# ---------------------------------------------------------------------------------------------
# gpu: the server on onnxruntime-gpu over the CUDA + cuDNN 9 runtime. No torch here.
# Ubuntu 22.04 has no Python 3.11 of its own; uv installs a standalone CPython into /opt/python.
FROM ${CUDA_IMAGE} AS gpu
ARG PYTHON_VERSION
ARG ORT_GPU_VERSION
ENV UV_PYTHON_INSTALL_DIR=/opt/python UV_PYTHON_PREFERENCE=only-managed UV_NO_CACHE=1 \
    UV_COMPILE_BYTECODE=1 VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:${PATH}
RUN --mount=type=bind,from=uv,source=/uv,target=/usr/local/bin/uv \
    uv python install "${PYTHON_VERSION}" && uv venv --python "${PYTHON_VERSION}" /opt/venv
RUN --mount=type=bind,from=uv,source=/uv,target=/usr/local/bin/uv \
    --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    uv pip install "electra-serve[gpu] @ file://$(ls /wheels/electra_serve-*.whl)" \
        "onnxruntime-gpu==${ORT_GPU_VERSION}"
RUN groupadd --system --gid 10001 electra \
    && useradd --system --uid 10001 --gid electra --home-dir /tmp --shell /usr/sbin/nologin electra
COPY --from=export /models /models
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp \
    ELECTRA_HOST=0.0.0.0 ELECTRA_MODEL_REPOSITORY=/models
USER 10001:10001
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:' + os.environ.get('ELECTRA_HTTP_PORT', '8000') + '/health/ready', timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["electra-serve"]

# ---------------------------------------------------------------------------------------------
# Default target: the server stage named by DEVICE.
FROM ${DEVICE} AS serve
