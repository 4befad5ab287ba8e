#!/bin/sh
# The example app (examples/openresty) under load, with one nginx worker: wrk against the
# route that makes an authorize URL (/connect: per call the SDK signs a PS512 JWT, POSTs it
# to the sandbox's oauth/authorize and verifies the PS512 token that comes back) and against
# a route that does no SDK work (/, the start page), in the same run. Reports req/s, latency,
# the nginx worker's CPU time per request, and from them the SDK's cost per call. Not a test.
#
#   sh bench/openresty.sh                      # 10 s per route, 16 connections
#   DURATION=30s CONNECTIONS=16 sh bench/openresty.sh
#   DIGIME_TRANSPORT=curl sh bench/openresty.sh   # force the blocking libcurl transport
#
# Needs `make` (the LuaJIT core) and wrk (scripts/deps.sh installs it).
set -eu
cd "$(dirname "$0")/.."
root=$(pwd)
duration=${DURATION:-10s}
conns=${CONNECTIONS:-16}
command -v wrk >/dev/null || { echo "wrk is not installed (sh scripts/deps.sh)"; exit 1; }
[ -f build/luajit/digime/core.so ] || make -s all

dir=$(mktemp -d /tmp/digime-bench-openresty.XXXXXX)
sandbox_pid=""; nginx_pid=""
cleanup() {
  [ -n "$nginx_pid" ] && kill -QUIT "$nginx_pid" 2>/dev/null && wait "$nginx_pid" 2>/dev/null
  [ -n "$sandbox_pid" ] && kill "$sandbox_pid" 2>/dev/null && wait "$sandbox_pid" 2>/dev/null
  rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bin/digime-sandbox > "$dir/sandbox.out" 2> "$dir/sandbox.err" &
sandbox_pid=$!
i=0
until [ -s "$dir/sandbox.out" ]; do
  i=$((i + 1))
  if [ $i -gt 100 ] || ! kill -0 "$sandbox_pid" 2>/dev/null; then
    echo "the sandbox did not start:"; cat "$dir/sandbox.err"; exit 1
  fi
  sleep 0.1
done
line=$(head -1 "$dir/sandbox.out")
url() { printf '%s' "$line" | sed -e "s/.*\"$1\":\"\([^\"]*\)\".*/\1/" -e 's#\\/#/#g'; }

# nginx with the example's own nginx.conf (worker_processes 1), a free port.
port=$(lua5.4 -e 'local s = require("socket").bind("127.0.0.1", 0); local _, p = s:getsockname(); print(p); s:close()')
mkdir -p "$dir/conf" "$dir/logs" "$dir/tmp"
sed -e "s#@ROOT@#$root#g" -e "s#@PREFIX@#$dir#g" -e "s#@PORT@#$port#g" -e "s#@RESOLVER@#127.0.0.1#g" \
    -e "s#^\( *access_log\) .*#\1 off;#" examples/openresty/nginx.conf > "$dir/conf/nginx.conf"
grep -q '^worker_processes 1;' "$dir/conf/nginx.conf" || { echo "nginx.conf: expected worker_processes 1"; exit 1; }
app="http://127.0.0.1:$port"
export DIGIME_APP_URL="$app" DIGIME_BASE_URL="$(url base_url)" DIGIME_ONBOARD_URL="$(url onboard_url)"
nginx -p "$dir" -c conf/nginx.conf -e "$dir/logs/error.log" -g 'daemon off;' > "$dir/logs/stdout" 2>&1 &
nginx_pid=$!
i=0
until curl -s -o /dev/null "$app/"; do
  i=$((i + 1))
  if [ $i -gt 100 ] || ! kill -0 "$nginx_pid" 2>/dev/null; then
    echo "nginx did not start:"; cat "$dir/logs/error.log" "$dir/logs/stdout"; nginx_pid=""; exit 1
  fi
  sleep 0.1
done
worker=$(pgrep -P "$nginx_pid" | head -1)
status=$(curl -s -o /dev/null -w '%{http_code}' "$app/connect")
[ "$status" = 302 ] || { echo "/connect answered $status:"; tail -20 "$dir/logs/error.log"; exit 1; }

ticks=$(getconf CLK_TCK)
cpu_ms() {  # utime + stime of a process, in ms
  awk -v t="$ticks" '{ print ($14 + $15) * 1000 / t }' "/proc/$1/stat"
}

echo "== DURATION=$duration CONNECTIONS=$conns${DIGIME_TRANSPORT:+ DIGIME_TRANSPORT=$DIGIME_TRANSPORT} sh bench/openresty.sh"
echo "== $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "== $(nginx -v 2>&1), $(wrk --version 2>&1 | head -1 | cut -d' ' -f1-2), one worker; transport: ${DIGIME_TRANSPORT:-automatic (ngx cosockets)}"
echo "== the sandbox (lua5.4, one process) shares the machine's cores with nginx and wrk"

# A short warm-up of both routes (JWKS fetch, pools), then the measured runs.
wrk -t1 -c2 -d2s "$app/connect" > /dev/null
wrk -t1 -c2 -d2s "$app/" > /dev/null

run() {  # name, path
  c0=$(cpu_ms "$worker"); s0=$(cpu_ms "$sandbox_pid")
  echo "\$ wrk -t1 -c$conns -d$duration --latency $app$2"
  wrk -t1 -c"$conns" -d"$duration" --latency "$app$2" > "$dir/$1.wrk"
  c1=$(cpu_ms "$worker"); s1=$(cpu_ms "$sandbox_pid")
  grep -E 'Requests/sec|requests in|Latency  |50%|99%|Non-2xx|Socket errors' "$dir/$1.wrk" | sed 's/^/   /'
  n=$(awk '/requests in/ { print $1 }' "$dir/$1.wrk")
  rps=$(awk '/Requests\/sec/ { print $2 }' "$dir/$1.wrk")
  awk -v n="$n" -v c0="$c0" -v c1="$c1" -v s0="$s0" -v s1="$s1" -v name="$1" -v rps="$rps" 'BEGIN {
    printf "   %s: %.1f req/s; nginx worker CPU %.3f ms/request; sandbox CPU %.3f ms/request\n",
      name, rps, (c1 - c0) / n, (s1 - s0) / n }'
  eval "${1}_rps=$rps; ${1}_cpu=\$(awk -v n=$n -v a=$c0 -v b=$c1 'BEGIN { print (b - a) / n }')"
}

echo "== the authorize-URL route (SDK: sign + POST oauth/authorize + verify the answer)"
run connect /connect
echo "== the start page (no SDK work)"
run home /

# Per call: the worker's CPU time (what an SDK call costs nginx, whatever the transport), and
# the difference of the routes' 1/(req/s) (with a blocking transport the worker also sits
# idle waiting for the sandbox; with cosockets it serves other requests meanwhile).
awk -v rc="$connect_rps" -v rh="$home_rps" -v cc="$connect_cpu" -v ch="$home_cpu" 'BEGIN {
  printf "== SDK cost per call: %.3f ms of nginx worker CPU (%.3f - %.3f); by throughput %.3f ms (1/%.1f - 1/%.1f req/s)\n",
    cc - ch, cc, ch, 1000 / rc - 1000 / rh, rc, rh }'
errors=$(grep -c '\[error\]\|\[alert\]' "$dir/logs/error.log" || true)
echo "== nginx error log: $errors error lines"
[ "$errors" = 0 ] || tail -5 "$dir/logs/error.log"
