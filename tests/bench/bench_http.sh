#!/bin/bash
# make bench-http: wrk through revproxy and through nginx (one worker each) to the same
# backend nginx, in one run. Prints requests/s, requests per proxy CPU-second (cpu_ns,
# tests/bench/cpu.sh), p50/p99 for 1 KiB keep-alive over HTTP and HTTPS, HTTPS with
# Connection: close (wrk resumes sessions), full handshakes (openssl s_time -new, no
# resumption), and MiB/s for a 4 MiB file over HTTP and HTTPS; then both sides and the ratio,
# the cipher suite each side negotiated, and the mbedTLS ceiling for revproxy's suite.
# Usage: tests/bench/bench_http.sh [BUILD]   env: DUR (10 s per point), KA_DUR (30 s for the
# 1 KiB keep-alive points), REPS (rounds per point, 1; medians are printed), ONLY (comma list
# of points), WORK, KEEP=1
set -u
BUILD=${1:-build}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BIN=$(cd "$ROOT" && cd "$BUILD/bin" && pwd)/revproxy
DUR=${DUR:-10}
KA_DUR=${KA_DUR:-30}
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
echo "# revproxy pid=$RP_PID, nginx $(nginx -v 2>&1 | cut -d/ -f2) worker pid=$NX_PID, DUR=${DUR}s (1 KiB keep-alive: ${KA_DUR}s), $(nproc) CPUs, WORK=$WORK"

. "$ROOT/tests/bench/cpu.sh"
# to_ms "3.58ms" | "850.00us" | "1.02s" -> milliseconds
to_ms() { awk -v v="$1" 'BEGIN{ if (v ~ /us$/) {sub(/us/,"",v); print v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v); print v+0}
  else if (v ~ /s$/) {sub(/s/,"",v); print v*1000} else print "nan" }'; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END{ if (NR==0) print 0; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2 }'; }
# point NAME PID CMD... : runs CMD under the lock; sets R_RPS R_P50 R_P99 R_MBS R_CPU R_N R_PCS
point() {
  local name=$1 pid=$2; shift 2
  local out="$WORK/logs/$name.txt" c0 c1
  c0=$(cpu_ns $pid)
  flock $LOCK "$@" > "$out" 2>&1
  c1=$(cpu_ns $pid)
  R_CPU=$(echo "($c1 - $c0) / 1000000000" | bc -l)
  if grep -q '^Requests/sec' "$out"; then
    R_RPS=$(awk '/^Requests\/sec:/{print $2}' "$out"); R_N=$(awk '/requests in/{print $1}' "$out")
    R_P50=$(to_ms "$(awk '$1=="50%"{print $2}' "$out")"); R_P99=$(to_ms "$(awk '$1=="99%"{print $2}' "$out")")
    R_MBS=$(awk '/^Transfer\/sec:/{v=$2; if (v ~ /GB$/) {sub(/GB/,"",v); v*=1024} else if (v ~ /MB$/) {sub(/MB/,"",v)} else if (v ~ /KB$/) {sub(/KB/,"",v); v/=1024} else {sub(/B/,"",v); v/=1048576}; print v}' "$out")
    local errs; errs=$(grep -E 'Socket errors|Non-2xx' "$out" | tr '\n' ' ')
    [ -n "$errs" ] && echo "  ($name: $errs)"
  else  # openssl s_time
    R_N=$(awk '/connections in .* real seconds/{print $1; exit}' "$out")
    local secs; secs=$(awk '/connections in .* real seconds/{print $4; exit}' "$out")
    R_RPS=$(echo "${R_N:-0} / ${secs:-1}" | bc -l); R_P50=nan; R_P99=nan; R_MBS=0
  fi
  R_PCS=$(echo "if ($R_CPU > 0) ${R_N:-0} / $R_CPU else 0" | bc -l)
  # bytes points: MiB per proxy CPU-second
  R_MPC=$(echo "if ($R_CPU > 0) $R_MBS * $DUR / $R_CPU else 0" | bc -l)
}
declare -A RES
# run_pair NAME RP_URL NX_URL wrk|stime ARGS...: REPS rounds, each revproxy then nginx
# back to back, so both sides of a ratio see the same machine; prints the medians and the
# median of the per-round ratios (rounds listed), per proxy CPU-second.
run_pair() {
  local name=$1 rpu=$2 nxu=$3 kind=$4; shift 4
  local side url pid r ratios=() k
  local -A V=()
  for ((r = 1; r <= REPS; r++)); do
    for side in rp nx; do
      if [ $side = rp ]; then url=$rpu pid=$RP_PID; else url=$nxu pid=$NX_PID; fi
      if [ $kind = wrk ]; then
        point "${name}_${side}_$r" $pid timeout $((DUR+20)) wrk "$@" -d${DUR}s --latency "$url"
      else
        point "${name}_${side}_$r" $pid timeout $((DUR+20)) openssl s_time -connect "${url#https://}" -new -time $DUR -www /meet/1k.bin
      fi
      V[${side}_rps]+=" $R_RPS"; V[${side}_pcs]+=" $R_PCS"; V[${side}_p50]+=" $R_P50"
      V[${side}_p99]+=" $R_P99"; V[${side}_mbs]+=" $R_MBS"; V[${side}_mpc]+=" $R_MPC"
      RES[${side}_last_pcs]=$R_PCS; RES[${side}_last_mpc]=$R_MPC
    done
    if [[ $name == *_4m ]]; then
      ratios+=("$(echo "if (${RES[nx_last_mpc]} > 0) ${RES[rp_last_mpc]} / ${RES[nx_last_mpc]} else 0" | bc -l)")
    else
      ratios+=("$(echo "if (${RES[nx_last_pcs]} > 0) ${RES[rp_last_pcs]} / ${RES[nx_last_pcs]} else 0" | bc -l)")
    fi
  done
  for k in rp_rps rp_pcs rp_p50 rp_p99 rp_mbs rp_mpc nx_rps nx_pcs nx_p50 nx_p99 nx_mbs nx_mpc; do
    # shellcheck disable=SC2086
    RES[${name}_$k]=$(median ${V[$k]})
  done
  RES[${name}_ratio]=$(median "${ratios[@]}")
  local list; list=$(printf '%.2f ' "${ratios[@]}")
  if [[ $name == *_4m ]]; then
    printf '%-15s revproxy %7.1f MiB/s %6.1f MiB/cpu-s | nginx %7.1f MiB/s %6.1f MiB/cpu-s | ratio/cpu-s %.2f (%s)\n' "$name" \
      "${RES[${name}_rp_mbs]}" "${RES[${name}_rp_mpc]}" "${RES[${name}_nx_mbs]}" "${RES[${name}_nx_mpc]}" \
      "${RES[${name}_ratio]}" "${list% }"
  else
    printf '%-15s revproxy %6.0f req/s %6.0f req/cpu-s p50 %6.2f p99 %7.2f ms | nginx %6.0f req/s %6.0f req/cpu-s p50 %6.2f p99 %7.2f ms | ratio/cpu-s %.2f (%s)\n' "$name" \
      "${RES[${name}_rp_rps]}" "${RES[${name}_rp_pcs]}" "${RES[${name}_rp_p50]}" "${RES[${name}_rp_p99]}" \
      "${RES[${name}_nx_rps]}" "${RES[${name}_nx_pcs]}" "${RES[${name}_nx_p50]}" "${RES[${name}_nx_p99]}" \
      "${RES[${name}_ratio]}" "${list% }"
  fi
}
# suite HOST:PORT -> "TLSv1.2 ECDHE-ECDSA-CHACHA20-POLY1305" as OpenSSL's client (like wrk's) gets it
suite() { echo | timeout 5 openssl s_client -connect "$1" 2>/dev/null | awk '/^New, /{sub(/,$/, "", $2); print $2, $NF; exit}'; }
REPS=${REPS:-1}
ONLY=${ONLY:-http_1k,https_1k,https_1k_close,https_full_hs,http_4m,https_4m}
want() { [[ ",$ONLY," == *",$1,"* ]]; }
S_RP=$(suite 127.0.0.1:26543); S_NX=$(suite 127.0.0.1:26443)
echo "# cipher suites negotiated by an OpenSSL client: revproxy $S_RP | nginx $S_NX"
echo "# medians of REPS=$REPS rounds; ratio = revproxy/nginx per proxy CPU-second (per round in brackets); p50/p99 in ms"
# The keep-alive points run KA_DUR (30 s): each wrk run opens its 50 connections at once, and
# over TLS their full handshakes (~2.5 ms each in mbedTLS, ~0.7 in OpenSSL) hold the loop for
# the first ~125 ms, about 1 % of a 10 s run's requests, which is the p99 itself. Setup has
# its own points below (Connection: close, full handshakes); these measure the steady state.
want http_1k        && DUR=$KA_DUR run_pair http_1k  http://127.0.0.1:26180/meet/1k.bin  http://127.0.0.1:26080/meet/1k.bin  wrk -t2 -c50
want https_1k       && DUR=$KA_DUR run_pair https_1k https://127.0.0.1:26543/meet/1k.bin https://127.0.0.1:26443/meet/1k.bin wrk -t2 -c50
want https_1k_close && run_pair https_1k_close https://127.0.0.1:26543/meet/1k.bin https://127.0.0.1:26443/meet/1k.bin wrk -t2 -c50 -H 'Connection: close'
want https_full_hs  && run_pair https_full_hs  https://127.0.0.1:26543 https://127.0.0.1:26443 stime
# The same 4 MiB over plain HTTP: what moving the bytes costs without TLS (sockets, copies).
want http_4m        && run_pair http_4m        http://127.0.0.1:26180/dlx/4m.bin   http://127.0.0.1:26080/dlx/4m.bin   wrk -t2 -c8
want https_4m       && run_pair https_4m       https://127.0.0.1:26543/dlx/4m.bin  https://127.0.0.1:26443/dlx/4m.bin  wrk -t2 -c8
# The TLS library's own ceiling in the same run (make bench-tls) for the suite revproxy
# negotiated: the proxy encrypts what it sends (the bench upstream is plain HTTP, as in
# nginx-proxy.conf), so its MB per CPU-second is read against that suite's "encrypt".
TB="$ROOT/$BUILD/bench/tls_bench"
if [ -x "$TB" ] && want https_4m; then
  flock $LOCK "$TB" 1 > "$WORK/logs/tls_bench.txt" 2>&1
  case "$S_RP" in
    *CHACHA20-POLY1305*) row=CHACHA20-POLY1305 ;;
    *AES128-GCM*) row=AES-128-GCM ;;
    *AES256-GCM*) row=AES-256-GCM ;;
    *) row= ;;
  esac
  ceil=$(awk -v r="$row" 'index($1, r) == 1 {print $3; exit}' "$WORK/logs/tls_bench.txt")
  if [ -n "$row" ] && [ -n "$ceil" ]; then
    mpc=$(echo "${RES[https_4m_rp_mpc]} * 1.048576" | bc -l)
    printf 'tls ceiling     mbedTLS %s encrypt (bench-tls) %s MB/cpu-s; revproxy 4 MiB over TLS %.0f MB/cpu-s = %.0f%% of it\n' \
      "$row" "$ceil" "$mpc" "$(echo "100 * $mpc / $ceil" | bc -l)"
    if want http_4m; then
      # Encrypting at the ceiling on top of what the plain 4 MiB point costs per byte.
      pl=$(echo "${RES[http_4m_rp_mpc]} * 1.048576" | bc -l)
      both=$(echo "1 / (1 / $ceil + 1 / $pl)" | bc -l)
      printf 'tls ceiling     with the plain 4 MiB cost added (%.0f MB/cpu-s without TLS): %.0f MB/cpu-s; revproxy is at %.0f%% of that\n' \
        "$pl" "$both" "$(echo "100 * $mpc / $both" | bc -l)"
    fi
  else
    echo "tls ceiling     no bench-tls row for revproxy's suite ($S_RP)"
  fi
  # nginx's side of the comparison encrypts with OpenSSL: its speed for nginx's suite.
  case "$S_NX" in
    *AES_256_GCM*|*AES256-GCM*) ev=aes-256-gcm ;;
    *AES_128_GCM*|*AES128-GCM*) ev=aes-128-gcm ;;
    *CHACHA20*) ev=chacha20-poly1305 ;;
    *) ev= ;;
  esac
  if [ -n "$ev" ]; then
    osp=$(flock $LOCK openssl speed -evp $ev -bytes 16384 -seconds 1 2>/dev/null | awk '$NF ~ /k$/ {v=$NF} END{sub(/k$/,"",v); printf "%.0f", v*1000/1e6}')
    echo "tls ceiling     nginx's suite in OpenSSL ($ev, openssl speed, 16 KiB): ${osp} MB/s"
  fi
fi
grep -iE 'error|sanitizer' "$WORK/logs/revproxy.log" | head -5
exit 0
