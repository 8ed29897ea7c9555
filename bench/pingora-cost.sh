#!/usr/bin/env bash
# What building on Pingora would cost flotilla's host build, measured: a clean release build of
# the Pingora peer (bench/pingora-peer: Pingora 0.7 with the proxy and rustls features, the
# smallest program that routes like flotilla's router) against a clean release build of
# flotilla-proxy (the hyper-based proxy library the host router is built on), each in its own
# empty target directory, with the CPU time (user + system), wall time, crates compiled and the
# size of the resulting binary / library.
#
# Usage: bench/pingora-cost.sh   (builds twice from nothing: many minutes on 2 cores)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

measure() { # name, then the cargo arguments
  local name="$1"; shift
  local start end
  start="$(date +%s.%N)"
  /usr/bin/env time -f "%U %S" -o "$work/$name.time" cargo build --release "$@" > "$work/$name.log" 2>&1 \
    || { echo "$name: build failed:" >&2; tail -20 "$work/$name.log" >&2; exit 1; }
  end="$(date +%s.%N)"
  local crates
  crates="$(grep -c '^ *Compiling ' "$work/$name.log" || true)"
  read -r user sys < "$work/$name.time"
  printf '%s\t%.0f\t%.0f\t%s\n' "$name" "$(echo "$user + $sys" | bc)" "$(echo "$end - $start" | bc)" "$crates" >> "$work/results.tsv"
}

command -v bc >/dev/null || { echo "needs bc (apt-get install bc)" >&2; exit 2; }
[ -x /usr/bin/time ] || { echo "needs GNU time (apt-get install time)" >&2; exit 2; }
measure pingora-peer --manifest-path bench/pingora-peer/Cargo.toml --target-dir "$work/t-pingora"
measure flotilla-proxy -p flotilla-proxy --target-dir "$work/t-proxy"
pingora_size="$(stat -c %s "$work/t-pingora/release/pingora-peer")"
proxy_size="$(stat -c %s "$(ls "$work"/t-proxy/release/libflotilla_proxy.rlib)")"
echo
printf '%-16s %10s %10s %8s\n' build "CPU s" "wall s" crates
while IFS=$'\t' read -r name cpu wall crates; do
  printf '%-16s %10s %10s %8s\n' "$name" "$cpu" "$wall" "$crates"
done < "$work/results.tsv"
echo
echo "pingora-peer binary (stripped of debug info): $((pingora_size / 1024)) KiB"
echo "libflotilla_proxy.rlib: $((proxy_size / 1024)) KiB (a library; the whole flotilla binary is what a user installs)"
echo "machine: $(nproc) CPUs; load average $(cut -d' ' -f1-3 /proc/loadavg)"
