#!/usr/bin/env bash
# Benchmark: requests dropped while a web service is updated, rollout (edge proxy, blue-green)
# against docker-compose `up -d` recreating the same service, under the same steady load (hey,
# keep-alive, 4 workers, on 127.0.0.1), side by side in one run; then rollout's time to switch
# (candidate healthy -> all traffic on it) and to roll back (failure seen -> all traffic back),
# from its run reports. Writes the section "Updates under load" of BENCHMARKS.md.
#
#   bench/drops-vs-compose.sh [RUNS]      (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-3}"
updates=4
scripts/setup.sh >/dev/null
command -v hey >/dev/null || { apt-get install -y -qq hey >/dev/null; }
rollout="$PWD/$(scripts/build-static.sh --release)"
"$rollout" -C . demo --build-only >/dev/null

work=$(mktemp -d)
cleanup() {
  docker-compose -p rbenchd -f "$work/compose.yaml" down -v >/dev/null 2>&1 || true
  docker rm -f $(docker ps -aq --filter label=rollout.environment=rbenchd) >/dev/null 2>&1 || true
  docker volume rm $(docker volume ls -q --filter label=rollout.environment=rbenchd) >/dev/null 2>&1 || true
  docker network rm $(docker network ls -q --filter label=rollout.environment=rbenchd) >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
. bench/lib/net.sh
. bench/lib/hey.sh
rport=$(free_port); cport=$(free_port)
mkdir -p "$work/p/manifests" "$work/p/playbooks"
echo "proxy: { bind: 127.0.0.1 }" > "$work/p/rollout.yaml"
cat > "$work/p/playbooks/quick.yaml" <<'YAML'
apiVersion: rollout/v1
kind: Playbook
name: quick
steps:
  - promote: { drain: 1s }
YAML
cat > "$work/canary.yaml" <<'YAML'
apiVersion: rollout/v1
kind: Playbook
name: canary
steps:
  - canary: { weight: 50, hold: 1s, analysis: { maxErrorRate: 0.01, minRequests: 1 } }
  - promote: { drain: 1s }
YAML
manifest() {
  cat > "$work/p/manifests/rbenchd.yaml" <<YAML
apiVersion: rollout/v1
kind: Environment
name: rbenchd
client: bench
services:
  web:
    image: shop-web:$1
    ports: [ { name: http, container: 8080, public: $rport } ]
    health: { http: { port: 8080, path: /healthz }, interval: 200ms }
YAML
}
compose() {
  cat > "$work/compose.yaml" <<YAML
version: '2.4'
services:
  web:
    image: shop-web:$1
    ports: [ "127.0.0.1:$cport:8080" ]
YAML
}

# count FILE: "ok other errors" of a hey summary.
count() { hey_counts "$1"; }

under_load() { # $1: url, $2: command to run between updates with the version as argument
  local out; out=$(mktemp)
  hey -z 20s -c 4 "$1" > "$out" 2>&1 &
  local pid=$!
  sleep 2
  for i in $(seq 1 $updates); do
    if [ $((i % 2)) = 1 ]; then "$2" 2.5.0; else "$2" 2.4.0; fi
    sleep 1
  done
  wait $pid
  count "$out"
  rm -f "$out"
}
rollout_update() { manifest "$1"; "$rollout" -C "$work/p" promote --yes -p quick >/dev/null; }
compose_update() { compose "$1"; docker-compose -p rbenchd -f "$work/compose.yaml" up -d >/dev/null 2>&1; }

manifest 2.4.0; "$rollout" -C "$work/p" promote --yes -p quick >/dev/null
compose 2.4.0; docker-compose -p rbenchd -f "$work/compose.yaml" up -d >/dev/null 2>&1
sleep 1

rows_r=(); rows_c=(); dr=(); dc=()
for run in $(seq 1 "$runs"); do
  read -r ok other errs < <(under_load "http://127.0.0.1:$rport/" rollout_update)
  rows_r+=("$ok/$other/$errs"); dr+=($((other + errs)))
  read -r ok other errs < <(under_load "http://127.0.0.1:$cport/" compose_update)
  rows_c+=("$ok/$other/$errs"); dc+=($((other + errs)))
  echo "run $run: rollout ${rows_r[-1]} (ok/non-200/errors), compose ${rows_c[-1]}"
done
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
mdr=$(printf '%s\n' "${dr[@]}" | median); mdc=$(printf '%s\n' "${dc[@]}" | median)

# Switch and rollback times from rollout's own run reports.
sw=(); rb=()
for i in $(seq 1 5); do
  if [ $((i % 2)) = 1 ]; then manifest 2.5.0; else manifest 2.4.0; fi
  sw+=("$("$rollout" -C "$work/p" promote --yes -p quick -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["switchMs"])')")
done
cp "$work/canary.yaml" "$work/p/playbooks/canary.yaml"
(hey -z 15s -c 2 "http://127.0.0.1:$rport/" >/dev/null 2>&1 &)
for i in $(seq 1 3); do
  manifest 2.7.0
  rb+=("$("$rollout" -C "$work/p" promote --yes -p canary -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["rollbackMs"])' || true)")
done
msw=$(printf '%s\n' "${sw[@]}" | median); mrb=$(printf '%s\n' "${rb[@]}" | median)
echo "switch ${sw[*]} ms (median $msw), rollback ${rb[*]} ms (median $mrb)"

section="## Updates under load: dropped requests, switch and rollback time

Command: \`bench/drops-vs-compose.sh $runs\` ($(date -u +%Y-%m-%d), $(nproc) cores, docker $(docker version --format '{{.Server.Version}}'), docker-compose $(docker-compose version --short), hey, release build)

Each run: 20 s of \`hey -c 4\` (keep-alive) on 127.0.0.1 while the web service is updated $updates times
(shop-web 2.4.0 <-> 2.5.0), the same for both tools, alternating tools run by run.

| | failed requests per run (median of $runs) | each run: ok / non-200 / connection errors |
| --- | --- | --- |
| rollout (\`promote\`, quick playbook: blue-green, drain 1s) | **$mdr** | ${rows_r[*]} |
| docker-compose \`up -d\` recreating the service | $mdc | ${rows_c[*]} |

| rollout | median | each (ms) |
| --- | --- | --- |
| switch: candidate healthy -> all traffic on it (one routing update) | $msw ms | ${sw[*]} |
| rollback: canary analysis failed -> all traffic back | $mrb ms | ${rb[*]} |

Goals from the issue: 0 dropped; switch and rollback under 100 ms.
"
python3 - "$section" <<'PY'
import sys, re, os
text = open("BENCHMARKS.md").read() if os.path.exists("BENCHMARKS.md") else "# Benchmarks\n"
section = sys.argv[1]
pattern = re.compile(r"## Updates under load.*?(?=\n## |\Z)", re.S)
text = pattern.sub(section.strip() + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
open("BENCHMARKS.md", "w").write(text)
PY
echo "BENCHMARKS.md updated"
