#!/bin/sh
# Runs the example web app: a digi.me sandbox with consent pages (--interactive) and nginx
# serving examples/openresty/app.lua against it. Prints the URL to open; Ctrl-C stops both.
#
#   sh examples/openresty/run.sh            # the app on http://127.0.0.1:8080/
#   PORT=9000 sh examples/openresty/run.sh
#
# Needs `make` done once (the C core for LuaJIT) and Debian's nginx with libnginx-mod-http-lua
# (scripts/deps.sh installs everything). The sandbox knows the demo contract the app uses by
# default; its key is public, for tests only.
set -eu
cd "$(dirname "$0")/../.."
root=$(pwd)
port=${PORT:-8080}

[ -f build/luajit/digime/core.so ] || make -s all

dir=$(mktemp -d /tmp/digime-example.XXXXXX)
sandbox_pid=""; nginx_pid=""
cleanup() {
  [ -n "$nginx_pid" ] && kill -QUIT "$nginx_pid" 2>/dev/null && wait "$nginx_pid" 2>/dev/null
  [ -n "$sandbox_pid" ] && kill "$sandbox_pid" 2>/dev/null && wait "$sandbox_pid" 2>/dev/null
  rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 1. The sandbox: its first line on stdout is JSON with its URLs.
bin/digime-sandbox --interactive > "$dir/sandbox.out" 2> "$dir/sandbox.err" &
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

# 2. nginx with the app, in a prefix of its own.
resolver=$(awk '$1 == "nameserver" { print $2; exit }' /etc/resolv.conf 2>/dev/null || true)
case "$resolver" in
  "") resolver=127.0.0.1 ;;
  *:*) resolver="[$resolver]" ;;
esac
mkdir -p "$dir/conf" "$dir/logs" "$dir/tmp"
sed -e "s#@ROOT@#$root#g" -e "s#@PREFIX@#$dir#g" -e "s#@PORT@#$port#g" \
    -e "s#@RESOLVER@#$resolver#g" examples/openresty/nginx.conf > "$dir/conf/nginx.conf"

export DIGIME_APP_URL="http://127.0.0.1:$port"
export DIGIME_BASE_URL="$(url base_url)"
export DIGIME_ONBOARD_URL="$(url onboard_url)"
nginx -p "$dir" -c conf/nginx.conf -e "$dir/logs/error.log" -g 'daemon off;' \
  > "$dir/logs/stdout" 2>&1 &
nginx_pid=$!
i=0
until curl -s -o /dev/null "$DIGIME_APP_URL/"; do
  i=$((i + 1))
  if [ $i -gt 100 ] || ! kill -0 "$nginx_pid" 2>/dev/null; then
    echo "nginx did not start:"; cat "$dir/logs/error.log" "$dir/logs/stdout" 2>/dev/null
    nginx_pid=""; exit 1
  fi
  sleep 0.1
done

echo "sandbox:  $DIGIME_BASE_URL (control: $(url control_url))"
echo "nginx:    $dir/conf/nginx.conf, logs in $dir/logs/"
echo
echo "Open $DIGIME_APP_URL/ and click \"Connect your digi.me\". Ctrl-C stops it."
wait "$nginx_pid"
