#!/bin/sh
# Installs every Debian package the suite needs to build, test and benchmark.
# Idempotent: installs only what is missing. Usage: deploy/install-deps.sh [--check]
# EDGE_DEPS_GROUPS picks the groups (default "build test lab bench check"); the container images' build
# stage uses EDGE_DEPS_GROUPS=build, so `make` inside it installs nothing else.
set -eu

# Build: compiler, libraries (-dev), code generator, unit tests, fuzzing. libssl-dev is the
# OpenSSL 3 TLS backend (make TLS=openssl); mbedTLS stays the default and is always linked.
BUILD="build-essential pkg-config clang libclang-rt-14-dev
  libuv1-dev libmbedtls-dev libssl-dev libsrtp2-dev libosip2-dev libyaml-dev
  libprotobuf-c-dev protobuf-c-compiler libcmocka-dev libc-ares-dev
  libhttp-parser-dev libcurl4-openssl-dev libjansson-dev"
# libcurl4-openssl-dev and libjansson-dev: the Director's ACME client (HTTPS to the CA, its JSON).
# Integration tests: real clients nobody here wrote; docker-compose (validates the compose
# file, needs no engine), python3-yaml and systemd (systemd-analyze verify) for the deploy tests;
# sipvicious (svwar, svcrack) and varnish (varnishtest) for the attacker-side tests; sslscan
# for the TLS scan of every listener (protocols, suites, forward secrecy, renegotiation); pebble
# (Let's Encrypt's test ACME CA) for the ACME tests (tests/integ/test_acme.py), whose renewal
# under load also runs wrk over HTTPS and sipp through stunnel4 (sipp has no TLS; both also in BENCH).
TEST="python3 openssl gnutls-bin curl sip-tester coturn stun-client
  dnsmasq-base iproute2 nftables procps
  docker-compose python3-yaml systemd sipvicious varnish sslscan pebble wrk stunnel4"
# Lab clients (make lab-test, deploy/lab/clients/): real WebRTC and SIP clients nobody here wrote,
# driven through the edges in the namespace lab. python3-aiortc: two WebRTC peers (aiortc, a third
# TURN client) relay-only through av-edge; it is Debian's, for /usr/bin/python3. kamailio with its
# TLS module: a federated partner's edge (also a benchmark); sip-tester and dnsmasq-base (also in
# TEST): its users and the internet's DNS. baresip-core: a softphone without a GUI. chromium,
# nodejs and npm: headless browsers driven by playwright-core (npm, into build/lab-clients: make
# lab-clients) with JsSIP.
LAB="python3-aiortc kamailio kamailio-tls-modules sip-tester dnsmasq-base baresip-core
  chromium nodejs"
# Debian's npm is its own package; NodeSource's nodejs carries npm and conflicts with it.
command -v npm >/dev/null || LAB="$LAB npm"
# Benchmarks: the programs a user would pick instead, and load generators.
BENCH="wrk nginx-light libnginx-mod-stream haproxy kamailio kamailio-tls-modules stunnel4"

# make check (the static gate CI runs before the tests): the formatter, cppcheck, and the clang
# static analyzer (scan-build, in clang-tools).
CHECK="clang-format cppcheck clang-tools"

# The compose lab run end to end (make compose-test only, not make test): Debian's Docker engine,
# debootstrap for the base images, iptables for the engine's own rules (in its own namespace).
COMPOSE="docker.io docker-compose debootstrap iptables"

# Runtime: the shared libraries the daemons link (what the -dev packages above pull in); the
# container images' slim stage installs exactly these.
RUNTIME="libuv1 libmbedtls14 libmbedx509-1 libmbedcrypto7 libssl3 libyaml-0-2 libprotobuf-c1
  libosip2-15 libhttp-parser2.9 libc-ares2 libsrtp2-1 libcurl4 libjansson4"

PKGS=""
for g in ${EDGE_DEPS_GROUPS:-build test lab bench check}; do
    case $g in
    build) PKGS="$PKGS $BUILD" ;;
    test) PKGS="$PKGS $TEST" ;;
    lab) PKGS="$PKGS $LAB" ;;
    bench) PKGS="$PKGS $BENCH" ;;
    runtime) PKGS="$PKGS $RUNTIME" ;;
    compose) PKGS="$PKGS $COMPOSE" ;;
    check) PKGS="$PKGS $CHECK" ;;
    *) echo "install-deps: unknown group '$g' (build, test, lab, bench, runtime, compose, check)" >&2; exit 2 ;;
    esac
done
# One dpkg-query for all: the Makefile runs this on every build.
installed=$(dpkg-query -W -f='${Package} ${Status}\n' $PKGS 2>/dev/null | awk '/ ok installed$/ {print $1}')
missing=""
for p in $PKGS; do
    case " $(echo $installed) " in *" $p "*) ;; *) missing="$missing $p" ;; esac
done
if [ -z "$missing" ]; then
    exit 0
fi
if [ "${1:-}" = "--check" ]; then
    echo "missing packages:$missing" >&2
    exit 1
fi
echo "install-deps: installing$missing" >&2
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# Daemons from packages (coturn, nginx, haproxy, kamailio) must not start as services.
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
$SUDO apt-get install -y -qq --no-install-recommends $missing >&2
