# syntax=docker/dockerfile:1
# The detbench inference web app (`detbench serve`) on CPU.
#
#   docker build -t detbench-web:0.1.0 .
#   docker run --rm -p 8000:8000 -v "$PWD/models:/models:ro" detbench-web:0.1.0
#
# Models are read from /models (mount a folder, or bake them in: see the end of this file):
#   /models/bccd.pt        a trained cell's weights.pt (blood cells: RBC, WBC, Platelets)
#   /models/coco.weights   the official Darknet yolov3.weights or yolov3-tiny.weights
# Either may be absent (the page then offers the other); at least one must be there.
#
# GPU: build with CUDA wheels of torch, which carry the CUDA libraries themselves, and run with
# the NVIDIA container toolkit (`docker run --gpus all ...`):
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t detbench-web:cuda .
# (or start FROM an nvidia/cuda:*-cudnn-runtime image with Python 3.11; see docs/local.md).
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

# MALLOC_MMAP_THRESHOLD_: glibc maps each decoded upload (>= 4 MiB) on its own and returns it
# when freed, instead of keeping it in a fragmented heap (the load test in tests/test_web.py
# peaks ~300 MiB lower with it).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MALLOC_MMAP_THRESHOLD_=4194304 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# torch first, from the CPU-only index (~200 MB instead of ~2.5 GB of CUDA libraries), pinned to
# the versions the Makefile installs, so installing the project does not pull another build.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
RUN pip install --index-url "${TORCH_INDEX}" \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

WORKDIR /opt/detbench
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install . \
    && groupadd --system --gid 10001 detbench \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent \
        --shell /usr/sbin/nologin detbench \
    && mkdir -p /models

# Unprivileged; the app writes nothing (uploads stay in memory), so the root filesystem can be
# read-only. HOME points at /tmp for any library that wants a cache folder.
USER 10001:10001
ENV HOME=/tmp
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

ENTRYPOINT ["detbench", "serve", "--host", "0.0.0.0", "--port", "8000"]
CMD ["--bccd-model", "/models/bccd.pt", "--coco-weights", "/models/coco.weights"]

# To bake the models into the image instead of mounting them, put them in ./models/ and add:
#   COPY --chown=10001 models/ /models/
