#!/usr/bin/env bash
# The size of what the Dockerfile adds to its base image, measured without a Docker
# engine: the same virtual environment, built by the same commands (requirements.lock
# with hashes, then shoal without resolving anything, then pip removed), in a
# directory. The base image (python:3.11-slim-bookworm) is not included: it is the
# same before and after any change here, and pulling it needs a registry this machine
# may not reach.
#
#   scripts/image-layer-size.sh [DIR]     # DIR is kept; default: a temp dir, removed
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
out="${1:-}"
if [ -z "$out" ]; then
  out="$(mktemp -d)"
  trap 'rm -rf "$out"' EXIT
fi
venv="$out/opt-shoal"
rm -rf "$venv"
"$py" -m venv "$venv"
export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
"$venv/bin/pip" install -q --require-hashes --no-deps --only-binary=:all: -r requirements.lock
"$venv/bin/pip" install -q --no-deps .
"$venv/bin/shoal" --version >/dev/null
"$venv/bin/pip" uninstall -y -q pip setuptools
bytes="$(du -sb "$venv" | cut -f1)"
echo "image layer (the virtual environment /opt/shoal): $((bytes / 1000000)) MB ($bytes bytes)"
"$venv/bin/python" - <<'PY'
import importlib.util
for name in ("matplotlib", "numpy", "PIL", "fontTools", "kubernetes_asyncio", "uvloop", "jsonpatch"):
    if importlib.util.find_spec(name) is not None:
        print(f"unexpected in the image: {name}")
PY
