#!/bin/bash
# make bench-http: wrk through revproxy and through nginx (one worker each) to the same
# backend nginx, in one run. Prints requests/s, requests per proxy CPU-second (utime+stime
# from /proc/PID/stat), p50/p99 for 1 KiB keep-alive over HTTP and HTTPS, HTTPS with
# Connection: close (wrk resumes sessions), full handshakes (openssl s_time -new, no
# resumption), and MiB/s for a 4 MiB file over HTTPS; then both sides and the ratio.
# Usage: tests/bench/bench_http.sh [BUILD]   env: DUR (10 s per point), WORK, KEEP=1
set -u
BUILD=${1:-build}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BIN=$(cd "$ROOT" && cd "$BUILD/bin" && pwd)/revproxy
DUR=${DUR:-10}
LOCK=/tmp/bench.lock
WORK=${WORK:-$(mktemp -d /tmp/rpbench.XXXXXX)}
for t in nginx wrk openssl; do command -v $t >/dev/null || { echo "bench-http: $t is not installed"; exit 1; }; done
mkdir -p "$WORK"/{conf,certs,run,logs,tmp/be,tmp/px,www/abs,www/meet,www/dlx}
chmod 755 "$WORK" "$WORK/www" "$WORK"/www/*; chmod 777 "$WORK"/tmp/be "$WORK"/tmp/px
for f in "$HERE"/*.conf "$HERE"/*.inc "$HERE"/revproxy.yaml; do sed "s#@WORK@#$WORK#g" "$f" > "$WORK/conf/${f##*/}"; done
"$ROOT/deploy/certs.sh" "$WORK/certs" >/dev/null
chmod 644 "$WORK"/certs/*.key
for d in abs meet dlx; do for s in 1k:1024 64k:65536 4m:4194304; do
  [ -s "$WORK/www/$d/${s%%:*}.bin" ] || head -c ${s#*:} /dev/urandom > "$WORK/www/$d/${s%%:*}.bin"; done; done
chmod 644 "$WORK"/www/*/*.bin

PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  [ -f "$WORK/run/backend.pid" ] && kill -QUIT "$(cat "$WORK/run/backend.pid")" 2>/dev/null
  [ -f "$WORK/run/nginx-proxy.pid" ] && kill -QUIT "$(cat "$WORK/run/nginx-proxy.pid")" 2>/dev/null
  [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT
nginx -c "$WORK/conf/backend.conf" -e "$WORK/logs/backend.err" || exit 1
nginx -c "$WORK/conf/nginx-proxy.conf" -e "$WORK/logs/nginx-proxy.err" || exit 1
"$BIN" -c "$WORK/conf/revproxy.yaml" > "$WORK/logs/revproxy.log" 2>&1 & RP_PID=$!; PIDS+=($RP_PID)
sleep 0.7
NX_PID=$(ps -o pid= --ppid "$(cat "$WORK/run/nginx-proxy.pid")" | tr -d ' ' | head -1)
kill -0 $RP_PID || { cat "$WORK/logs/revproxy.log"; exit 1; }
echo "# revproxy pid=$RP_PID, nginx $(nginx -v 2>&1 | cut -d/ -f2) worker pid=$NX_PID, DUR=${DUR}s, $(nproc) CPUs, WORK=$WORK"

ticks() { awk '{print $14+$15}' /proc/$1/stat; }
HZ=$(getconf CLK_TCK)
# point NAME PID CMD... : runs CMD under the lock; sets R_RPS R_P50 R_P99 R_MBS R_CPU R_N
point() {
  local name=$1 pid=$2; shift 2
  local out="$WORK/logs/$name.txt" c0 c1
  c0=$(ticks $pid)
  flock $LOCK "$@" > "$out" 2>&1
  c1=$(ticks $pid)
  R_CPU=$(echo "($c1 - $c0) / $HZ" | bc -l)
  if grep -q '^Requests/sec' "$out"; then
    R_RPS=$(awk '/^Requests\/sec:/{print $2}' "$out"); R_N=$(awk '/requests in/{print $1}' "$out")
    R_P50=$(awk '$1=="50%"{print $2}' "$out"); R_P99=$(awk '$1=="99%"{print $2}' "$out")
    R_MBS=$(awk '/^Transfer\/sec:/{v=$2; if (v ~ /GB$/) {sub(/GB/,"",v); v*=1024} else if (v ~ /MB$/) {sub(/MB/,"",v)} else if (v ~ /KB$/) {sub(/KB/,"",v); v/=1024} else {sub(/B/,"",v); v/=1048576}; print v}' "$out")
    local errs; errs=$(grep -E 'Socket errors|Non-2xx' "$out" | tr '\n' ' ')
    [ -n "$errs" ] && echo "  ($name: $errs)"
  else  # openssl s_time
    R_N=$(awk '/connections in .* real seconds/{print $1; exit}' "$out")
    local secs; secs=$(awk '/connections in .* real seconds/{print $4; exit}' "$out")
    R_RPS=$(echo "${R_N:-0} / ${secs:-1}" | bc -l); R_P50=-; R_P99=-; R_MBS=0
  fi
  R_PCS=$(echo "if ($R_CPU > 0) ${R_N:-0} / $R_CPU else 0" | bc -l)
}
row() { # label, then the two sides
  local label=$1 unit=$2
  printf '%-26s %12s %12s %8s | %s\n' "$label" "revproxy" "nginx" "ratio" "$unit"
}
declare -A RES
run_pair() { # NAME RP_URL NX_URL WRK/STIME ARGS...
  local name=$1 rpu=$2 nxu=$3 kind=$4; shift 4
  local side url pid
  for side in rp nx; do
    if [ $side = rp ]; then url=$rpu pid=$RP_PID; else url=$nxu pid=$NX_PID; fi
    if [ $kind = wrk ]; then
      point "${name}_$side" $pid timeout $((DUR+20)) wrk "$@" -d${DUR}s --latency "$url"
    else
      point "${name}_$side" $pid timeout $((DUR+20)) openssl s_time -connect "${url#https://}" -new -time $DUR -www /meet/1k.bin
    fi
    RES[${name}_${side}_rps]=$R_RPS; RES[${name}_${side}_pcs]=$R_PCS; RES[${name}_${side}_p50]=$R_P50
    RES[${name}_${side}_p99]=$R_P99; RES[${name}_${side}_mbs]=$R_MBS; RES[${name}_${side}_cpu]=$R_CPU
  done
  local r=${RES[${name}_rp_pcs]} n=${RES[${name}_nx_pcs]}
  local ratio; ratio=$(echo "if ($n > 0) $r / $n else 0" | bc -l)
  if [ "$name" = https_4m ]; then
    local mr=${RES[${name}_rp_mbs]} mn=${RES[${name}_nx_mbs]}
    printf '%-22s revproxy %7.1f MiB/s (%5.1f MiB/cpu-s)   nginx %7.1f MiB/s (%5.1f MiB/cpu-s)   ratio/cpu-s %.2f\n' "$name" \
      "$mr" "$(echo "$mr * $DUR / ${RES[${name}_rp_cpu]}" | bc -l)" "$mn" "$(echo "$mn * $DUR / ${RES[${name}_nx_cpu]}" | bc -l)" \
      "$(echo "($mr / ${RES[${name}_rp_cpu]}) / ($mn / ${RES[${name}_nx_cpu]})" | bc -l)"
  else
    printf '%-22s revproxy %8.0f req/s %8.0f req/cpu-s p50 %-8s p99 %-8s | nginx %8.0f req/s %8.0f req/cpu-s p50 %-8s p99 %-8s | ratio/cpu-s %.2f\n' "$name" \
      "${RES[${name}_rp_rps]}" "$r" "${RES[${name}_rp_p50]}" "${RES[${name}_rp_p99]}" \
      "${RES[${name}_nx_rps]}" "$n" "${RES[${name}_nx_p50]}" "${RES[${name}_nx_p99]}" "$ratio"
  fi
}
ONLY=${ONLY:-http_1k,https_1k,https_1k_close,https_full_hs,https_4m}
want() { [[ ",$ONLY," == *",$1,"* ]]; }
want http_1k        && run_pair http_1k        http://127.0.0.1:26180/meet/1k.bin  http://127.0.0.1:26080/meet/1k.bin  wrk -t2 -c50
want https_1k       && run_pair https_1k       https://127.0.0.1:26543/meet/1k.bin https://127.0.0.1:26443/meet/1k.bin wrk -t2 -c50
want https_1k_close && run_pair https_1k_close https://127.0.0.1:26543/meet/1k.bin https://127.0.0.1:26443/meet/1k.bin wrk -t2 -c50 -H 'Connection: close'
want https_full_hs  && run_pair https_full_hs  https://127.0.0.1:26543 https://127.0.0.1:26443 stime
want https_4m       && run_pair https_4m       https://127.0.0.1:26543/dlx/4m.bin  https://127.0.0.1:26443/dlx/4m.bin  wrk -t2 -c8
# The TLS library's own ceiling in the same run (make bench-tls), to judge the 4 MiB figure:
# the proxy encrypts what it sends, so its MiB per CPU-second is read against "encrypt".
TB="$ROOT/$BUILD/bench/tls_bench"
if [ -x "$TB" ] && want https_4m; then
  flock $LOCK "$TB" 1 > "$WORK/logs/tls_bench.txt" 2>&1
  ceil=$(awk '/^ *CHACHA20-POLY1305/{print $3; exit}' "$WORK/logs/tls_bench.txt")
  if [ -n "$ceil" ]; then
    mpc=$(echo "${RES[https_4m_rp_mbs]} * 1.048576 * $DUR / ${RES[https_4m_rp_cpu]}" | bc -l)
    printf 'tls ceiling (bench-tls)  ChaCha20-Poly1305 encrypt %s MB/cpu-s; revproxy 4 MiB over TLS %.0f MB/cpu-s = %.0f%% of it\n' \
      "$ceil" "$mpc" "$(echo "100 * $mpc / $ceil" | bc -l)"
  fi
fi
grep -iE 'error|sanitizer' "$WORK/logs/revproxy.log" | head -5
exit 0
