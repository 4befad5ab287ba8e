#!/bin/sh
# make demo: start a fresh sandbox, show its URLs, run the authorize, sync and reauthorize
# examples against it (Lua 5.4), stop it.
set -eu
cd "$(dirname "$0")/.."
eval "$(make -s env)"
dir=$(mktemp -d)
# A generated library of 240 files (4 KiB each, gzip, brotli and plain mixed) for the sync.
bin/digime-sandbox --generate 240:4k:mixed --sync-pace 0.3 > "$dir/out" 2> "$dir/err" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
i=0
until [ -s "$dir/out" ]; do
  i=$((i + 1))
  if [ $i -gt 100 ] || ! kill -0 $pid 2>/dev/null; then
    echo "the sandbox did not start:"; cat "$dir/err"; exit 1
  fi
  sleep 0.1
done
line=$(head -1 "$dir/out")
echo "== sandbox running: $line"
url() { printf '%s' "$line" | sed -e "s/.*\"$1\":\"\([^\"]*\)\".*/\1/" -e 's#\\/#/#g'; }
base=$(url base_url); onboard=$(url onboard_url); control=$(url control_url)
echo
echo "== examples/authorize.lua: the first-time flow"
lua5.4 examples/authorize.lua "$base" "$onboard"
echo
echo "== examples/sync.lua: authorize, then read the whole library (read_all_files)"
lua5.4 examples/sync.lua "$base" "$onboard"
echo
echo "== examples/reauthorize.lua: the refresh token has died; reauthorize"
lua5.4 examples/reauthorize.lua "$base" "$onboard" "$control"
echo
echo "== done; stopping the sandbox"
