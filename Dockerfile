# syntax=docker/dockerfile:1
# triserve: one image for the operator (`triserve operator`) and the node agent (`triserve agent`).
#
#   docker build -t ghcr.io/triserve/triserve:0.1.0 \
#     --build-arg REVISION="$(git rev-parse HEAD)" \
#     --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" .
#
# Stage 1 builds wheels for triserve and every dependency; stage 2 installs those wheels only
# (no compiler, no source tree, no network) and runs as uid 65532.

# The base image by digest, so a rebuild gets the same bytes. To move it: run
# `docker buildx imagetools inspect python:3.11-slim-bookworm` and paste the index digest.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY requirements/runtime.lock ./requirements/
COPY pyproject.toml README.md ./
COPY src ./src
# Wheels for every runtime dependency, exactly as hash-locked (make lock), then triserve's own.
RUN pip wheel --require-hashes --wheel-dir /wheels -r requirements/runtime.lock \
    && pip wheel --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="triserve" \
      org.opencontainers.image.description="Kubernetes operator and node agent for GPU energy policy in multimodal inference serving (Tri-serve clock control)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/triserve/triserve" \
      org.opencontainers.image.url="https://github.com/triserve/triserve" \
      org.opencontainers.image.documentation="https://github.com/triserve/triserve/blob/main/docs/install.md" \
      org.opencontainers.image.vendor="triserve" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim-bookworm"
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
# Only the wheels built above: pinned to this version, resolved offline from /wheels.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels "triserve==${VERSION}" \
    && triserve --version
# Non-root by default (the operator's uid). The agent's pod overrides it with uid 0 and
# CAP_SYS_ADMIN, which NVML needs to lock clocks.
USER 65532:65532
WORKDIR /tmp
EXPOSE 8080 9402
ENTRYPOINT ["triserve"]
CMD ["--help"]
