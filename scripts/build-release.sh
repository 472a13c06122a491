#!/usr/bin/env bash
# The release build of the binaries that ship: `sluice` and `sluice-load`. One command, used
# by CI (.ci/run) and by the container image (docker/Dockerfile), so the image holds what CI
# built. --locked: the build uses Cargo.lock as committed, or fails.
#
#   scripts/build-release.sh      -> target/release/sluice, target/release/sluice-load
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked -p sluice -p sluice-loadtest --bins
