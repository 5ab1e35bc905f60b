#!/bin/bash
# make bench-sip: calls and MESSAGEs per second and per CPU-second of the proxy, for our
# access edge and for Kamailio as a stateful edge proxy, on the same sipp scenarios, in one run.
#
#   sipp UAC --UDP--> proxy under test --UDP--> sipp UAS ("Director")
#
# Usage: tests/bench/bench_sip.sh [BUILD]   Env: CALL_RATE (1300) TLS_CALL_RATE (500)
#        MSG_RATE (4000) DUR (10 s) POINTS="calls messages tls-calls" TARGETS="edge kamailio"
#        TOPOLOGY_HIDING=1 (the edge rewrites Record-Route/Contact/Via toward the UAC side)
# TLS: sipp as packaged has no TLS, so each side's sipp UAC talks TCP to a local stunnel
# that opens TLS to the proxy (stunnel's CPU is the load generator's, not counted). sipp runs
# -t t1: every call on one long-lived TLS connection, as a partner's or a trunk's link; -t tn
# would make stunnel open one TLS connection per call and measure handshakes instead. The
# TLS rate is lower than the UDP one because Kamailio serves one TLS connection from one TCP
# worker, about one core (~1,000 calls/s quiet, ~700/s on the shared machine); past that it
# fails calls (408s from its transaction timer, 180s reordered behind 200s by its two
# workers). At 500/s both sides hold the rate with 0 failed even under shared load.
# The TLS point also runs our edge as built with OpenSSL (OSSL_BUILD, default build-openssl:
# `make bench-sip` builds it), as target edge-openssl, beside the mbedTLS one and Kamailio.
# Each timed run holds /tmp/bench.lock. CPU is cpu_ns (tests/bench/cpu.sh: every thread's
# run time in ns; Kamailio: the main process and its children).
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${1:-build}
case "$BUILD" in /*) ;; *) BUILD="$ROOT/$BUILD" ;; esac
HERE="$ROOT/tests/bench/sip"
CALL_RATE=${CALL_RATE:-1300}; TLS_CALL_RATE=${TLS_CALL_RATE:-500}; MSG_RATE=${MSG_RATE:-4000}; DUR=${DUR:-10}
POINTS=${POINTS:-"calls messages tls-calls"}; TARGETS=${TARGETS:-"edge kamailio"}
OSSL_BUILD=${OSSL_BUILD:-$ROOT/build-openssl}
OSSL=0; [ -x "$OSSL_BUILD/bin/access-edge" ] && [ "$OSSL_BUILD" != "$BUILD" ] && OSSL=1
OUT=$(mktemp -d /tmp/bench_sip.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; }
trap cleanup EXIT

EDGE_EXT=127.0.0.11:25060; EDGE_INT=127.0.0.21:25060; EDGE_UAS=127.0.0.3:25070
KAM=127.0.0.1:25080; KAM_UAS=127.0.0.3:25071
EDGE_TLS=127.0.0.11:25061; KAM_TLS=127.0.0.1:25081
EDGE_STUNNEL=127.0.0.2:25062; KAM_STUNNEL=127.0.0.2:25082
OSSL_EXT=127.0.0.11:25064; OSSL_INT=127.0.0.21:25064; OSSL_TLS=127.0.0.11:25065
OSSL_STUNNEL=127.0.0.2:25066

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$OUT/edge.key" \
    -out "$OUT/edge.crt" -days 2 -subj "/CN=edge.bench" >/dev/null 2>&1
sed -e "s#@KEY@#$OUT/edge.key#; s#@CRT@#$OUT/edge.crt#" "$HERE/tls.cfg" > "$OUT/tls.cfg"
cat > "$OUT/stunnel.conf" <<STUN
foreground = yes
pid =
[edge]
client = yes
accept = $EDGE_STUNNEL
connect = $EDGE_TLS
[kamailio]
client = yes
accept = $KAM_STUNNEL
connect = $KAM_TLS
[edge-openssl]
client = yes
accept = $OSSL_STUNNEL
connect = $OSSL_TLS
STUN

cat > "$OUT/edge.yaml" <<YAML
admin: {listen: 127.0.0.21:25088}
log: {level: warn}
director: {enabled: false}
domains: [example.com, 127.0.0.2]  # the bench UAC addresses the stunnel it talks to
external: {udp: [$EDGE_EXT], tls: [$EDGE_TLS], certs: {cert: $OUT/edge.crt, key: $OUT/edge.key}}
internal: {udp: [$EDGE_INT]}
next_hop: {address: $EDGE_UAS, transport: udp}
limits: {rate: 10000000, burst: 10000000}
topology_hiding: $([ "${TOPOLOGY_HIDING:-0}" = 1 ] && echo true || echo false)
YAML
"$BUILD/bin/access-edge" -c "$OUT/edge.yaml" > "$OUT/edge.log" 2>&1 &
EPID=$!; PIDS+=($EPID)
OPID=0
if [ $OSSL = 1 ]; then
    sed -e "s#25088#25089#; s#$EDGE_EXT#$OSSL_EXT#; s#$EDGE_INT#$OSSL_INT#; s#$EDGE_TLS#$OSSL_TLS#" \
        "$OUT/edge.yaml" > "$OUT/edge-openssl.yaml"
    "$OSSL_BUILD/bin/access-edge" -c "$OUT/edge-openssl.yaml" > "$OUT/edge-openssl.log" 2>&1 &
    OPID=$!; PIDS+=($OPID)
fi
sed -e "s#@LISTEN@#$KAM#; s#@LISTEN_TLS@#$KAM_TLS#; s#@NEXTHOP@#$KAM_UAS#; s#@TLS_CFG@#$OUT/tls.cfg#" \
    "$HERE/kamailio.cfg" > "$OUT/kamailio.cfg"
kamailio -f "$OUT/kamailio.cfg" -DD -E -m 512 -M 16 -n 2 > "$OUT/kamailio.log" 2>&1 &
KPID=$!; PIDS+=($KPID)
stunnel4 "$OUT/stunnel.conf" > "$OUT/stunnel.log" 2>&1 &
PIDS+=($!)
sleep 2
kill -0 $EPID 2>/dev/null || { echo "access-edge did not start"; tail -5 "$OUT/edge.log"; exit 1; }
[ $OSSL = 0 ] || kill -0 $OPID 2>/dev/null ||
    { echo "access-edge (OpenSSL) did not start"; tail -5 "$OUT/edge-openssl.log"; exit 1; }
kill -0 $KPID 2>/dev/null || { echo "kamailio did not start"; tail -5 "$OUT/kamailio.log"; exit 1; }

udp_bound() { ss -Hlun "( sport = :$2 )" 2>/dev/null | grep -q "$1:$2"; }
uas() { # $1 scenario(uas|msg) $2 addr
  local ip=${2%:*} port=${2#*:} i log
  log="$OUT/uas-$1-$port.log"
  # The previous point's UAS may still be exiting: a second one could not bind.
  for i in $(seq 100); do udp_bound "$ip" "$port" || break; sleep 0.1; done
  if [ "$1" = uas ]; then
    sipp -sn uas -i "$ip" -p "$port" -t u1 -nostdin > "$log" 2>&1 < /dev/null &
  else
    sipp -sf "$HERE/msg_uas.xml" -i "$ip" -p "$port" -t u1 -nostdin > "$log" 2>&1 < /dev/null &
  fi
  local pid=$!
  for i in $(seq 50); do udp_bound "$ip" "$port" && break; sleep 0.1; done
  udp_bound "$ip" "$port" || echo "bench-sip: the $1 UAS on $2 did not start (see $log)" >&2
  echo $pid
}

run() { # $1 target $2 point $3 proxy addr $4 proxy pid
  local D="$OUT/$1-$2" rate sf tp=u1
  mkdir -p "$D"
  if [ "$2" = messages ]; then rate=$MSG_RATE; sf=msg_uac.xml; else rate=$CALL_RATE; sf=uac.xml; fi
  [ "$2" = tls-calls ] && { tp=t1; rate=$TLS_CALL_RATE; }
  flock /tmp/bench.lock bash -c '
    D=$1; PID=$2; RATE=$3; DUR=$4; SF=$5; TARGET=$6; TP=$7  # $8: cpu.sh
    . "$8"
    k0=$(cpu_ns $PID); t0=$(date +%s.%N)
    cd "$D" && sipp "$TARGET" -sf "$SF" -s director -t "$TP" -i 127.0.0.2 -p 25091 \
      -r "$RATE" -m $(( RATE * DUR )) -l 20000 -timeout $(( DUR * 3 ))s -recv_timeout 10000 \
      -nostdin -default_behaviors all,-abortunexp -trace_err -trace_stat -stf "$D/stat.csv" -fd 1 \
      > /dev/null 2>&1 < /dev/null
    t1=$(date +%s.%N); k1=$(cpu_ns $PID)
    echo "$k0 $k1 $t0 $t1" > "$D/cpu"
  ' _ "$D" "$4" "$rate" "$DUR" "$HERE/$sf" "$3" "$tp" "$ROOT/tests/bench/cpu.sh"
}

for point in $POINTS; do
  sc=uas; [ "$point" = messages ] && sc=msg
  U1=$(uas $sc $EDGE_UAS); U2=$(uas $sc $KAM_UAS); PIDS+=($U1 $U2); sleep 0.5
  targets=$TARGETS
  [ "$point" = tls-calls ] && [ $OSSL = 1 ] && targets="$TARGETS edge-openssl"
  for t in $targets; do
    if [ "$point" = tls-calls ]; then ea=$EDGE_STUNNEL; ka=$KAM_STUNNEL; else ea=$EDGE_EXT; ka=$KAM; fi
    case $t in
    edge) run edge "$point" "$ea" $EPID ;;
    edge-openssl) run edge-openssl "$point" $OSSL_STUNNEL $OPID ;;
    *) run kamailio "$point" "$ka" $KPID ;;
    esac
  done
  kill $U1 $U2 2>/dev/null; wait $U1 $U2 2>/dev/null
done

python3 - "$OUT" "$POINTS" "$TARGETS edge-openssl" "$CALL_RATE" "$MSG_RATE" "$TLS_CALL_RATE" <<'PY'
import csv, os, sys
out, points, targets, crate, mrate, trate = sys.argv[1:]
target = lambda p: float({'messages': mrate, 'tls-calls': trate}.get(p, crate))
res = {}
for p in points.split():
    for t in targets.split():
        d = f"{out}/{t}-{p}"
        try:
            rows = list(csv.reader(open(d + "/stat.csv"), delimiter=';'))
        except OSError:
            continue
        h, last = rows[0], rows[-1]
        g = lambda k, r=last: r[h.index(k)]
        ep = lambda c: float(c.split('\t')[-1])
        created, ok = int(g('TotalCallCreated')), int(g('SuccessfulCall(C)'))
        # The rate held is over the time sipp took to create every call: a call that fails
        # by timeout (-recv_timeout) only stretches the run's tail, and counts as failed.
        done = next(r for r in rows[1:] if int(g('TotalCallCreated', r)) == created)
        el = max(ep(g('CurrentTime', done)) - ep(g('StartTime', done)), 1e-3)
        k0, k1, t0, t1 = open(d + "/cpu").read().split()
        cpu = (int(k1) - int(k0)) / 1e9
        fail = 100.0 * (created - ok) / max(created, 1)
        res[(t, p)] = (ok / el, fail, cpu, ok / cpu if cpu else float('inf'))
        print(f"{t:12s} {p:9s} target={target(p):.0f}/s achieved={ok / el:7.0f}/s "
              f"failed={fail:.3f}% cpu={cpu:.2f}s ({100 * cpu / (float(t1) - float(t0)):.0f}% of a core) "
              f"per_cpu_second={res[(t, p)][3]:8.0f}")
for p in points.split():
    for edge in ('edge', 'edge-openssl'):
        if (edge, p) not in res or ('kamailio', p) not in res:
            continue
        e, k = res[(edge, p)], res[('kamailio', p)]
        # Like for like only when both held the offered rate with (almost) no failures.
        ok = e[1] < 0.1 and k[1] < 0.1
        held = min(e[0], k[0]) >= 0.98 * target(p)
        note = 'both under 0.1% failed' if ok else 'WARNING: a side failed >= 0.1%'
        if not held:
            note += ', WARNING: a side did not hold the offered rate'
        print(f"ratio {p}: {edge}/kamailio per CPU-second = {e[3] / k[3]:.2f}x ({note})")
print(f"out={out}")
PY
