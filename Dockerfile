# syntax=docker/dockerfile:1.7
# The sparsegate gateway image (also runs the simulated worker: `sparsegate sim ...`).
#
#   docker build -t sparsegate/gateway:dev .
#   docker run --rm -p 8000:8000 -v $PWD/deploy/compose/gateway.yaml:/etc/sparsegate/gateway.yaml:ro sparsegate/gateway:dev
#
# Two stages: the build stage makes a wheel of this repository and installs it, with its runtime
# dependencies and no extras, into /opt/venv; the runtime stage copies only that venv. No compiler, no pip
# cache and no sources reach the final image. torch, triton and sglang (the `kernels` and `worker` extras)
# belong to the worker image (deploy/worker/Dockerfile), never to the gateway.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# .dockerignore lets through only what the wheel needs: pyproject.toml, README.md and the package folders.
COPY . .
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --upgrade pip setuptools wheel \
    && /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels . \
    && /opt/venv/bin/pip install /wheels/sparsegate-*.whl \
    && /opt/venv/bin/pip uninstall --yes pip setuptools wheel \
    && /opt/venv/bin/python -m compileall -q /opt/venv/lib

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="sparsegate-gateway" \
      org.opencontainers.image.description="OpenAI-compatible gateway for sparse-attention LLMs served by SGLang" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric uid/gid, so that Kubernetes' runAsNonRoot can verify it and manifests can name it.
RUN groupadd --system --gid 10001 sparsegate \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin sparsegate \
    && mkdir -p /etc/sparsegate
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /tmp
EXPOSE 8000
# slim has no curl: ask Python. Liveness only: readiness (/health/ready) depends on the workers.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health/live', timeout=2)"]
ENTRYPOINT ["sparsegate"]
CMD ["serve", "--config", "/etc/sparsegate/gateway.yaml", "--host", "0.0.0.0", "--port", "8000"]
