#!/bin/sh
# make bench: the figures of bench/RESULTS.md (this machine, now). Not a test.
set -eu
cd "$(dirname "$0")/.."
eval "$(make -s env)"
echo "== $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "== PS512 through the core"
lua5.4 bench/ps512.lua 3
luajit bench/ps512.lua 3
echo "== openssl speed rsa2048 (PKCS#1 v1.5, same RSA private/public operations)"
openssl speed -seconds 3 rsa2048 2>/dev/null | tail -2
dir=$(mktemp -d)
bin/digime-sandbox > "$dir/out" 2> "$dir/err" &
pid=$!
trap 'kill $pid 2>/dev/null; rm -rf "$dir"; true' EXIT
until [ -s "$dir/out" ]; do sleep 0.1; done
line=$(head -1 "$dir/out")
url() { printf '%s' "$line" | sed -e "s/.*\"$1\":\"\([^\"]*\)\".*/\1/" -e 's#\\/#/#g'; }
echo "== authorization round trips against the sandbox (loopback)"
lua5.4 bench/auth_flow.lua "$(url base_url)" "$(url onboard_url)" "$(url control_url)" 30
luajit bench/auth_flow.lua "$(url base_url)" "$(url onboard_url)" "$(url control_url)" 30
kill $pid 2>/dev/null; wait $pid 2>/dev/null || true
for what in "library --generate 500:4k:mixed" "big --big-file 512m"; do
  set -- $what
  mode=$1; shift
  bin/digime-sandbox "$@" --sync-pace 0 > "$dir/out2" 2> "$dir/err2" &
  pid=$!
  until [ -s "$dir/out2" ]; do sleep 0.1; done
  line=$(head -1 "$dir/out2")
  echo "== reading against the sandbox ($*)"
  lua5.4 bench/read.lua "$(url base_url)" "$(url onboard_url)" "$mode"
  luajit bench/read.lua "$(url base_url)" "$(url onboard_url)" "$mode"
  kill $pid; wait $pid 2>/dev/null || true
  rm -f "$dir/out2"
done
echo "== inside nginx (one worker, ngx transport)"
lua5.4 bench/ngx.lua 30
echo "== streamed uploads (sandbox --storage-limit 1g)"
bin/digime-sandbox --storage-limit 1g > "$dir/out3" 2> "$dir/err3" &
pid=$!
until [ -s "$dir/out3" ]; do sleep 0.1; done
line=$(head -1 "$dir/out3")
for it in "lua5.4 storage 256 reader" "lua5.4 storage 256 file" "luajit storage 256 reader" "lua5.4 push 60 reader"; do
  set -- $it
  "$1" bench/upload.lua "$(url base_url)" "$(url onboard_url)" "$(url cloud_base_url)" "$2" "$3" "$4"
done
kill $pid; wait $pid 2>/dev/null || true
echo "== the OpenResty example app under wrk"
DURATION=10s sh bench/openresty.sh
echo "== many hosts sharing a Redis store (4 processes x 100 users, 60 s)"
lua5.4 bench/fleet.lua 4 100 60 5
