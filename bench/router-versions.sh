#!/usr/bin/env bash
# Routing cost against the number of live versions: the host router with 1, 10 and 50 versions
# (each earlier one draining, so every version has its affinity routes), driven by the same wrk
# load, fresh (no affinity: the newest version) and pinned (the affinity header of the oldest).
# Issue 13's goal: throughput at 10 and 50 versions within 5 % of 1 version.
#
# Usage: bench/router-versions.sh   (env: VERSIONS="1 10 50" DURATION=10 CONNECTIONS=32 ROUNDS=2)
# Needs wrk (apt-get install wrk). 127.0.0.1 only; each version runs one instance of examples/hello.
set -euo pipefail

VERSIONS="${VERSIONS:-1 10 50}"
DURATION="${DURATION:-10}"
CONNECTIONS="${CONNECTIONS:-32}"
ROUNDS="${ROUNDS:-2}"

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
command -v wrk >/dev/null 2>&1 || { echo "needs wrk (apt-get install wrk)" >&2; exit 2; }

echo "building flotilla and the example app (release)" >&2
cargo build --release --quiet -p flotilla-host --example bench_router
cargo build --release --quiet -p flotilla-example-hello
HARNESS="$root/target/release/examples/bench_router"
HELLO="$root/target/release/flotilla-example-hello"

work="$(mktemp -d)"
harness_pid=""
stop_harness() {
  if [ -n "$harness_pid" ]; then kill "$harness_pid" 2>/dev/null || true; wait "$harness_pid" 2>/dev/null || true; fi
  harness_pid=""
}
trap 'stop_harness; rm -rf "$work"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

results="$work/results.tsv"
: > "$results"
for n in $VERSIONS; do
  app="$work/app-$n"
  mkdir -p "$app"
  echo "benchmark app" > "$app/README"
  port="$(free_port)"; admin="$(free_port)"
  echo "deploying $n version(s)" >&2
  BENCH_VERSIONS="$n" BENCH_INSTANCES=1 "$HARNESS" "$app" "$port" "$admin" "cp $HELLO ./hello" "exec ./hello" \
    > "$work/harness-$n.out" 2> "$work/harness-$n.err" &
  harness_pid=$!
  for _ in $(seq 3000); do
    grep -q '^V2 ' "$work/harness-$n.out" && break
    kill -0 "$harness_pid" 2>/dev/null || { echo "the harness failed:" >&2; tail -20 "$work/harness-$n.err" >&2; exit 1; }
    sleep 0.1
  done
  oldest="$(awk '$1=="V1"{print $2}' "$work/harness-$n.out")"
  got="$(curl -s -D - -o /dev/null -H "X-Flotilla-Deployment: $oldest" "http://127.0.0.1:$port/" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-flotilla-deployment"{print $2}')"
  [ "$got" = "$oldest" ] || { echo "pinned requests do not reach the oldest version ($got, want $oldest)" >&2; exit 1; }
  wrk -t1 -c4 -d2s "http://127.0.0.1:$port/" >/dev/null 2>&1 || true
  for round in $(seq "$ROUNDS"); do
    for scenario in fresh pinned; do
      args=(-t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency)
      [ "$scenario" = pinned ] && args+=(-H "X-Flotilla-Deployment: $oldest")
      wrk "${args[@]}" "http://127.0.0.1:$port/" > "$work/wrk.out" 2>&1
      python3 "$root/bench/lib/wrk_row.py" "$n" "$scenario" "$work/wrk.out" >> "$results"
    done
  done
  stop_harness
done

python3 - "$results" <<'PY'
import sys, statistics
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
agg = {}
for n, scenario, rps, p50, p99, bad, sock in rows:
    a = agg.setdefault((int(n), scenario), {"rps": [], "p99": [], "bad": 0})
    a["rps"].append(float(rps)); a["p99"].append(float(p99)); a["bad"] += int(bad)
print(f"{'versions':>8} {'scenario':<8}{'req/s':>10}{'p99 ms':>9}{'vs 1 version':>14}  non-2xx")
base = {s: statistics.median(agg[(n, s)]["rps"]) for (n, s) in agg if n == min(k[0] for k in agg)}
for (n, scenario), a in sorted(agg.items()):
    rps = statistics.median(a["rps"])
    print(f"{n:>8} {scenario:<8}{rps:>10.0f}{statistics.median(a['p99']):>9.3f}{rps / base[scenario]:>13.2f}x  {a['bad']}")
print("(medians over rounds; goal: every row within 0.95x-1.05x of 1 version)")
PY
echo "machine: $(nproc) CPUs; load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
