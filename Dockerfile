# imgcls: one image for the API (default CMD) and the trainer (docker-compose.yml's `trainer`).
#   docker build -t imgcls .                          # CPU TensorFlow
#   docker build -t imgcls:gpu --build-arg TF_VARIANT=gpu .   # + CUDA libraries (`.[gpu]` extra);
#                                                     # run with the NVIDIA container toolkit
#   docker build --build-arg PYTHON_IMAGE=imgcls-base/python:3.11 .   # no registry: local base
#                                                     # (deploy/local-bases/build.sh)
# No `# syntax=` line: it makes BuildKit fetch its frontend from a registry; the built-in one
# reads this file as well.
ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: the project and its dependencies in a venv -------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ARG TF_VARIANT=cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv
WORKDIR /src

# Dependencies first, from pyproject.toml alone (empty packages stand in for the code), so that a
# code change rebuilds only the last layer instead of reinstalling TensorFlow.
COPY pyproject.toml README.md ./
# DL3013 (pin pip versions) does not apply: this installs the project, pinned by pyproject.toml.
# hadolint ignore=DL3013
RUN case "$TF_VARIANT" in \
        cpu) extra="" ;; \
        gpu) extra="[gpu]" ;; \
        *) echo "TF_VARIANT must be cpu or gpu, not '$TF_VARIANT'" >&2; exit 2 ;; \
    esac \
    && mkdir -p contract training service \
    && touch contract/__init__.py training/__init__.py service/__init__.py \
    && pip install ".${extra}"

COPY contract/ contract/
COPY training/ training/
COPY service/ service/
RUN pip install --no-deps --force-reinstall .

# --- runtime: the venv and the code, nothing else ---------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG APP_UID=10001
LABEL org.opencontainers.image.title="imgcls" \
      org.opencontainers.image.description="Keras image-classification service and trainer" \
      org.opencontainers.image.licenses="Apache-2.0"

# KERAS_HOME and MPLCONFIGDIR point at /tmp so the image runs as any uid and with a read-only
# root filesystem (Kubernetes mounts an emptyDir at /tmp).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    IMGCLS_MODELS_DIR=/models \
    IMGCLS_HOST=0.0.0.0 \
    IMGCLS_PORT=8000 \
    IMGCLS_GRPC_PORT=8001 \
    KERAS_HOME=/tmp/.keras \
    MPLCONFIGDIR=/tmp/matplotlib \
    TF_CPP_MIN_LOG_LEVEL=1

RUN groupadd --system --gid "${APP_UID}" imgcls \
    && useradd --system --uid "${APP_UID}" --gid imgcls --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin imgcls \
    && mkdir -p /models \
    && chown imgcls:imgcls /models

COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY contract/ contract/
COPY training/ training/
COPY service/ service/

# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER ${APP_UID}:${APP_UID}

VOLUME /models
# HTTP, and gRPC (V2 inference and TF Serving's PredictionService, health, reflection).
EXPOSE 8000 8001

# slim has no curl: ask /healthz with the standard library (urlopen raises on non-2xx -> exit 1).
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('IMGCLS_PORT', '8000'), timeout=4)"]

CMD ["python", "-m", "service"]
