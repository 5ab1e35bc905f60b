#!/usr/bin/env bash
# Builds the network-namespace lab: hosts as namespaces joined by veth links and bridges, every
# address from 198.18.0.0/15 (plan.env, README.md), then starts the daemons that are built.
# Any failure tears everything down again (down.sh), so a failed run leaves nothing behind.
#
# Usage: deploy/lab/up.sh [--no-daemons]      (root; run from anywhere)
# Environment:
#   EDGELAB_BUILD    build directory with bin/<role> (default: build)
#   EDGELAB_DIR      state: generated configs, certificates, logs, pids (default: build/lab)
#   EDGELAB_AV       number of av-edge hosts, 1..3 (default 1)
#   EDGELAB_FAIL_AT  fail on purpose after this step (tests prove the tear-down): links, hosts,
#                    firewall, daemons
#   EDGELAB_OWNER    who the lab belongs to, kept in /run/edgelab.owner (default "manual"; the
#                    tests put "test PID" there, so a test never tears down a lab made by hand)
# One lab per machine (the names are fixed): up.sh and down.sh serialize on /run/lock/edgelab.lock
# unless the caller holds it already (EDGELAB_LOCK_HELD=1, as the tests do).
set -eEuo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
# shellcheck source=plan.env
. "$HERE/plan.env"
P=$LAB_PREFIX
BUILD=${EDGELAB_BUILD:-$ROOT/build}
LABDIR=${EDGELAB_DIR:-$ROOT/build/lab}
NAV=${EDGELAB_AV:-1}
DAEMONS=1
[ "${1:-}" = "--no-daemons" ] && DAEMONS=0

case $NAV in 1 | 2 | 3) ;; *) echo "lab: EDGELAB_AV must be 1, 2 or 3" >&2; exit 2 ;; esac
if [ "$(id -u)" -ne 0 ]; then
    echo "lab: needs root (network namespaces, veth, nftables)" >&2
    exit 2
fi
for tool in ip nft; do
    command -v $tool >/dev/null || { echo "lab: $tool is missing (deploy/install-deps.sh)" >&2; exit 2; }
done
if [ "${EDGELAB_LOCK_HELD:-0}" != 1 ]; then
    mkdir -p /run/lock
    exec 9>/run/lock/edgelab.lock
    flock -w 180 9 || { echo "lab: another lab run holds /run/lock/edgelab.lock" >&2; exit 2; }
fi
if ip netns list | grep -q "^$P-"; then
    echo "lab: a lab is already up (ip netns list shows $P-*); run deploy/lab/down.sh first" >&2
    exit 2
fi

teardown_on_error() {
    local rc=$? line=$1
    [ $# -gt 1 ] && rc=$2
    trap - ERR INT TERM
    echo "lab: setup failed (line $line, exit $rc); tearing down" >&2
    "$HERE/down.sh" >&2 || true
    exit "$rc"
}
trap 'teardown_on_error $LINENO' ERR
trap 'teardown_on_error $LINENO 130' INT TERM

fail_at() {
    if [ "${EDGELAB_FAIL_AT:-}" = "$1" ]; then
        echo "lab: failing after step '$1' as asked (EDGELAB_FAIL_AT)" >&2
        return 1
    fi
}

AV_HOSTS=""
for i in $(seq 1 "$NAV"); do AV_HOSTS="$AV_HOSTS av$i"; done
EDGES="access conf$AV_HOSTS revproxy"
HOSTS="inet homertr user $EDGES isw director web iuser"

ns() { echo "$P-$1"; }
nsx() { local n=$1; shift; ip netns exec "$P-$n" "$@"; }

# A veth pair created directly inside its two namespaces, so no end ever sits in the host's
# namespace (nothing to leak there if the run dies half way). Interface names live inside the
# namespaces and disappear with them.
link() { # link NS_A IF_A NS_B IF_B
    ip link add "$2" netns "$P-$1" type veth peer name "$4" netns "$P-$3"
    ip -n "$P-$1" link set "$2" up
    ip -n "$P-$3" link set "$4" up
}
addr() { ip -n "$P-$1" addr add "$3" dev "$2"; }
bridge_port() { ip -n "$P-$1" link set "$2" master "$3"; }
upper() { echo "$1" | tr '[:lower:]' '[:upper:]'; }
# The plan.env addresses of an edge host: ext and int.
ext_of() { local v; v="$(upper "$1")_EXT"; echo "${!v}"; }
int_of() { local v; v="$(upper "$1")_INT"; echo "${!v}"; }

mkdir -p "$LABDIR"
: >"$LABDIR/pids"
echo "${EDGELAB_OWNER:-manual} $LABDIR" >/run/edgelab.owner

# --- hosts -----------------------------------------------------------------------------------
for h in $HOSTS; do
    ip netns add "$P-$h"
    ip -n "$P-$h" link set lo up
    # Routers forward; every other host (the edges above all) must not.
    case $h in inet | homertr) fwd=1 ;; *) fwd=0 ;; esac
    nsx "$h" sysctl -qw net.ipv4.ip_forward=$fwd net.ipv6.conf.all.disable_ipv6=1
done
fail_at hosts

# --- links -----------------------------------------------------------------------------------
# Internet segment 198.18.0.0/24: the internet host and the home NAT router's WAN side.
link inet home homertr wan
addr inet home "$INET/24"
addr homertr wan "$HOMERTR_WAN/24"
# Home LAN behind the NAT.
link homertr lan user eth0
addr homertr lan "$HOMERTR_LAN/24"
addr user eth0 "$USER/24"
# Perimeter, external side 198.18.10.0/24: a bridge in the internet router, one port per edge.
ip -n "$P-inet" link add perim type bridge
ip -n "$P-inet" link set perim up
addr inet perim "$INET_PERIM/24"
# Internal network 198.19.10.0/24: a switch (bridge in its own namespace, no address).
ip -n "$P-isw" link add lan type bridge
ip -n "$P-isw" link set lan up
for e in $EDGES; do
    link inet "p-$e" "$e" ext
    bridge_port inet "p-$e" perim
    addr "$e" ext "$(ext_of "$e")/24"
    link isw "i-$e" "$e" int
    bridge_port isw "i-$e" lan
    addr "$e" int "$(int_of "$e")/24"
done
for h in director web iuser; do
    link isw "i-$h" "$h" eth0
    bridge_port isw "i-$h" lan
done
addr director eth0 "$DIRECTOR/24"
addr web eth0 "$WEB/24"
addr iuser eth0 "$IUSER/24"
fail_at links

# --- routes ----------------------------------------------------------------------------------
# The internet host knows only the internet segment and the perimeter's external segment: the
# home LAN is reached through the NAT's public address, the internal network not at all.
ip -n "$P-homertr" route add default via "$INET"
ip -n "$P-user" route add default via "$HOMERTR_LAN"
for e in $EDGES; do
    # Edges answer the internet through the perimeter router; the internal side is on-link.
    ip -n "$P-$e" route add default via "$INET_PERIM"
done

# --- firewall --------------------------------------------------------------------------------
nsx inet nft -f "$HERE/perimeter.nft"
nsx homertr nft -f - <<'NFT'
table ip nat {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan" masquerade
    }
}
NFT
# Strong host model on the edges: a packet is taken only on the interface that owns its
# destination address, so nobody on the external side can reach a service bound to the internal
# address by routing through the edge (Linux accepts it on any interface otherwise).
for e in $EDGES; do
    nsx "$e" nft -f - <<'NFT'
table inet edge {
    chain input {
        type filter hook input priority filter; policy accept;
        iif lo accept
        fib daddr . iif type != { local, broadcast, multicast } counter drop
    }
}
NFT
done
fail_at firewall

# --- daemons ---------------------------------------------------------------------------------
# Which namespace each role runs in, and where its lab config comes from. A role starts when its
# binary and its default config exist; otherwise it is skipped with the reason printed.
role_host() {
    case $1 in
    director) echo director ;;
    access-edge) echo access ;;
    conf-edge) echo conf ;;
    av-edge) echo av1 ;;
    revproxy) echo revproxy ;;
    esac
}

# start_role ROLE HOST [INSTANCE]: generate the lab config, check it, start the daemon in HOST's
# namespace with its stderr in $LABDIR/INSTANCE.log and its pid in $LABDIR/pids.
start_role() {
    local role=$1 host=$2 inst=${3:-$1}
    local bin=$BUILD/bin/$role default=$ROOT/deploy/config/$role.yaml conf=$LABDIR/$inst.yaml
    if [ ! -x "$bin" ]; then
        echo "lab: $inst skipped: $bin is not built yet"
        return 0
    fi
    if [ ! -f "$default" ]; then
        echo "lab: $inst skipped: no default config $default to derive the lab config from"
        return 0
    fi
    python3 "$ROOT/deploy/genconf.py" --host "$host" --certs "$LABDIR/certs" --instance "$inst" --state "$LABDIR" \
        "$default" >"$conf"
    if ! "$bin" -c "$conf" --check >"$LABDIR/$inst.check" 2>&1; then
        echo "lab: $inst skipped: its lab config does not validate:"
        sed 's/^/    /' "$LABDIR/$inst.check"
        return 0
    fi
    # 9>&-: the daemon must not inherit the lab lock, or the lock lives as long as the daemon.
    (cd "$ROOT" && exec ip netns exec "$P-$host" "$bin" -c "$conf") >"$LABDIR/$inst.log" 2>&1 9>&- &
    echo "$! $inst $host" >>"$LABDIR/pids"
    echo "lab: $inst started in $(ns "$host") (pid $!, log $LABDIR/$inst.log)"
}

# The internal web server (the reverse proxy's upstream): HTTPS on the web host, port 443.
start_web() {
    # 9>&-: see start_role.
    ip netns exec "$P-web" python3 "$HERE/webserver.py" "$WEB" 443 "$LABDIR/certs/web.crt" \
        "$LABDIR/certs/web.key" "$ROOT/deploy/compose/web/htdocs" >"$LABDIR/web.log" 2>&1 9>&- &
    echo "$! web web" >>"$LABDIR/pids"
    echo "lab: web server started in $P-web (https://$WEB/, log $LABDIR/web.log)"
}

start_daemons() {
    "$ROOT/deploy/certs.sh" "$LABDIR/certs" >/dev/null
    start_web
    start_role director director
    start_role access-edge access
    start_role conf-edge conf
    for i in $(seq 1 "$NAV"); do start_role av-edge "av$i" "av-edge-$i"; done
    start_role revproxy revproxy
}

if [ "$DAEMONS" = 1 ]; then
    start_daemons
fi
fail_at daemons

trap - ERR INT TERM
echo "lab: up: $(echo $HOSTS | wc -w) hosts ($P-*), state in $LABDIR; deploy/lab/down.sh tears it down"
