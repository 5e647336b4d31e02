# Resident memory helpers for the bench scripts (sourced).
# rss_kib PID: VmRSS of a process in KiB (0 once it is gone).
rss_kib() { awk '/^VmRSS:/ {print $2; f=1} END {if (!f) print 0}' "/proc/$1/status" 2>/dev/null || echo 0; }
# container_pid NAME: the host pid of a container's first process.
container_pid() { docker inspect -f '{{.State.Pid}}' "$1"; }
# sample_rss PID SECONDS OUT: writes one RSS reading (KiB) every 0.2 s to OUT, for SECONDS.
sample_rss() {
  local end=$(( $(date +%s) + $2 ))
  : > "$3"
  while [ "$(date +%s)" -lt "$end" ]; do rss_kib "$1" >> "$3"; sleep 0.2; done
}
max_of() { sort -n "$1" | tail -1; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
