#!/usr/bin/env bash
# Benchmark: HTTP throughput and p99 latency of a fast backend (nginx serving a small static
# file on 127.0.0.1), measured with wrk (1) directly, (2) through `rollout proxy` (release
# build), (3) through nginx as a reverse proxy with a keep-alive upstream. The three alternate,
# several runs each, in one run of this script; medians and ratios go to BENCHMARKS.md (section
# "Proxy throughput and latency"; other sections are left as they are).
#
#   bench/proxy-vs-nginx.sh [RUNS] [SECONDS] [CONNECTIONS]     (default 5 runs of 10 s, 64 connections)
#   ROLLOUT_BIN=path/to/rollout bench/proxy-vs-nginx.sh ...    (another build; prints only)
#
# Everything runs on this one machine, wrk included, so the proxied setups share the CPU with
# the load generator and the backend: the ratio to direct is a lower bound of what a proxy on
# its own cores would show. The ratio to nginx is like for like: both proxies get the same
# number of worker threads/processes (one per core).
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-5}"
secs="${2:-10}"
conns="${3:-64}"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
if [ ${#need[@]} -gt 0 ]; then
  echo "bench: installing ${need[*]}"
  as_root apt-get update -qq
  # policy-rc.d keeps the package from starting a system nginx on port 80.
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v curl >/dev/null || { echo "bench: needs curl" >&2; exit 1; }

# ROLLOUT_BIN measures another build (an older commit's, for a before/after in the same
# conditions); BENCHMARKS.md is only updated for the current release build.
if [ -n "${ROLLOUT_BIN:-}" ]; then
  bin=$ROLLOUT_BIN
else
  cargo build --release --quiet
  bin=target/release/rollout
fi
cores=$(nproc)

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$work/backend.pid" ] && kill "$(cat "$work/backend.pid")" 2>/dev/null || true
  [ -f "$work/rproxy.pid" ] && kill "$(cat "$work/rproxy.pid")" 2>/dev/null || true
  sleep 0.5
  rm -rf "$work"
}
trap cleanup EXIT

. bench/lib/net.sh
. bench/lib/nginx.sh
backend_port=$(free_port); rproxy_port=$(free_port); proxy_port=$(free_port); admin_port=$(free_port)
mkdir -p "$work/state"
static_site
main="daemon on; worker_processes $cores;"
nginx_conf backend "$main" "server { listen 127.0.0.1:$backend_port; root $work/www; }"
"$NGINX" -c "$work/backend.conf"
nginx_conf rproxy "$main" "
  upstream app { server 127.0.0.1:$backend_port; keepalive 128; }
  server {
    listen 127.0.0.1:$rproxy_port;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto http;
    }
  }"
"$NGINX" -c "$work/rproxy.conf"

# In its own session, as the nginx daemons (which setsid) are: with the kernel's autogroup
# scheduling, a process left in this script's session would share one CPU share with wrk and
# be measured at a disadvantage.
setsid "$bin" proxy --admin "127.0.0.1:$admin_port" --bind 127.0.0.1 --state "$work/state" > "$work/proxy.out" 2> "$work/proxy.err" &
pids+=($!)
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$admin_port/healthz" >/dev/null && break; sleep 0.1; done
curl -sf -X PUT "http://127.0.0.1:$admin_port/routes" -H 'content-type: application/json' \
  -d "{\"listeners\":{\"$proxy_port\":{\"protocol\":\"http\",\"backends\":[{\"id\":\"nginx\",\"addr\":\"127.0.0.1:$backend_port\",\"weight\":100}]}}}" >/dev/null

for url in "http://127.0.0.1:$backend_port/" "http://127.0.0.1:$proxy_port/" "http://127.0.0.1:$rproxy_port/"; do
  [ "$(curl -sf "$url" | wc -c)" = 512 ] || { echo "bench: $url does not serve the file" >&2; exit 1; }
done

# One wrk run: prints "requests_per_second p99_ms".
measure() {
  wrk -t2 -c"$conns" -d"${secs}s" --latency "$1" | awk '
    /Requests\/sec/ { rps = $2 }
    /^ +99%/ { v = $2; if (v ~ /us$/) { sub(/us$/, "", v); v /= 1000 } else if (v ~ /ms$/) { sub(/ms$/, "", v) } else if (v ~ /s$/) { sub(/s$/, "", v); v *= 1000 } p99 = v }
    / Non-2xx or 3xx responses:/ { bad = $NF }
    /Socket errors/ { errs = $0 }
    END { if (bad > 0 || errs != "") { print "bench: errors: " bad " " errs > "/dev/stderr" } printf "%.0f %.3f\n", rps, p99 }'
}
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# Warm up every path (connection pools, page cache).
for port in $backend_port $proxy_port $rproxy_port; do wrk -t2 -c"$conns" -d2s "http://127.0.0.1:$port/" >/dev/null; done

d_rps=(); d_p99=(); r_rps=(); r_p99=(); n_rps=(); n_p99=()
for i in $(seq 1 "$runs"); do
  read -r a b < <(measure "http://127.0.0.1:$backend_port/"); d_rps+=("$a"); d_p99+=("$b")
  read -r a b < <(measure "http://127.0.0.1:$proxy_port/"); r_rps+=("$a"); r_p99+=("$b")
  read -r a b < <(measure "http://127.0.0.1:$rproxy_port/"); n_rps+=("$a"); n_p99+=("$b")
  echo "run $i: direct ${d_rps[-1]} req/s p99 ${d_p99[-1]} ms | rollout proxy ${r_rps[-1]} req/s p99 ${r_p99[-1]} ms | nginx proxy ${n_rps[-1]} req/s p99 ${n_p99[-1]} ms"
done
med() { printf '%s\n' "$@" | median; }
dr=$(med "${d_rps[@]}"); dp=$(med "${d_p99[@]}")
rr=$(med "${r_rps[@]}"); rp=$(med "${r_p99[@]}")
nr=$(med "${n_rps[@]}"); np=$(med "${n_p99[@]}")
ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }
r_direct=$(ratio "$rr" "$dr"); r_nginx=$(ratio "$rr" "$nr"); n_direct=$(ratio "$nr" "$dr")
p_nginx=$(ratio "$rp" "$np")
echo "median: direct $dr req/s ($dp ms), rollout $rr req/s ($rp ms), nginx $nr req/s ($np ms); rollout/direct ${r_direct}x, rollout/nginx ${r_nginx}x"

# The proxy's own counters must agree that nothing failed.
stats=$(curl -sf "http://127.0.0.1:$admin_port/stats")
proxy_errors=$(python3 -c 'import json,sys; b=json.loads(sys.argv[1])["backends"]["nginx"]; print(b["connectionErrors"] + b["responses"]["5xx"])' "$stats")

cpu=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
section="## Proxy throughput and latency

Command: \`bench/proxy-vs-nginx.sh $runs $secs $conns\` ($(date -u +%Y-%m-%d), $cores cores ($cpu), $(free -g | awk '/Mem/ {print $2}') GiB, $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}'), nginx $("$NGINX" -v 2>&1 | sed 's|.*nginx/||'))

\`wrk -t2 -c$conns -d${secs}s --latency\` against a 512-byte static file served by nginx on
127.0.0.1 ($cores worker processes), $runs runs of each setup, alternating. Both proxies get
$cores workers and keep-alive connections to the backend; rollout is the release build with the
routing table set through its admin API (one backend, weight 100).

| | requests/s (median) | p99 latency (median) | each run, requests/s |
| --- | --- | --- | --- |
| direct to the backend | $dr | $dp ms | ${d_rps[*]} |
| through \`rollout proxy\` | $rr | $rp ms | ${r_rps[*]} |
| through nginx (reverse proxy, keepalive upstream) | $nr | $np ms | ${n_rps[*]} |
| rollout / direct | **${r_direct}x** | | goal: at least 0.8x |
| rollout / nginx | **${r_nginx}x** | p99 ratio ${p_nginx}x | goal: at least 1x |
| nginx / direct | ${n_direct}x | | |

The proxy counted $proxy_errors errors (5xx or connection errors) over the whole run. Each server
runs in its own session (nginx daemonizes; rollout is started with \`setsid\`), so the kernel's
autogroup scheduling treats them alike.
wrk, the backend and the proxy share the same $cores cores, so a proxied request costs CPU that
direct requests give to the backend and wrk: on a machine this small the ratio to direct is
bounded by that sharing for any proxy (nginx's own ratio is the reference), and the ratio to
nginx is the like-for-like comparison.
"
[ -z "${ROLLOUT_BIN:-}" ] || exit 0
touch BENCHMARKS.md
python3 - "$section" <<'PY'
import sys, re
text = open("BENCHMARKS.md").read()
if not text.strip():
    text = "# Benchmarks\n\nEach figure comes with the command that reproduces it; all comparisons ran side by side in one run.\n"
section = sys.argv[1]
pattern = re.compile(r"## Proxy throughput and latency.*?(?=\n## |\Z)", re.S)
text = pattern.sub(lambda _: section.strip() + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
open("BENCHMARKS.md", "w").write(text)
PY
echo "BENCHMARKS.md updated"
