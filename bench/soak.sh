#!/usr/bin/env bash
# Soak: N promote/rollback cycles of the demo web service, driven through the daemon's API,
# under steady load on its public port (hey, keep-alive, 4 workers, 127.0.0.1 only). Bounded in
# cycles and in time. Reports requests dropped (must be 0), containers/networks/volumes left
# behind (must be 0), and the resident memory of the edge proxy and of the daemon across the run
# (must be flat). Writes the section "Soak" of BENCHMARKS.md.
#
#   bench/soak.sh [CYCLES] [MAX_SECONDS]      (default 100 cycles, at most 1500 s of cycles)
#
# A cycle: POST /promote (the manifest says shop-web 2.5.0, production runs 2.4.0; playbook
# `quick`: blue-green, drain 1s), wait for its exit status, POST /rollback (back to 2.4.0), wait.
# Both must exit 0. After each cycle the RSS of the proxy (host pid of its container) and of the
# daemon are read from /proc. Exits 1 if a request was dropped, something leaked or a run failed.
set -euo pipefail
cd "$(dirname "$0")/.."
cycles="${1:-100}"
max_secs="${2:-1500}"
scripts/setup.sh >/dev/null
command -v hey >/dev/null || { apt-get install -y -qq hey >/dev/null; }
rollout="${ROLLOUT_BIN:-$PWD/$(scripts/build-static.sh --release)}"
"$rollout" -C . demo --build-only >/dev/null
. bench/lib/rss.sh

env=rbenchsoak
work=$(mktemp -d)
daemon_pid=
cleanup() {
  rm -f "$work/loading"
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
mkdir -p "$work/p/manifests" "$work/p/playbooks"
cat > "$work/p/rollout.yaml" <<YAML
proxy: { bind: 127.0.0.1 }
daemon:
  listen: 127.0.0.1:$api
  tokens:
    - { name: soak, fromEnv: SOAK_TOKEN, clients: [bench], may: [read, promote, rollback] }
YAML
printf 'apiVersion: rollout/v1\nkind: Playbook\nname: quick\ntwoPersonRule: false\nsteps:\n  - promote: { drain: 1s }\n' > "$work/p/playbooks/quick.yaml"
manifest() {
  cat > "$work/p/manifests/$env.yaml" <<YAML
apiVersion: rollout/v1
kind: Environment
name: $env
client: bench
services:
  web:
    image: shop-web:$1
    ports: [ { name: http, container: 8080, public: $port } ]
    health: { http: { port: 8080, path: /healthz }, interval: 200ms }
YAML
}
objects() { # containers networks volumes of the environment, and test-version objects anywhere
  echo "$(docker ps -aq --filter label=rollout.environment=$env | wc -l)" \
    "$(docker network ls -q --filter label=rollout.environment=$env | wc -l)" \
    "$(docker volume ls -q --filter label=rollout.environment=$env | wc -l)" \
    "$( { docker ps -aq --filter label=rollout.role=test --filter label=rollout.environment=$env; docker network ls -q --filter label=rollout.role=test --filter label=rollout.environment=$env; docker volume ls -q --filter label=rollout.role=test --filter label=rollout.environment=$env; } | wc -l)"
}

manifest 2.4.0
"$rollout" -C "$work/p" promote --yes -p quick >/dev/null
manifest 2.5.0
SOAK_TOKEN=$token "$rollout" -C "$work/p" daemon >"$work/daemon.log" 2>&1 &
daemon_pid=$!
auth=(-H "Authorization: Bearer $token")
base="http://127.0.0.1:$api/api/v1/environments/$env"
for _ in $(seq 1 100); do curl -fsS -o /dev/null "${auth[@]}" "$base" 2>/dev/null && break; sleep 0.1; done
ppid=$(container_pid "rollout-proxy-$env")
read -r c0 n0 v0 t0 < <(objects)

# Steady load: back-to-back 30 s hey runs until the cycles are done; their summaries are summed.
touch "$work/loading"
(
  i=0
  while [ -e "$work/loading" ]; do
    i=$((i + 1)); hey -z 30s -c 4 "http://127.0.0.1:$port/" > "$work/hey.$i" 2>&1
  done
) &
loader=$!
sleep 2

run_and_wait() { # $1: promote|rollback, $2: JSON body; prints the exit status of the run
  local resp run code
  resp=$(curl -sS "${auth[@]}" -H 'Content-Type: application/json' -d "$2" "$base/$1")
  run=$(python3 -c 'import json,sys; print(json.load(sys.stdin).get("run",""))' <<<"$resp" 2>/dev/null || true)
  if [ -z "$run" ]; then echo "no-run:$resp" | head -c 300 | tr '\n' ' '; echo; return; fi
  while :; do
    code=$(curl -sS "${auth[@]}" "$base/runs/$run" | python3 -c 'import json,sys; d=json.load(sys.stdin).get("daemon") or {}; c=d.get("exitCode"); print("" if c is None else c)')
    [ -n "$code" ] && break
    sleep 0.2
  done
  echo "$code"
}

echo "cycle elapsed_s proxy_rss_kib daemon_rss_kib" > "$work/rss.tsv"
echo "0 0 $(rss_kib "$ppid") $(rss_kib "$daemon_pid")" >> "$work/rss.tsv"
start=$(date +%s); failed=0; done_cycles=0
for i in $(seq 1 "$cycles"); do
  [ $(( $(date +%s) - start )) -ge "$max_secs" ] && { echo "time cap reached after $done_cycles cycles"; break; }
  p=$(run_and_wait promote '{"playbook":"quick","reason":"soak"}')
  r=$(run_and_wait rollback '{}')
  [ "$p" = 0 ] && [ "$r" = 0 ] || { failed=$((failed + 1)); echo "cycle $i: promote $p, rollback $r" >&2; }
  done_cycles=$i
  echo "$i $(( $(date +%s) - start )) $(rss_kib "$ppid") $(rss_kib "$daemon_pid")" >> "$work/rss.tsv"
  if [ $((i % 10)) = 0 ]; then echo "cycle $i: $(tail -1 "$work/rss.tsv")"; fi
done
elapsed=$(( $(date +%s) - start ))
rm -f "$work/loading"
# From here on, report whatever happened rather than stop at the first failing command.
set +e
wait "$loader"
sleep 2
read -r c1 n1 v1 t1 < <(objects)

ok=0; other=0; errs=0
for f in "$work"/hey.*; do
  read -r o n e < <(hey_counts "$f")
  ok=$((ok + o)); other=$((other + n)); errs=$((errs + e))
done
dropped=$((other + errs))
abs() { echo $(( $1 < 0 ? -$1 : $1 )); }
leaked=$(( $(abs $((c1 - c0))) + $(abs $((n1 - n0))) + $(abs $((v1 - v0))) + t1 ))
stats() { # column -> first last max
  awk -v c="$1" 'NR == 2 {f = $c} NR > 1 {l = $c; if ($c > m) m = $c} END {printf "%.1f %.1f %.1f", f / 1024, l / 1024, m / 1024}' "$work/rss.tsv"
}
read -r pf pl pm < <(stats 3)
read -r df dl dm < <(stats 4)
# Flat: the second half's mean against the first half's (after the first cycle's warm-up).
half() { awk -v c="$1" 'NR > 2 {v[NR] = $c; n++} END {h = int(n / 2); for (i = 3; i < 3 + h; i++) a += v[i]; for (i = 3 + n - h; i < 3 + n; i++) b += v[i]; if (h) printf "%+.1f", (b - a) / h / 1024; else print "n/a"}' "$work/rss.tsv"; }
pdrift=$(half 3); ddrift=$(half 4)
# Steady state: what each process holds grows until its retention is full (the proxy keeps a
# backend's counters 15 minutes after it left the routing table, the daemon the newest 100
# finished runs), then must stay flat. Least-squares slope (KiB per cycle) over the cycles that
# ended at least $steady_after s in and from cycle 60 on (over 100 runs), with the RSS at the
# start and end of that part.
steady_after="${SOAK_STEADY_AFTER:-960}"
steady() { # column -> slope_kib_per_cycle first_mib last_mib cycles
  awk -v c="$1" -v t="$steady_after" 'NR > 1 && $2 >= t && $1 >= 60 {n++; x = $1; y = $c; sx += x; sy += y; sxx += x * x; sxy += x * y; if (n == 1) f = y; l = y}
    END {if (n >= 10) printf "%+.2f %.1f %.1f %d", (n * sxy - sx * sy) / (n * sxx - sx * sx), f / 1024, l / 1024, n; else print "n/a - - 0"}' "$work/rss.tsv"
}
read -r pslope psf psl psn < <(steady 3)
read -r dslope dsf dsl dsn < <(steady 4)
# RSS every tenth of the run, for the table.
every=$(( done_cycles / 10 > 0 ? done_cycles / 10 : 1 ))
rss_table=$(python3 - "$work/rss.tsv" "$every" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1]).read().splitlines()[1:]]
every = int(sys.argv[2])
rows = [r for r in rows if int(r[0]) % every == 0]
cells = lambda xs: "| " + " | ".join(xs) + " |"
print(cells(["cycle"] + [r[0] for r in rows]))
print(cells(["---"] * (len(rows) + 1)))
print(cells(["elapsed"] + ["%dm%02ds" % divmod(int(r[1]), 60) for r in rows]))
print(cells(["proxy"] + [r[2] for r in rows]))
print(cells(["daemon"] + [r[3] for r in rows]))
PY
)
echo "cycles $done_cycles in ${elapsed}s, failed $failed; requests ok $ok, non-200 $other, errors $errs"
echo "objects before: $c0 containers, $n0 networks, $v0 volumes; after: $c1, $n1, $v1; test-version objects $t1"
echo "proxy RSS MiB first/last/max $pf/$pl/$pm (second half - first half: $pdrift); daemon $df/$dl/$dm ($ddrift)"
echo "steady state (cycles ended after ${steady_after}s, from cycle 60): proxy $pslope KiB/cycle over $psn cycles ($psf -> $psl MiB); daemon $dslope KiB/cycle ($dsf -> $dsl MiB)"
[ -n "${SOAK_RSS_OUT:-}" ] && cp "$work/rss.tsv" "$SOAK_RSS_OUT"

section="## Soak: promote/rollback cycles under load

Command: \`bench/soak.sh $cycles $max_secs\` ($(date -u +%Y-%m-%d), $(nproc) cores, docker $(docker version --format '{{.Server.Version}}'), hey, release build; load average $(cut -d' ' -f1-3 /proc/loadavg) at the end)

$done_cycles cycles in $elapsed s, each a promote (shop-web 2.4.0 -> 2.5.0, blue-green, drain 1s) and a
rollback, both started through the daemon's API, under steady \`hey -c 4\` (keep-alive) on the
public port throughout. Failed runs: $failed.

| | result | goal |
| --- | --- | --- |
| requests dropped (non-200 + connection errors) | **$dropped** of $((ok + dropped)) ($ok answered 200) | 0 |
| objects left (containers, networks, volumes of the environment, before -> after; test-version objects after) | **$leaked** ($c0/$n0/$v0 -> $c1/$n1/$v1; $t1) | 0 |
| edge proxy RSS, after cycle 0 / last / max | $pf / $pl / $pm MiB (mean of the second half minus the first: $pdrift MiB) | flat |
| daemon RSS, after cycle 0 / last / max | $df / $dl / $dm MiB (mean of the second half minus the first: $ddrift MiB) | flat |
| proxy RSS in steady state: slope over the $psn cycles that ended after ${steady_after} s (from cycle 60) | **$pslope KiB per cycle** ($psf -> $psl MiB) | flat once its 15-minute retention is full |
| daemon RSS in steady state, same cycles | **$dslope KiB per cycle** ($dsf -> $dsl MiB) | flat once it keeps its 100 newest runs |

RSS after every ${every}th cycle (KiB):

$rss_table
"
python3 - "$section" <<'PY'
import re, sys
text = open("BENCHMARKS.md").read()
section = sys.argv[1]
pattern = re.compile(r"## Soak: promote/rollback.*?(?=\n## |\Z)", re.S)
text = pattern.sub(lambda _: section.strip() + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
open("BENCHMARKS.md", "w").write(text)
PY
echo "BENCHMARKS.md updated"
[ "$dropped" = 0 ] && [ "$leaked" = 0 ] && [ "$failed" = 0 ]
