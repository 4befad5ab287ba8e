#!/bin/sh
# The whole-library sync as users get it: a sandbox made MS milliseconds of round trip away
# (digime-sandbox --latency), over plain HTTP and over TLS, lua-digime beside the floor
# measured in the same run. Not a test; figures go to bench/RESULTS.md.
#
#   sh bench/network.sh                 1,000 files x 64 KiB (mixed), latency 0 and 40 ms
#   FILES=200 SIZE=4k LATENCIES="40" TLS_MODES="plain" sh bench/network.sh
#   CONCURRENCY=16 sh bench/network.sh  (default: the SDK's own default)
#   LUA=luajit sh bench/network.sh
#   REPEAT=3 sh bench/network.sh        the sync run 3 times, the median by wall time shown
#                                       (one run on loopback varies by +-15 %)
#
# The floor: curl fetching the same encrypted files (the sandbox's /sandbox/raw/, no JWT) with
# 16 parallel keep-alive transfers through the same delayed link, plus what the client must
# spend on top whatever its design: two RSA-2048 private operations per file (the request JWT's
# signature, the file key's unwrap) and AES-256-CBC over the bytes, from `openssl speed`.
set -eu
cd "$(dirname "$0")/.."
eval "$(make -s env)"
FILES=${FILES:-1000}
SIZE=${SIZE:-64k}
LATENCIES=${LATENCIES:-"0 40"}
TLS_MODES=${TLS_MODES:-"plain tls"}
CONCURRENCY=${CONCURRENCY:--}
LUA=${LUA:-lua5.4}
REPEAT=${REPEAT:-1}
PARALLEL=16

dir=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT

echo "== $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "== $FILES files x $SIZE (mixed gzip/brotli/none), client $LUA, concurrency $CONCURRENCY"

# The client's unavoidable CPU per file, measured here and now.
rsa_per_s=$(openssl speed -seconds 2 rsa2048 2>/dev/null | awk '/^rsa 2048/ {print $6}')
aes_k_per_s=$(openssl speed -seconds 2 -evp aes-256-cbc 2>/dev/null | awk 'toupper($1) == "AES-256-CBC" {print $NF}' | tr -d k)
bytes=$(echo "$SIZE" | awk '{n=$1+0; u=substr($1,length($1)); if(u=="k")n*=1024; if(u=="m")n*=1048576; print n}')
crypto=$(awk -v f="$FILES" -v r="$rsa_per_s" -v a="$aes_k_per_s" -v b="$bytes" \
  'BEGIN { printf "%.2f", f * 2 / r + f * b / (a * 1000) }')
echo "== RSA-2048 private ops/s: $rsa_per_s; AES-256-CBC: ${aes_k_per_s}k bytes/s; per sync: ${crypto} s"

# CPU seconds a process has used so far (user + system).
cpu_of() { awk -v t="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / t }' "/proc/$1/stat"; }

field() { printf '%s' "$1" | sed -e "s/.*\"$2\":\"\([^\"]*\)\".*/\1/" -e 's#\\/#/#g'; }

for latency in $LATENCIES; do
  for mode in $TLS_MODES; do
    tls_flag=""
    [ "$mode" = tls ] && tls_flag="--tls"
    rm -f "$dir/out"   # the last run's first line must not be read for this one's
    bin/digime-sandbox --generate "$FILES:$SIZE:mixed" --sync-pace 0 --latency "$latency" \
      $tls_flag > "$dir/out" 2> "$dir/err" &
    pid=$!
    i=0
    until [ -s "$dir/out" ]; do
      i=$((i + 1)); [ $i -gt 600 ] && { cat "$dir/err"; exit 1; }
      sleep 0.1
    done
    line=$(head -1 "$dir/out")
    base=$(field "$line" base_url); onboard=$(field "$line" onboard_url)
    control=$(field "$line" control_url)
    ca="-"; cacert=""
    if [ "$mode" = tls ]; then ca=$(field "$line" ca_file); cacert="--cacert $ca"; fi

    # The floor: curl, 16 parallel keep-alive transfers of the raw encrypted files.
    curl -s $cacert "${control}manifest.txt" | awk -v c="$control" \
      '{ print "url = \"" c "raw/" $2 "\"\noutput = \"/dev/null\"" }' > "$dir/list.cfg"
    s0=$(cpu_of "$pid")
    t0=$(date +%s.%N)
    conns=$(curl -s --no-progress-meter $cacert -Z --parallel-max $PARALLEL -K "$dir/list.cfg" \
      -w '%{num_connects}\n' | awk '{ s += $1 } END { print s }')
    t1=$(date +%s.%N)
    s1=$(cpu_of "$pid")
    curl_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
    floor=$(awk -v c="$curl_s" -v k="$crypto" 'BEGIN { printf "%.2f", c + k }')

    # REPEAT runs; the median by wall time (sort on the wall= field)
    out=$(i=0; while [ $i -lt "$REPEAT" ]; do i=$((i + 1))
            $LUA bench/sync_remote.lua "$base" "$onboard" "$control" "$ca" "$CONCURRENCY" lua-digime
          done | sort -t= -k2 -n | sed -n "$(( (REPEAT + 1) / 2 ))p")
    s2=$(cpu_of "$pid")
    wall=$(printf '%s' "$out" | sed 's/.*wall=\([0-9.]*\).*/\1/')
    cpu=$(printf '%s' "$out" | sed 's/.*cpu=\([0-9.]*\).*/\1/')
    ratio=$(awk -v w="$wall" -v f="$floor" 'BEGIN { printf "%.2f", w / f }')
    cpu_ratio=$(awk -v c="$cpu" -v k="$crypto" 'BEGIN { printf "%.2f", c / k }')
    echo "latency ${latency} ms, $mode: floor ${floor} s (curl ${curl_s} s, $conns connections, sandbox cpu $(awk -v a="$s0" -v b="$s1" 'BEGIN{printf "%.2f", b-a}') s; + ${crypto} s crypto)"
    echo "  $out sandbox_cpu=$(awk -v a="$s1" -v b="$s2" -v r="$REPEAT" 'BEGIN{printf "%.2f", (b-a)/r}')"
    echo "  => ${ratio} x floor; client cpu ${cpu_ratio} x its RSA + AES cost"
    if [ "$mode" = plain ] && [ "$latency" != 0 ]; then
      $LUA bench/auth_flow.lua "$base" "$onboard" "$control" 10 "$latency" | sed 's/^/  auth: /'
    fi
    if [ "$mode" = plain ] && [ "${NGX:-1}" = 1 ]; then
      # The same sync inside nginx through the ngx transport (plain HTTP: nginx checks
      # certificate names only, and the sandbox's URLs are IP literals).
      nout=$(lua5.4 bench/ngx_sync.lua "$base" "$onboard" "$CONCURRENCY")
      nwall=$(printf '%s' "$nout" | sed 's/.*wall=\([0-9.]*\).*/\1/')
      echo "  $nout => $(awk -v w="$nwall" -v f="$floor" 'BEGIN { printf "%.2f", w / f }') x floor"
    fi
    kill "$pid"; wait "$pid" 2>/dev/null || true
    pid=""
  done
done
