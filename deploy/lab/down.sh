#!/usr/bin/env bash
# Tears the namespace lab down: stops every process in an edgelab-* namespace (SIGTERM, then
# SIGKILL after a bounded wait), deletes the namespaces (their links and bridges go with them)
# and any stray edgelab-* link in the host's namespace. Idempotent: safe to run at any time,
# after a failed or half-built run too. Usage: deploy/lab/down.sh
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
. "$HERE/plan.env"
P=$LAB_PREFIX
LABDIR=${EDGELAB_DIR:-$ROOT/build/lab}

if [ "$(id -u)" -ne 0 ]; then
    echo "lab: down needs root" >&2
    exit 2
fi

if [ "${EDGELAB_LOCK_HELD:-0}" != 1 ]; then
    mkdir -p /run/lock
    exec 9>/run/lock/edgelab.lock
    flock -w 180 9 || { echo "lab: another lab run holds /run/lock/edgelab.lock" >&2; exit 2; }
fi
# The pids file of the lab that is up, wherever its state lives.
if [ -z "${EDGELAB_DIR:-}" ] && [ -f /run/edgelab.owner ]; then
    LABDIR=$(awk '{print $NF}' /run/edgelab.owner)
fi

spaces=$(ip netns list 2>/dev/null | awk -v p="$P-" 'index($1, p) == 1 {print $1}')

# Processes inside the lab: the daemons up.sh started (pids file) and anything a test started
# with `ip netns exec`. Only namespaces of this lab are looked at.
pids_in_lab() {
    local n
    for n in $spaces; do ip netns pids "$n" 2>/dev/null; done
    if [ -f "$LABDIR/pids" ]; then
        # up.sh records the `ip netns exec` wrapper's pid, which execs the daemon: same pid.
        awk '{print $1}' "$LABDIR/pids" | while read -r p; do
            [ -d "/proc/$p" ] && [ "$(readlink "/proc/$p/ns/net")" != "$(readlink /proc/1/ns/net)" ] && echo "$p"
        done
    fi
}

pids=$(pids_in_lab | sort -un | tr '\n' ' ')
if [ -n "${pids// /}" ]; then
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null
    # Daemons drain on SIGTERM; give them up to 3 s (30 x 0.1 s), then kill what is left.
    for _ in $(seq 1 30); do
        left=""
        for p in $pids; do [ -d "/proc/$p" ] && left="$left $p"; done
        [ -z "$left" ] && break
        sleep 0.1
    done
    if [ -n "${left:-}" ]; then
        echo "lab: killing processes that did not stop on SIGTERM:$left" >&2
        # shellcheck disable=SC2086
        kill -KILL $left 2>/dev/null
        for _ in $(seq 1 20); do
            still=""
            for p in $left; do [ -d "/proc/$p" ] && still="$still $p"; done
            [ -z "$still" ] && break
            sleep 0.1
        done
    fi
fi
rm -f "$LABDIR/pids"

for n in $spaces; do
    ip netns del "$n" 2>/dev/null || echo "lab: could not delete namespace $n" >&2
done
# up.sh never puts a link in the host's namespace; remove any that a foreign tool left there.
for l in $(ip -o link show 2>/dev/null | awk -F': ' -v p="$P-" 'index($2, p) == 1 {sub(/@.*/, "", $2); print $2}'); do
    ip link del "$l" 2>/dev/null || true
done

rm -f /run/edgelab.owner
left_ns=$(ip netns list 2>/dev/null | grep -c "^$P-" || true)
if [ "$left_ns" != 0 ]; then
    echo "lab: $left_ns namespace(s) still there" >&2
    exit 1
fi
echo "lab: down"
