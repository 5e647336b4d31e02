#!/usr/bin/env bash
# The demo, on a fresh machine: sets up, builds rollout (statically linked, since the edge proxy
# runs as a FROM scratch container of rollout's own binary), builds the demo client's images
# locally, then plans and rehearses the demo environment (manifests/shop.yaml,
# playbooks/standard.yaml) and promotes a live copy of its web front through a good and a broken
# version under load, showing that the public port kept answering.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
rollout=$(scripts/build-static.sh)
# The demo's one secret. Its value is never printed: look for it in the output below.
export SHOP_SESSION_KEY="${SHOP_SESSION_KEY:-demo-only-session-key}"
exec "$rollout" -C . demo
