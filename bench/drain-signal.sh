#!/usr/bin/env bash
# The drain signal at scale: N simulated agents (the agent's real poll loop, each with its own
# timing) against moto, today's SSM-per-task pattern beside the drain board (one S3 object,
# conditional GETs). Prints AWS calls per second by API against the default quotas and the drain
# latency (the version is marked draining halfway through each window). See bench/README.md.
#
# Usage: bench/drain-signal.sh                         10, 100 and 1000 tasks, 40 s windows
#        TASKS=10,100 WINDOW=30 POLL=5 bench/drain-signal.sh
#        PATTERNS=board TASKS=1000 bench/drain-signal.sh
#
# moto runs on a free loopback port and is stopped (by PID) at the end; scripts/moto.sh installs
# it into .venv/moto if missing. Built in the dev profile: the work is waiting on moto.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export FLOTILLA_BENCH_TASKS="${TASKS:-10,100,1000}"
export FLOTILLA_BENCH_SECONDS="${WINDOW:-40}"
export FLOTILLA_BENCH_POLL_SECONDS="${POLL:-5}"
export FLOTILLA_BENCH_PATTERNS="${PATTERNS:-board,ssm}"
echo "machine: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
exec cargo test -q -p flotilla-aws --bench drain_signal
