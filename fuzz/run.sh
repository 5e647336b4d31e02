#!/usr/bin/env bash
# Runs each fuzz target for a while on a scratch corpus seeded from corpus/<target> (the seeds in
# the repository stay as they are) and prints, per target, the executions, executions per second
# and crashes found (written to artifacts/<target>/). Not part of CI.
#
#   fuzz/run.sh [SECONDS] [TARGET...]      (default 300 s each, every target)
#
# Replay a crash: cargo +nightly fuzz run TARGET artifacts/TARGET/crash-...
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-300}"; shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(manifest playbook compose proxy_request proxy_response)
nice -n 10 cargo +nightly fuzz build >/dev/null
bin=target/x86_64-unknown-linux-gnu/release
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t" "artifacts/$t"
  # A crash stops the target (libFuzzer exits); fix it, then run again.
  nice -n 10 "$bin/$t" "$scratch/$t" "corpus/$t" -max_total_time="$secs" -print_final_stats=1 \
    -artifact_prefix="artifacts/$t/" > "$scratch/$t.log" 2>&1 || true
  execs=$(awk '/stat::number_of_executed_units/ {print $2}' "$scratch/$t.log")
  rate=$(awk '/stat::average_exec_per_sec/ {print $2}' "$scratch/$t.log")
  cov=$(grep -oE 'cov: [0-9]+' "$scratch/$t.log" | tail -1 | cut -d' ' -f2)
  crash=$(grep -o 'Test unit written to .*' "$scratch/$t.log" | head -1 || true)
  echo "$t: ${execs:-0} executions (${rate:-0}/s), coverage ${cov:-?}${crash:+, CRASH: $crash}"
done
