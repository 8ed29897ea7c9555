#!/usr/bin/env bash
# The flotilla host router against nginx doing the same header-based routing to the same backend,
# driven by the same load generator (wrk) in the same run, on 127.0.0.1 only.
#
# Setup: the host daemon (crates/flotilla-host/examples/bench_router.rs: the daemon in one process,
# without the CLI, so this needs no release build of the AWS SDK) deploys examples/hello twice
# through the engine over its socket (release builds, 2 instances per version), so the router has
# an active version (fresh requests) and a draining one (pinned by the affinity header). nginx gets the same two versions as two keepalive upstream pools, chosen by
# `map $http_x_flotilla_deployment`, and stamps the same response header. wrk then drives both
# proxies, alternating, for ROUNDS rounds of two scenarios:
#   fresh  - no affinity header: the active version
#   pinned - X-Flotilla-Deployment: <older id>: the draining version
# and, for reference, the backend directly. It prints requests/s, p50 and p99 per target and the
# flotilla/nginx ratios (throughput ratio > 1 and p99 ratio < 1 mean flotilla is ahead).
#
# With PINGORA=1, a third target joins each round: bench/pingora-peer, the same routing on
# Pingora 0.7 (built here, release, into target/pingora-peer), with as many threads as CPUs.
#
# Usage: bench/router-vs-nginx.sh   (env: DURATION=10 CONNECTIONS=32 THREADS=1 ROUNDS=2 PINGORA=0)
# Needs nginx and wrk from Debian; installs them with apt-get when missing and run as root.
set -euo pipefail

DURATION="${DURATION:-10}"
CONNECTIONS="${CONNECTIONS:-32}"
THREADS="${THREADS:-1}"
ROUNDS="${ROUNDS:-2}"
PINGORA="${PINGORA:-0}"

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v python3 >/dev/null 2>&1 || need+=(python3)
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
if [ "$PINGORA" = 1 ]; then
  echo "building the Pingora peer (release)" >&2
  cargo build --release --quiet --manifest-path bench/pingora-peer/Cargo.toml --target-dir "$root/target/pingora-peer"
  PINGORA_BIN="$root/target/pingora-peer/release/pingora-peer"
fi
HELLO="$root/target/release/flotilla-example-hello"

work="$(mktemp -d)"
nginx_pid=""
harness_pid=""
pingora_pid=""
cleanup() {
  if [ -n "$pingora_pid" ]; then kill "$pingora_pid" 2>/dev/null || true; wait "$pingora_pid" 2>/dev/null || true; fi
  if [ -n "$nginx_pid" ]; then kill "$nginx_pid" 2>/dev/null || true; wait "$nginx_pid" 2>/dev/null || true; fi
  if [ -n "$harness_pid" ]; then kill "$harness_pid" 2>/dev/null || true; wait "$harness_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
ROUTER_PORT="$(free_port)"; ADMIN_PORT="$(free_port)"; NGINX_PORT="$(free_port)"; PINGORA_PORT="$(free_port)"

mkdir -p "$work/app"
echo "benchmark app" > "$work/app/README"
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
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://\$pool;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_buffering off;
      add_header X-Flotilla-Deployment \$deployment always;
    }
  }
}
NGINX
"$NGINX" -p "$work" -c "$work/nginx.conf" -g 'daemon off;' 2>>"$work/nginx-error.log" &
nginx_pid=$!

targets=("$ROUTER_PORT" "$NGINX_PORT")
if [ "$PINGORA" = 1 ]; then
  "$PINGORA_BIN" "127.0.0.1:$PINGORA_PORT" "$(nproc)" "$V2" "$(echo $V2_ADDRS | tr ' ' ',')" "$V1" "$(echo $V1_ADDRS | tr ' ' ',')" > "$work/pingora.log" 2>&1 &
  pingora_pid=$!
  targets+=("$PINGORA_PORT")
fi

# All must route like each other before anything is measured.
for target in "${targets[@]}"; do
  for i in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$target/" && break; sleep 0.1; done
  fresh="$(curl -s -D - -o /dev/null "http://127.0.0.1:$target/" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-flotilla-deployment"{print $2}')"
  pinned="$(curl -s -D - -o /dev/null -H "X-Flotilla-Deployment: $V1" "http://127.0.0.1:$target/" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-flotilla-deployment"{print $2}')"
  if [ "$fresh" != "$V2" ] || [ "$pinned" != "$V1" ]; then
    echo "port $target routes wrongly: fresh=$fresh (want $V2) pinned=$pinned (want $V1)" >&2
    exit 1
  fi
done

results="$work/results.tsv"
: > "$results"
run() { # name scenario url [header]
  local name="$1" scenario="$2" url="$3" header="${4:-}"
  local args=(-t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency)
  [ -n "$header" ] && args+=(-H "$header")
  wrk "${args[@]}" "$url" > "$work/wrk.out" 2>&1
  python3 - "$name" "$scenario" "$work/wrk.out" >> "$results" <<'PY'
import re, sys
name, scenario, path = sys.argv[1:4]
text = open(path).read()
def ms(v):
    m = re.match(r"([\d.]+)(us|ms|s)", v)
    n, u = float(m.group(1)), m.group(2)
    return n / 1000 if u == "us" else n * 1000 if u == "s" else n
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
p50 = ms(re.search(r"^\s+50%\s+(\S+)", text, re.M).group(1))
p99 = ms(re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1))
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
sock = re.search(r"Socket errors: (.*)", text)
bad = (int(errors.group(1)) if errors else 0)
print(f"{name}\t{scenario}\t{rps:.0f}\t{p50:.3f}\t{p99:.3f}\t{bad}\t{sock.group(1) if sock else ''}")
PY
}

BACKEND="$(echo "$V2_ADDRS" | awk '{print $1}')"
echo "router :$ROUTER_PORT, nginx :$NGINX_PORT, backends v1 [$V1_ADDRS] v2 [$V2_ADDRS]" >&2
echo "wrk: $THREADS thread(s), $CONNECTIONS connections, ${DURATION}s per run, $ROUNDS rounds, $(nproc) CPUs" >&2
wrk -t1 -c4 -d2s "http://127.0.0.1:$ROUTER_PORT/" >/dev/null 2>&1 || true
wrk -t1 -c4 -d2s "http://127.0.0.1:$NGINX_PORT/" >/dev/null 2>&1 || true
[ "$PINGORA" = 1 ] && { wrk -t1 -c4 -d2s "http://127.0.0.1:$PINGORA_PORT/" >/dev/null 2>&1 || true; }
for round in $(seq "$ROUNDS"); do
  echo "round $round/$ROUNDS" >&2
  run flotilla fresh "http://127.0.0.1:$ROUTER_PORT/"
  run nginx fresh "http://127.0.0.1:$NGINX_PORT/"
  run flotilla pinned "http://127.0.0.1:$ROUTER_PORT/" "X-Flotilla-Deployment: $V1"
  run nginx pinned "http://127.0.0.1:$NGINX_PORT/" "X-Flotilla-Deployment: $V1"
  if [ "$PINGORA" = 1 ]; then
    run pingora fresh "http://127.0.0.1:$PINGORA_PORT/"
    run pingora pinned "http://127.0.0.1:$PINGORA_PORT/" "X-Flotilla-Deployment: $V1"
  fi
done
run backend direct "http://$BACKEND/"

python3 - "$results" <<'PY'
import sys, statistics
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
agg = {}
for name, scenario, rps, p50, p99, bad, sock in rows:
    a = agg.setdefault((name, scenario), {"rps": [], "p50": [], "p99": [], "bad": 0, "sock": []})
    a["rps"].append(float(rps)); a["p50"].append(float(p50)); a["p99"].append(float(p99))
    a["bad"] += int(bad)
    if sock: a["sock"].append(sock)
print(f"{'target':<10}{'scenario':<9}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}  errors")
for (name, scenario), a in agg.items():
    err = f"{a['bad']} non-2xx" + (f"; socket {a['sock']}" if a["sock"] else "")
    print(f"{name:<10}{scenario:<9}{statistics.median(a['rps']):>10.0f}{statistics.median(a['p50']):>9.3f}{statistics.median(a['p99']):>9.3f}  {err}")
print()
for scenario in ("fresh", "pinned"):
    f, n = agg.get(("flotilla", scenario)), agg.get(("nginx", scenario))
    if not f or not n:
        continue
    rps = statistics.median(f["rps"]) / statistics.median(n["rps"])
    p50 = statistics.median(f["p50"]) / statistics.median(n["p50"])
    p99 = statistics.median(f["p99"]) / statistics.median(n["p99"])
    print(f"{scenario}: flotilla/nginx throughput {rps:.2f}x, p50 {p50:.2f}x, p99 {p99:.2f}x")
    g = agg.get(("pingora", scenario))
    if g:
        rps = statistics.median(f["rps"]) / statistics.median(g["rps"])
        p99 = statistics.median(f["p99"]) / statistics.median(g["p99"])
        print(f"{scenario}: flotilla/pingora throughput {rps:.2f}x, p99 {p99:.2f}x")
print("(medians over rounds; throughput > 1x and latency < 1x favour flotilla)")
PY
