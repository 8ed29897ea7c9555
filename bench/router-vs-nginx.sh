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
# HAProxy (Debian's 2.6) is the second peer: the same two pools as backends with keep-alive and
# connection reuse, `use_backend` on the header, the same response stamp (HAPROXY=0 leaves it out).
# CONNECTIONS may list several counts ("32 256"); each scenario runs at each.
#
# Then, unless SESSIONS=0, the idle-session scenarios for each proxy: SESSIONS (10 000) idle
# WebSockets opened through it (bench/lib/ws_client.py), its memory per session (RSS before and
# after: the daemon process for flotilla, nginx's master and workers, HAProxy's process), the fresh
# throughput of other traffic while they are open, and the round-trip time of WebSocket messages
# through it against a direct connection to the backend.
#
# With PINGORA=1, another target joins each round: bench/pingora-peer, the same routing on
# Pingora 0.7 (built here, release, into target/pingora-peer), with as many threads as CPUs.
#
# Every figure is printed with its ratio to the better peer, with the CPU time each proxy's
# processes spent per request (user+system over the wrk run: on a shared machine this moves far
# less with other work than throughput does) and the load average of each round.
# BASELINE=<a bench_router binary> (say, one built from main) runs as "baseline" in the same
# rounds, with its own daemon and backends, for before/after figures from one run.
# SESSIONS is capped to what the descriptor limit allows (two descriptors per session in the proxy),
# and below the router's own connection cap for that limit, with room for the load run.
#
# Usage: bench/router-vs-nginx.sh
#   (env: DURATION=10 CONNECTIONS="32 256" THREADS=1 ROUNDS=2 HAPROXY=1 PINGORA=0 SESSIONS=10000
#    BASELINE= SYSCALLS=0)
# Needs nginx and wrk from Debian; installs them with apt-get when missing and run as root.
set -euo pipefail

DURATION="${DURATION:-10}"
CONNECTIONS="${CONNECTIONS:-32 256}"
THREADS="${THREADS:-1}"
ROUNDS="${ROUNDS:-2}"
PINGORA="${PINGORA:-0}"
HAPROXY="${HAPROXY:-1}"
SESSIONS="${SESSIONS:-10000}"
# Another bench_router binary (say, one built from main) to measure in the same rounds as
# "baseline", with its own daemon and backends: before/after figures from one run.
BASELINE="${BASELINE:-}"
# SYSCALLS=1: count each proxy's system calls per request during its load runs (perf stat).
SYSCALLS="${SYSCALLS:-0}"
# PROFILE=1: record the router's first fresh run with perf (call graphs; the harness is built
# with the `bench` profile, which keeps symbols) and print where its CPU time goes.
PROFILE="${PROFILE:-0}"
BUILD_PROFILE=release; [ "$PROFILE" = 1 ] && BUILD_PROFILE=bench
# Each idle session holds a descriptor in the client, two in the proxy and one in a backend.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
NOFILE="$(ulimit -n)"
# The proxy holds two descriptors per session (client and upstream): keep SESSIONS within the
# descriptor limit (a container's hard limit may be below 65536), with room for the load runs.
max_sessions=$(( (NOFILE - 2048) / 2 ))
# The router also caps its connections by the same limit (crates/flotilla-host/src/fdlimit.rs: a
# tenth kept back, an overflow of at most 128, two descriptors per connection) and answers 503
# past it: leave room under that cap for the load run's connections, or the "with them" figure
# measures refusals.
reserve=$(( NOFILE / 10 > 128 ? NOFILE / 10 : 128 ))
usable=$(( NOFILE - reserve ))
overflow=$(( usable / 16 < 128 ? usable / 16 : 128 ))
router_cap=$(( (usable - overflow) / 2 - 512 ))
if [ "$router_cap" -lt "$max_sessions" ]; then max_sessions="$router_cap"; fi
if [ "$SESSIONS" -gt "$max_sessions" ]; then
  echo "SESSIONS=$SESSIONS needs more than the descriptor limit ($NOFILE) allows: using $max_sessions" >&2
  SESSIONS="$max_sessions"
fi

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
if [ "$PINGORA" = 1 ]; then command -v cmake >/dev/null 2>&1 || need+=(cmake); fi
if [ "$HAPROXY" = 1 ]; then command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy); fi
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
HAPROXY_BIN="$(command -v haproxy || echo /usr/sbin/haproxy)"

echo "building flotilla and the example app ($BUILD_PROFILE)" >&2
# Two commands: `--example` would otherwise select only examples in every package named.
cargo build --profile "$BUILD_PROFILE" --quiet -p flotilla-host --example bench_router
cargo build --release --quiet -p flotilla-example-hello
case "$BUILD_PROFILE" in dev | test) profile_dir=debug ;; release | bench) profile_dir=release ;; *) profile_dir="$BUILD_PROFILE" ;; esac
HARNESS="$root/target/$profile_dir/examples/bench_router"
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
haproxy_pid=""
baseline_pid=""
cleanup() {
  if [ -n "$baseline_pid" ]; then kill "$baseline_pid" 2>/dev/null || true; wait "$baseline_pid" 2>/dev/null || true; fi
  if [ -n "$haproxy_pid" ]; then kill "$haproxy_pid" 2>/dev/null || true; wait "$haproxy_pid" 2>/dev/null || true; fi
  if [ -n "$pingora_pid" ]; then kill "$pingora_pid" 2>/dev/null || true; wait "$pingora_pid" 2>/dev/null || true; fi
  if [ -n "$nginx_pid" ]; then kill "$nginx_pid" 2>/dev/null || true; wait "$nginx_pid" 2>/dev/null || true; fi
  if [ -n "$harness_pid" ]; then kill "$harness_pid" 2>/dev/null || true; wait "$harness_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
ROUTER_PORT="$(free_port)"; ADMIN_PORT="$(free_port)"; BASE_PORT="$(free_port)"; BASE_ADMIN="$(free_port)"; NGINX_PORT="$(free_port)"; PINGORA_PORT="$(free_port)"; HAPROXY_PORT="$(free_port)"

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
BV1=""; BV2=""
if [ -n "$BASELINE" ]; then
  mkdir -p "$work/base-app"
  echo "benchmark app" > "$work/base-app/README"
  "$BASELINE" "$work/base-app" "$BASE_PORT" "$BASE_ADMIN" "cp $HELLO ./hello" "exec ./hello" > "$work/baseline.out" 2> "$work/baseline.err" &
  baseline_pid=$!
  for i in $(seq 600); do
    grep -q '^V2 ' "$work/baseline.out" && break
    if ! kill -0 "$baseline_pid" 2>/dev/null; then echo "the baseline harness failed:" >&2; cat "$work/baseline.err" >&2; exit 1; fi
    sleep 0.1
  done
  BV1="$(awk '$1=="V1"{print $2}' "$work/baseline.out")"
  BV2="$(awk '$1=="V2"{print $2}' "$work/baseline.out")"
fi
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
worker_rlimit_nofile 65536;
events { worker_connections 32768; }
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
  map \$http_upgrade \$connection_upgrade {
    default upgrade;
    "" "";
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
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection \$connection_upgrade;
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
if [ "$HAPROXY" = 1 ]; then
  haproxy_servers() { local n=0; for a in $1; do echo "  server s$n $a"; n=$((n + 1)); done; }
  cat > "$work/haproxy.cfg" <<HAPROXYCFG
global
  # HAProxy refuses to start when maxconn needs more descriptors than the limit (2 per connection).
  maxconn $(( (NOFILE - 256) / 2 ))
  nbthread $(nproc)
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout tunnel 10m
  option http-keep-alive
  option forwardfor
  http-reuse always
frontend routed
  bind 127.0.0.1:$HAPROXY_PORT
  http-request set-header X-Forwarded-Proto http
  use_backend v1 if { req.hdr(x-flotilla-deployment) -m str $V1 }
  default_backend v2
backend v1
  balance roundrobin
  http-response set-header X-Flotilla-Deployment $V1
$(haproxy_servers "$V1_ADDRS")
backend v2
  balance roundrobin
  http-response set-header X-Flotilla-Deployment $V2
$(haproxy_servers "$V2_ADDRS")
HAPROXYCFG
  "$HAPROXY_BIN" -f "$work/haproxy.cfg" -db > "$work/haproxy.log" 2>&1 &
  haproxy_pid=$!
  targets+=("$HAPROXY_PORT")
fi
if [ "$PINGORA" = 1 ]; then
  "$PINGORA_BIN" "127.0.0.1:$PINGORA_PORT" "$(nproc)" "$V2" "$(echo $V2_ADDRS | tr ' ' ',')" "$V1" "$(echo $V1_ADDRS | tr ' ' ',')" > "$work/pingora.log" 2>&1 &
  pingora_pid=$!
  targets+=("$PINGORA_PORT")
fi

# All must route like each other before anything is measured.
sleep 0.5
log_of() { # port: the log of the process behind it
  case "$1" in
    "$NGINX_PORT") cat "$work/nginx-error.log" ;;
    "$HAPROXY_PORT") cat "$work/haproxy.log" ;;
    "$PINGORA_PORT") cat "$work/pingora.log" ;;
    "$BASE_PORT") cat "$work/baseline.err" ;;
    *) cat "$work/harness.err" ;;
  esac
}
[ -n "$BASELINE" ] && targets+=("$BASE_PORT")
for target in "${targets[@]}"; do
  want1="$V1"; want2="$V2"
  [ "$target" = "$BASE_PORT" ] && { want1="$BV1"; want2="$BV2"; }
  up=0
  for i in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$target/" && { up=1; break; }; sleep 0.1; done
  if [ "$up" != 1 ]; then
    echo "nothing answers on port $target; its log:" >&2
    log_of "$target" >&2
    exit 1
  fi
  fresh="$(curl -s -D - -o /dev/null "http://127.0.0.1:$target/" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-flotilla-deployment"{print $2}')"
  pinned="$(curl -s -D - -o /dev/null -H "X-Flotilla-Deployment: $want1" "http://127.0.0.1:$target/" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-flotilla-deployment"{print $2}')"
  if [ "$fresh" != "$want2" ] || [ "$pinned" != "$want1" ]; then
    echo "port $target routes wrongly: fresh=$fresh (want $want2) pinned=$pinned (want $want1)" >&2
    exit 1
  fi
done

results="$work/results.tsv"
: > "$results"
run() { # name scenario url [header]   (uses $conns)
  local name="$1" scenario="$2@$conns" url="$3" header="${4:-}"
  local args=(-t"$THREADS" -c"$conns" -d"${DURATION}s" --latency)
  [ -n "$header" ] && args+=(-H "$header")
  local before after syscalls="" switches=""
  before="$(cpu_ticks "$name")"
  local pids; pids="$(proxy_pids "$name")"
  if [ "$PROFILE" = 1 ] && [ "$name" = flotilla ] && [ ! -e "$work/perf.data" ]; then
    perf record -q -g -o "$work/perf.data" -p "$harness_pid" -- \
      wrk "${args[@]}" "$url" > "$work/wrk.out" 2>&1
    {
      echo "by object:"
      perf report -q -i "$work/perf.data" --no-children --sort dso -g none 2>/dev/null \
        | sed 's/[[:space:]-]*$//' | grep -v '^$' | head -8
      echo "the router's own symbols (self time >= 0.4 % of all):"
      perf report -q -i "$work/perf.data" --no-children --dsos bench_router --sort symbol \
        --percent-limit 0.4 -g none 2>/dev/null | sed 's/[[:space:]-]*$//' | grep -v '^$' | head -40
    } > "$work/profile.txt"
  elif [ "$SYSCALLS" = 1 ] && [ -n "$pids" ]; then
    # Every system call the proxy's threads make during the run (perf's raw_syscalls tracepoint).
    perf stat -e raw_syscalls:sys_enter,context-switches -x, -o "$work/perf.out" \
      -p "${pids// /,}" -- wrk "${args[@]}" "$url" > "$work/wrk.out" 2>&1
    syscalls="$(awk -F, '/raw_syscalls/{print $1}' "$work/perf.out")"
    switches="$(awk -F, '/context-switches/{print $1}' "$work/perf.out")"
  else
    wrk "${args[@]}" "$url" > "$work/wrk.out" 2>&1
  fi
  after="$(cpu_ticks "$name")"
  python3 "$root/bench/lib/wrk_row.py" "$name" "$scenario" "$work/wrk.out" >> "$results"
  [ -n "$before" ] && echo -e "$name\t$scenario\t$((after - before))\t$(awk '/requests in/{print $1}' "$work/wrk.out")\t$syscalls\t$switches" >> "$cpu"
  return 0
}
# The processes of a proxy: nginx's master and workers, the others' one process.
proxy_pids() { # name
  case "$1" in
    flotilla) echo "$harness_pid" ;;
    baseline) echo "$baseline_pid" ;;
    nginx) echo "$nginx_pid" $(pgrep -P "$nginx_pid") ;;
    haproxy) echo "$haproxy_pid" ;;
    pingora) echo "$pingora_pid" ;;
  esac
}
# The CPU time (user + system, in clock ticks) the proxy's processes have used: a figure that
# other work on the machine disturbs far less than throughput, since it counts only the proxy's
# own work per request.
cpu_ticks() { # name
  local pids=() p total=0
  read -r -a pids <<< "$(proxy_pids "$1")"
  [ "${#pids[@]}" -gt 0 ] || return 0
  for p in "${pids[@]}"; do
    [ -r "/proc/$p/stat" ] || continue
    total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$total"
}
cpu="$work/cpu.tsv"
: > "$cpu"

BACKEND="$(echo "$V2_ADDRS" | awk '{print $1}')"
echo "router :$ROUTER_PORT, nginx :$NGINX_PORT, backends v1 [$V1_ADDRS] v2 [$V2_ADDRS]" >&2
echo "wrk: $THREADS thread(s), $CONNECTIONS connections, ${DURATION}s per run, $ROUNDS rounds, $(nproc) CPUs" >&2
wrk -t1 -c4 -d2s "http://127.0.0.1:$ROUTER_PORT/" >/dev/null 2>&1 || true
wrk -t1 -c4 -d2s "http://127.0.0.1:$NGINX_PORT/" >/dev/null 2>&1 || true
[ "$PINGORA" = 1 ] && { wrk -t1 -c4 -d2s "http://127.0.0.1:$PINGORA_PORT/" >/dev/null 2>&1 || true; }
[ "$HAPROXY" = 1 ] && { wrk -t1 -c4 -d2s "http://127.0.0.1:$HAPROXY_PORT/" >/dev/null 2>&1 || true; }
[ -n "$BASELINE" ] && { wrk -t1 -c4 -d2s "http://127.0.0.1:$BASE_PORT/" >/dev/null 2>&1 || true; }
for round in $(seq "$ROUNDS"); do
  echo "round $round/$ROUNDS (load average $(cut -d' ' -f1-3 /proc/loadavg))" >&2
  for conns in $CONNECTIONS; do
    for scenario in fresh pinned; do
      header=""
      [ "$scenario" = pinned ] && header="X-Flotilla-Deployment: $V1"
      run flotilla "$scenario" "http://127.0.0.1:$ROUTER_PORT/" "$header"
      run nginx "$scenario" "http://127.0.0.1:$NGINX_PORT/" "$header"
      [ "$HAPROXY" = 1 ] && run haproxy "$scenario" "http://127.0.0.1:$HAPROXY_PORT/" "$header"
      [ "$PINGORA" = 1 ] && run pingora "$scenario" "http://127.0.0.1:$PINGORA_PORT/" "$header"
      if [ -n "$BASELINE" ]; then
        bheader=""
        [ "$scenario" = pinned ] && bheader="X-Flotilla-Deployment: $BV1"
        run baseline "$scenario" "http://127.0.0.1:$BASE_PORT/" "$bheader"
      fi
    done
  done
done
conns="${CONNECTIONS%% *}"
run backend direct "http://$BACKEND/"
echo "load average after the rounds: $(cut -d' ' -f1-3 /proc/loadavg) (2 CPUs: above ~1.5, other work competed)" >&2

rss_kib() { # pid [with its children]
  local total=0 p
  for p in "$1" $( [ "${2:-}" = children ] && pgrep -P "$1" ); do
    total=$((total + $(awk '/^VmRSS:/{print $2}' "/proc/$p/status" 2>/dev/null || echo 0)))
  done
  echo "$total"
}
sessions_tsv="$work/sessions.tsv"
: > "$sessions_tsv"
if [ "$SESSIONS" -gt 0 ]; then
  conns="${CONNECTIONS%% *}"
  session_targets=("flotilla:$ROUTER_PORT:$harness_pid:self" "nginx:$NGINX_PORT:$nginx_pid:children")
  [ "$HAPROXY" = 1 ] && session_targets+=("haproxy:$HAPROXY_PORT:$haproxy_pid:self")
  for spec in "${session_targets[@]}"; do
    IFS=: read -r name port pid scope <<<"$spec"
    echo "$name: opening $SESSIONS idle WebSockets" >&2
    before="$(rss_kib "$pid" "$scope")"
    mkfifo "$work/hold-$name"
    python3 "$root/bench/lib/ws_client.py" hold "127.0.0.1:$port" /ws "$SESSIONS" < "$work/hold-$name" > "$work/hold-$name.out" 2>"$work/hold-$name.err" &
    hold_pid=$!
    exec 9>"$work/hold-$name"
    for _ in $(seq 1200); do grep -q '^open' "$work/hold-$name.out" && break; sleep 0.1; done
    opened="$(awk '$1=="open"{print $2}' "$work/hold-$name.out")"
    sleep 1
    after="$(rss_kib "$pid" "$scope")"
    run "$name" "fresh+ws" "http://127.0.0.1:$port/"
    exec 9>&-
    wait "$hold_pid" 2>/dev/null || true
    rtt="$(python3 "$root/bench/lib/ws_client.py" rtt "127.0.0.1:$port" /ws 2000)"
    echo -e "$name\t${opened:-0}\t$before\t$after\t$(awk '{print $3"\t"$5}' <<<"$rtt")" >> "$sessions_tsv"
  done
  rtt="$(python3 "$root/bench/lib/ws_client.py" rtt "$BACKEND" /ws 2000)"
  echo -e "direct\t0\t0\t0\t$(awk '{print $3"\t"$5}' <<<"$rtt")" >> "$sessions_tsv"
fi

python3 - "$results" "$sessions_tsv" "${CONNECTIONS%% *}" "$cpu" "$(getconf CLK_TCK)" <<'PY'
import sys, statistics
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
agg = {}
for name, scenario, rps, p50, p99, bad, sock in rows:
    a = agg.setdefault((name, scenario), {"rps": [], "p50": [], "p99": [], "bad": 0, "sock": []})
    a["rps"].append(float(rps)); a["p50"].append(float(p50)); a["p99"].append(float(p99))
    a["bad"] += int(bad)
    if sock: a["sock"].append(sock)
med = lambda a, k: statistics.median(a[k])
def best_peer(scenario, key, pick):
    vals = [med(agg[(n, scenario)], key) for n in ("nginx", "haproxy", "pingora") if (n, scenario) in agg and key in agg[(n, scenario)]]
    return pick(vals) if vals else None
cpu, calls, switches = {}, {}, {}
for line in open(sys.argv[4]):
    name, scenario, ticks, requests, syscalls, cs = (line.rstrip("\n").split("\t") + ["", "", "", ""])[:6]
    if cs.isdigit() and requests and int(requests) > 0:
        switches.setdefault((name, scenario), []).append(int(cs) / int(requests))
    if ticks and requests and int(requests) > 0:
        cpu.setdefault((name, scenario), []).append(int(ticks) * 1e6 / int(sys.argv[5]) / int(requests))
    if syscalls.isdigit() and requests and int(requests) > 0:
        calls.setdefault((name, scenario), []).append(int(syscalls) / int(requests))
for key, values in cpu.items():
    if key in agg:
        agg[key]["cpu"] = values
for key, values in calls.items():
    if key in agg:
        agg[key]["calls"] = values
for key, values in switches.items():
    if key in agg:
        agg[key]["switches"] = values
# Each figure with its ratio to the better peer (nginx, HAProxy, Pingora) in the same scenario.
print(f"{'target':<10}{'scenario':<12}{'req/s':>10}{'/best':>7}{'p50 ms':>9}{'/best':>7}{'p99 ms':>9}{'/best':>7}{'CPU us/req':>11}{'/best':>7}"
      + (f"{'calls/req':>10}{'cs/req':>10}" if calls else "") + "  errors")
ratio = lambda v, b: f"{v / b:.2f}x" if b else "-"
for (name, scenario), a in sorted(agg.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    err = f"{a['bad']} non-2xx" + (f"; socket {a['sock']}" if a["sock"] else "")
    rps, p50, p99 = med(a, "rps"), med(a, "p50"), med(a, "p99")
    print(f"{name:<10}{scenario:<12}{rps:>10.0f}{ratio(rps, best_peer(scenario, 'rps', max)):>7}"
          f"{p50:>9.3f}{ratio(p50, best_peer(scenario, 'p50', min)):>7}"
          f"{p99:>9.3f}{ratio(p99, best_peer(scenario, 'p99', min)):>7}"
          + (f"{med(a, 'cpu'):>11.1f}{ratio(med(a, 'cpu'), best_peer(scenario, 'cpu', min)):>7}" if "cpu" in a else f"{'-':>11}{'-':>7}")
          + (f"{med(a, 'calls'):>10.2f}" if "calls" in a else "")
          + (f"{med(a, 'switches'):>10.3f}" if "switches" in a else "")
          + f"  {err}")
print()
scenarios = sorted({s for (_, s) in agg if "@" in s}, key=lambda s: (s.split("@")[0], int(s.split("@")[1])))
for scenario in scenarios:
    f = agg.get(("flotilla", scenario))
    peers = {n: agg[(n, scenario)] for n in ("nginx", "haproxy", "pingora") if (n, scenario) in agg}
    if not f or not peers:
        continue
    best_rps = max(peers, key=lambda n: med(peers[n], "rps"))
    best_p99 = min(peers, key=lambda n: med(peers[n], "p99"))
    parts = [f"{n} {med(f, 'rps') / med(p, 'rps'):.2f}x" for n, p in peers.items()]
    print(f"{scenario}: flotilla throughput vs " + ", ".join(parts)
          + f"; vs the better peer ({best_rps}) {med(f, 'rps') / med(peers[best_rps], 'rps'):.2f}x;"
          + f" p99 vs the better peer ({best_p99}) {med(f, 'p99') / med(peers[best_p99], 'p99'):.2f}x")
    b = agg.get(("baseline", scenario))
    if b:
        cpu_ratio = f", CPU per request {med(f, 'cpu') / med(b, 'cpu'):.2f}x" if "cpu" in f and "cpu" in b else ""
        print(f"{scenario}: flotilla vs baseline: throughput {med(f, 'rps') / med(b, 'rps'):.2f}x, p99 {med(f, 'p99') / med(b, 'p99'):.2f}x{cpu_ratio};"
              + f" baseline vs the better peer {med(b, 'rps') / med(peers[best_rps], 'rps'):.2f}x")
print("(medians over rounds; throughput > 1x and latency < 1x favour flotilla)")
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[2]) if l.strip()]
if rows:
    print()
    conns = sys.argv[3]
    print(f"{'target':<10}{'sessions':>9}{'KiB/session':>13}{'fresh req/s':>13}{'with them':>11}{'ws rtt p50':>12}{'p99 ms':>8}")
    direct = next((r for r in rows if r[0] == "direct"), None)
    per = {}
    for name, opened, before, after, p50, p99 in rows:
        if name == "direct":
            continue
        opened = int(opened)
        kib = (int(after) - int(before)) / opened if opened else float("nan")
        per[name] = kib
        base = agg.get((name, f"fresh@{conns}"))
        loaded = agg.get((name, "fresh+ws@" + conns))
        b = statistics.median(base["rps"]) if base else float("nan")
        w = statistics.median(loaded["rps"]) if loaded else float("nan")
        print(f"{name:<10}{opened:>9}{kib:>13.1f}{b:>13.0f}{w:>11.0f}{float(p50):>12.3f}{float(p99):>8.3f}")
    if direct:
        print(f"{'direct':<10}{'':>9}{'':>13}{'':>13}{'':>11}{float(direct[4]):>12.3f}{float(direct[5]):>8.3f}")
    peers = {n: k for n, k in per.items() if n != "flotilla"}
    if "flotilla" in per and peers:
        best = min(peers, key=peers.get)
        print(f"idle session memory: flotilla {per['flotilla']:.1f} KiB vs {best} {peers[best]:.1f} KiB ({per['flotilla'] / peers[best]:.2f}x)")
        f = next(r for r in rows if r[0] == "flotilla")
        if direct:
            print(f"WebSocket round trip: flotilla p50 {float(f[4]) / float(direct[4]):.2f}x direct")
PY
if [ -s "$work/profile.txt" ]; then
  echo
  echo "where the router's CPU time went in its first fresh run (perf record -g, self time):"
  cat "$work/profile.txt"
fi
