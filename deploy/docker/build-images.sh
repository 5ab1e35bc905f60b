#!/usr/bin/env bash
# Builds the container images of deploy/docker/ where Docker Hub is out of reach but a Debian
# mirror is not: makes the Debian 12 base images with debootstrap from the mirror, imports them as
# debian:12 / debian:bookworm and debian:12-slim / debian:bookworm-slim (unless they exist), then
# builds each image and checks that each daemon image runs (`--version`, no network).
# Not part of `make test`. Needs root, debootstrap and a running Docker engine (with no Docker
# Hub, nothing else pulls the base images).
#
# Usage: deploy/docker/build-images.sh [IMAGE...]   (default: every deploy/docker/*.Dockerfile)
# Environment:
#   MIRROR        Debian mirror for debootstrap (default: the machine's own, from its apt
#                 sources: deploy/docker/debian-mirror.sh)
#   TAG           image tag (default 0.1): edge-suite/<image>:$TAG
#   TLS           TLS backend of the daemon images: mbedtls (default) or openssl
#   REBUILD_BASE  1: make the base images again even if they exist
#   DOCKER        the docker client (default: docker if it has buildx, else /usr/bin/docker
#                 from Debian's docker.io 20.10, whose BuildKit needs no buildx)
# The build stages reach the mirror with host networking (`docker build --network host`), so
# the engine needs no bridge or NAT of its own (dockerd --bridge=none --iptables=false works).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
MIRROR=${MIRROR:-$("$HERE/debian-mirror.sh" || true)}
[ -n "$MIRROR" ] || { echo "build-images: no bookworm source in the apt sources: set MIRROR" >&2; exit 2; }
TAG=${TAG:-0.1}
TLS=${TLS:-mbedtls}
# BuildKit (for the per-Dockerfile .dockerignore files): a client with buildx, or Debian's
# docker.io 20.10 client, which has BuildKit built in.
if [ -z "${DOCKER:-}" ]; then
    DOCKER=docker
    if ! docker buildx version >/dev/null 2>&1 && [ -x /usr/bin/docker ] &&
        /usr/bin/docker version --format '{{.Client.Version}}' 2>/dev/null | grep -q '^20\.'; then
        DOCKER=/usr/bin/docker
    fi
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "build-images: needs root (debootstrap)" >&2
    exit 2
fi
command -v debootstrap >/dev/null || { echo "build-images: debootstrap is missing (apt-get install debootstrap)" >&2; exit 2; }
$DOCKER info >/dev/null 2>&1 || { echo "build-images: no Docker engine answers ($DOCKER info)" >&2; exit 2; }

# The base images: one minbase bookworm root file system, imported twice. The slim one drops
# documentation, manual pages and locales, and keeps dpkg from installing them again (as the
# official slim image does).
make_base() {
    if [ "${REBUILD_BASE:-0}" != 1 ] && $DOCKER image inspect debian:12 debian:12-slim >/dev/null 2>&1; then
        echo "build-images: debian:12 and debian:12-slim exist (REBUILD_BASE=1 makes them again)"
        return
    fi
    local tmp
    tmp=$(mktemp -d /tmp/edge-rootfs.XXXXXX)
    # shellcheck disable=SC2064
    trap "rm -rf '$tmp'" RETURN
    echo "build-images: debootstrap bookworm (minbase) from $MIRROR"
    debootstrap --variant=minbase bookworm "$tmp/rootfs" "$MIRROR" >"$tmp/debootstrap.log" 2>&1 || {
        tail -20 "$tmp/debootstrap.log" >&2
        return 1
    }
    local r=$tmp/rootfs
    cat >"$r/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb ${MIRROR%/debian}/debian-security bookworm-security main
EOF
    # No services start inside an image build.
    printf '#!/bin/sh\nexit 101\n' >"$r/usr/sbin/policy-rc.d"
    chmod +x "$r/usr/sbin/policy-rc.d"
    rm -rf "$r"/var/cache/apt/archives/*.deb "$r"/var/lib/apt/lists/* "$r"/tmp/* "$r"/var/log/*.log
    tar -C "$r" --numeric-owner -c . | $DOCKER import --change 'CMD ["bash"]' - debian:12
    $DOCKER tag debian:12 debian:bookworm
    cat >"$r/etc/dpkg/dpkg.cfg.d/slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EOF
    find "$r/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    rm -rf "$r"/usr/share/man/* "$r"/usr/share/info/* "$r"/usr/share/locale/*
    tar -C "$r" --numeric-owner -c . | $DOCKER import --change 'CMD ["bash"]' - debian:12-slim
    $DOCKER tag debian:12-slim debian:bookworm-slim
}

make_base

images=("$@")
if [ ${#images[@]} -eq 0 ]; then
    for f in "$HERE"/*.Dockerfile; do
        b=$(basename "$f" .Dockerfile)
        images+=("$b")
    done
fi

cd "$ROOT"
version="0.1.0$(git rev-parse --short HEAD 2>/dev/null | sed 's/^/+g/')"
failed=""
for img in "${images[@]}"; do
    echo "build-images: edge-suite/$img:$TAG"
    # BuildKit reads deploy/docker/<image>.Dockerfile.dockerignore (host build output stays out).
    if ! DOCKER_BUILDKIT=1 $DOCKER build --network host -f "deploy/docker/$img.Dockerfile" \
        --build-arg EDGE_VERSION="$version" --build-arg TLS="$TLS" -t "edge-suite/$img:$TAG" .; then
        failed="$failed $img"
        continue
    fi
    # A daemon image runs its binary: --version needs neither config nor network.
    if [ -x "$ROOT/build/bin/$img" ] || grep -q "^ENTRYPOINT \[\"/usr/local/bin/$img\"" "deploy/docker/$img.Dockerfile"; then
        if ! $DOCKER run --rm --network none "edge-suite/$img:$TAG" --version; then
            failed="$failed $img(run)"
        fi
    fi
done
if [ -n "$failed" ]; then
    echo "build-images: failed:$failed" >&2
    exit 1
fi
echo "build-images: built ${images[*]}"
