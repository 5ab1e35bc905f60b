#!/usr/bin/env bash
# The compose lab end to end (make compose-test; root; not part of make test):
#   1. installs docker.io, docker-compose, debootstrap and iptables if missing (install-deps.sh,
#      group compose);
#   2. starts a private dockerd (data root, exec root, pid file and socket under $STATE) in the
#      host's network namespace with no bridge, no firewall rules and no forwarding of its own,
#      and builds the Debian base images from this machine's configured Debian mirror, then
#      every role's image (deploy/docker/build-images.sh; build stages use host networking);
#   3. restarts that engine inside a network namespace of its own (its bridges, iptables rules
#      and ip_forward live and die there: the host's stay as they were), brings the lab up and
#      waits until every container with a HEALTHCHECK is healthy;
#   4. runs the end-to-end flows from the client on the external network (flows.py);
#   5. tears everything down (trap, also after a failure or ^C): containers, networks, engine
#      and its containerd shims, the namespace, mounts, cgroups it made, its data root (nothing
#      is cached between runs).
# Prints the time each step takes. Exit 0 only if every flow passed and teardown left nothing.
# Environment: BUILD (default build): $BUILD/compose-test holds the state;
#   COMPOSE_TEST_KEEP=1 keeps the data root (images) from one run to the next: for work on the
#   lab by hand, never in CI; COMPOSE_TEST_HOLD=S keeps the lab up S seconds after the flows
#   (pass or fail) before the teardown, to look at it by hand (DOCKER_HOST as printed).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
BUILD=${BUILD:-build}
STATE=$ROOT/$BUILD/compose-test
SOCK=$STATE/docker.sock
NS=edgecompose-$$
PROJECT=edgecompose
COMPOSE_FILE=deploy/compose/docker-compose.yml
DOCKER=/usr/bin/docker    # Debian's docker.io client (20.10, BuildKit built in)
export DOCKER_HOST=unix://$SOCK
export COMPOSE_PROJECT_NAME=$PROJECT
ENGINE_PID=""
T_ALL=$(date +%s)

say() { echo "compose-test: $*"; }
die() { echo "compose-test: FAIL: $*" >&2; exit 1; }

# step NAME CMD...: runs CMD (set -e applies: a failure ends the run through the trap) and
# prints how long it took.
STEP="" STEP_T0=0
step() {
    STEP=$1 STEP_T0=$(date +%s)
    shift
    say "== $STEP"
    "$@"
    say "== $STEP: ok in $(($(date +%s) - STEP_T0)) s"
    STEP=""
}

[ "$(id -u)" -eq 0 ] || { echo "compose-test: needs root (dockerd, debootstrap, ip netns)" >&2; exit 2; }

# Processes whose command line names our state folder (the engine, its containerd and shims).
state_pids() {
    local p
    for p in /proc/[0-9]*; do
        { tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null | grep -q -- "$STATE/" && echo "${p#/proc/}"
    done
    return 0
}

# What the engine makes outside its state folder and leaves when it stops: its cgroups (cgroupfs
# driver), containerd's shim socket folder, the engine's identity key. Removed at teardown
# unless they were there before.
cgroups_before=""
HOST_FILES="/run/containerd/s /run/containerd /etc/docker/key.json"
host_files_before=""
record_host_files() {
    cgroups_before=$(ls -d /sys/fs/cgroup/*/docker 2>/dev/null || true)
    local f
    for f in $HOST_FILES; do [ ! -e "$f" ] || host_files_before="$host_files_before $f "; done
}

# engine MODE: starts dockerd. host: host network namespace, no bridge, no iptables, no forwarding
# (image builds only). netns: inside $NS with its own iptables rules (the lab). Either way in a
# mount namespace of its own (slave of the host's), so no mount of it outlives it.
engine() {
    local mode=$1 netflags
    mkdir -p "$STATE/data" "$STATE/exec"
    if [ "$mode" = host ]; then
        netflags=(--iptables=false --ip-masq=false --ip-forward=false)
        set -- unshare --mount --propagation slave
    else
        ip netns add "$NS"
        ip -n "$NS" link set lo up
        netflags=(--iptables=true --ip-masq=true --ip-forward=true)
        set -- unshare --mount --propagation slave nsenter --net="/run/netns/$NS"
    fi
    setsid "$@" /usr/sbin/dockerd --data-root "$STATE/data" --exec-root "$STATE/exec" \
        --pidfile "$STATE/dockerd.pid" -H "$DOCKER_HOST" --bridge=none --userland-proxy=false \
        "${netflags[@]}" >>"$STATE/dockerd-$mode.log" 2>&1 </dev/null &
    ENGINE_PID=$!
    local i
    for i in $(seq 1 60); do
        $DOCKER version >/dev/null 2>&1 && { say "engine ($mode) up, pid $ENGINE_PID"; return 0; }
        kill -0 "$ENGINE_PID" 2>/dev/null || break
        sleep 0.5
    done
    tail -20 "$STATE/dockerd-$mode.log" >&2
    die "dockerd ($mode) did not start"
}

engine_stop() {
    [ -n "$ENGINE_PID" ] || return 0
    if kill -0 "$ENGINE_PID" 2>/dev/null; then
        # Containers first, so no shim keeps the engine's mount namespace alive.
        local ids
        ids=$($DOCKER ps -aq 2>/dev/null || true)
        [ -z "$ids" ] || $DOCKER rm -f $ids >/dev/null 2>&1 || true
        kill -TERM "$ENGINE_PID" 2>/dev/null || true
        local i
        for i in $(seq 1 40); do
            kill -0 "$ENGINE_PID" 2>/dev/null || break
            sleep 0.5
        done
        kill -KILL "$ENGINE_PID" 2>/dev/null || true
    fi
    wait "$ENGINE_PID" 2>/dev/null || true
    ENGINE_PID=""
    local p
    for p in $(state_pids); do kill -KILL "$p" 2>/dev/null || true; done
}

teardown() {
    local rc=$? t0 left=""
    t0=$(date +%s)
    trap - EXIT INT TERM
    [ -z "$STEP" ] || say "== $STEP: FAILED ($rc) after $(($(date +%s) - STEP_T0)) s"
    say "== teardown"
    if [ -n "$ENGINE_PID" ] && kill -0 "$ENGINE_PID" 2>/dev/null; then
        [ $rc -eq 0 ] || { docker-compose -f "$COMPOSE_FILE" ps 2>&1 || true; docker-compose -f "$COMPOSE_FILE" logs --tail 30 2>&1 | tail -150 || true; }
        timeout 120 docker-compose -f "$COMPOSE_FILE" down --volumes --timeout 10 >/dev/null 2>&1 || true
    fi
    engine_stop
    ip netns del "$NS" 2>/dev/null || true
    # Mounts under the state folder in the host's namespace (none are expected).
    awk -v s="$STATE/" 'index($2, s) == 1 { print $2 }' /proc/mounts | sort -r | while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done
    # The cgroups the engine made (cgroupfs driver), if they were not there before.
    local d
    for d in /sys/fs/cgroup/*/docker; do
        [ -d "$d" ] || continue
        case $'\n'"$cgroups_before"$'\n' in *$'\n'"$d"$'\n'*) continue ;; esac
        find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
    done
    local f
    for f in $HOST_FILES; do
        case $host_files_before in *" $f "*) continue ;; esac
        if [ -d "$f" ]; then rmdir "$f" 2>/dev/null || true; else rm -f "$f"; fi
    done
    [ "${COMPOSE_TEST_KEEP:-0}" = 1 ] || rm -rf "$STATE/data" "$STATE/exec"
    # What must not be left.
    [ -z "$(state_pids)" ] || left="$left processes:$(state_pids | tr '\n' ' ')"
    ip netns list | grep -q "^$NS\b" && left="$left netns:$NS"
    awk -v s="$STATE/" 'index($2, s) == 1' /proc/mounts | grep -q . && left="$left mounts"
    for d in /sys/fs/cgroup/*/docker; do
        [ -d "$d" ] || continue
        case $'\n'"$cgroups_before"$'\n' in *$'\n'"$d"$'\n'*) ;; *) left="$left cgroup:$d" ;; esac
    done
    for f in $HOST_FILES; do
        case $host_files_before in *" $f "*) continue ;; esac
        [ ! -e "$f" ] || left="$left file:$f"
    done
    local now
    now=$(host_net_state)
    [ "$now" = "$HOST_NET_BEFORE" ] || {
        left="$left host-network-state"
        diff <(echo "$HOST_NET_BEFORE") <(echo "$now") >&2 || true
    }
    say "== teardown: $([ -z "$left" ] && echo ok || echo "LEFT:$left") in $(($(date +%s) - t0)) s"
    [ -z "$left" ] || [ $rc -ne 0 ] || rc=1
    say "total $(($(date +%s) - T_ALL)) s: $([ $rc -eq 0 ] && echo PASS || echo "FAIL ($rc)")"
    # The closing line CI reads: the flows, and the teardown check as one more.
    local np=0 nf=0
    [ -s "$STATE/flows.count" ] && read -r np nf <"$STATE/flows.count"
    [ -z "$left" ] && np=$((np + 1)) || nf=$((nf + 1))
    [ $rc -eq 0 ] || [ $nf -gt 0 ] || nf=1
    echo "compose: $np passed, $nf failed"
    exit $rc
}

# The host's network state an engine could change and must leave as it found it: its kind of
# links, forwarding, the firewall's tables (other labs on this machine keep theirs in namespaces).
host_net_state() {
    ip -o link show | awk '{ sub(/@.*/, "", $2); print $2 }' | grep -E '^(docker|br-|veth)' || true
    sysctl -n net.ipv4.ip_forward net.ipv6.conf.all.forwarding
    nft list tables 2>/dev/null || true
}

install() {
    EDGE_DEPS_GROUPS=compose deploy/install-deps.sh
}

build_images() {
    local mirror
    mirror=$(deploy/docker/debian-mirror.sh || true)
    [ -n "$mirror" ] || die "no bookworm Debian source in /etc/apt/sources.list{,.d} to build the base images from"
    say "Debian mirror from the apt sources: $mirror"
    engine host
    # The whole build log goes to a file: the run shows the image lines, and the log's end on failure.
    if ! MIRROR=$mirror DOCKER=$DOCKER deploy/docker/build-images.sh >"$STATE/build-images.log" 2>&1; then
        grep -E -i 'error|failed' "$STATE/build-images.log" | tail -20 >&2
        tail -30 "$STATE/build-images.log" >&2
        die "image build failed (whole log: $STATE/build-images.log)"
    fi
    grep '^build-images:' "$STATE/build-images.log"
    engine_stop
}

lab_up() {
    deploy/certs.sh "$BUILD/certs" >/dev/null
    [ "$BUILD" = build ] || die "the compose file mounts build/certs: run with BUILD=build"
    # The daemons run as uid 10001: the keys they mount must be readable by them.
    chmod 0644 "$BUILD"/certs/*.key
    engine netns
    docker-compose -f "$COMPOSE_FILE" up -d --no-build
    python3 deploy/compose/flows.py wait-healthy
}

HOST_NET_BEFORE=$(host_net_state)
record_host_files
mkdir -p "$STATE"
rm -f "$STATE"/dockerd-*.log "$STATE/flows.count"
[ -z "$(state_pids)" ] || die "another compose-test runs with $STATE (pids $(state_pids | tr '\n' ' '))"
rm -rf "$STATE/exec"
[ "${COMPOSE_TEST_KEEP:-0}" = 1 ] || rm -rf "$STATE/data"
trap teardown EXIT
trap 'exit 130' INT TERM

step "install docker.io, docker-compose, debootstrap, iptables" install
step "build the base images and every role's image" build_images
step "lab up, every HEALTHCHECK healthy" lab_up
hold() {
    [ "${COMPOSE_TEST_HOLD:-0}" -gt 0 ] || return 0
    say "holding the lab for $COMPOSE_TEST_HOLD s: DOCKER_HOST=$DOCKER_HOST COMPOSE_PROJECT_NAME=$PROJECT"
    sleep "$COMPOSE_TEST_HOLD" &
    wait $!    # a signal ends the wait at once (and runs the teardown)
}
flows_rc=0
STEP="end-to-end flows from the external client" STEP_T0=$(date +%s)
say "== $STEP"
FLOWS_COUNT="$STATE/flows.count" python3 deploy/compose/flows.py run || flows_rc=$?
[ $flows_rc -ne 0 ] || { say "== $STEP: ok in $(($(date +%s) - STEP_T0)) s"; STEP=""; }
hold
[ $flows_rc -eq 0 ] || exit $flows_rc
