#!/usr/bin/env bash
# make bench-conf: conf-edge against nginx `stream` with TLS termination, in one run, in
# front of the same backend (tests/bench/ce_backend.c: plain TCP behind nginx; the mux over
# mutual TLS behind conf-edge, as the design requires). A second nginx point, "nginx_tls",
# re-encrypts to its backend as conf-edge does (proxy_ssl to stunnel in front of the same
# backend), so each proxy pays two ciphers per byte: the like-for-like comparison. Bulk throughput up and down
# (MB/s and MB per proxy CPU-second) and full / resumed TLS 1.2 handshakes per second and
# per proxy CPU-second, then the ratios; the TLS library's own ceiling (tls_bench) first.
# Every timed point holds /tmp/bench.lock. Env: DUR (seconds per point, default 10);
# LOCK_WAIT (seconds to wait for the lock, default 0 = forever; then the point runs
# unlocked and says so, for a lock held by a stalled process).
# Usage: tests/bench/bench_conf.sh [BUILD_DIR]
set -u
BUILD=${1:-build}
DUR=${DUR:-10}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
WORK=$(mktemp -d /tmp/bench-conf.XXXXXX)
LOCK=/tmp/bench.lock
LOCK_WAIT=${LOCK_WAIT:-0}
FLOCK_ARGS=(); [ "$LOCK_WAIT" -gt 0 ] && FLOCK_ARGS=(-w "$LOCK_WAIT")
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    [ -f "$WORK/nginx.pid" ] && kill -QUIT "$(cat "$WORK/nginx.pid")" 2>/dev/null
    wait 2>/dev/null
}
trap cleanup EXIT
trap "exit 1" INT TERM

# Ports (loopback): backend 19100 sink / 19101 source; nginx 19443 sink / 19444 source;
# nginx with proxy_ssl 19445 sink / 19446 source, through stunnel 19102 / 19103;
# conf-edge external 19543, internal 19557, admin 19580.
deploy/certs.sh "$WORK/certs" >/dev/null || exit 1
C=$WORK/certs

"$BUILD/bench/ce_backend" tcp 127.0.0.1:19100 2>"$WORK/backend-tcp.log" &
TCP_BE=$!; PIDS+=($TCP_BE)

mkdir -p "$WORK/logs"
cat > "$WORK/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/logs/nginx.err warn;
events { worker_connections 4096; }
stream {
    ssl_certificate     $C/conf-edge.crt;
    ssl_certificate_key $C/conf-edge.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSLS:10m;
    ssl_session_tickets on;
    tcp_nodelay on;
    server { listen 127.0.0.1:19443 ssl backlog=4096; proxy_pass 127.0.0.1:19100; }
    server { listen 127.0.0.1:19444 ssl backlog=4096; proxy_pass 127.0.0.1:19101; }
    server { listen 127.0.0.1:19445 ssl backlog=4096; proxy_pass 127.0.0.1:19102; proxy_ssl on; }
    server { listen 127.0.0.1:19446 ssl backlog=4096; proxy_pass 127.0.0.1:19103; proxy_ssl on; }
}
EOF
cat > "$WORK/stunnel.conf" <<EOF
foreground = yes
pid =
debug = 3
output = $WORK/logs/stunnel.log
[sink]
accept = 127.0.0.1:19102
connect = 127.0.0.1:19100
cert = $C/conf-edge.crt
key = $C/conf-edge.key
[source]
accept = 127.0.0.1:19103
connect = 127.0.0.1:19101
cert = $C/conf-edge.crt
key = $C/conf-edge.key
EOF
stunnel4 "$WORK/stunnel.conf" 2>"$WORK/logs/stunnel.err" &
STUNNEL=$!; PIDS+=($STUNNEL)
nginx -c "$WORK/nginx.conf" -e "$WORK/logs/nginx.err" || { echo "bench-conf: nginx failed (libnginx-mod-stream?)"; exit 1; }
sleep 0.5
NGX=$(ps -o pid= --ppid "$(cat "$WORK/nginx.pid")" | tr -d ' ' | head -1)

SECRET=bench-secret
cat > "$WORK/conf-edge.yaml" <<EOF
instance_id: conf-edge-bench
log: {level: warn}
admin: {listen: 127.0.0.1:19580}
external:
  listen: 127.0.0.1:19543
  tls: {cert: $C/conf-edge.crt, key: $C/conf-edge.key}
internal:
  listen: 127.0.0.1:19557
  tls: {cert: $C/conf-edge.crt, key: $C/conf-edge.key, ca: $C/ca.crt}
  allowed_names: [confserver]
limits: {per_address: 100000, clients: 100000}
conference_key: {id: bench, secret: $SECRET}
director: {enabled: false}
EOF
"$BUILD/bin/conf-edge" -c "$WORK/conf-edge.yaml" 2>"$WORK/logs/conf-edge.log" &
EDGE=$!; PIDS+=($EDGE)
sleep 0.5
"$BUILD/bench/ce_backend" mux 127.0.0.1:19557 "$C/confserver.crt" "$C/confserver.key" "$C/ca.crt" \
    2>"$WORK/logs/backend-mux.log" &
MUX_BE=$!; PIDS+=($MUX_BE)
sleep 0.5
kill -0 $EDGE $MUX_BE $NGX $TCP_BE $STUNNEL || { echo "bench-conf: a process did not start; logs in $WORK/logs"; exit 1; }

mint() { # conference -> a conference session key (common/token.h format)
    python3 - "$1" "$SECRET" <<'PY'
import base64, hashlib, hmac, sys, time
b = lambda x: base64.urlsafe_b64encode(x).rstrip(b"=").decode()
claims = f"conf={sys.argv[1]};user=bench;role=attendee;exp={int(time.time()) + 3600};jti=b{time.time_ns()}"
head = f"v1.bench.{b(claims.encode())}"
print(head + "." + b(hmac.new(sys.argv[2].encode(), head.encode(), hashlib.sha256).digest()))
PY
}
KSINK=$(mint sink)
KSOURCE=$(mint source)

CPU_SH=$ROOT/tests/bench/cpu.sh
# point NAME PROXY_PID BACKEND_PID CMD... : runs under the lock; prints
# "NAME <tool output> proxy_cpu_s=.. backend_cpu_s=.." and keeps it in $WORK/NAME.txt
point() {
    local name=$1 px=$2 be=$3; shift 3
    local script='
        px=$1 be=$2 cpu_sh=$3 out=$4; shift 4
        . "$cpu_sh"
        p0=$(cpu_ns $px); b0=$(cpu_ns $be)
        r=$(timeout 60 "$@" 2>&1 | tail -1)
        p1=$(cpu_ns $px); b1=$(cpu_ns $be)
        echo "$r proxy_cpu_s=$(echo "($p1-$p0)/1000000000" | bc -l | xargs printf %.2f) backend_cpu_s=$(echo "($b1-$b0)/1000000000" | bc -l | xargs printf %.2f)" > "$out"
    '
    if ! flock "${FLOCK_ARGS[@]}" "$LOCK" bash -c "$script" _ "$px" "$be" "$CPU_SH" "$WORK/$name.txt" "$@"; then
        echo "# $name: $LOCK not free after ${LOCK_WAIT}s: measured without it" >&2
        bash -c "$script" _ "$px" "$be" "$CPU_SH" "$WORK/$name.txt" "$@"
        sed -i 's/$/ unlocked=1/' "$WORK/$name.txt"
    fi
    printf '%-22s %s\n' "$name" "$(cat "$WORK/$name.txt")"
}
field() { tr ' ' '\n' < "$WORK/$1.txt" | sed -n "s/^$2=//p" | head -1; }
per_cpu() { # NAME -> MB (bulk) or handshakes per proxy CPU-second
    local cpu; cpu=$(field "$1" proxy_cpu_s)
    if [ -n "$(field "$1" bytes)" ]; then echo "$(field "$1" bytes) $cpu" | awk '{ if ($2 > 0) printf "%.0f", $1/1e6/$2; else print "NA" }'
    else echo "$(field "$1" handshakes) $cpu" | awk '{ if ($2 > 0) printf "%.0f", $1/$2; else print "NA" }'; fi
}

echo "# bench-conf $(date -u +%FT%TZ) DUR=${DUR}s, 2 cores shared; work dir $WORK"
echo "# TLS library ceiling (make bench-tls, in-process, same machine):"
flock "${FLOCK_ARGS[@]}" "$LOCK" "$BUILD/bench/tls_bench" 1.0 > "$WORK/ceiling.txt" 2>&1 ||
    "$BUILD/bench/tls_bench" 1.0 > "$WORK/ceiling.txt" 2>&1
grep -E "resumed, session ticket|CHACHA20|full, ECDHE secp256r1" "$WORK/ceiling.txt" | sed 's/^/#   /'
CEIL_ENCDEC=$(awk '/CHACHA20-POLY1305/{print $2; exit}' "$WORK/ceiling.txt")
CEIL_DEC=$(awk '/CHACHA20-POLY1305/{print $4; exit}' "$WORK/ceiling.txt")
CEIL_RES=$(awk '/resumed, session ticket/{print $4; exit}' "$WORK/ceiling.txt")

T=$BUILD/bench/tlsload
point nginx_up        "$NGX"  "$TCP_BE" "$T" bulk 127.0.0.1 19443 up "$DUR"
point conf_edge_up    "$EDGE" "$MUX_BE" "$T" bulk 127.0.0.1 19543 up "$DUR" "$KSINK"
point nginx_down      "$NGX"  "$TCP_BE" "$T" bulk 127.0.0.1 19444 down "$DUR"
point conf_edge_down  "$EDGE" "$MUX_BE" "$T" bulk 127.0.0.1 19543 down "$DUR" "$KSOURCE"
point nginx_tls_up    "$NGX"  "$STUNNEL" "$T" bulk 127.0.0.1 19445 up "$DUR"
point nginx_tls_down  "$NGX"  "$STUNNEL" "$T" bulk 127.0.0.1 19446 down "$DUR"
point nginx_hs_full   "$NGX"  "$TCP_BE" "$T" hs 127.0.0.1 19443 full "$DUR"
point conf_edge_hs_full "$EDGE" "$MUX_BE" "$T" hs 127.0.0.1 19543 full "$DUR"
point nginx_hs_resumed "$NGX" "$TCP_BE" "$T" hs 127.0.0.1 19443 resumed "$DUR"
point conf_edge_hs_resumed "$EDGE" "$MUX_BE" "$T" hs 127.0.0.1 19543 resumed "$DUR"

ratio() { echo "$1 $2" | awk '{ if ($2 > 0 && $1 != "NA") printf "%.2f", $1/$2; else print "NA" }'; }
echo "# per proxy CPU-second (conf-edge / nginx = ratio); conf-edge pays two ciphers per byte (client TLS + mTLS link)"
for t in up down; do
    c=$(per_cpu conf_edge_$t); n=$(per_cpu nginx_$t)
    printf 'bulk %-4s MB/s conf-edge=%s nginx=%s | MB per proxy CPU-s conf-edge=%s nginx=%s ratio=%s | vs the TLS library ceiling enc+dec %s (%s) decrypt-only %s (%s)\n' \
        "$t" "$(field conf_edge_$t MBps)" "$(field nginx_$t MBps)" "$c" "$n" "$(ratio "$c" "$n")" \
        "$CEIL_ENCDEC" "$(ratio "$c" "$CEIL_ENCDEC")" "$CEIL_DEC" "$(ratio "$c" "$CEIL_DEC")"
done
for t in full resumed; do
    c=$(per_cpu conf_edge_hs_$t); n=$(per_cpu nginx_hs_$t)
    printf 'handshakes %-7s per s conf-edge=%s nginx=%s | per proxy CPU-s conf-edge=%s nginx=%s ratio=%s\n' \
        "$t" "$(field conf_edge_hs_$t per_s)" "$(field nginx_hs_$t per_s)" "$c" "$n" "$(ratio "$c" "$n")"
done
echo "# like for like: nginx re-encrypting to its backend (proxy_ssl), two ciphers per byte as conf-edge"
for t in up down; do
    c=$(per_cpu conf_edge_$t); n=$(per_cpu nginx_tls_$t)
    printf 'bulk %-4s two ciphers | MB/s conf-edge=%s nginx+proxy_ssl=%s | MB per proxy CPU-s conf-edge=%s nginx+proxy_ssl=%s ratio=%s\n' \
        "$t" "$(field conf_edge_$t MBps)" "$(field nginx_tls_$t MBps)" "$c" "$n" "$(ratio "$c" "$n")"
done
echo "# resumed-handshake ceiling (server side, in-process): $CEIL_RES per CPU-second"
