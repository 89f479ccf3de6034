#!/usr/bin/env bash
# Installs `promtool` (Prometheus' checker, `promtool check metrics`) if it is missing.
#
# Debian ships it inside the `prometheus` package, whose install also creates a system
# user and starts a Prometheus server through its init script. Only the checker is
# wanted, so the package (verified by apt against the signed archive) is downloaded and
# just `promtool` is taken out of it. A promtool already on the PATH is left alone.
set -euo pipefail
DEST="${PROMTOOL_DEST:-/usr/local/bin/promtool}"

if command -v promtool >/dev/null; then
  exit 0
fi
for tool in apt-get dpkg-deb; do
  command -v "$tool" >/dev/null || { echo "install-promtool: needs $tool (Debian)" >&2; exit 1; }
done
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-promtool: need root (or sudo) to write $DEST" >&2; exit 1; }
  SUDO=sudo
fi
work="$(mktemp -d)"
chmod 755 "$work"  # apt downloads as its own user
trap 'rm -rf "$work"' EXIT
echo "installing promtool from the Debian package prometheus"
if ! (cd "$work" && apt-get download -qq prometheus 2>/dev/null); then
  $SUDO apt-get update -qq
  (cd "$work" && apt-get download -qq prometheus)
fi
dpkg-deb -x "$work"/prometheus_*.deb "$work/root"
$SUDO install -m 0755 "$work/root/usr/bin/promtool" "$DEST"
"$DEST" --version 2>&1 | head -1
