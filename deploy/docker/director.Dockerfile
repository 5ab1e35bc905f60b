# director image. Build stage: Debian 12 with the build group of deploy/install-deps.sh (nothing
# else); runtime stage: Debian 12 slim with only the shared libraries the daemon links (the
# runtime group of deploy/install-deps.sh), a non-root user and a health check on /healthz.
# Build from the repository root:
#   docker build -f deploy/docker/director.Dockerfile -t edge-suite/director:0.1 .
# (add --build-arg TLS=openssl for the OpenSSL 3 TLS backend; the image's label
# org.edge-suite.tls-backend and `director --version` say which one it has).
# Run with the config mounted at /etc/edge/director.yaml (certificates under /etc/edge/certs).
# The Director is the internal-side stub: control-plane hub, registrar, token issuer.
FROM debian:12 AS build
WORKDIR /src
# The Makefile runs install-deps.sh on every build: this keeps it to the build group.
ENV EDGE_DEPS_GROUPS=build
COPY deploy/install-deps.sh deploy/install-deps.sh
RUN deploy/install-deps.sh && rm -rf /var/lib/apt/lists/*
COPY . .
# .git stays out of the context: the version (release+commit) comes in as a build argument.
ARG EDGE_VERSION
# TLS backend (README "TLS backends"): mbedtls, the default (TLS 1.2), or openssl (TLS 1.3 and
# 1.2): docker build --build-arg TLS=openssl. Either way the binary lands in build/bin.
ARG TLS=mbedtls
RUN rm -rf build build-san build-openssl build-openssl-san && make -j"$(nproc)" TLS="$TLS" BUILD=build ${EDGE_VERSION:+VERSION=$EDGE_VERSION} build/bin/director

FROM debian:12-slim
ARG TLS=mbedtls
LABEL org.edge-suite.tls-backend="$TLS"
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libuv1 libmbedtls14 libmbedx509-1 libmbedcrypto7 libssl3 libyaml-0-2 libprotobuf-c1 \
      libosip2-15 libhttp-parser2.9 libc-ares2 libcurl4 libjansson4 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin edge \
 && mkdir -p /var/lib/edge && chown edge:edge /var/lib/edge
# sip.store keeps registrations here (a volume: they outlive the container)
VOLUME /var/lib/edge
COPY --from=build /src/build/bin/director /usr/local/bin/director
COPY deploy/docker/healthcheck.sh /usr/local/bin/edge-healthcheck
USER edge
# Ports below 1024 as a non-root user: Docker (20.10+) sets net.ipv4.ip_unprivileged_port_start=0
# in a container's own network namespace; the compose file sets it explicitly.
EXPOSE 5060/udp 5061/tcp 7400/tcp 8080/tcp
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/edge-healthcheck", "/etc/edge/director.yaml"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/director", "-c", "/etc/edge/director.yaml"]
