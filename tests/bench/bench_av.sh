#!/bin/bash
# bench-av: av-edge and coturn side by side under the same load from our batching generator
# (tests/bench/turnload.c): relayed packets per server CPU-second for 172- and 1200-byte
# payloads with 10 and 100 clients, STUN Binding answers and authenticated allocations per
# CPU-second, resident memory per 1,000 allocations. Each server is pinned to CPU 0 and the
# generator to CPU 1; server CPU is utime+stime from /proc/<pid>/stat.
# Usage: tests/bench/bench_av.sh [BUILD]   (env: SECS per point, default 10; POINTS, a
# subset of "hold stun alloc relay"; TURNLOAD_NO_GSO=1 sends the load with sendmmsg)
set -u
BUILD=${1:-build}
BIN=$BUILD/bin
SECS=${SECS:-10}
POINTS=${POINTS:-hold stun alloc relay}   # which points to run
SECRET=bench-secret
REALM=bench.lab
[ -x "$BIN/av-edge" ] && [ -x "$BIN/turnload" ] || { echo "build first (make)"; exit 1; }
command -v turnserver >/dev/null || { echo "coturn (turnserver) is not installed"; exit 1; }

# Each measured point holds /tmp/bench.lock (shared with the other benchmarks on this host).
ulimit -n 65536 2>/dev/null || ulimit -n 4096
TMP=$(mktemp -d /tmp/bench-av.XXXX)
SRV=""
cleanup() { [ -n "$SRV" ] && kill "$SRV" 2>/dev/null && wait "$SRV" 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT

# A port free for both UDP and TCP on 127.0.0.1 and 127.0.0.13.
free_port() { python3 -c '
import socket
while True:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close()
    try:
        for h in ("127.0.0.1", "127.0.0.13"):
            for k in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                t = socket.socket(socket.AF_INET, k); t.bind((h, p)); t.close()
        print(p); break
    except OSError:
        continue
'; }
rss_kb() { awk '/VmRSS/ {print $2}' /proc/$1/status; }
gen() { flock /tmp/bench.lock timeout $((SECS + 60)) taskset -c 1 "$BIN/turnload" "$@"; }

# The STUN point measures the cost of answering: turnload sends each 20-byte Binding once, and
# by default (strict_amplification) a source's first ones go unanswered until what it sent
# covers the answer, as coturn's do not.
start_av() {
    PORT=$(free_port); IP=127.0.0.13
    cat > "$TMP/av.yaml" <<YAML
admin: { listen: $IP:$(free_port) }  # not on 127.0.0.1: the peers' address, and every address the edge listens on is a denied peer
log: { level: warn }
external: { listen: [$IP:$PORT], tcp_listen: [], tls_listen: [], allow_peers: [127.0.0.1/32] }
internal: { listen: [] }
relay: { addresses: [$IP], port_min: 30001, port_max: 40000 }
auth: { realm: $REALM, secret: $SECRET, unauth_rate: 0, strict_amplification: false }
limits: { user_quota: 0, total_quota: 0, allocations_per_credential: 0, packets_per_second: 10000000 }
director: { enabled: false }
YAML
    taskset -c 0 "$BIN/av-edge" -c "$TMP/av.yaml" > "$TMP/av.log" 2>&1 &
    SRV=$!
}

start_coturn() {
    PORT=$(free_port); IP=127.0.0.1
    taskset -c 0 turnserver -n --no-cli --no-tls --no-dtls -L $IP -E $IP -p "$PORT" \
        --min-port 30001 --max-port 40000 --allow-loopback-peers --use-auth-secret \
        --static-auth-secret=$SECRET -r $REALM --no-rfc5780 --total-quota=0 --user-quota=0 \
        --log-file "$TMP/coturn.log" --simple-log --no-stdout-log --pidfile "$TMP/coturn.pid" \
        > /dev/null 2>&1 &
    SRV=$!
}

declare -A R
boot() { # name: starts the server pinned to CPU 0 and exports SERVER_PID for turnload
    "start_$1"
    sleep 1
    kill -0 "$SRV" 2>/dev/null || { echo "$1 failed to start"; cat "$TMP"/*.log 2>/dev/null | tail; exit 1; }
    taskset -a -p 0x1 "$SRV" > /dev/null
    export SERVER_PID=$SRV
}
halt() { kill "$SRV"; wait "$SRV" 2>/dev/null; SRV=""; }

run_server() { # name
    local name=$1 out r0 r1
    if [[ " $POINTS " == *" hold "* || " $POINTS " == *" stun "* || " $POINTS " == *" alloc "* ]]; then
        boot "$name"
        if [[ " $POINTS " == *" hold "* ]]; then
            r0=$(rss_kb "$SRV")
            gen hold $IP "$PORT" $SECRET $REALM 1000 4 > "$TMP/hold.out" 2>&1 &
            local hp=$!
            # (the generator may first wait for the bench lock)
            while kill -0 $hp 2>/dev/null && ! grep -q "HOLD allocated" "$TMP/hold.out"; do sleep 0.2; done
            sleep 1
            r1=$(rss_kb "$SRV")
            echo "$name $(head -1 "$TMP/hold.out") rss_before_kb=$r0 rss_held_kb=$r1" >&2
            wait $hp
            R[$name,rss]=$(( r1 - r0 ))
            sleep 1
        fi
        if [[ " $POINTS " == *" stun "* ]]; then
            out=$(gen stun $IP "$PORT" "$SECS" 8 64); echo "$name $out" >&2
            R[$name,stun]=$(grep -oP 'answers_per_cpu_s=\K[0-9]+' <<< "$out")
        fi
        if [[ " $POINTS " == *" alloc "* ]]; then
            out=$(gen alloc $IP "$PORT" $SECRET $REALM "$SECS" 32); echo "$name $out" >&2
            R[$name,alloc]=$(grep -oP 'allocs_per_cpu_s=\K[0-9]+' <<< "$out")
        fi
        halt
    fi
    # The relay points get a fresh server: the allocation point can leave thousands of
    # allocations behind (coturn, past its rate, answered 45,000 of them with errors and
    # then refused the 10-client relay point's first Allocate).
    if [[ " $POINTS " == *" relay "* ]]; then
        boot "$name"
        for len in 172 1200; do
            for n in 10 100; do
                out=$(gen relay $IP "$PORT" $SECRET $REALM $n $len "$SECS"); echo "$name $out" >&2
                R[$name,relay,$len,$n]=$(grep -oP 'pkts_per_cpu_s=\K[0-9]+' <<< "$out")
                R[$name,loss,$len,$n]=$(grep -oP 'loss_pct=\K[0-9.]+' <<< "$out")
                R[$name,pps,$len,$n]=$(grep -oP 'relayed_pps=\K[0-9]+' <<< "$out")
            done
        done
        halt
    fi
}

run_server av
run_server coturn

set +u # points left out by POINTS print empty
ratio() { awk -v a="${1:-0}" -v b="${2:-0}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
echo
echo "bench-av ($SECS s per point; server on CPU 0, turnload on CPU 1; $(turnserver --version 2>/dev/null | tail -1))"
printf "%-40s %14s %14s %8s\n" "metric" "av-edge" "coturn" "ratio"
printf "%-40s %14s %14s %8s\n" "STUN Binding answers per CPU-second" "${R[av,stun]}" "${R[coturn,stun]}" "$(ratio "${R[av,stun]}" "${R[coturn,stun]}")"
printf "%-40s %14s %14s %8s\n" "allocations per CPU-second" "${R[av,alloc]}" "${R[coturn,alloc]}" "$(ratio "${R[av,alloc]}" "${R[coturn,alloc]}")"
for len in 172 1200; do
    for n in 10 100; do
        printf "%-40s %14s %14s %8s   (loss %s%% / %s%%)\n" "relayed pkts per CPU-s, ${len} B, $n clients" \
            "${R[av,relay,$len,$n]}" "${R[coturn,relay,$len,$n]}" \
            "$(ratio "${R[av,relay,$len,$n]}" "${R[coturn,relay,$len,$n]}")" \
            "${R[av,loss,$len,$n]}" "${R[coturn,loss,$len,$n]}"
    done
done
printf "%-40s %14s %14s %8s\n" "RSS per 1,000 allocations (kB)" "${R[av,rss]}" "${R[coturn,rss]}" "$(ratio "${R[av,rss]}" "${R[coturn,rss]}")"
