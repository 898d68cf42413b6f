#
# electra-serve images. BuildKit runs this file with its built-in Dockerfile frontend (Docker 20.10
# and later; the default builder since Docker 23): no `# syntax=` line, so a builder that reaches no
# image registry for a frontend image builds it too. `RUN --mount` keeps wheels out of the layers.
#
#   docker build -t electra-serve:0.1.0-cpu .                                   # CPU server (default)
#   docker build --build-arg DEVICE=gpu -t electra-serve:0.1.0-gpu .            # GPU server
#   docker build --target export -t electra-serve-export:0.1.0 .                # exporter (torch, CPU)
#
# Stages: `wheel` builds the project once; `export` installs the export extra with CPU-only torch and
# writes the demo model repository to /models (every variant); `models-cpu` / `models-gpu` keep the
# variants each server serves; `cpu` and `gpu` install only the serving extras (no torch, no
# transformers) and copy their models. deploy/README.md has the details.

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
# The demo variants each server image ships: what `--precision auto` serves there (int8 is a CPU
# option: --build-arg CPU_PRECISIONS=fp32,int8). The export image keeps all three.
ARG CPU_PRECISIONS=fp32
ARG GPU_PRECISIONS=fp16
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
COPY toolchain ./toolchain
RUN pip wheel --no-deps --wheel-dir /wheels .

# ---------------------------------------------------------------------------------------------
# export: torch + transformers + optimum, for `electra-export` (the model-pvc component's Job runs it).
FROM ${PYTHON_IMAGE} AS export
ARG TORCH_VERSION
ARG TORCH_INDEX_URL
ARG ORT_VERSION
# PEP 517 for every sdist (seqeval has no wheel): built in an isolated environment, not through the
# legacy setup.py path that depends on whichever setuptools the base image carries.
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_USE_PEP517=1 PYTHONUNBUFFERED=1 \
    HOME=/tmp HF_HOME=/tmp/huggingface
# torch first, from the CPU index: the export extra would otherwise pull the multi-GB CUDA build.
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
# Mounted on /mnt, a folder every base has: a new mount point would stay behind as an empty folder.
RUN --mount=type=bind,from=wheel,source=/wheels,target=/mnt \
    pip install "electra-serve[export] @ file://$(ls /mnt/electra_serve-*.whl)" "onnxruntime==${ORT_VERSION}"
# The demo repository (four small models fine-tuned offline on synthetic sets, a few minutes) that the servers ship.
RUN electra-export --demo --output /models
RUN groupadd --system --gid 10001 electra \
    && useradd --system --uid 10001 --gid electra --home-dir /tmp --shell /usr/sbin/nologin electra
USER 10001:10001
ENTRYPOINT ["electra-export"]
CMD ["--help"]

# The demo repository with only what each server serves (a COPY --from takes a stage's files as
# they end, so the pruned variants never reach a server image).
FROM export AS models-cpu
ARG CPU_PRECISIONS
USER root
RUN electra-export --prune --precision "${CPU_PRECISIONS}" --output /models

FROM export AS models-gpu
ARG GPU_PRECISIONS
USER root
RUN electra-export --prune --precision "${GPU_PRECISIONS}" --output /models

# ---------------------------------------------------------------------------------------------
# cpu: the server on onnxruntime (CPU). No torch here.
FROM ${PYTHON_IMAGE} AS cpu
ARG ORT_VERSION
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:${PATH}
# The venv gets no pip or setuptools of its own (the base's pip installs into it), and the base
# loses the setuptools and wheel that only building needs: nothing in the image installs packages.
RUN python -m venv --without-pip /opt/venv
RUN --mount=type=bind,from=wheel,source=/wheels,target=/mnt \
    pip --python /opt/venv/bin/python install \
        "electra-serve[cpu] @ file://$(ls /mnt/electra_serve-*.whl)" "onnxruntime==${ORT_VERSION}" \
    && { python -m pip uninstall -y -q setuptools wheel 2>/dev/null || true; }
RUN groupadd --system --gid 10001 electra \
    && useradd --system --uid 10001 --gid electra --home-dir /tmp --shell /usr/sbin/nologin electra
COPY --from=models-cpu /models /models
# Bytecode was compiled at install time; the root filesystem is read-only in k8s, so don't try again.
# The state file tells the HEALTHCHECK where and how the server really listens (/tmp is writable:
# an emptyDir in k8s, `--tmpfs /tmp` with `docker run --read-only`).
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp \
    ELECTRA_HOST=0.0.0.0 ELECTRA_MODEL_REPOSITORY=/models ELECTRA_STATE_FILE=/tmp/electra-serve.json
USER 10001:10001
EXPOSE 8000 8001
# Ready = every model loaded and warm; 503 while draining. The probe follows the port, scheme, mutual
# TLS and probe keys the server really uses, however they were set (flags after the image name too).
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 CMD ["electra-serve-probe"]
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
    --mount=type=bind,from=wheel,source=/wheels,target=/mnt \
    uv pip install "electra-serve[gpu] @ file://$(ls /mnt/electra_serve-*.whl)" \
        "onnxruntime-gpu==${ORT_GPU_VERSION}"
RUN groupadd --system --gid 10001 electra \
    && useradd --system --uid 10001 --gid electra --home-dir /tmp --shell /usr/sbin/nologin electra
COPY --from=models-gpu /models /models
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp \
    ELECTRA_HOST=0.0.0.0 ELECTRA_MODEL_REPOSITORY=/models ELECTRA_STATE_FILE=/tmp/electra-serve.json
USER 10001:10001
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 CMD ["electra-serve-probe"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["electra-serve"]

# ---------------------------------------------------------------------------------------------
# Default target: the server stage named by DEVICE.
FROM ${DEVICE} AS serve
