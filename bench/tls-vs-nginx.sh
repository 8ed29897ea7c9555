#!/usr/bin/env bash
# TLS termination: the flotilla host router's HTTPS listener against nginx doing the same TLS
# termination (same certificate, same ECDSA P-256 key) and the same header-based routing to the
# same backend, in the same run, on 127.0.0.1 only: HTTP/1.1 over TLS driven by wrk, HTTP/2 over
# TLS driven by h2load (Debian's nghttp2-client).
#
# Setup: the host daemon (crates/flotilla-host/examples/bench_router.rs: the daemon in one process,
# without the CLI, so this needs no release build of the AWS SDK) deploys examples/hello twice
# through the engine over its socket (release builds, 2 instances per version), so the router has
# an active version (fresh requests) and a draining one (pinned by the affinity header). nginx gets the same two versions as two keepalive upstream pools, chosen by
# `map $http_x_flotilla_deployment`, and stamps the same response header. wrk then drives both
# proxies over TLS, alternating, for ROUNDS rounds of four scenarios:
#   h1-fresh  - HTTP/1.1 (wrk, keep-alive), no affinity header: the active version
#   h1-pinned - HTTP/1.1, X-Flotilla-Deployment: <older id>: the draining version
#   h2-fresh  - HTTP/2 (h2load, STREAMS concurrent streams per connection), no affinity header
#   h2-pinned - HTTP/2, pinned to the older version
# It prints requests/s per target and scenario (and wrk's p50/p99 for HTTP/1.1) and the
# flotilla/nginx throughput ratios (> 1 means flotilla is ahead). Connections are opened once
# per run, so this measures TLS record processing and proxying, not handshakes.
#
# Usage: bench/tls-vs-nginx.sh   (env: DURATION=10 CONNECTIONS=32 THREADS=1 ROUNDS=2 STREAMS=10)
# Needs nginx, wrk, h2load and openssl from Debian; installs them with apt-get when missing and
# run as root.
set -euo pipefail

DURATION="${DURATION:-10}"
CONNECTIONS="${CONNECTIONS:-32}"
THREADS="${THREADS:-1}"
ROUNDS="${ROUNDS:-2}"
STREAMS="${STREAMS:-10}"

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "missing ${need[*]}: install them (apt-get install ${need[*]}) or run as root" >&2
    exit 2
  fi
  echo "installing ${need[*]} from Debian" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null; }
fi
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"

echo "building flotilla and the example app (release)" >&2
# Two commands: `--example` would otherwise select only examples in every package named.
cargo build --release --quiet -p flotilla-host --example bench_router
cargo build --release --quiet -p flotilla-example-hello
HARNESS="$root/target/release/examples/bench_router"
HELLO="$root/target/release/flotilla-example-hello"

work="$(mktemp -d)"
nginx_pid=""
harness_pid=""
cleanup() {
  if [ -n "$nginx_pid" ]; then kill "$nginx_pid" 2>/dev/null || true; wait "$nginx_pid" 2>/dev/null || true; fi
  if [ -n "$harness_pid" ]; then kill "$harness_pid" 2>/dev/null || true; wait "$harness_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
ROUTER_PORT="$(free_port)"; ADMIN_PORT="$(free_port)"; NGINX_PORT="$(free_port)"
HTTPS_PORT="$(free_port)"
NAME=bench.flotilla.test
# One certificate for both: ECDSA P-256, as ACME clients (and flotilla's) usually get.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj "/CN=$NAME" -addext "subjectAltName=DNS:$NAME" \
  -keyout "$work/key.pem" -out "$work/cert.pem" >/dev/null 2>&1

mkdir -p "$work/app"
echo "benchmark app" > "$work/app/README"
BENCH_HTTPS_PORT="$HTTPS_PORT" BENCH_TLS_CERT="$work/cert.pem" BENCH_TLS_KEY="$work/key.pem" \
  "$HARNESS" "$work/app" "$ROUTER_PORT" "$ADMIN_PORT" "cp $HELLO ./hello" "exec ./hello" > "$work/harness.out" 2> "$work/harness.err" &
harness_pid=$!
for i in $(seq 600); do
  grep -q '^V2 ' "$work/harness.out" && break
  if ! kill -0 "$harness_pid" 2>/dev/null; then echo "the router harness failed:" >&2; cat "$work/harness.err" >&2; exit 1; fi
  sleep 0.1
done
V1="$(awk '$1=="V1"{print $2}' "$work/harness.out")"
V2="$(awk '$1=="V2"{print $2}' "$work/harness.out")"
[ -n "$V1" ] && [ -n "$V2" ] || { echo "the router harness did not deploy both versions:" >&2; cat "$work/harness.err" >&2; exit 1; }
cd "$root"
ports_of() {
  curl -s "http://127.0.0.1:$ADMIN_PORT/status.json" | python3 -c '
import json, sys
doc = json.load(sys.stdin)
print(" ".join(i["addr"] for i in doc["instances"] if i["deployment_id"] == sys.argv[1] and i["healthy"]))' "$1"
}
V1_ADDRS="$(ports_of "$V1")"; V2_ADDRS="$(ports_of "$V2")"
servers() { for a in $1; do echo "    server $a;"; done; }

cat > "$work/nginx.conf" <<NGINX
worker_processes auto;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/nginx-body;
  proxy_temp_path $work/nginx-proxy;
  fastcgi_temp_path $work/nginx-fastcgi;
  uwsgi_temp_path $work/nginx-uwsgi;
  scgi_temp_path $work/nginx-scgi;
  upstream v1 {
$(servers "$V1_ADDRS")
    keepalive 256;
  }
  upstream v2 {
$(servers "$V2_ADDRS")
    keepalive 256;
  }
  map \$http_x_flotilla_deployment \$pool {
    default v2;
    "$V1" v1;
    "$V2" v2;
  }
  map \$pool \$deployment {
    v1 "$V1";
    v2 "$V2";
  }
  server {
    listen 127.0.0.1:$NGINX_PORT ssl http2;
    ssl_certificate $work/cert.pem;
    ssl_certificate_key $work/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    http2_max_concurrent_streams 256;
    keepalive_requests 1000000;
    location / {
      proxy_pass http://\$pool;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Forwarded-Host \$host;
      proxy_buffering off;
      add_header X-Flotilla-Deployment \$deployment always;
    }
  }
}
NGINX
"$NGINX" -p "$work" -c "$work/nginx.conf" -g 'daemon off;' 2>>"$work/nginx-error.log" &
nginx_pid=$!

# Both must terminate TLS with the same certificate, speak HTTP/2 and route like each other
# before anything is measured.
stamp() { # port http-flag [header]
  local args=(-s --cacert "$work/cert.pem" --resolve "$NAME:$1:127.0.0.1" "$2" -D - -o /dev/null)
  [ -n "${3:-}" ] && args+=(-H "$3")
  curl "${args[@]}" "https://$NAME:$1/" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-flotilla-deployment"{print $2}'
}
for target in "$HTTPS_PORT" "$NGINX_PORT"; do
  for i in $(seq 50); do curl -s -o /dev/null --cacert "$work/cert.pem" --resolve "$NAME:$target:127.0.0.1" "https://$NAME:$target/" && break; sleep 0.1; done
  version="$(curl -s --http2 -o /dev/null -w '%{http_version}' --cacert "$work/cert.pem" --resolve "$NAME:$target:127.0.0.1" "https://$NAME:$target/")"
  for flag in --http1.1 --http2; do
    fresh="$(stamp "$target" "$flag")"
    pinned="$(stamp "$target" "$flag" "X-Flotilla-Deployment: $V1")"
    if [ "$fresh" != "$V2" ] || [ "$pinned" != "$V1" ] || [ "$version" != 2 ]; then
      echo "port $target ($flag) routes wrongly or without HTTP/2: fresh=$fresh (want $V2) pinned=$pinned (want $V1) version=$version" >&2
      exit 1
    fi
  done
done

results="$work/results.tsv"
: > "$results"
run_wrk() { # name scenario url [header]
  local name="$1" scenario="$2" url="$3" header="${4:-}"
  local args=(-t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency)
  [ -n "$header" ] && args+=(-H "$header")
  wrk "${args[@]}" "$url" > "$work/wrk.out" 2>&1
  python3 "$root/bench/lib/wrk_row.py" "$name" "$scenario" "$work/wrk.out" >> "$results"
}
run_h2load() { # name scenario url [header]
  local name="$1" scenario="$2" url="$3" header="${4:-}"
  local args=(-t"$THREADS" -c"$CONNECTIONS" -m"$STREAMS" -D"$DURATION" --warm-up-time=1)
  [ -n "$header" ] && args+=(-H "$header")
  h2load "${args[@]}" "$url" > "$work/h2load.out" 2>&1 || true
  python3 - "$name" "$scenario" "$work/h2load.out" >> "$results" <<'PY'
import re, sys
name, scenario, path = sys.argv[1:4]
text = open(path).read()
m = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", text)
if not m:
    sys.exit(f"h2load gave no result for {name} {scenario}:\n{text}")
done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", text)
codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
bad = (int(done.group(3)) + int(done.group(4)) if done else 0) + (int(codes.group(3)) + int(codes.group(4)) if codes else 0)
proto = re.search(r"Application protocol: (\S+)", text)
if not proto or proto.group(1) != "h2":
    sys.exit(f"h2load did not negotiate h2 with {name}:\n{text}")
print(f"{name}\t{scenario}\t{float(m.group(1)):.0f}\t\t\t{bad}\t")
PY
}

echo "flotilla https :$HTTPS_PORT, nginx :$NGINX_PORT, backends v1 [$V1_ADDRS] v2 [$V2_ADDRS]" >&2
echo "wrk/h2load: $THREADS thread(s), $CONNECTIONS connections ($STREAMS streams each on h2), ${DURATION}s per run, $ROUNDS rounds, $(nproc) CPUs" >&2
FLOTILLA="https://127.0.0.1:$HTTPS_PORT/"
NGINX_URL="https://127.0.0.1:$NGINX_PORT/"
wrk -t1 -c4 -d2s "$FLOTILLA" >/dev/null 2>&1 || true
wrk -t1 -c4 -d2s "$NGINX_URL" >/dev/null 2>&1 || true
PIN="X-Flotilla-Deployment: $V1"
for round in $(seq "$ROUNDS"); do
  echo "round $round/$ROUNDS" >&2
  run_wrk flotilla h1-fresh "$FLOTILLA"
  run_wrk nginx h1-fresh "$NGINX_URL"
  run_wrk flotilla h1-pinned "$FLOTILLA" "$PIN"
  run_wrk nginx h1-pinned "$NGINX_URL" "$PIN"
  run_h2load flotilla h2-fresh "$FLOTILLA"
  run_h2load nginx h2-fresh "$NGINX_URL"
  run_h2load flotilla h2-pinned "$FLOTILLA" "$PIN"
  run_h2load nginx h2-pinned "$NGINX_URL" "$PIN"
done

python3 - "$results" <<'PY'
import sys, statistics
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
agg = {}
for name, scenario, rps, p50, p99, bad, sock in rows:
    a = agg.setdefault((name, scenario), {"rps": [], "p50": [], "p99": [], "bad": 0, "sock": []})
    a["rps"].append(float(rps))
    if p50: a["p50"].append(float(p50))
    if p99: a["p99"].append(float(p99))
    a["bad"] += int(bad)
    if sock: a["sock"].append(sock)
def med(v):
    return f"{statistics.median(v):.3f}" if v else "-"
print(f"{'target':<10}{'scenario':<11}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}  errors")
for (name, scenario), a in agg.items():
    err = f"{a['bad']} failed or non-2xx" + (f"; socket {a['sock']}" if a["sock"] else "")
    print(f"{name:<10}{scenario:<11}{statistics.median(a['rps']):>10.0f}{med(a['p50']):>9}{med(a['p99']):>9}  {err}")
print()
for scenario in ("h1-fresh", "h1-pinned", "h2-fresh", "h2-pinned"):
    f, n = agg.get(("flotilla", scenario)), agg.get(("nginx", scenario))
    if not f or not n:
        continue
    rps = statistics.median(f["rps"]) / statistics.median(n["rps"])
    line = f"{scenario}: flotilla/nginx throughput {rps:.2f}x"
    if f["p99"] and n["p99"]:
        line += f", p50 {statistics.median(f['p50']) / statistics.median(n['p50']):.2f}x"
        line += f", p99 {statistics.median(f['p99']) / statistics.median(n['p99']):.2f}x"
    print(line)
print("(medians over rounds; throughput > 1x and latency < 1x favour flotilla)")
PY
