#!/usr/bin/env python3
"""Runs commands alternately, several times each, and prints per command the median wall clock
and the median CPU time (user + system of the command and its children, from getrusage).

    timeit.py RUNS LABEL1 'CMD1' [LABEL2 'CMD2' ...]

Each CMD runs through `sh -c` with stdout and stderr to /dev/null; a command that exits with a
status other than 0 or 2 (`rollout plan` says "changes" with 2) aborts the measurement.
Output, one line per command: LABEL wall_median_ms cpu_median_ms wall_each_ms,...
"""
import resource
import statistics
import subprocess
import sys
import time

runs = int(sys.argv[1])
pairs = list(zip(sys.argv[2::2], sys.argv[3::2]))
wall = {label: [] for label, _ in pairs}
cpu = {label: [] for label, _ in pairs}
for _ in range(runs):
    for label, cmd in pairs:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        rc = subprocess.call(["sh", "-c", cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t1 = time.perf_counter()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if rc not in (0, 2):
            sys.exit(f"timeit: `{cmd}` exited with {rc}")
        wall[label].append((t1 - t0) * 1000)
        cpu[label].append((after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000)
for label, _ in pairs:
    each = ",".join(f"{w:.1f}" for w in wall[label])
    print(f"{label} {statistics.median(wall[label]):.1f} {statistics.median(cpu[label]):.1f} {each}")
