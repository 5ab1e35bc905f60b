#!/usr/bin/env bash
# Starts the whole suite on loopback with deploy/config/*.yaml: the Director first, then
# every edge that is built. Prints where each listens; Ctrl-C (or SIGTERM) stops them all.
# Usage: deploy/run.sh [BUILD_DIR]
set -u
BUILD=${1:-build}
cd "$(dirname "$0")/.."
deploy/certs.sh build/certs >/dev/null || { echo "run: cannot make lab certificates" >&2; exit 1; }

ROLES="director access-edge conf-edge av-edge revproxy"
pids=()
names=()

stop_all() {
    trap - INT TERM
    echo
    echo "run: stopping ${names[*]}"
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
    exit 0
}
trap stop_all INT TERM

if [ "$(id -u)" -ne 0 ]; then
    echo "run: note: the lab plan uses ports below 1024 (80, 443); run as root or change deploy/config/" >&2
fi

for role in $ROLES; do
    bin="$BUILD/bin/$role"
    conf="deploy/config/$role.yaml"
    if [ ! -x "$bin" ]; then
        echo "run: $role is not built yet: left out"
        continue
    fi
    if [ ! -f "$conf" ]; then
        echo "run: $conf is missing: $role left out"
        continue
    fi
    if ! "$bin" -c "$conf" --check >/dev/null; then
        "$bin" -c "$conf" --check
        echo "run: $role left out: its config does not validate" >&2
        continue
    fi
    # Each line of a daemon's log gets its role in front, so the interleaved output reads.
    "$bin" -c "$conf" 2> >(sed -u "s/^/[$role] /" >&2) &
    pids+=($!)
    names+=("$role")
    admin=$(sed -n '/^admin:/,/^[^ ]/s/^ *listen: *//p' "$conf" | head -1)
    [ -n "$admin" ] || admin=$(sed -n 's/^admin: *{ *listen: *\([^ }]*\).*/\1/p' "$conf" | head -1)
    for _ in $(seq 1 50); do
        curl -fsS -m 1 "http://$admin/healthz" >/dev/null 2>&1 && break
        sleep 0.1
    done
    if curl -fsS -m 1 "http://$admin/healthz" >/dev/null 2>&1; then
        echo "run: $role up (admin http://$admin/metrics, http://$admin/healthz)"
    else
        echo "run: $role did not answer /healthz at $admin yet (see its log lines)"
    fi
done

[ ${#pids[@]} -gt 0 ] || { echo "run: nothing to run (make first)" >&2; exit 1; }
cat <<'TXT'

Lab address plan (see README.md, "Ports"):
  director     127.0.0.10  ctl 7400 (mTLS), SIP 5061, admin 8080 (GET /edges)
  access-edge  127.0.0.11  SIP 5060 UDP/TCP, 5061 TLS, 443 TLS, WSS 8443 | internal 127.0.0.21
  conf-edge    127.0.0.12  443 TLS | internal 127.0.0.22:8057 (mTLS, conferencing server dials in)
  av-edge      127.0.0.13  STUN/TURN 3478 UDP/TCP, 5349 TLS, relay 50000-59999 | internal 127.0.0.23
  revproxy     127.0.0.14  443 HTTPS, 80 redirect | upstream web 127.0.0.24
Press Ctrl-C to stop.
TXT
wait -n "${pids[@]}" 2>/dev/null
echo "run: a daemon exited; stopping the rest" >&2
stop_all
