#!/bin/sh
# Installs the Debian packages the project needs, only when some are missing.
set -e
PKGS="build-essential pkg-config ca-certificates curl openssl gzip brotli
  lua5.4 liblua5.4-dev luarocks lua-busted lua-cjson lua-check lua-ldoc
  luajit2 libluajit2-5.1-dev
  nginx libnginx-mod-http-lua lua-resty-core lua-resty-lrucache
  libcurl4-openssl-dev libssl-dev zlib1g-dev libbrotli-dev
  lua-http lua-cqueues lua-luaossl lua-socket lua-sec
  valgrind clang libclang-rt-14-dev
  chromium wrk redis-server"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
# Node for the browser test (spec/browser): Debian's nodejs and npm, unless a node with npm is
# already there (another vendor's nodejs package ships npm itself).
command -v npm >/dev/null 2>&1 || missing="$missing nodejs npm"
if [ -n "$missing" ]; then
  echo "installing:$missing"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
fi
# playwright-core for the browser test, from the committed lockfile (npm ci; once).
sh "$(dirname "$0")/../spec/browser/install.sh"
