#!/bin/sh
# Installs the Debian packages the project needs, only when some are missing.
#   deps.sh demo   what `make demo` needs: a C toolchain, Lua 5.4, the libraries the core links,
#                  and the sandbox's Lua modules (lua-http, cqueues, luaossl, cjson)
#   deps.sh test   (the default) the demo's set plus what the specs use: Lua 5.1, 5.2, 5.3 and LuaJIT
#                  with busted, luacheck and ldoc, nginx with its Lua module, valgrind, clang
#                  (fuzzing), chromium and wrk, and Node with playwright-core for the browser test
#   deps.sh list demo|test   prints the set's Debian packages, one a line, and installs nothing
set -e
list=""
if [ "${1:-}" = list ]; then list=1; shift; fi
set_name=${1:-test}
DEMO="build-essential pkg-config ca-certificates openssl gzip brotli
  lua5.4 liblua5.4-dev
  libcurl4-openssl-dev libssl-dev zlib1g-dev libbrotli-dev
  lua-http lua-cqueues lua-luaossl lua-cjson"
TEST="curl luarocks lua-busted lua-check lua-ldoc lua-socket lua-sec
  lua5.1 liblua5.1-0-dev lua5.2 liblua5.2-dev lua5.3 liblua5.3-dev
  luajit2 libluajit2-5.1-dev
  nginx libnginx-mod-http-lua lua-resty-core lua-resty-lrucache
  valgrind clang libclang-rt-14-dev
  chromium wrk redis-server"
case "$set_name" in
  demo) PKGS=$DEMO ;;
  test) PKGS="$DEMO $TEST" ;;
  *) echo "usage: deps.sh [list] [demo|test]"; exit 2 ;;
esac
if [ -n "$list" ]; then
  for p in $PKGS; do echo "$p"; done
  [ "$set_name" = test ] && printf 'nodejs\nnpm\n'
  exit 0
fi
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
# Node for the browser test (spec/browser): Debian's nodejs and npm, unless a node with npm is
# already there (another vendor's nodejs package ships npm itself).
if [ "$set_name" = test ]; then
  command -v npm >/dev/null 2>&1 || missing="$missing nodejs npm"
fi
if [ -n "$missing" ]; then
  echo "installing:$missing"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
fi
# playwright-core for the browser test, from the committed lockfile (npm ci; once).
if [ "$set_name" = test ]; then
  sh "$(dirname "$0")/../spec/browser/install.sh"
fi
