#!/usr/bin/env bash
# CPU cost per proxied request, measured in ways that depend little on what else the machine is
# doing: user-space instructions counted by callgrind (repeatable to a fraction of a percent),
# and the CPU time (user + system, from /proc and bash's `time`) that the proxy, the backend and
# wrk each used per request.
#
#   bench/proxy-instructions.sh [ROLLOUT_BINARY...]     (default: target/release/rollout)
#
# Each binary given (e.g. a build of an older commit beside the current one) is measured, then
# nginx as a reverse proxy, all against the same nginx backend serving a 512-byte file on
# 127.0.0.1, with a first row direct to the backend. Instructions: the proxy runs under
# `valgrind --tool=callgrind`, counters are zeroed after a warm-up and dumped after
# `wrk -t1 -c8 -d10s`, and divided by the requests the proxy served meanwhile. callgrind counts
# user space only: the kernel's share (system calls and loopback TCP, most of a proxy's cost)
# shows in the CPU-time columns, from a native run of `wrk -t2 -c64 -d10s`. The requests/s
# column is that run's, for context only (nginx is measured as one process there).
set -euo pipefail
cd "$(dirname "$0")/.."
bins=("$@")
[ ${#bins[@]} -gt 0 ] || bins=(target/release/rollout)
for tool in wrk valgrind callgrind_control curl python3; do
  command -v "$tool" >/dev/null || { echo "bench: needs $tool" >&2; exit 1; }
done

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for f in "$work"/*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
  sleep 0.5
  rm -rf "$work"
}
trap cleanup EXIT
. bench/lib/net.sh
. bench/lib/nginx.sh
static_site
backend_port=$(free_port); backend_status_port=$(free_port)
nginx_conf backend "daemon on; worker_processes $(nproc);" "server { listen 127.0.0.1:$backend_port; root $work/www; }
  server { listen 127.0.0.1:$backend_status_port; location / { stub_status; } }"
"$NGINX" -c "$work/backend.conf"

# Prints "instructions_per_request" for the proxy whose process is $1, listening on port $2,
# counting requests with the shell function $3.
callgrind_measure() {
  local pid=$1 port=$2 count=$3
  wrk -t1 -c8 -d2s "http://127.0.0.1:$port/" >/dev/null
  callgrind_control -z "$pid" >/dev/null 2>&1
  local before; before=$($count)
  wrk -t1 -c8 -d10s "http://127.0.0.1:$port/" >/dev/null
  local after; after=$($count)
  callgrind_control -d "$pid" >/dev/null 2>&1
  sleep 1
  local total; total=$(cat "$work"/callgrind.out.* | awk '/^totals:/ {s += $2} /^summary:/ {t += $2} END {print (s ? s : t)}')
  rm -f "$work"/callgrind.out.*
  python3 -c "print(round($total / ($after - $before)))"
}

ticks() { # user+system clock ticks of the given pids
  local sum=0 p
  for p in "$@"; do sum=$((sum + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
  echo "$sum"
}

# Prints "proxy backend wrk" CPU microseconds per request under wrk -t2 -c64 on port $2, $1
# being the proxy's pid ("-" for none: direct to the backend), $3 the request counter.
cpu_measure() {
  local pid=$1 port=$2 count=$3 workers
  workers=$(pgrep -P "$(cat "$work/backend.pid")" | tr '\n' ' ')
  wrk -t2 -c64 -d2s "http://127.0.0.1:$port/" >/dev/null
  local p0=0 p1=0 b0 b1 before after wrk_cpu
  [ "$pid" = - ] || p0=$(ticks "$pid")
  # shellcheck disable=SC2086
  b0=$(ticks $workers)
  before=$($count)
  wrk_cpu=$( { TIMEFORMAT="%U %S"; time wrk -t2 -c64 -d10s "http://127.0.0.1:$port/" >/dev/null; } 2>&1 | awk '{print $1 + $2}')
  after=$($count)
  [ "$pid" = - ] || p1=$(ticks "$pid")
  # shellcheck disable=SC2086
  b1=$(ticks $workers)
  python3 -c "
n = $after - $before; hz = $(getconf CLK_TCK)
print(f'{($p1 - $p0) / hz * 1e6 / n:.1f} {($b1 - $b0) / hz * 1e6 / n:.1f} {$wrk_cpu * 1e6 / n:.1f} {n / 10:.0f}')"
}

rollout_count() {
  curl -sf "http://127.0.0.1:$admin_port/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["backends"]["nginx"]["responses"]["2xx"])'
}

start_rollout() { # $1: binary, $2: wrapper (or empty)
  admin_port=$(free_port); proxy_port=$(free_port)
  mkdir -p "$work/state-$proxy_port"
  # shellcheck disable=SC2086
  setsid $2 "$1" proxy --admin "127.0.0.1:$admin_port" --bind 127.0.0.1 --state "$work/state-$proxy_port" > "$work/proxy.out" 2> "$work/proxy.err" &
  rpid=$!
  pids+=("$rpid")
  for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$admin_port/healthz" >/dev/null && break; sleep 0.1; done
  curl -sf -X PUT "http://127.0.0.1:$admin_port/routes" -H 'content-type: application/json' \
    -d "{\"listeners\":{\"$proxy_port\":{\"protocol\":\"http\",\"backends\":[{\"id\":\"nginx\",\"addr\":\"127.0.0.1:$backend_port\",\"weight\":100}]}}}" >/dev/null
}

# The backend's own request counter: its stub_status.
backend_count() { curl -sf "http://127.0.0.1:$backend_status_port/" | awk 'NR == 3 {print $3}'; }

echo "CPU time per request (user+sys, µs) under wrk -t2 -c64 -d10s; instructions: user space only."
echo
echo "| setup | proxy: instructions per request (callgrind) | proxy: CPU µs per request | backend: CPU µs | wrk: CPU µs | requests/s in that run |"
echo "| --- | --- | --- | --- | --- | --- |"
read -r _ b w r < <(cpu_measure - "$backend_port" backend_count)
echo "| direct to the backend | | | $b | $w | $r |"
for bin in "${bins[@]}"; do
  start_rollout "$bin" "valgrind --tool=callgrind --callgrind-out-file=$work/callgrind.out.%p"
  ins=$(callgrind_measure "$rpid" "$proxy_port" rollout_count)
  kill "$rpid"; wait "$rpid" 2>/dev/null || true
  start_rollout "$bin" ""
  read -r p b w r < <(cpu_measure "$rpid" "$proxy_port" rollout_count)
  kill "$rpid"; wait "$rpid" 2>/dev/null || true
  echo "| \`$bin\` | $ins | $p | $b | $w | $r |"
done

# nginx as the reverse proxy, one process (no master) so one pid has all the work; its
# stub_status counts requests.
rproxy_port=$(free_port); status_port=$(free_port)
rproxy_server="
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
  }
  server { listen 127.0.0.1:$status_port; location / { stub_status; } }"
nginx_count() { curl -sf "http://127.0.0.1:$status_port/" | awk 'NR == 3 {print $3}'; }
nginx_conf rproxy "daemon off; master_process off;" "$rproxy_server"
setsid valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out.%p" "$NGINX" -c "$work/rproxy.conf" 2>/dev/null &
npid=$!; pids+=("$npid")
for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$status_port/" >/dev/null && break; sleep 0.1; done
ins=$(callgrind_measure "$npid" "$rproxy_port" nginx_count)
kill "$npid"; wait "$npid" 2>/dev/null || true
setsid "$NGINX" -c "$work/rproxy.conf" 2>/dev/null &
npid=$!; pids+=("$npid")
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$status_port/" >/dev/null && break; sleep 0.1; done
read -r p b w r < <(cpu_measure "$npid" "$rproxy_port" nginx_count)
echo "| nginx $("$NGINX" -v 2>&1 | sed 's|.*nginx/||') as reverse proxy (one process) | $ins | $p | $b | $w | $r |"
