#!/usr/bin/env bash
# Benchmark: the CLI's start-up time, and the resident memory of the edge proxy and of the
# daemon at rest and under load. Writes the section "Start-up time and memory" of BENCHMARKS.md.
#
#   bench/startup-memory.sh [RUNS] [SECONDS]      (default 21 start-ups each, 15 s of load)
#
# Start-up, alternating, RUNS times each (bench/lib/timeit.py): `rollout --version`,
# `rollout plan` on a one-service project (empty production: reads the project, asks Docker and
# the proxy), and as the comparison the same on docker-compose 1.29 (`version`, `config` on the
# same service as a compose file) and the docker CLI (`docker version`, which asks the engine).
#
# Memory is VmRSS from /proc (the proxy's from the host pid of its container). Proxy: the demo
# web service (busybox httpd) behind `rollout proxy`, at rest, then under `hey -c 64` for
# SECONDS (sampled every 0.2 s; the maximum is reported), then at rest again. Daemon: `rollout
# daemon` on the same project with one token, at rest, under `hey -c 16` against
# GET /api/v1/environments and then GET /api/v1/environments/{env} (status: asks Docker and the
# proxy), then at rest again.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-21}"
secs="${2:-15}"
scripts/setup.sh >/dev/null
command -v hey >/dev/null || { apt-get install -y -qq hey >/dev/null; }
rollout="${ROLLOUT_BIN:-$PWD/$(scripts/build-static.sh --release)}"
"$rollout" -C . demo --build-only >/dev/null
. bench/lib/rss.sh

env=rbenchm
work=$(mktemp -d)
daemon_pid=
cleanup() {
  [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null || true
  docker rm -f $(docker ps -aq --filter label=rollout.environment=$env) >/dev/null 2>&1 || true
  docker volume rm $(docker volume ls -q --filter label=rollout.environment=$env) >/dev/null 2>&1 || true
  docker network rm $(docker network ls -q --filter label=rollout.environment=$env) >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
. bench/lib/net.sh
. bench/lib/hey.sh
port=$(free_port); api=$(free_port)
token=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
mkdir -p "$work/p/manifests" "$work/p/playbooks" "$work/tiny/manifests"
cat > "$work/p/rollout.yaml" <<YAML
proxy: { bind: 127.0.0.1 }
daemon:
  listen: 127.0.0.1:$api
  tokens:
    - { name: bench, fromEnv: BENCH_TOKEN, clients: [bench], may: [read] }
YAML
printf 'apiVersion: rollout/v1\nkind: Playbook\nname: quick\nsteps:\n  - promote: { drain: 1s }\n' > "$work/p/playbooks/quick.yaml"
cat > "$work/p/manifests/$env.yaml" <<YAML
apiVersion: rollout/v1
kind: Environment
name: $env
client: bench
services:
  web:
    image: shop-web:2.4.0
    ports: [ { name: http, container: 8080, public: $port } ]
    health: { http: { port: 8080, path: /healthz }, interval: 200ms }
YAML
# The tiny project for start-up: the same service, never started.
echo "proxy: { bind: 127.0.0.1 }" > "$work/tiny/rollout.yaml"
sed "s/name: $env/name: rbenchtiny/" "$work/p/manifests/$env.yaml" > "$work/tiny/manifests/tiny.yaml"
cat > "$work/tiny/compose.yaml" <<YAML
version: '2.4'
services:
  web:
    image: shop-web:2.4.0
    ports: [ "127.0.0.1:$port:8080" ]
    healthcheck: { test: [CMD, wget, -q, -O, /dev/null, "http://127.0.0.1:8080/healthz"], interval: 1s }
YAML

load0=$(cut -d' ' -f1-3 /proc/loadavg)
echo "start-up, $runs runs each"
startup=$(bench/lib/timeit.py "$runs" \
  rversion "'$rollout' --version" \
  rplan "'$rollout' -C '$work/tiny' plan" \
  dcversion "docker-compose version" \
  dcconfig "docker-compose -p rbenchtiny -f '$work/tiny/compose.yaml' config" \
  dversion "docker version")
echo "$startup"

echo "proxy memory"
"$rollout" -C "$work/p" promote --yes -p quick >/dev/null
ppid=$(container_pid "rollout-proxy-$env")
url="http://127.0.0.1:$port/"
curl -fsS -o /dev/null "$url"
sleep 2
p_rest=$(rss_kib "$ppid")
hey -z "${secs}s" -c 64 "$url" > "$work/hey-proxy" 2>&1 &
hp=$!
sample_rss "$ppid" "$secs" "$work/rss-proxy"
wait $hp
p_load=$(max_of "$work/rss-proxy")
p_rps=$(awk '/Requests\/sec/ {printf "%.0f", $2}' "$work/hey-proxy")
p_err=$(awk '/^Error distribution:/ {f=1; next} f && /\[[0-9]+\]/ {s+=substr($1,2,length($1)-2)} END {print s+0}' "$work/hey-proxy")
sleep 3
p_after=$(rss_kib "$ppid")
echo "proxy: rest $p_rest KiB, under load max $p_load KiB ($p_rps req/s, $p_err errors), after $p_after KiB"

echo "daemon memory"
BENCH_TOKEN=$token "$rollout" -C "$work/p" daemon >"$work/daemon.log" 2>&1 &
daemon_pid=$!
for _ in $(seq 1 100); do curl -fsS -o /dev/null -H "Authorization: Bearer $token" "http://127.0.0.1:$api/api/v1/environments" 2>/dev/null && break; sleep 0.1; done
sleep 2
d_rest=$(rss_kib "$daemon_pid")
daemon_load() { # $1: path, $2: label
  hey -z "${secs}s" -c 16 -H "Authorization: Bearer $token" "http://127.0.0.1:$api$1" > "$work/hey-$2" 2>&1 &
  local h=$!
  sample_rss "$daemon_pid" "$secs" "$work/rss-$2"
  wait $h
  echo "$(max_of "$work/rss-$2") $(awk '/Requests\/sec/ {printf "%.0f", $2}' "$work/hey-$2") $(hey_counts "$work/hey-$2" | cut -d' ' -f1)"
}
read -r d_list d_list_rps d_list_ok < <(daemon_load /api/v1/environments list)
read -r d_status d_status_rps d_status_ok < <(daemon_load "/api/v1/environments/$env" status)
sleep 3
d_after=$(rss_kib "$daemon_pid")
echo "daemon: rest $d_rest KiB, list max $d_list KiB ($d_list_rps req/s), status max $d_status KiB ($d_status_rps req/s), after $d_after KiB"
load1=$(cut -d' ' -f1-3 /proc/loadavg)
echo "load average: $load0 at start, $load1 at end"

python3 - "$runs" "$secs" "$load0" "$load1" "$(date -u +%Y-%m-%d)" "$(nproc)" "$(docker version --format '{{.Server.Version}}')" \
  "$(docker-compose version --short)" "$startup" \
  "$p_rest $p_load $p_after $p_rps $p_err" "$d_rest $d_list $d_list_rps $d_list_ok $d_status $d_status_rps $d_status_ok $d_after" <<'PY'
import re, sys
runs, secs, load0, load1, date, cores, docker, dc, startup, proxy, daemon = sys.argv[1:12]
st = {l.split()[0]: l.split()[1:] for l in startup.strip().splitlines()}
p = proxy.split(); d = daemon.split()
mib = lambda k: f"{int(k) / 1024:.1f} MiB"
r = lambda a, b: f"{float(st[a][0]) / float(st[b][0]):.2f}x"
out = f"""## Start-up time and memory

Command: `bench/startup-memory.sh {runs} {secs}` ({date}, {cores} cores, docker {docker}, docker-compose {dc}, hey,
release build, statically linked as the proxy's image uses it; load average {load0} at start, {load1} at end)

### CLI start-up (medians of {runs} alternating runs; CPU is user + system)

| command | wall | CPU | each run, wall (ms) |
| --- | --- | --- | --- |
| `rollout --version` | {st['rversion'][0]} ms | {st['rversion'][1]} ms | {st['rversion'][2].replace(',', ' ')} |
| `docker-compose version` | {st['dcversion'][0]} ms | {st['dcversion'][1]} ms | {st['dcversion'][2].replace(',', ' ')} |
| `rollout plan`, one service (asks Docker and the proxy) | {st['rplan'][0]} ms | {st['rplan'][1]} ms | {st['rplan'][2].replace(',', ' ')} |
| `docker-compose config`, the same service (reads the file only) | {st['dcconfig'][0]} ms | {st['dcconfig'][1]} ms | {st['dcconfig'][2].replace(',', ' ')} |
| `docker version` (the Go CLI, asks the engine) | {st['dversion'][0]} ms | {st['dversion'][1]} ms | {st['dversion'][2].replace(',', ' ')} |

Ratios (wall): `rollout --version` / `docker-compose version` **{r('rversion', 'dcversion')}**;
`rollout plan` / `docker-compose config` **{r('rplan', 'dcconfig')}**; `rollout plan` / `docker version` {r('rplan', 'dversion')}.

### Resident memory (VmRSS)

| process | at rest | under load (max of 0.2 s samples) | at rest after | load |
| --- | --- | --- | --- | --- |
| edge proxy (`rollout proxy` container) | {mib(p[0])} | {mib(p[1])} | {mib(p[2])} | `hey -z {secs}s -c 64` through it to busybox httpd: {p[3]} req/s, {p[4]} errors |
| daemon, listing environments | {mib(d[0])} | {mib(d[1])} | | `hey -z {secs}s -c 16` GET /api/v1/environments: {d[2]} req/s, {d[3]} answered 200 |
| daemon, environment status | | {mib(d[4])} | {mib(d[7])} | `hey -z {secs}s -c 16` GET /api/v1/environments/{{env}} (asks Docker and the proxy): {d[5]} req/s, {d[6]} answered 200 |
"""
text = open("BENCHMARKS.md").read()
pattern = re.compile(r"## Start-up time and memory.*?(?=\n## |\Z)", re.S)
text = pattern.sub(lambda _: out, text) if pattern.search(text) else text.rstrip() + "\n\n" + out
open("BENCHMARKS.md", "w").write(text)
PY
echo "BENCHMARKS.md updated"
