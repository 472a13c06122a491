#!/usr/bin/env bash
# Installs tansu, the Kafka-protocol broker the prediction-log tests run against, unless it is
# already on PATH. The first build takes 20-30 minutes on a 2-core machine; later runs skip it.
set -euo pipefail
TANSU_VERSION="0.6.0"
export PATH="$HOME/.cargo/bin:$PATH"
if command -v tansu >/dev/null 2>&1; then
    echo "tansu present: $(command -v tansu)" >&2
else
    echo "installing tansu $TANSU_VERSION (cargo install; this takes a while once)" >&2
    cargo install --locked tansu --version "$TANSU_VERSION" --features libsql >&2
fi
echo "PATH=$(printf %q "$PATH")"
