# syntax=docker/dockerfile:1
# One image for every role: `shoal agent`, `shoal root`, `shoal webhook` and the agent's
# init container `shoal node-setup` (see deploy/helm/shoal).
#
#   docker build -t registry.example.com/platform/shoal:$(python3 -c \
#     'import sys; sys.path[:0] = ["src"]; import shoal; print(shoal.__version__)') .
#
# Two stages: the dependencies are installed from requirements.lock (exact versions,
# every file checked against its sha256) and shoal itself without resolving anything,
# into a virtual environment; only that environment, without pip, is copied onto a
# slim runtime that runs as an unprivileged user. scripts/image-layer-size.sh builds the
# same environment into a directory to measure it (README.md, "The image").

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/shoal
WORKDIR /src
# the lock first: its layer is reused until the dependencies change
COPY requirements.lock ./
RUN /opt/shoal/bin/pip install --require-hashes --no-deps --only-binary=:all: -r requirements.lock
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
RUN /opt/shoal/bin/pip install --no-deps . \
 && /opt/shoal/bin/shoal --version \
 && /opt/shoal/bin/pip uninstall -y -q pip setuptools

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
