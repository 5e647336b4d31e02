#!/usr/bin/env bash
# Builds rollout statically linked (glibc, +crt-static), as the edge proxy's FROM scratch image
# needs, and prints the binary's path. Usage: scripts/build-static.sh [--release]
#
# The flag goes through RUSTFLAGS with an explicit --target so that it applies to rollout only,
# not to build scripts and proc-macros (which must stay dynamic). A separate target dir keeps
# these artifacts from invalidating the normal build.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=debug
args=()
if [ "${1:-}" = --release ]; then profile=release; args+=(--release); fi
target=x86_64-unknown-linux-gnu
export CARGO_TARGET_DIR="${ROLLOUT_STATIC_TARGET_DIR:-target/static}"
RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --target "$target" --bin rollout "${args[@]}"
echo "$CARGO_TARGET_DIR/$target/$profile/rollout"
