#!/bin/sh
# Runs the busted specs and ends with the line "N passed, N failed" that CI reads.
#   run-specs.sh all        every spec under Lua 5.4 and under LuaJIT (nginx-tagged specs once)
#   run-specs.sh asan       Lua 5.4 against the ASan/UBSan build of the core (no slow specs)
#   run-specs.sh valgrind   Lua 5.4 under valgrind (no slow or timing-sensitive specs; the specs
#                           whose work runs in child processes left out: see below)
#   run-specs.sh lua5.1     Lua 5.1 (PUC) against build/lua5.1; lua5.2 and lua5.3 likewise:
#                           every spec but the nginx ones (those run the SDK in nginx's own
#                           LuaJIT, whatever runs busted: the `all` run has them)
# Extra arguments after the mode go to busted (for example a single spec file).
set -u
mode=${1:-all}
[ $# -gt 0 ] && shift
cd "$(dirname "$0")/.." || exit 1
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# lua-http (used by the sandbox and some loopback servers) lives in the 5.1 tree on Debian.
export LUA_PATH_5_4="/usr/share/lua/5.4/?.lua;/usr/share/lua/5.4/?/init.lua;/usr/share/lua/5.1/?.lua;/usr/share/lua/5.1/?/init.lua;;"
unset LUA_PATH LUA_CPATH LUA_CPATH_5_4

specs=${*:-spec}
passed=0; failed=0; skipped=0

run() {  # name, command...
  name=$1; shift
  echo "== $name"
  "$@" -o TAP $specs > "$out/$name.tap" 2> "$out/$name.err"
  rc=$?
  grep -A20 '^not ok ' "$out/$name.tap" | head -200 || true
  p=$(grep -c '^ok ' "$out/$name.tap" | tr -d ' ')
  s=$(grep -c '^ok .*# SKIP' "$out/$name.tap" | tr -d ' ')
  f=$(grep -c '^not ok ' "$out/$name.tap" | tr -d ' ')
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
    echo "$name: busted exited $rc without a failing test:"; tail -50 "$out/$name.err"
    f=1
  fi
  [ -s "$out/$name.err" ] && { echo "-- stderr of $name:"; tail -30 "$out/$name.err"; }
  echo "$name: $((p - s)) passed, $f failed, $s skipped"
  passed=$((passed + p - s)); failed=$((failed + f)); skipped=$((skipped + s))
}

case "$mode" in
  all)
    run lua5.4 lua5.4 /usr/bin/busted --cpath='./build/lua5.4/?.so'
    # Specs tagged nginx run the SDK inside a real nginx (its own LuaJIT): once is enough.
    run luajit luajit /usr/bin/busted --cpath='./build/luajit/?.so' --exclude-tags=nginx
    ;;
  asan)
    asan=$(gcc -print-file-name=libasan.so)
    # Leaks are valgrind's job: LSan would also report on child programs that inherit LD_PRELOAD.
    run asan env LD_PRELOAD="$asan" ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
      UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 DIGIME_SANITIZED=1 \
      lua5.4 /usr/bin/busted --cpath='./build/asan/?.so' --exclude-tags=slow,nginx \
      --helper=spec/support/sanitized_env.lua
    ;;
  valgrind)
    vg() {  # busted under valgrind, with the spec files given
      env DIGIME_SANITIZED=1 valgrind -q --error-exitcode=9 --leak-check=full \
        --errors-for-leak-kinds=definite --trace-children=no \
        lua5.4 /usr/bin/busted --cpath='./build/lua5.4/?.so' --exclude-tags=slow,timing,nginx "$@"
    }
    if [ "$specs" != spec ]; then
      run valgrind vg
    else
      # valgrind checks this process's memory only (--trace-children=no). Left out: the specs
      # of the sandbox (a child process: the spec only makes requests), of hosts sharing Redis
      # (the SDK runs in child processes), of the build, the README, the docs, the examples
      # and lint (shell and child programs), and the calls under faults (the engine's paths
      # under resets, truncation and timeouts are http_engine_spec's, run here; the ASan run
      # has them all). The rest runs in two halves at once, one per core.
      skip='sandbox_spec|sandbox_library_spec|sandbox_write_spec|sandbox_network_spec|store_redis_spec|store_redis_sync_spec|build_spec|readme_spec|docs_spec|lint_spec|examples_spec|rockspec_spec|write_manage_faults_spec'
      files=$(ls spec/*_spec.lua | grep -Ev "spec/($skip)\.lua$")
      half1=$(echo "$files" | awk 'NR % 2 == 1' | tr '\n' ' ')
      half2=$(echo "$files" | awk 'NR % 2 == 0' | tr '\n' ' ')
      specs=$half2 run valgrind-2 vg > "$out/half2.log" 2>&1 &
      half2_pid=$!
      specs=$half1 run valgrind-1 vg
      wait "$half2_pid"
      cat "$out/half2.log"
      # the second half's counts, from its TAP file (its shell's totals are lost)
      for name in valgrind-2; do
        p=$(grep -c '^ok ' "$out/$name.tap" | tr -d ' ')
        s=$(grep -c '^ok .*# SKIP' "$out/$name.tap" | tr -d ' ')
        f=$(grep -c '^not ok ' "$out/$name.tap" | tr -d ' ')
        grep -q "^$name: busted exited" "$out/half2.log" && f=$((f + 1))
        [ "$p" -eq 0 ] && [ "$f" -eq 0 ] && f=1   # it ran nothing: a failure
        passed=$((passed + p - s)); failed=$((failed + f)); skipped=$((skipped + s))
      done
    fi
    ;;
  lua5.1|lua5.2|lua5.3)
    v=${mode#lua}
    # the spec process reads the Debian tree of its own version (lua-http, cqueues, cjson, ...)
    run "$mode" env LUA_PATH="/usr/share/lua/$v/?.lua;/usr/share/lua/$v/?/init.lua;;" \
      "$mode" /usr/bin/busted --cpath="./build/$mode/?.so" --exclude-tags=nginx
    ;;
  *) echo "unknown mode $mode"; exit 2 ;;
esac

echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
