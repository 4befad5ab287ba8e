#!/bin/sh
# run.sh: runs built fuzz targets (make fuzz-build) for a bounded time each, at most JOBS at
# once, and fails if any of them crashed (a sanitizer report, a broken invariant, a leak, a
# timeout or running out of memory).
#   sh csrc/fuzz/run.sh SECONDS JOBS TARGET...        (from the checkout's root; make fuzz)
# Per target, under build/fuzz/: work/<t>/ the inputs it found (the committed seeds in
# csrc/fuzz/corpus/<t>/ are only read), logs/<t>.log, artifacts/<t>/ crash inputs.
# Extra libFuzzer flags can be given in FUZZ_FLAGS.
set -u
cd "$(dirname "$0")/../.." || exit 1
B=build/fuzz

if [ "${1:-}" = "--one" ]; then
  secs=$2; t=$3
  rm -rf "$B/artifacts/$t"
  mkdir -p "$B/work/$t" "$B/artifacts/$t" "$B/logs"
  # shellcheck disable=SC2086
  "$B/fuzz_$t" -max_total_time="$secs" -print_final_stats=1 -timeout=25 -rss_limit_mb=2048 \
    -artifact_prefix="$B/artifacts/$t/" ${FUZZ_FLAGS:-} "$B/work/$t" "csrc/fuzz/corpus/$t" \
    > "$B/logs/$t.log" 2>&1
  echo $? > "$B/logs/$t.rc"
  exit 0
fi

secs=${1:?seconds}; jobs=${2:?jobs}; shift 2
[ $# -gt 0 ] || { echo "run.sh: no targets"; exit 2; }
for t in "$@"; do
  [ -x "$B/fuzz_$t" ] || { echo "run.sh: $B/fuzz_$t is not built (make fuzz-build)"; exit 2; }
  rm -f "$B/logs/$t.rc"
done
start=$(date +%s)
echo "fuzzing $# targets for ${secs}s each, $jobs at a time"
printf '%s\n' "$@" | xargs -P "$jobs" -I{} sh csrc/fuzz/run.sh --one "$secs" {}

failed=0
printf '%-16s %6s %10s %9s %7s %7s %6s\n' target result runs exec/s cov ft corpus
for t in "$@"; do
  log=$B/logs/$t.log
  rc=$(cat "$B/logs/$t.rc" 2>/dev/null || echo 99)
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  # the last status line: "#N  DONE  cov: X ft: Y corp: Z/..." (or the last pulse)
  last=$(grep -E '^#[0-9]+' "$log" | tail -1)
  cov=$(echo "$last" | sed -n 's/.* cov: \([0-9]*\).*/\1/p')
  ft=$(echo "$last" | sed -n 's/.* ft: \([0-9]*\).*/\1/p')
  corp=$(echo "$last" | sed -n 's/.* corp: \([0-9]*\).*/\1/p')
  arts=$(find "$B/artifacts/$t" -type f 2>/dev/null | wc -l)
  if [ "$rc" -ne 0 ] || [ "$arts" -ne 0 ]; then
    result=CRASH; failed=$((failed + 1))
  else
    result=ok
  fi
  printf '%-16s %6s %10s %9s %7s %7s %6s\n' "$t" "$result" "${runs:--}" "${eps:--}" \
    "${cov:--}" "${ft:--}" "${corp:--}"
done
echo "elapsed: $(( $(date +%s) - start ))s"
if [ "$failed" -ne 0 ]; then
  for t in "$@"; do
    if [ "$(cat "$B/logs/$t.rc" 2>/dev/null || echo 99)" -ne 0 ]; then
      echo "---- $t ($B/logs/$t.log) ----"
      grep -E -A30 '^==[0-9]+==ERROR|runtime error|invariant broken|ERROR: libFuzzer' \
        "$B/logs/$t.log" | head -60
      ls "$B/artifacts/$t"
    fi
  done
  echo "$failed fuzz target(s) crashed: minimise with build/fuzz/fuzz_<t> -minimize_crash=1" \
       "-runs=10000 <artifact>, fix, and commit the input as csrc/fuzz/corpus/<t>/regress-*"
  exit 1
fi
