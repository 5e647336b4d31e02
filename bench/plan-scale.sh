#!/usr/bin/env bash
# Benchmark: how the cost of `rollout plan` grows with the size of an environment. Generates
# manifests of 10, 100 and 1000 services (each depends on up to two earlier ones, every service
# has an HTTP health check, every tenth a public port; written dependents first, as the demo
# manifest is) and the same graph as a compose file,
# then times, alternating, several runs each:
#   - `rollout plan` on the native manifest,
#   - `rollout plan -m compose.yaml` on the compose file,
#   - `docker-compose config` on the compose file (parses, validates and prints the resolved
#     file: the nearest thing compose has to a plan, and it never asks the engine anything).
# Production is empty (nothing of these environments runs): plan still asks the engine what runs
# (one labelled container list, one network, volumes) and the proxy's table; starting 1000
# containers to plan against is out of reach on this machine.
#
#   bench/plan-scale.sh [RUNS]      (default 7)
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-7}"
sizes="${SIZES:-10 100 1000}"
scripts/setup.sh >/dev/null
rollout="${ROLLOUT_BIN:-$PWD/$(scripts/build-static.sh --release)}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

gen() { # $1: services, $2: dir
  python3 - "$1" "$2" <<'PY'
import os, sys
n, d = int(sys.argv[1]), sys.argv[2]
os.makedirs(f"{d}/manifests", exist_ok=True)
def deps(i):
    return sorted({(i - 1) // 2, (i - 1) // 3} - {i}) if i > 0 else []
m = ["apiVersion: rollout/v1", "kind: Environment", f"name: scale{n}", "client: bench", "services:"]
c = ["services:"]
# Written as the demo writes its services: each before the ones it depends on (s0999 ... s0000).
for i in reversed(range(n)):
    s = f"s{i:04d}"
    m += [f"  {s}:", f"    image: shop-web:2.{i % 7}.0", "    env: { LOG_LEVEL: info, WORKERS: \"4\" }"]
    c += [f"  {s}:", f"    image: shop-web:2.{i % 7}.0", "    environment: { LOG_LEVEL: info, WORKERS: \"4\" }"]
    if i % 10 == 0:
        m.append(f"    ports: [ {{ name: http, container: 8080, public: {20000 + i} }} ]")
        c.append(f"    ports: [ \"{20000 + i}:8080\" ]")
    else:
        m.append("    ports: [ { name: http, container: 8080 } ]")
        c.append("    expose: [ \"8080\" ]")
    ds = [f"s{j:04d}" for j in deps(i)]
    if ds:
        m.append(f"    dependsOn: [{', '.join(ds)}]")
        c.append(f"    depends_on: [{', '.join(ds)}]")
    m.append("    health: { http: { port: 8080, path: /healthz }, interval: 1s, timeout: 2s }")
    c.append("    healthcheck: { test: [CMD, wget, -q, -O, /dev/null, \"http://127.0.0.1:8080/healthz\"], interval: 1s, timeout: 2s }")
c += ["x-rollout: { client: bench, name: scale%dc }" % n]
open(f"{d}/manifests/scale{n}.yaml", "w").write("\n".join(m) + "\n")
open(f"{d}/compose.yaml", "w").write("\n".join(c) + "\n")
open(f"{d}/rollout.yaml", "w").write("proxy: { bind: 127.0.0.1 }\n")
PY
}

load0=$(cut -d' ' -f1-3 /proc/loadavg)
results=()
for n in $sizes; do
  gen "$n" "$work/p$n"
  # One untimed run each: page cache, docker's first answer.
  "$rollout" -C "$work/p$n" plan >/dev/null || [ $? = 2 ]
  before=()
  [ -n "${BEFORE_BIN:-}" ] && before=(before "'$BEFORE_BIN' -C '$work/p$n' plan")
  line=$(bench/lib/timeit.py "$runs" \
    native "'$rollout' -C '$work/p$n' plan" "${before[@]}" \
    compose "'$rollout' -C '$work/p$n' plan -m '$work/p$n/compose.yaml'" \
    dc "docker-compose -p scale$n -f '$work/p$n/compose.yaml' config")
  echo "$n services:"; echo "$line" | sed 's/^/  /'
  results+=("$n|$line")
done
load1=$(cut -d' ' -f1-3 /proc/loadavg)
echo "load average: $load0 at start, $load1 at end"

python3 - "$runs" "$load0" "$load1" "$(date -u +%Y-%m-%d)" "$(nproc)" \
  "$(docker version --format '{{.Server.Version}}')" "$(docker-compose version --short)" "${results[@]}" <<'PY'
import os, re, sys
runs, load0, load1, date, cores, docker, dc = sys.argv[1:8]
rows = {}
for r in sys.argv[8:]:
    n, body = r.split("|", 1)
    rows[int(n)] = {l.split()[0]: l.split()[1:] for l in body.strip().splitlines()}
sizes = sorted(rows)
def ms(v): return f"{float(v):.0f} ms" if float(v) >= 10 else f"{float(v):.1f} ms"
out = [
    "## `rollout plan` as environments grow: 10, 100, 1000 services",
    "",
    f"Command: `bench/plan-scale.sh {runs}` ({date}, {cores} cores, docker {docker}, docker-compose {dc}, release build;"
    f" load average {load0} at start, {load1} at end)",
    "",
    "Generated manifests: each service depends on up to two others, has an HTTP health check and an",
    "env map, every tenth a public port; services are written before the ones they depend on (as the",
    "demo manifest writes web, api, db); the same graph as a compose file. Production is empty:",
    "plan still reads the project, asks Docker what runs and reads the proxy's table. Medians of",
    f"{runs} alternating runs; CPU is user + system of the process.",
    "",
    "| services | `rollout plan` wall / CPU | `rollout plan -m compose.yaml` wall / CPU | `docker-compose config` wall / CPU | rollout / compose (wall) |",
    "| --- | --- | --- | --- | --- |",
]
for n in sizes:
    r = rows[n]
    out.append(f"| {n} | {ms(r['native'][0])} / {ms(r['native'][1])} | {ms(r['compose'][0])} / {ms(r['compose'][1])}"
               f" | {ms(r['dc'][0])} / {ms(r['dc'][1])} | {float(r['native'][0]) / float(r['dc'][0]):.2f}x |")
out += ["", "Growth per 10x more services (ratio of medians):", "",
        "| from → to | `rollout plan` wall / CPU | `plan -m compose` wall / CPU | `docker-compose config` wall / CPU |",
        "| --- | --- | --- | --- |"]
for a, b in zip(sizes, sizes[1:]):
    g = lambda k, i: f"{float(rows[b][k][i]) / float(rows[a][k][i]):.1f}x"
    out.append(f"| {a} → {b} | {g('native', 0)} / {g('native', 1)} | {g('compose', 0)} / {g('compose', 1)} | {g('dc', 0)} / {g('dc', 1)} |")
if all("before" in rows[n] for n in sizes):
    out += ["", "The same run, `rollout plan` with `BEFORE_BIN` (a release build before the dependency order was made",
            "linear) against the current build:", "",
            "| services | before: wall / CPU | now: wall / CPU | now / before (wall) |", "| --- | --- | --- | --- |"]
    for n in sizes:
        b, a = rows[n]["before"], rows[n]["native"]
        out.append(f"| {n} | {ms(b[0])} / {ms(b[1])} | {ms(a[0])} / {ms(a[1])} | {float(a[0]) / float(b[0]):.2f}x |")
out += ["", "Each run (wall, ms):", ""]
for n in sizes:
    for k, name in (("native", "rollout plan"), ("compose", "rollout plan -m compose.yaml"), ("dc", "docker-compose config")):
        out.append(f"- {n} services, {name}: {rows[n][k][2].replace(',', ' ')}")
section = "\n".join(out) + "\n"
text = open("BENCHMARKS.md").read()
pattern = re.compile(r"## `rollout plan` as environments grow.*?(?=\n## |\Z)", re.S)
text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section
open("BENCHMARKS.md", "w").write(text)
PY
echo "BENCHMARKS.md updated"
