# syntax=docker/dockerfile:1
# One image for every role: `shoal agent`, `shoal root`, `shoal webhook` and the agent's
# init container `shoal node-setup` (see deploy/helm/shoal).
#
#   docker build -t registry.example.com/platform/shoal:0.1.0 .
#
# Two stages: the wheel and its dependencies are built with a compiler at hand, then
# only the virtual environment is copied onto a slim runtime.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/shoal
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN /opt/shoal/bin/pip install --upgrade pip \
 && /opt/shoal/bin/pip install . \
 && /opt/shoal/bin/shoal --version

FROM python:${PYTHON_VERSION}-slim-bookworm
LABEL org.opencontainers.image.title="shoal" \
      org.opencontainers.image.description="Peer-to-peer container image distribution for Kubernetes" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/shoal /opt/shoal
ENV PATH=/opt/shoal/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# the reference system's paths: cache, logs; the chart mounts volumes over them
RUN mkdir -p /dadi-p2p/cache /dadi-p2p/log /etc/shoal \
 && chown -R 65532:65532 /dadi-p2p
# non-root by default; the chart runs the agent as uid 0 (no capabilities) only so it
# can own its hostPath cache
USER 65532:65532
EXPOSE 65001 65002 65003 8443
ENTRYPOINT ["shoal"]
CMD ["--help"]
