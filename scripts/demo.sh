#!/usr/bin/env bash
# The demo, on a fresh machine: sets up, builds rollout, builds the demo client's images
# locally and shows what `rollout plan` would do for the demo environment (manifests/shop.yaml,
# playbooks/standard.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --quiet
# The demo's one secret. Its value is never printed: look for it in the output below.
export SHOP_SESSION_KEY="${SHOP_SESSION_KEY:-demo-only-session-key}"
exec target/debug/rollout -C . demo
