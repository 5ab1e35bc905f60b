#!/bin/sh
# Makes a lab CA and an ECDSA P-256 certificate for each role in DIR (default build/certs).
# Idempotent: existing files are kept. Usage: deploy/certs.sh [DIR] [extra-name ...]
# Each <name>.crt carries SANs DNS:<name>, DNS:<name>.lab, DNS:localhost, IP:127.0.0.1..
set -eu
DIR=${1:-build/certs}
[ $# -gt 0 ] && shift
mkdir -p "$DIR"
cd "$DIR"
if [ ! -f ca.key ]; then
    openssl ecparam -name prime256v1 -genkey -noout -out ca.key 2>/dev/null
    openssl req -x509 -new -key ca.key -sha256 -days 3650 -subj "/CN=edge-suite lab CA" \
        -out ca.crt 2>/dev/null
fi
for name in director access-edge conf-edge av-edge revproxy confserver partner web "$@"; do
    [ -f "$name.crt" ] && continue
    openssl ecparam -name prime256v1 -genkey -noout -out "$name.key" 2>/dev/null
    openssl req -new -key "$name.key" -subj "/CN=$name" -out "$name.csr" 2>/dev/null
    printf 'subjectAltName=DNS:%s,DNS:%s.lab,DNS:localhost,IP:127.0.0.1,IP:127.0.0.10,IP:127.0.0.11,IP:127.0.0.12,IP:127.0.0.13,IP:127.0.0.14,IP:127.0.0.21,IP:127.0.0.22,IP:127.0.0.23,IP:127.0.0.24,IP:::1\nextendedKeyUsage=serverAuth,clientAuth\n' \
        "$name" "$name" > "$name.ext"
    openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 \
        -sha256 -extfile "$name.ext" -out "$name.crt" 2>/dev/null
    rm -f "$name.csr" "$name.ext"
done
# A second CA nobody trusts, with one certificate: for "foreign certificate" tests.
if [ ! -f rogue.crt ]; then
    openssl ecparam -name prime256v1 -genkey -noout -out rogue-ca.key 2>/dev/null
    openssl req -x509 -new -key rogue-ca.key -sha256 -days 3650 -subj "/CN=rogue CA" -out rogue-ca.crt 2>/dev/null
    openssl ecparam -name prime256v1 -genkey -noout -out rogue.key 2>/dev/null
    openssl req -new -key rogue.key -subj "/CN=av-edge" -out rogue.csr 2>/dev/null
    printf 'subjectAltName=DNS:av-edge,IP:127.0.0.1\n' > rogue.ext
    openssl x509 -req -in rogue.csr -CA rogue-ca.crt -CAkey rogue-ca.key -CAcreateserial -days 825 \
        -sha256 -extfile rogue.ext -out rogue.crt 2>/dev/null
    rm -f rogue.csr rogue.ext
fi
