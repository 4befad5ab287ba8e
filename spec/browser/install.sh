#!/bin/sh
# Installs spec/browser/node_modules (playwright-core) from the committed lockfile with
# `npm ci`, only when it is missing or was installed from another lockfile. Quiet unless it
# fails. Called by scripts/deps.sh and by spec/openresty_app_spec.lua.
set -eu
cd "$(dirname "$0")"
stamp=node_modules/.installed-from-lock
if [ -f "$stamp" ] && cmp -s package-lock.json "$stamp"; then
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "spec/browser: npm is not installed (scripts/deps.sh installs it)" >&2
  exit 1
fi
if ! out=$(npm ci --no-audit --no-fund --loglevel=error 2>&1); then
  echo "spec/browser: npm ci failed:" >&2
  printf '%s\n' "$out" >&2
  exit 1
fi
cp package-lock.json "$stamp"
