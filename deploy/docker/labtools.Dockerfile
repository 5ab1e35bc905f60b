# Lab tools image for the compose lab: the external client (sipp, coturn's turnutils_* clients,
# stun-client, curl, openssl) and the perimeter firewall (nftables, iproute2). Every package is
# named in deploy/install-deps.sh (TEST group). Not for production.
#   docker build -f deploy/docker/labtools.Dockerfile -t edge-suite/labtools:0.1 .
FROM debian:12-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      sip-tester coturn stun-client curl openssl gnutls-bin iproute2 nftables procps python3 \
 && rm -rf /var/lib/apt/lists/*
COPY deploy/lab/perimeter.nft /etc/edge/perimeter.nft
CMD ["sleep", "infinity"]
