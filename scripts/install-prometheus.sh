#!/usr/bin/env bash
# Make `prometheus` and `promtool` available (gateway/tests/integration/prometheus.rs, deploy/check.sh):
# Debian's prometheus package, installed only when either is missing. Debian starts the
# package's service on install; it is stopped and disabled again, so nothing holds :9090.
#
#   scripts/install-prometheus.sh      idempotent; prints PROMETHEUS=<path> last
set -euo pipefail

if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
    SUDO=()
    if [[ "$(id -u)" != 0 ]]; then SUDO=(sudo); fi
    install() {
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y --no-install-recommends prometheus >&2
    }
    echo "install-prometheus: apt-get install prometheus" >&2
    # A fresh machine may have no package lists yet.
    install || { "${SUDO[@]}" apt-get update >&2 && install; }
    if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
        "${SUDO[@]}" systemctl disable --now prometheus >&2 || true
    elif command -v service >/dev/null; then
        "${SUDO[@]}" service prometheus stop >/dev/null 2>&1 || true
    fi
fi

echo "PROMETHEUS=$(command -v prometheus)"
